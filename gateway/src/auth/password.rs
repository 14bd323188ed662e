//! Password hashing with Argon2id (PHC strings).

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use rand::RngCore;

/// Hashes a password into a PHC string (`$argon2id$…`) with a random salt.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let h: PasswordHash = Argon2::default().hash_password(password.as_bytes())?;
    Ok(h.to_string())
}

/// Checks a password against a PHC string; a malformed hash never matches.
/// The comparison inside argon2 is constant-time.
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// A valid hash of a random password, verified against when the username is
/// unknown so that unknown and known users take the same time.
pub fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        let mut pw = [0u8; 16];
        rand::rng().fill_bytes(&mut pw);
        hash_password(&hex::encode(pw)).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(h, hash_password("correct horse").unwrap(), "salted");
        assert!(!verify_password("", dummy_hash()));
    }
}
