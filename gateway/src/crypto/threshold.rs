//! Threshold proxy re-encryption (t of n proxies) of a record's DEK, on
//! Umbral (`umbral-pre` 0.11).
//!
//! Three roles, three sets of functions:
//!
//! * **Patient side** — [`ThresholdGrant::generate`] splits a delegation to
//!   the grantee into `n` key fragments (kfrags), any `t` of which suffice,
//!   seals each kfrag to one proxy org's Umbral public key (so only that
//!   proxy can open it) and returns the on-chain metadata
//!   ([`PreGrant`]: grantee key, t, n, proxy orgs, one SHA-256 commitment
//!   per kfrag, in proxy order).
//! * **Proxy side** — [`open_kfrag`] opens the proxy's sealed kfrag,
//!   checks it against the on-chain commitment and verifies its signature
//!   ([`KeyFrag::verify`]); [`reencrypt`] turns a capsule into a capsule
//!   fragment (cfrag). **By construction the proxy never sees the DEK or
//!   the plaintext**: these functions take and return only capsule, kfrag
//!   and cfrag types (and the proxy's own key); the DEK ciphertext is not
//!   an argument of any proxy function, so a proxy cannot be handed it by
//!   this API.
//! * **Reader side** — [`collect`] verifies every cfrag
//!   ([`CapsuleFrag::verify`]), attributes bad ones to the proxy that sent
//!   them and keeps going until `t` valid ones are in;
//!   [`decrypt_reencrypted`] then opens the DEK with the reader's key.
//!
//! Encodings: kfrags, cfrags and capsules are serialized with `serde_json`
//! (as in [`super::sealer`]); a sealed kfrag is a [`SealedKey`] whose DEM
//! plaintext is the serialized kfrag.

use sha2::{Digest, Sha256};
use thiserror::Error;
use umbral_pre::{
    Capsule, CapsuleFrag, KeyFrag, PublicKey, SecretKey, Signer, VerifiedCapsuleFrag,
    VerifiedKeyFrag,
};

pub use ehr_chaincode::contract::model::PreGrant;

use super::sealer::{SealedKey, UMBRAL_SCHEME, UmbralKeyPair};
use super::stream::Dek;

/// The largest `n` (proxies per grant); the chaincode enforces the same.
pub const MAX_SHARES: usize = 16;

/// Errors of threshold re-encryption. Never carries key material.
#[derive(Debug, Clone, Error)]
pub enum ThresholdError {
    /// `t`/`n` out of `1 <= t <= n <= 16`.
    #[error("threshold needs 1 <= t <= n <= {MAX_SHARES} (got {t} of {n})")]
    BadThreshold { t: usize, n: usize },
    /// The same proxy org listed twice, or an empty org id.
    #[error("proxy orgs must be distinct and non-empty (offending: {0:?})")]
    BadProxyList(String),
    /// A key or encoded object could not be decoded.
    #[error("invalid encoding of {0}")]
    BadEncoding(&'static str),
    /// A sealed kfrag could not be opened with this proxy's key (sealed to
    /// another proxy, or tampered).
    #[error("sealed kfrag for {org:?} cannot be opened with this key")]
    NotForThisProxy { org: String },
    /// The kfrag does not hash to the commitment recorded on-chain.
    #[error("kfrag for {org:?} does not match its on-chain commitment")]
    CommitmentMismatch { org: String },
    /// The kfrag's signature or keys do not verify.
    #[error("kfrag for {org:?} failed verification")]
    BadKfrag { org: String },
    /// A proxy sent a cfrag that does not verify (or is not a listed proxy,
    /// or sent twice).
    #[error("proxy {org:?} sent a bad capsule fragment: {reason}")]
    BadProxy { org: String, reason: &'static str },
    /// Fewer than `t` valid cfrags. `bad_proxies` lists who sent bad ones.
    #[error("not enough valid capsule fragments: have {have}, need {need}")]
    NotEnough {
        have: usize,
        need: usize,
        bad_proxies: Vec<String>,
    },
    /// Sealing a kfrag failed.
    #[error("could not seal a key fragment")]
    Seal,
    /// The cfrags verified but the DEK could not be opened (wrong reader
    /// key or ciphertext).
    #[error("could not open the re-encrypted key")]
    Open,
}

/// A proxy org and its Umbral public key (the key kfrags are sealed to).
#[derive(Debug, Clone)]
pub struct ProxyKey {
    /// The proxy org's MSP id.
    pub org: String,
    /// Its Umbral public key.
    pub public_key: PublicKey,
}

/// One kfrag sealed to one proxy org. Only that org's secret key opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKfrag {
    /// The proxy org this kfrag is for.
    pub org: String,
    /// The serialized kfrag, Umbral-encrypted to the proxy's public key.
    pub ciphertext: SealedKey,
}

/// The result of a grant: what goes on-chain and what goes to each proxy.
#[derive(Debug, Clone)]
pub struct ThresholdGrant {
    /// On-chain metadata (no secrets): grantee key, t, n, proxies, kfrag
    /// commitments (lowercase hex SHA-256 of each serialized kfrag).
    pub metadata: PreGrant,
    /// One sealed kfrag per proxy, in the order of `metadata.proxies`.
    pub sealed_kfrags: Vec<SealedKfrag>,
}

/// The public keys a grant is bound to, needed to verify fragments.
#[derive(Debug, Clone, Copy)]
pub struct GrantKeys<'a> {
    /// The patient's signing (verifying) key, signs the kfrags.
    pub verifying: &'a PublicKey,
    /// The patient's Umbral key the DEK was sealed to.
    pub delegating: &'a PublicKey,
    /// The grantee (reader) key.
    pub receiving: &'a PublicKey,
}

/// The secret key of an [`UmbralKeyPair`] (the same derivation as
/// [`super::sealer`], which owns it).
pub fn secret_key_of(pair: &UmbralKeyPair) -> Result<SecretKey, ThresholdError> {
    pair.secret_key()
        .map_err(|_| ThresholdError::BadEncoding("secret key seed"))
}

/// A public key from its 33-byte compressed encoding.
pub fn public_key_from_bytes(bytes: &[u8]) -> Result<PublicKey, ThresholdError> {
    PublicKey::try_from_compressed_bytes(bytes)
        .map_err(|_| ThresholdError::BadEncoding("public key"))
}

/// The capsule of a sealed DEK (checks the scheme).
pub fn capsule_of(sealed: &SealedKey) -> Result<Capsule, ThresholdError> {
    if sealed.scheme != UMBRAL_SCHEME {
        return Err(ThresholdError::BadEncoding("sealing scheme"));
    }
    serde_json::from_slice(&sealed.capsule).map_err(|_| ThresholdError::BadEncoding("capsule"))
}

/// Lowercase hex SHA-256 of a serialized kfrag: its on-chain commitment.
pub fn kfrag_commitment(kfrag_bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(kfrag_bytes))
}

impl ThresholdGrant {
    /// Patient side: `t`-of-`n` kfrags delegating `patient`'s key to
    /// `grantee_pk`, signed by `patient_signer`, one sealed to each proxy in
    /// `proxies` (n = `proxies.len()`). Validates `1 <= t <= n <= 16` and
    /// distinct, non-empty proxy orgs before generating anything.
    pub fn generate(
        patient: &SecretKey,
        patient_signer: &Signer,
        grantee_pk: &PublicKey,
        proxies: &[ProxyKey],
        threshold: usize,
    ) -> Result<Self, ThresholdError> {
        let n = proxies.len();
        if !(1 <= threshold && threshold <= n && n <= MAX_SHARES) {
            return Err(ThresholdError::BadThreshold { t: threshold, n });
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in proxies {
            if p.org.is_empty() || !seen.insert(p.org.as_str()) {
                return Err(ThresholdError::BadProxyList(p.org.clone()));
            }
        }
        let kfrags = umbral_pre::generate_kfrags(
            patient,
            grantee_pk,
            patient_signer,
            threshold,
            n,
            true,
            true,
        );
        let mut sealed_kfrags = Vec::with_capacity(n);
        let mut commitments = Vec::with_capacity(n);
        for (proxy, kfrag) in proxies.iter().zip(kfrags.iter()) {
            let bytes = zeroize::Zeroizing::new(
                serde_json::to_vec(&kfrag.clone().unverify())
                    .map_err(|_| ThresholdError::BadEncoding("kfrag"))?,
            );
            commitments.push(kfrag_commitment(&bytes));
            let (capsule, ct) =
                umbral_pre::encrypt(&proxy.public_key, &bytes).map_err(|_| ThresholdError::Seal)?;
            sealed_kfrags.push(SealedKfrag {
                org: proxy.org.clone(),
                ciphertext: SealedKey {
                    scheme: UMBRAL_SCHEME.to_owned(),
                    capsule: serde_json::to_vec(&capsule)
                        .map_err(|_| ThresholdError::BadEncoding("capsule"))?,
                    ciphertext: ct.into_vec(),
                },
            });
        }
        let metadata = PreGrant {
            grantee_public_key: format!("0x{}", hex::encode(grantee_pk.to_compressed_bytes())),
            threshold: threshold as u32,
            shares: n as u32,
            proxies: proxies.iter().map(|p| p.org.clone()).collect(),
            kfrag_commitments: commitments,
            verifying_key: Some(format!(
                "0x{}",
                hex::encode(patient_signer.verifying_key().to_compressed_bytes())
            )),
        };
        Ok(Self {
            metadata,
            sealed_kfrags,
        })
    }
}

/// Proxy side: opens `sealed` with the proxy's secret key, checks it hashes
/// to `expected_commitment` (from the on-chain grant) and verifies the
/// kfrag against the patient's keys and the grantee key.
pub fn open_kfrag(
    proxy_sk: &SecretKey,
    sealed: &SealedKfrag,
    keys: GrantKeys<'_>,
    expected_commitment: &str,
) -> Result<VerifiedKeyFrag, ThresholdError> {
    let org = || sealed.org.clone();
    let capsule = capsule_of(&sealed.ciphertext)?;
    let bytes = zeroize::Zeroizing::new(
        umbral_pre::decrypt_original(proxy_sk, &capsule, &sealed.ciphertext.ciphertext)
            .map_err(|_| ThresholdError::NotForThisProxy { org: org() })?
            .into_vec(),
    );
    // The commitment is public; a plain comparison leaks nothing.
    if kfrag_commitment(&bytes) != expected_commitment.to_ascii_lowercase() {
        return Err(ThresholdError::CommitmentMismatch { org: org() });
    }
    let kfrag: KeyFrag =
        serde_json::from_slice(&bytes).map_err(|_| ThresholdError::BadEncoding("kfrag"))?;
    kfrag
        .verify(keys.verifying, Some(keys.delegating), Some(keys.receiving))
        .map_err(|_| ThresholdError::BadKfrag { org: org() })
}

/// Proxy side: re-encrypts a capsule (serialized, as in
/// [`SealedKey::capsule`]) with a verified kfrag into a serialized cfrag.
/// Takes no DEK ciphertext: the proxy cannot learn the DEK.
pub fn reencrypt(capsule: &[u8], kfrag: &VerifiedKeyFrag) -> Result<Vec<u8>, ThresholdError> {
    let capsule: Capsule =
        serde_json::from_slice(capsule).map_err(|_| ThresholdError::BadEncoding("capsule"))?;
    let cfrag = umbral_pre::reencrypt(&capsule, kfrag.clone());
    serde_json::to_vec(&cfrag.unverify()).map_err(|_| ThresholdError::BadEncoding("cfrag"))
}

/// Proxy side: the capsule of a sealed key blob (as stored, JSON of a
/// [`SealedKey`]), without ever decoding the blob's DEK ciphertext: only
/// `scheme` and `capsule` are read.
pub fn capsule_of_blob(blob: &[u8]) -> Result<Vec<u8>, ThresholdError> {
    #[derive(serde::Deserialize)]
    struct CapsuleOnly {
        scheme: String,
        capsule: Vec<u8>,
    }
    let c: CapsuleOnly =
        serde_json::from_slice(blob).map_err(|_| ThresholdError::BadEncoding("sealed key blob"))?;
    if c.scheme != UMBRAL_SCHEME {
        return Err(ThresholdError::BadEncoding("sealing scheme"));
    }
    // Check it is a capsule before a proxy works with it.
    serde_json::from_slice::<Capsule>(&c.capsule)
        .map_err(|_| ThresholdError::BadEncoding("capsule"))?;
    Ok(c.capsule)
}

/// The patient's custodian (their home gateway) re-encrypting directly for
/// one reader, for a decision that has no threshold grant (break-glass): a
/// one-off 1-of-1 kfrag from the patient's key to `receiving`, signed by
/// the patient's signing key, used at once and dropped. Returns the cfrag;
/// the reader verifies it with [`UmbralKeyPair::verifying_key`].
pub fn custodial_cfrag(
    patient: &UmbralKeyPair,
    receiving: &PublicKey,
    capsule: &[u8],
) -> Result<Vec<u8>, ThresholdError> {
    let sk = secret_key_of(patient)?;
    let signer = patient
        .signer()
        .map_err(|_| ThresholdError::BadEncoding("secret key seed"))?;
    let kfrags = umbral_pre::generate_kfrags(&sk, receiving, &signer, 1, 1, true, true);
    let kfrag = kfrags.into_vec().pop().ok_or(ThresholdError::Seal)?;
    reencrypt(capsule, &kfrag)
}

/// A cfrag as received from a proxy.
#[derive(Debug, Clone)]
pub struct ProxyCfrag {
    /// The proxy org that sent it.
    pub org: String,
    /// The serialized cfrag.
    pub cfrag: Vec<u8>,
}

/// The outcome of [`collect`]: `t` verified cfrags and who misbehaved.
#[derive(Debug)]
pub struct Collected {
    /// Exactly `t` verified cfrags, with the org that sent each.
    pub verified: Vec<(String, VerifiedCapsuleFrag)>,
    /// Cfrags refused, each attributed to its sender.
    pub rejected: Vec<ThresholdError>,
}

/// Reader side, incrementally: offer cfrags as proxies answer (in any
/// order); each is verified at once and refused with its sender named when
/// it is bad (undecodable, fails verification, unlisted or repeated sender,
/// a copy of another proxy's cfrag). Done when `threshold` valid cfrags
/// from distinct proxies are in.
pub struct Collector<'a> {
    capsule: &'a Capsule,
    keys: GrantKeys<'a>,
    grant_proxies: &'a [String],
    threshold: usize,
    verified: Vec<(String, VerifiedCapsuleFrag)>,
    rejected: Vec<ThresholdError>,
    seen_ids: Vec<String>,
}

impl<'a> Collector<'a> {
    /// A collector for a grant over `grant_proxies` needing `threshold`.
    pub fn new(
        capsule: &'a Capsule,
        keys: GrantKeys<'a>,
        grant_proxies: &'a [String],
        threshold: usize,
    ) -> Result<Self, ThresholdError> {
        if threshold == 0 || threshold > MAX_SHARES || threshold > grant_proxies.len() {
            return Err(ThresholdError::BadThreshold {
                t: threshold,
                n: grant_proxies.len(),
            });
        }
        Ok(Self {
            capsule,
            keys,
            grant_proxies,
            threshold,
            verified: Vec::with_capacity(threshold),
            rejected: Vec::new(),
            seen_ids: Vec::with_capacity(threshold),
        })
    }

    /// True when `threshold` valid cfrags are in.
    pub fn is_complete(&self) -> bool {
        self.verified.len() >= self.threshold
    }

    /// Verifies one proxy's cfrag. Returns `Err` (also kept for
    /// [`Collector::finish`]) when it is refused; cfrags offered after
    /// completion are ignored.
    pub fn offer(&mut self, ProxyCfrag { org, cfrag }: ProxyCfrag) -> Result<(), ThresholdError> {
        if self.is_complete() {
            return Ok(());
        }
        let bad = |reason| ThresholdError::BadProxy {
            org: org.clone(),
            reason,
        };
        let outcome = if !self.grant_proxies.contains(&org) {
            Err(bad("not a proxy of this grant"))
        } else if self.verified.iter().any(|(o, _)| *o == org) {
            Err(bad("sent more than one cfrag"))
        } else {
            match serde_json::from_slice::<CapsuleFrag>(&cfrag) {
                Err(_) => Err(bad("undecodable cfrag")),
                Ok(cf) => match kfrag_id_of(&cf) {
                    // A copy of another proxy's cfrag verifies but adds
                    // nothing (same key fragment): decryption would fail, so
                    // refuse it here.
                    None => Err(bad("duplicate of another proxy's cfrag")),
                    Some(id) if self.seen_ids.contains(&id) => {
                        Err(bad("duplicate of another proxy's cfrag"))
                    }
                    Some(id) => match cf.verify(
                        self.capsule,
                        self.keys.verifying,
                        self.keys.delegating,
                        self.keys.receiving,
                    ) {
                        Ok(v) => {
                            self.seen_ids.push(id);
                            self.verified.push((org.clone(), v));
                            Ok(())
                        }
                        Err(_) => Err(bad("cfrag failed verification")),
                    },
                },
            }
        };
        if let Err(e) = &outcome {
            self.rejected.push(e.clone());
        }
        outcome
    }

    /// The proxies whose cfrags were refused so far.
    pub fn bad_proxies(&self) -> Vec<String> {
        self.rejected
            .iter()
            .filter_map(|e| match e {
                ThresholdError::BadProxy { org, .. } => Some(org.clone()),
                _ => None,
            })
            .collect()
    }

    /// The `threshold` verified cfrags, or [`ThresholdError::NotEnough`].
    pub fn finish(self) -> Result<Collected, ThresholdError> {
        if !self.is_complete() {
            return Err(ThresholdError::NotEnough {
                have: self.verified.len(),
                need: self.threshold,
                bad_proxies: self.bad_proxies(),
            });
        }
        Ok(Collected {
            verified: self.verified,
            rejected: self.rejected,
        })
    }
}

/// Reader side, all at once: [`Collector`] over `cfrags` in order, stopping
/// at `threshold` valid ones.
pub fn collect(
    capsule: &Capsule,
    cfrags: impl IntoIterator<Item = ProxyCfrag>,
    keys: GrantKeys<'_>,
    grant_proxies: &[String],
    threshold: usize,
) -> Result<Collected, ThresholdError> {
    let mut c = Collector::new(capsule, keys, grant_proxies, threshold)?;
    for cf in cfrags {
        if c.is_complete() {
            break;
        }
        let _ = c.offer(cf);
    }
    c.finish()
}

/// The id of the kfrag a cfrag was made with (umbral-pre keeps the field
/// crate-private; it is public in the serialized form).
fn kfrag_id_of(cfrag: &CapsuleFrag) -> Option<String> {
    let v = serde_json::to_value(cfrag).ok()?;
    v.get("kfrag_id")?.as_str().map(str::to_owned)
}

/// Reader side: opens the DEK from `t` verified cfrags with the reader's
/// secret key.
pub fn decrypt_reencrypted(
    reader_sk: &SecretKey,
    patient_pk: &PublicKey,
    capsule: &Capsule,
    collected: &Collected,
    ciphertext: &[u8],
) -> Result<Dek, ThresholdError> {
    let dek = umbral_pre::decrypt_reencrypted(
        reader_sk,
        patient_pk,
        capsule,
        collected.verified.iter().map(|(_, c)| c.clone()),
        ciphertext,
    )
    .map_err(|_| ThresholdError::Open)?;
    let dek = zeroize::Zeroizing::new(dek.into_vec());
    Dek::try_from_slice(&dek).ok_or(ThresholdError::Open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sealer::{KeySealer, UmbralSealer};

    struct World {
        patient: SecretKey,
        patient_pk: PublicKey,
        signer_pk: PublicKey,
        reader: SecretKey,
        reader_pk: PublicKey,
        proxies: Vec<(String, SecretKey)>,
        dek: Dek,
        sealed: SealedKey,
        grant: ThresholdGrant,
    }

    impl World {
        fn new(t: usize, n: usize) -> Self {
            let pair = UmbralKeyPair::generate().unwrap();
            let patient = secret_key_of(&pair).unwrap();
            let patient_pk = patient.public_key();
            let signer_sk = SecretKey::random();
            let signer_pk = signer_sk.public_key();
            let signer = Signer::new(signer_sk);
            let reader = SecretKey::random();
            let reader_pk = reader.public_key();
            let proxies: Vec<(String, SecretKey)> = (0..n)
                .map(|i| (format!("Org{i}MSP"), SecretKey::random()))
                .collect();
            let keys: Vec<ProxyKey> = proxies
                .iter()
                .map(|(org, sk)| ProxyKey {
                    org: org.clone(),
                    public_key: sk.public_key(),
                })
                .collect();
            let dek = Dek::generate();
            let sealed = UmbralSealer.seal(&pair.public, &dek).unwrap();
            let grant = ThresholdGrant::generate(&patient, &signer, &reader_pk, &keys, t).unwrap();
            Self {
                patient,
                patient_pk,
                signer_pk,
                reader,
                reader_pk,
                proxies,
                dek,
                sealed,
                grant,
            }
        }

        fn keys(&self) -> GrantKeys<'_> {
            GrantKeys {
                verifying: &self.signer_pk,
                delegating: &self.patient_pk,
                receiving: &self.reader_pk,
            }
        }

        /// Proxy `i` opens its kfrag and re-encrypts the record's capsule.
        fn cfrag(&self, i: usize) -> ProxyCfrag {
            let (org, sk) = &self.proxies[i];
            let kfrag = open_kfrag(
                sk,
                &self.grant.sealed_kfrags[i],
                self.keys(),
                &self.grant.metadata.kfrag_commitments[i],
            )
            .unwrap();
            ProxyCfrag {
                org: org.clone(),
                cfrag: reencrypt(&self.sealed.capsule, &kfrag).unwrap(),
            }
        }

        fn read(
            &self,
            cfrags: Vec<ProxyCfrag>,
        ) -> Result<(Dek, Vec<ThresholdError>), ThresholdError> {
            let capsule = capsule_of(&self.sealed)?;
            let t = self.grant.metadata.threshold as usize;
            let collected = collect(
                &capsule,
                cfrags,
                self.keys(),
                &self.grant.metadata.proxies,
                t,
            )?;
            let dek = decrypt_reencrypted(
                &self.reader,
                &self.patient_pk,
                &capsule,
                &collected,
                &self.sealed.ciphertext,
            )?;
            Ok((dek, collected.rejected))
        }
    }

    #[test]
    fn key_derivation_matches_sealer() {
        let pair = UmbralKeyPair::generate().unwrap();
        let sk = secret_key_of(&pair).unwrap();
        assert_eq!(&*sk.public_key().to_compressed_bytes(), &pair.public[..]);
    }

    #[test]
    fn two_of_three_round_trip() {
        let w = World::new(2, 3);
        assert_eq!(w.grant.metadata.threshold, 2);
        assert_eq!(w.grant.metadata.shares, 3);
        assert_eq!(w.grant.metadata.proxies, ["Org0MSP", "Org1MSP", "Org2MSP"]);
        assert_eq!(w.grant.metadata.kfrag_commitments.len(), 3);
        assert!(
            w.grant
                .metadata
                .kfrag_commitments
                .iter()
                .all(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        assert_eq!(
            w.grant.metadata.grantee_public_key,
            format!("0x{}", hex::encode(w.reader_pk.to_compressed_bytes()))
        );
        let (dek, rejected) = w.read(vec![w.cfrag(0), w.cfrag(1), w.cfrag(2)]).unwrap();
        assert_eq!(dek.as_bytes(), w.dek.as_bytes());
        assert!(rejected.is_empty());
        // The patient's own key still opens the record directly.
        assert_eq!(
            umbral_pre::decrypt_original(
                &w.patient,
                &capsule_of(&w.sealed).unwrap(),
                &w.sealed.ciphertext
            )
            .unwrap()
            .as_ref(),
            w.dek.as_bytes()
        );
    }

    #[test]
    fn one_proxy_missing_still_reads_two_missing_is_not_enough() {
        let w = World::new(2, 3);
        for pair in [[0, 1], [0, 2], [1, 2]] {
            let (dek, _) = w.read(pair.iter().map(|&i| w.cfrag(i)).collect()).unwrap();
            assert_eq!(dek.as_bytes(), w.dek.as_bytes());
        }
        match w.read(vec![w.cfrag(1)]) {
            Err(ThresholdError::NotEnough {
                have: 1,
                need: 2,
                bad_proxies,
            }) => assert!(bad_proxies.is_empty()),
            other => panic!("expected NotEnough, got {other:?}"),
        }
        assert!(matches!(
            w.read(vec![]),
            Err(ThresholdError::NotEnough {
                have: 0,
                need: 2,
                ..
            })
        ));
    }

    #[test]
    fn one_cfrag_is_not_enough_to_decrypt_even_bypassing_collect() {
        // t = 2 is enforced by the maths, not only by `collect`.
        let w = World::new(2, 3);
        let capsule = capsule_of(&w.sealed).unwrap();
        let c = collect(
            &capsule,
            vec![w.cfrag(0)],
            w.keys(),
            &w.grant.metadata.proxies,
            1,
        )
        .unwrap();
        assert!(matches!(
            decrypt_reencrypted(&w.reader, &w.patient_pk, &capsule, &c, &w.sealed.ciphertext),
            Err(ThresholdError::Open)
        ));
    }

    #[test]
    fn malicious_proxy_detected_attributed_and_another_used() {
        let w = World::new(2, 3);
        // Proxy 0 re-encrypts with a kfrag from another delegation (same
        // receiver, different delegating key).
        let other = World::new(2, 3);
        let foreign = open_kfrag(
            &other.proxies[0].1,
            &other.grant.sealed_kfrags[0],
            other.keys(),
            &other.grant.metadata.kfrag_commitments[0],
        )
        .unwrap();
        let forged = ProxyCfrag {
            org: "Org0MSP".into(),
            cfrag: reencrypt(&w.sealed.capsule, &foreign).unwrap(),
        };
        // Proxy 1 flips a byte of an honest cfrag.
        let mut tampered = w.cfrag(1);
        let mut v: serde_json::Value = serde_json::from_slice(&tampered.cfrag).unwrap();
        // One bit of the kfrag id: still decodes, must fail verification.
        let id = v["kfrag_id"].as_str().unwrap().to_owned();
        let last = u8::from_str_radix(&id[id.len() - 1..], 16).unwrap() ^ 1;
        v["kfrag_id"] = serde_json::json!(format!("{}{last:x}", &id[..id.len() - 1]));
        tampered.cfrag = serde_json::to_vec(&v).unwrap();

        let (dek, rejected) = w
            .read(vec![
                forged.clone(),
                w.cfrag(2),
                tampered.clone(),
                w.cfrag(0),
            ])
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(dek.as_bytes(), w.dek.as_bytes());
        let blamed: Vec<&str> = rejected
            .iter()
            .map(|e| match e {
                ThresholdError::BadProxy { org, .. } => org.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(blamed, ["Org0MSP", "Org1MSP"]);

        // Only bad ones plus one good one: not enough, both blamed.
        match w.read(vec![forged, tampered, w.cfrag(2)]) {
            Err(ThresholdError::NotEnough {
                have: 1,
                need: 2,
                bad_proxies,
            }) => assert_eq!(bad_proxies, ["Org0MSP", "Org1MSP"]),
            other => panic!("expected NotEnough, got {other:?}"),
        }
    }

    #[test]
    fn unlisted_and_repeated_proxies_are_refused() {
        let w = World::new(2, 3);
        let mut stranger = w.cfrag(0);
        stranger.org = "EvilMSP".into();
        let replay = w.cfrag(0);
        match w.read(vec![
            stranger,
            w.cfrag(0),
            replay,
            ProxyCfrag {
                org: "Org2MSP".into(),
                cfrag: b"garbage".to_vec(),
            },
        ]) {
            Err(ThresholdError::NotEnough {
                have: 1,
                bad_proxies,
                ..
            }) => assert_eq!(bad_proxies, ["EvilMSP", "Org0MSP", "Org2MSP"]),
            other => panic!("expected NotEnough, got {other:?}"),
        }
    }

    #[test]
    fn kfrag_sealed_to_one_proxy_cannot_be_opened_by_another() {
        let w = World::new(2, 3);
        let c_sk = &w.proxies[2].1;
        assert!(matches!(
            open_kfrag(
                c_sk,
                &w.grant.sealed_kfrags[1],
                w.keys(),
                &w.grant.metadata.kfrag_commitments[1]
            ),
            Err(ThresholdError::NotForThisProxy { ref org }) if org == "Org1MSP"
        ));
        // A tampered sealed kfrag does not open either.
        let mut t = w.grant.sealed_kfrags[1].clone();
        t.ciphertext.ciphertext[3] ^= 1;
        assert!(matches!(
            open_kfrag(
                &w.proxies[1].1,
                &t,
                w.keys(),
                &w.grant.metadata.kfrag_commitments[1]
            ),
            Err(ThresholdError::NotForThisProxy { .. })
        ));
    }

    #[test]
    fn commitment_mismatch_and_wrong_keys_refused() {
        let w = World::new(2, 3);
        let (_, b_sk) = &w.proxies[1];
        let sealed = &w.grant.sealed_kfrags[1];
        assert!(matches!(
            open_kfrag(
                b_sk,
                sealed,
                w.keys(),
                &w.grant.metadata.kfrag_commitments[0]
            ),
            Err(ThresholdError::CommitmentMismatch { .. })
        ));
        // Upper-case hex of the right commitment is accepted.
        let upper = w.grant.metadata.kfrag_commitments[1].to_ascii_uppercase();
        assert!(open_kfrag(b_sk, sealed, w.keys(), &upper).is_ok());
        // Bound to the grantee: verifying for another receiver fails.
        let mallory = SecretKey::random().public_key();
        let keys = GrantKeys {
            receiving: &mallory,
            ..w.keys()
        };
        assert!(matches!(
            open_kfrag(b_sk, sealed, keys, &w.grant.metadata.kfrag_commitments[1]),
            Err(ThresholdError::BadKfrag { .. })
        ));
        // And to the signer.
        let keys = GrantKeys {
            verifying: &w.patient_pk,
            ..w.keys()
        };
        assert!(matches!(
            open_kfrag(b_sk, sealed, keys, &w.grant.metadata.kfrag_commitments[1]),
            Err(ThresholdError::BadKfrag { .. })
        ));
    }

    #[test]
    fn threshold_and_proxy_list_validation() {
        let sk = SecretKey::random();
        let signer = Signer::new(SecretKey::random());
        let grantee = SecretKey::random().public_key();
        let proxies = |n: usize| -> Vec<ProxyKey> {
            (0..n)
                .map(|i| ProxyKey {
                    org: format!("P{i}"),
                    public_key: SecretKey::random().public_key(),
                })
                .collect()
        };
        for (t, n) in [(0, 3), (4, 3), (1, 0), (1, 17), (17, 17)] {
            assert!(
                matches!(
                    ThresholdGrant::generate(&sk, &signer, &grantee, &proxies(n), t),
                    Err(ThresholdError::BadThreshold { t: tt, n: nn }) if tt == t && nn == n
                ),
                "{t} of {n}"
            );
        }
        for (t, n) in [(1, 1), (3, 3), (16, 16)] {
            let g = ThresholdGrant::generate(&sk, &signer, &grantee, &proxies(n), t).unwrap();
            assert_eq!(g.sealed_kfrags.len(), n);
            assert_eq!(g.metadata.kfrag_commitments.len(), n);
        }
        let mut dup = proxies(3);
        dup[2].org = "P0".into();
        assert!(matches!(
            ThresholdGrant::generate(&sk, &signer, &grantee, &dup, 2),
            Err(ThresholdError::BadProxyList(ref o)) if o == "P0"
        ));
        let mut empty = proxies(2);
        empty[1].org.clear();
        assert!(matches!(
            ThresholdGrant::generate(&sk, &signer, &grantee, &empty, 2),
            Err(ThresholdError::BadProxyList(_))
        ));
    }

    #[test]
    fn copied_cfrag_from_another_proxy_is_refused_and_attributed() {
        let w = World::new(2, 3);
        let honest = w.cfrag(0);
        let copy = ProxyCfrag {
            org: "Org1MSP".into(),
            cfrag: honest.cfrag.clone(),
        };
        let (dek, rejected) = w.read(vec![honest, copy, w.cfrag(2)]).unwrap();
        assert_eq!(dek.as_bytes(), w.dek.as_bytes());
        assert!(matches!(
            rejected.as_slice(),
            [ThresholdError::BadProxy { org, .. }] if org == "Org1MSP"
        ));
    }
}
