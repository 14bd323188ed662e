//! The key-encryption key (KEK): encrypts private keys at rest (identities'
//! ECDSA keys, Umbral secret keys, the JWT signing key) with AES-256-GCM.
//!
//! The KEK comes from `EHR_KEK` (64 hex chars) or from `kek.key` in the data
//! directory, created (mode 0600) on first start.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use thiserror::Error;
use zeroize::Zeroizing;

/// Errors of the KEK.
#[derive(Debug, Error)]
pub enum KekError {
    #[error("KEK must be 32 bytes as 64 hex characters")]
    BadKek,
    #[error("KEK file: {0}")]
    Io(#[from] std::io::Error),
    #[error("sealed secret is malformed or was not sealed under this KEK")]
    Open,
}

const NONCE_LEN: usize = 12;
const FORMAT: u8 = 1;

/// The key-encryption key.
#[derive(Clone)]
pub struct Kek {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    /// From raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let key = Key::<Aes256Gcm>::from(*bytes);
        Self {
            aead: Aes256Gcm::new(&key),
        }
    }

    /// From 64 hex characters.
    pub fn from_hex(hex_str: &str) -> Result<Self, KekError> {
        let bytes = Zeroizing::new(hex::decode(hex_str.trim()).map_err(|_| KekError::BadKek)?);
        let arr: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| KekError::BadKek)?;
        Ok(Self::from_bytes(arr))
    }

    /// `env_hex` if given, else `dir/kek.key`, created on first use.
    pub fn load_or_create(env_hex: Option<&str>, dir: &Path) -> Result<Self, KekError> {
        if let Some(h) = env_hex {
            return Self::from_hex(h);
        }
        let path = dir.join("kek.key");
        match std::fs::read_to_string(&path) {
            Ok(s) => Self::from_hex(&s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = Zeroizing::new([0u8; 32]);
                rand::rng().fill_bytes(k.as_mut());
                let hex_key = Zeroizing::new(hex::encode(k.as_ref()));
                crate::fsutil::write_private(&path, hex_key.as_bytes())?;
                Ok(Self::from_bytes(&k))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Encrypts `secret`, binding `context` (e.g. "identity:<user id>") as
    /// associated data so a sealed value cannot be moved to another row.
    pub fn seal(&self, context: &str, secret: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .aead
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: context.as_bytes(),
                },
            )
            // AES-GCM only fails for messages over 64 GiB.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts what [`Kek::seal`] produced for the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != FORMAT {
            return Err(KekError::Open);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        self.aead
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: context.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KekError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_context_binding() {
        let k = Kek::from_bytes(&[7u8; 32]);
        let s = k.seal("identity:1", b"secret key");
        assert_eq!(&k.open("identity:1", &s).unwrap()[..], b"secret key");
        assert!(k.open("identity:2", &s).is_err());
        assert!(Kek::from_bytes(&[8u8; 32]).open("identity:1", &s).is_err());
        let mut t = s.clone();
        t[20] ^= 1;
        assert!(k.open("identity:1", &t).is_err());
        assert!(k.open("identity:1", b"x").is_err());
    }

    #[test]
    fn load_or_create_persists() {
        let dir = tempfile::tempdir().unwrap();
        let a = Kek::load_or_create(None, dir.path()).unwrap();
        let sealed = a.seal("c", b"v");
        let b = Kek::load_or_create(None, dir.path()).unwrap();
        assert_eq!(&b.open("c", &sealed).unwrap()[..], b"v");
        assert!(Kek::from_hex("abcd").is_err());
        let env = Kek::load_or_create(Some(&"11".repeat(32)), dir.path()).unwrap();
        assert!(env.open("c", &sealed).is_err());
    }
}
