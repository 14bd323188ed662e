//! Sealing data-encryption keys to a person's key: the [`KeySealer`]
//! interface and its Umbral implementation.
//!
//! A record's DEK is sealed to the patient's Umbral public key (capsule +
//! DEM ciphertext). The patient's side can open it directly; another party
//! opens it only through proxy re-encryption ([`super::threshold`]): the
//! patient's side delegates to the receiver's public key (key fragments),
//! proxies re-encrypt the capsule into capsule fragments, and the receiver
//! opens the DEK with its own secret key. No proxy ever sees the DEK.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use umbral_pre::{Capsule, PublicKey, SecretKey, SecretKeyFactory, Signer};

use super::stream::Dek;

/// Errors of sealing and opening. Never carries key material.
#[derive(Debug, Error)]
pub enum SealError {
    #[error("invalid key encoding")]
    BadKey,
    #[error("invalid sealed key encoding")]
    BadEncoding,
    #[error("unsupported sealing scheme {0:?}")]
    Scheme(String),
    #[error("could not open the sealed key (wrong key or tampered capsule)")]
    Open,
}

/// A DEK sealed to someone's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    /// Scheme id, e.g. `umbral-pre-0.11`.
    pub scheme: String,
    /// The scheme's capsule (opaque bytes).
    pub capsule: Vec<u8>,
    /// The DEK encrypted under the capsule's key.
    pub ciphertext: Vec<u8>,
}

/// Seals and opens DEKs. One interface so the scheme can change (and proxy
/// re-encryption can be layered on) without touching upload/download.
pub trait KeySealer: Send + Sync {
    /// The scheme id written into [`SealedKey::scheme`].
    fn scheme(&self) -> &'static str;
    /// Seals `dek` to `recipient_pk` (the scheme's public-key encoding).
    fn seal(&self, recipient_pk: &[u8], dek: &Dek) -> Result<SealedKey, SealError>;
    /// Opens a sealed key with the recipient's secret key.
    fn open(&self, recipient_sk: &[u8], sealed: &SealedKey) -> Result<Dek, SealError>;
}

/// The largest sealed key blob read back (a capsule and an encrypted
/// 32-byte DEK, as JSON, are well under 1 KiB).
pub const MAX_SEALED_KEY_BYTES: usize = 64 * 1024;

/// The scheme id of [`UmbralSealer`].
pub const UMBRAL_SCHEME: &str = "umbral-pre-0.11";

/// An Umbral key pair, encoded: the secret as its seed
/// ([`SecretKeyFactory::seed_size`] bytes), the public key as 33 bytes of
/// compressed SEC1.
pub struct UmbralKeyPair {
    pub secret: zeroize::Zeroizing<Vec<u8>>,
    pub public: Vec<u8>,
}

impl UmbralKeyPair {
    /// A fresh random key pair.
    pub fn generate() -> Result<Self, SealError> {
        let mut seed = zeroize::Zeroizing::new(vec![0u8; SecretKeyFactory::seed_size()]);
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
        Self::from_seed(seed)
    }

    /// The key pair derived from a stored seed.
    pub fn from_seed(seed: zeroize::Zeroizing<Vec<u8>>) -> Result<Self, SealError> {
        let public = secret_key(&seed)?
            .public_key()
            .to_compressed_bytes()
            .into_vec();
        Ok(Self {
            secret: seed,
            public,
        })
    }

    /// The Umbral secret key (derived from the stored seed).
    pub fn secret_key(&self) -> Result<SecretKey, SealError> {
        secret_key(&self.secret)
    }

    /// The signer of key fragments: a second key derived from the same seed
    /// under its own label, so that the delegating (decryption) key never
    /// signs anything.
    pub fn signer(&self) -> Result<Signer, SealError> {
        let factory = SecretKeyFactory::from_secure_randomness(&self.secret)
            .map_err(|_| SealError::BadKey)?;
        Ok(Signer::new(factory.make_key(SIGNING_LABEL)))
    }

    /// The compressed public key of [`UmbralKeyPair::signer`] (what verifies
    /// the kfrags this pair delegates).
    pub fn verifying_key(&self) -> Result<Vec<u8>, SealError> {
        Ok(self
            .signer()?
            .verifying_key()
            .to_compressed_bytes()
            .into_vec())
    }
}

/// Umbral secret keys are stored as a 32-byte seed; the key is derived from
/// it (umbral-pre offers no way to import raw scalar bytes).
fn secret_key(seed: &[u8]) -> Result<SecretKey, SealError> {
    let factory = SecretKeyFactory::from_secure_randomness(seed).map_err(|_| SealError::BadKey)?;
    Ok(factory.make_key(KEY_LABEL))
}

const KEY_LABEL: &[u8] = b"ehrchain/umbral/v1";
const SIGNING_LABEL: &[u8] = b"ehrchain/umbral/signing/v1";

fn public_key(bytes: &[u8]) -> Result<PublicKey, SealError> {
    PublicKey::try_from_compressed_bytes(bytes).map_err(|_| SealError::BadKey)
}

/// Umbral (threshold proxy re-encryption on secp256k1) sealer.
#[derive(Debug, Default, Clone, Copy)]
pub struct UmbralSealer;

impl UmbralSealer {
    fn capsule(sealed: &SealedKey) -> Result<Capsule, SealError> {
        if sealed.scheme != UMBRAL_SCHEME {
            return Err(SealError::Scheme(sealed.scheme.clone()));
        }
        serde_json::from_slice(&sealed.capsule).map_err(|_| SealError::BadEncoding)
    }
}

impl KeySealer for UmbralSealer {
    fn scheme(&self) -> &'static str {
        UMBRAL_SCHEME
    }

    fn seal(&self, recipient_pk: &[u8], dek: &Dek) -> Result<SealedKey, SealError> {
        let pk = public_key(recipient_pk)?;
        let (capsule, ciphertext) =
            umbral_pre::encrypt(&pk, dek.as_bytes()).map_err(|_| SealError::Open)?;
        Ok(SealedKey {
            scheme: UMBRAL_SCHEME.to_owned(),
            capsule: serde_json::to_vec(&capsule).map_err(|_| SealError::BadEncoding)?,
            ciphertext: ciphertext.into_vec(),
        })
    }

    fn open(&self, recipient_sk: &[u8], sealed: &SealedKey) -> Result<Dek, SealError> {
        let capsule = Self::capsule(sealed)?;
        let sk = secret_key(recipient_sk)?;
        let dek = umbral_pre::decrypt_original(&sk, &capsule, &sealed.ciphertext)
            .map_err(|_| SealError::Open)?;
        Dek::try_from_slice(&dek).ok_or(SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip() {
        let kp = UmbralKeyPair::generate().unwrap();
        let dek = Dek::generate();
        let s = UmbralSealer;
        let sealed = s.seal(&kp.public, &dek).unwrap();
        assert_eq!(sealed.scheme, UMBRAL_SCHEME);
        assert_eq!(
            s.open(&kp.secret, &sealed).unwrap().as_bytes(),
            dek.as_bytes()
        );
    }

    #[test]
    fn wrong_key_and_tamper_fail() {
        let kp = UmbralKeyPair::generate().unwrap();
        let other = UmbralKeyPair::generate().unwrap();
        let s = UmbralSealer;
        let mut sealed = s.seal(&kp.public, &Dek::generate()).unwrap();
        assert!(matches!(
            s.open(&other.secret, &sealed),
            Err(SealError::Open)
        ));
        sealed.ciphertext[0] ^= 1;
        assert!(matches!(s.open(&kp.secret, &sealed), Err(SealError::Open)));
        sealed.scheme = "rot13".into();
        assert!(matches!(
            s.open(&kp.secret, &sealed),
            Err(SealError::Scheme(_))
        ));
        assert!(matches!(
            s.seal(b"not a key", &Dek::generate()),
            Err(SealError::BadKey)
        ));
    }

    #[test]
    fn signing_key_is_derived_apart_from_the_decryption_key() {
        let kp = UmbralKeyPair::generate().unwrap();
        let vk = kp.verifying_key().unwrap();
        assert_eq!(vk.len(), 33);
        assert_ne!(vk, kp.public);
        // Stable for a seed.
        let again = UmbralKeyPair::from_seed(kp.secret.clone()).unwrap();
        assert_eq!(again.verifying_key().unwrap(), vk);
    }
}
