//! Sealing data-encryption keys to a person's key: the [`KeySealer`]
//! interface and its Umbral implementation.
//!
//! A record's DEK is sealed to the patient's Umbral public key (capsule +
//! DEM ciphertext). The patient's side can open it directly; another party
//! opens it only through proxy re-encryption: the patient's side delegates
//! to the receiver's public key (a key fragment), a proxy re-encrypts the
//! capsule into a capsule fragment, and the receiver opens the DEK with its
//! own secret key. No proxy ever sees the DEK.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use umbral_pre::{
    Capsule, CapsuleFrag, PublicKey, SecretKey, SecretKeyFactory, Signer, VerifiedCapsuleFrag,
    VerifiedKeyFrag,
};

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
    #[error("capsule fragment failed verification")]
    Fragment,
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
}

/// Umbral secret keys are stored as a 32-byte seed; the key is derived from
/// it (umbral-pre offers no way to import raw scalar bytes).
fn secret_key(seed: &[u8]) -> Result<SecretKey, SealError> {
    let factory = SecretKeyFactory::from_secure_randomness(seed).map_err(|_| SealError::BadKey)?;
    Ok(factory.make_key(KEY_LABEL))
}

const KEY_LABEL: &[u8] = b"ehrchain/umbral/v1";

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

    /// Delegation: a key fragment letting a proxy re-encrypt capsules sealed
    /// to `delegating_sk` for `receiving_pk` (threshold 1 of 1 for now; the
    /// threshold version is the proxy re-encryption issue). Signed by
    /// `signing_sk` so the receiver can check who delegated.
    pub fn delegate(
        &self,
        delegating_sk: &[u8],
        receiving_pk: &[u8],
        signing_sk: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let sk = secret_key(delegating_sk)?;
        let rpk = public_key(receiving_pk)?;
        let signer = Signer::new(secret_key(signing_sk)?);
        let kfrags = umbral_pre::generate_kfrags(&sk, &rpk, &signer, 1, 1, true, true);
        let kfrag = kfrags.first().ok_or(SealError::Fragment)?;
        serde_json::to_vec(&kfrag.clone().unverify()).map_err(|_| SealError::BadEncoding)
    }

    /// Proxy side: verifies a key fragment and re-encrypts the capsule of
    /// `sealed` into a capsule fragment for the fragment's receiver.
    pub fn reencrypt(
        &self,
        sealed: &SealedKey,
        kfrag: &[u8],
        verifying_pk: &[u8],
        delegating_pk: &[u8],
        receiving_pk: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let capsule = Self::capsule(sealed)?;
        let kfrag: umbral_pre::KeyFrag =
            serde_json::from_slice(kfrag).map_err(|_| SealError::BadEncoding)?;
        let verified: VerifiedKeyFrag = kfrag
            .verify(
                &public_key(verifying_pk)?,
                Some(&public_key(delegating_pk)?),
                Some(&public_key(receiving_pk)?),
            )
            .map_err(|_| SealError::Fragment)?;
        let cfrag = umbral_pre::reencrypt(&capsule, verified);
        serde_json::to_vec(&cfrag.unverify()).map_err(|_| SealError::BadEncoding)
    }

    /// Receiver side: verifies the capsule fragment and opens the DEK with
    /// the receiver's own secret key.
    pub fn open_reencrypted(
        &self,
        receiving_sk: &[u8],
        delegating_pk: &[u8],
        verifying_pk: &[u8],
        sealed: &SealedKey,
        cfrag: &[u8],
    ) -> Result<Dek, SealError> {
        let capsule = Self::capsule(sealed)?;
        let rsk = secret_key(receiving_sk)?;
        let dpk = public_key(delegating_pk)?;
        let cfrag: CapsuleFrag =
            serde_json::from_slice(cfrag).map_err(|_| SealError::BadEncoding)?;
        let verified: VerifiedCapsuleFrag = cfrag
            .verify(
                &capsule,
                &public_key(verifying_pk)?,
                &dpk,
                &rsk.public_key(),
            )
            .map_err(|_| SealError::Fragment)?;
        let dek =
            umbral_pre::decrypt_reencrypted(&rsk, &dpk, &capsule, [verified], &sealed.ciphertext)
                .map_err(|_| SealError::Open)?;
        Dek::try_from_slice(&dek).ok_or(SealError::Open)
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
    fn proxy_reencryption_roundtrip_and_wrong_receiver() {
        let s = UmbralSealer;
        let patient = UmbralKeyPair::generate().unwrap();
        let signer = UmbralKeyPair::generate().unwrap();
        let reader = UmbralKeyPair::generate().unwrap();
        let dek = Dek::generate();
        let sealed = s.seal(&patient.public, &dek).unwrap();
        let kfrag = s
            .delegate(&patient.secret, &reader.public, &signer.secret)
            .unwrap();
        let cfrag = s
            .reencrypt(
                &sealed,
                &kfrag,
                &signer.public,
                &patient.public,
                &reader.public,
            )
            .unwrap();
        let opened = s
            .open_reencrypted(
                &reader.secret,
                &patient.public,
                &signer.public,
                &sealed,
                &cfrag,
            )
            .unwrap();
        assert_eq!(opened.as_bytes(), dek.as_bytes());
        // Someone else cannot use the fragment.
        let mallory = UmbralKeyPair::generate().unwrap();
        assert!(
            s.open_reencrypted(
                &mallory.secret,
                &patient.public,
                &signer.public,
                &sealed,
                &cfrag
            )
            .is_err()
        );
        // A kfrag for a different receiver does not verify.
        assert!(
            s.reencrypt(
                &sealed,
                &kfrag,
                &signer.public,
                &patient.public,
                &mallory.public
            )
            .is_err()
        );
    }
}
