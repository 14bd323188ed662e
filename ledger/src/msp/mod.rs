//! Membership service provider: which organisations exist, who belongs to
//! them, and whether a signature is theirs.
//!
//! As Fabric's X.509 MSP does:
//! - an org is defined by its root CA certificate(s); an identity is a
//!   `msp.SerializedIdentity` (MSP id + PEM certificate) whose certificate
//!   must be signed by one of the org's CAs;
//! - a signature is ECDSA P-256 over SHA-256 of the signed bytes, DER-encoded,
//!   and must be low-S (Fabric's `bccsp/sw` rejects high-S signatures);
//! - the certificate's NodeOU (`OU=client|peer|admin|orderer`) gives its role.
//!
//! [`ca`] is a small CA (rcgen) that issues such certificates for the devnet.

pub mod ca;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ehr_proto::msp::SerializedIdentity;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use prost::Message;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use thiserror::Error;
use x509_parser::prelude::*;

/// The OID of Fabric CA's attribute extension (`attrmgr.AttrOID`).
pub const FABRIC_ATTRS_OID: &[u64] = &[1, 2, 3, 4, 5, 6, 7, 8, 1];
const FABRIC_ATTRS_OID_STR: &str = "1.2.3.4.5.6.7.8.1";
const ECDSA_WITH_SHA256: &str = "1.2.840.10045.4.3.2";
/// Identities kept verified in memory before the cache is emptied.
const IDENTITY_CACHE_MAX: usize = 16_384;

/// Why an identity or signature was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MspError {
    #[error("malformed serialized identity: {0}")]
    MalformedIdentity(String),
    #[error("unknown MSP {0:?}")]
    UnknownMsp(String),
    #[error("malformed certificate: {0}")]
    MalformedCertificate(String),
    #[error("certificate is not issued by a CA of MSP {0:?}")]
    UntrustedCertificate(String),
    #[error("certificate is expired or not yet valid")]
    CertificateNotValidNow,
    #[error("malformed signature: {0}")]
    MalformedSignature(String),
    #[error("signature has a high S value (Fabric requires low-S)")]
    HighS,
    #[error("signature does not verify")]
    BadSignature,
    #[error("malformed key: {0}")]
    MalformedKey(String),
    #[error("identity has role {have:?}, needs {need:?}")]
    WrongRole {
        have: Vec<String>,
        need: &'static str,
    },
}

/// One organisation: its MSP id and root CA certificates.
#[derive(Debug, Clone)]
pub struct OrgMsp {
    msp_id: String,
    cas: Vec<CaCert>,
}

#[derive(Debug, Clone)]
struct CaCert {
    subject_der: Vec<u8>,
    key: PublicKey,
}

/// A P-256 public key (uncompressed SEC1 point, validated as on the curve).
///
/// Signature arithmetic runs on `ring` (assembly P-256, ~10x faster than the
/// pure-Rust `p256` field code, which made ECDSA 90% of the devnet's CPU
/// time); `p256` parses keys and signatures and enforces low-S.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(Vec<u8>);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(&self.0))
    }
}

impl PublicKey {
    /// From SEC1 bytes (compressed or not); fails when not a P-256 point.
    pub fn from_sec1(bytes: &[u8]) -> Result<Self, MspError> {
        let k = VerifyingKey::from_sec1_bytes(bytes).map_err(|_| {
            MspError::MalformedCertificate("public key is not a P-256 point".into())
        })?;
        Ok(Self(k.to_encoded_point(false).as_bytes().to_vec()))
    }

    /// ECDSA P-256 / SHA-256 check of a DER signature, any S.
    fn verify_any_s(&self, msg: &[u8], signature_der: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.0)
            .verify(msg, signature_der)
            .is_ok()
    }
}

impl OrgMsp {
    /// An org from its MSP id and one or more PEM CA certificates (concatenated).
    pub fn new(msp_id: &str, ca_pem: &str) -> Result<Self, MspError> {
        if msp_id.is_empty() {
            return Err(MspError::MalformedIdentity("empty MSP id".into()));
        }
        let mut cas = Vec::new();
        for der in pem_certificates(ca_pem.as_bytes())? {
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| MspError::MalformedCertificate(e.to_string()))?;
            cas.push(CaCert {
                subject_der: cert.subject().as_raw().to_vec(),
                key: ec_public_key(&cert)?,
            });
        }
        if cas.is_empty() {
            return Err(MspError::MalformedCertificate(
                "no CA certificate in PEM".into(),
            ));
        }
        Ok(Self {
            msp_id: msp_id.to_string(),
            cas,
        })
    }

    /// The org's MSP id.
    pub fn msp_id(&self) -> &str {
        &self.msp_id
    }
}

/// An identity whose certificate chains to its org's CA.
#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    /// The MSP id the identity claims and belongs to.
    pub msp_id: String,
    /// Subject common name.
    pub common_name: String,
    /// Subject organisational units (Fabric NodeOUs: client, peer, admin, orderer).
    pub ous: Vec<String>,
    /// Fabric CA attributes (extension 1.2.3.4.5.6.7.8.1), empty when absent.
    pub attrs: BTreeMap<String, String>,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    key: PublicKey,
    not_before: i64,
    not_after: i64,
}

impl VerifiedIdentity {
    /// Checks an ECDSA P-256 / SHA-256 DER signature over `msg` (low-S only).
    pub fn verify(&self, msg: &[u8], signature_der: &[u8]) -> Result<(), MspError> {
        verify_with_key(&self.key, msg, signature_der)
    }

    /// Whether the certificate is valid at `unix_secs`.
    pub fn valid_at(&self, unix_secs: i64) -> bool {
        self.not_before <= unix_secs && unix_secs <= self.not_after
    }

    /// Whether the identity has the NodeOU `role` (e.g. "peer").
    pub fn has_role(&self, role: &str) -> bool {
        self.ous.iter().any(|o| o.eq_ignore_ascii_case(role))
    }
}

/// Checks a signature with a bare public key (low-S only).
pub fn verify_with_key(key: &PublicKey, msg: &[u8], signature_der: &[u8]) -> Result<(), MspError> {
    let sig = Signature::from_der(signature_der)
        .map_err(|e| MspError::MalformedSignature(e.to_string()))?;
    if sig.normalize_s().is_some() {
        return Err(MspError::HighS);
    }
    if key.verify_any_s(msg, signature_der) {
        Ok(())
    } else {
        Err(MspError::BadSignature)
    }
}

/// The set of orgs of a channel, with a cache of verified identities.
#[derive(Debug, Default)]
pub struct Msp {
    orgs: BTreeMap<String, OrgMsp>,
    cache: Mutex<HashMap<Vec<u8>, Arc<VerifiedIdentity>>>,
}

impl Msp {
    /// An MSP over the given orgs.
    pub fn new(orgs: impl IntoIterator<Item = OrgMsp>) -> Self {
        Self {
            orgs: orgs.into_iter().map(|o| (o.msp_id.clone(), o)).collect(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The MSP ids, sorted.
    pub fn msp_ids(&self) -> Vec<String> {
        self.orgs.keys().cloned().collect()
    }

    /// Whether `msp_id` is a member org.
    pub fn knows(&self, msp_id: &str) -> bool {
        self.orgs.contains_key(msp_id)
    }

    /// Parses a `msp.SerializedIdentity` and checks that its certificate
    /// chains to the claimed org's CA. Does not check the validity period
    /// (Fabric validates historical transactions with expired certs); call
    /// [`VerifiedIdentity::valid_at`] for that.
    pub fn deserialize(&self, serialized: &[u8]) -> Result<Arc<VerifiedIdentity>, MspError> {
        if let Ok(cache) = self.cache.lock()
            && let Some(id) = cache.get(serialized)
        {
            return Ok(id.clone());
        }
        let sid = SerializedIdentity::decode(serialized)
            .map_err(|e| MspError::MalformedIdentity(e.to_string()))?;
        let org = self
            .orgs
            .get(&sid.mspid)
            .ok_or_else(|| MspError::UnknownMsp(sid.mspid.clone()))?;
        let ders = pem_certificates(&sid.id_bytes)?;
        let der = match ders.as_slice() {
            [one] => one,
            _ => {
                return Err(MspError::MalformedCertificate(
                    "identity must hold exactly one certificate".into(),
                ));
            }
        };
        let id = Arc::new(verify_chain(org, der)?);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= IDENTITY_CACHE_MAX {
                cache.clear();
            }
            cache.insert(serialized.to_vec(), id.clone());
        }
        Ok(id)
    }
}

fn verify_chain(org: &OrgMsp, der: &[u8]) -> Result<VerifiedIdentity, MspError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| MspError::MalformedCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(MspError::MalformedCertificate(
            "trailing bytes after certificate".into(),
        ));
    }
    if cert.signature_algorithm.algorithm.to_id_string() != ECDSA_WITH_SHA256 {
        return Err(MspError::MalformedCertificate(
            "certificate is not signed with ecdsa-with-SHA256".into(),
        ));
    }
    let issuer = cert.issuer().as_raw();
    let tbs = cert.tbs_certificate.as_ref();
    let sig: &[u8] = &cert.signature_value.data;
    // Certificate signatures may be high-S (Go's x509 accepts both).
    let trusted = org
        .cas
        .iter()
        .any(|ca| ca.subject_der == issuer && ca.key.verify_any_s(tbs, sig));
    if !trusted {
        return Err(MspError::UntrustedCertificate(org.msp_id.clone()));
    }
    let key = ec_public_key(&cert)?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let ous = subject
        .iter_organizational_unit()
        .filter_map(|a| a.as_str().ok().map(str::to_string))
        .collect();
    let mut attrs = BTreeMap::new();
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == FABRIC_ATTRS_OID_STR {
            attrs = parse_fabric_attrs(ext.value)?;
        }
    }
    Ok(VerifiedIdentity {
        msp_id: org.msp_id.clone(),
        common_name,
        ous,
        attrs,
        cert_der: der.to_vec(),
        key,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Reads Fabric CA's attribute extension value: raw JSON `{"attrs":{...}}`.
pub fn parse_fabric_attrs(value: &[u8]) -> Result<BTreeMap<String, String>, MspError> {
    #[derive(serde::Deserialize)]
    struct Attrs {
        attrs: BTreeMap<String, String>,
    }
    serde_json::from_slice::<Attrs>(value)
        .map(|a| a.attrs)
        .map_err(|e| MspError::MalformedCertificate(format!("Fabric CA attributes: {e}")))
}

fn ec_public_key(cert: &X509Certificate<'_>) -> Result<PublicKey, MspError> {
    PublicKey::from_sec1(&cert.public_key().subject_public_key.data)
}

/// DER certificates from PEM text (every `CERTIFICATE` block).
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, MspError> {
    let mut out = Vec::new();
    for p in Pem::iter_from_buffer(pem) {
        let p = p.map_err(|e| MspError::MalformedCertificate(e.to_string()))?;
        if p.label == "CERTIFICATE" {
            out.push(p.contents);
        }
    }
    Ok(out)
}

/// An identity that can sign: MSP id, PEM certificate and P-256 key.
#[derive(Clone)]
pub struct SigningIdentity {
    msp_id: String,
    cert_pem: String,
    key: SigningKey,
    signer: Arc<EcdsaKeyPair>,
    serialized: Vec<u8>,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("SigningIdentity")
            .field("msp_id", &self.msp_id)
            .finish_non_exhaustive()
    }
}

impl SigningIdentity {
    /// From an MSP id, a PEM certificate and a PEM private key (PKCS#8
    /// `PRIVATE KEY`, as Fabric's keystore holds, or SEC1 `EC PRIVATE KEY`).
    /// Checks the key matches the certificate.
    pub fn from_pem(msp_id: &str, cert_pem: &str, key_pem: &str) -> Result<Self, MspError> {
        let key = if key_pem.contains("EC PRIVATE KEY") {
            p256::SecretKey::from_sec1_pem(key_pem)
                .map_err(|e| MspError::MalformedKey(e.to_string()))?
        } else {
            p256::SecretKey::from_pkcs8_pem(key_pem)
                .map_err(|e| MspError::MalformedKey(e.to_string()))?
        };
        let key = SigningKey::from(key);
        let ders = pem_certificates(cert_pem.as_bytes())?;
        let der = ders
            .first()
            .ok_or_else(|| MspError::MalformedCertificate("no certificate in PEM".into()))?;
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| MspError::MalformedCertificate(e.to_string()))?;
        let public = key.verifying_key().to_encoded_point(false);
        if ec_public_key(&cert)?.0 != public.as_bytes() {
            return Err(MspError::MalformedKey(
                "private key does not match the certificate".into(),
            ));
        }
        let signer = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &key.to_bytes(),
            public.as_bytes(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| MspError::MalformedKey(e.to_string()))?;
        let serialized = SerializedIdentity {
            mspid: msp_id.to_string(),
            id_bytes: cert_pem.as_bytes().to_vec(),
        }
        .encode_to_vec();
        Ok(Self {
            msp_id: msp_id.to_string(),
            cert_pem: cert_pem.to_string(),
            key,
            signer: Arc::new(signer),
            serialized,
        })
    }

    /// The MSP id.
    pub fn msp_id(&self) -> &str {
        &self.msp_id
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key as PKCS#8 PEM (for storing it encrypted; never log it).
    pub fn key_pkcs8_pem(&self) -> Result<String, MspError> {
        let secret = p256::SecretKey::from(self.key.clone());
        secret
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|e| MspError::MalformedKey(e.to_string()))
    }

    /// Bytes of the `msp.SerializedIdentity` (the `creator` / `endorser` field).
    pub fn serialized(&self) -> &[u8] {
        &self.serialized
    }

    /// ECDSA P-256 over SHA-256 of `msg`, DER, low-S (as Fabric signs).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        let der = match self.signer.sign(&rng, msg) {
            Ok(s) => s.as_ref().to_vec(),
            // Only a failing system RNG gets here; fall back to p256's
            // deterministic (RFC 6979) signing, which needs no RNG.
            Err(_) => {
                use p256::ecdsa::signature::Signer;
                let s: Signature = self.key.sign(msg);
                return s.normalize_s().unwrap_or(s).to_der().as_bytes().to_vec();
            }
        };
        match Signature::from_der(&der) {
            Ok(s) => match s.normalize_s() {
                Some(low) => low.to_der().as_bytes().to_vec(),
                None => der,
            },
            Err(_) => der,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ca::{CertRole, OrgCa};
    use super::*;

    #[test]
    fn member_identity_verifies_and_signs_low_s() {
        let ca = OrgCa::generate("HospitalAMSP", "hospital-a").unwrap();
        let user = ca
            .issue("alice", CertRole::Client, &[("role", "patient")])
            .unwrap();
        let msp = Msp::new([ca.org_msp().unwrap()]);
        let id = msp.deserialize(user.serialized()).unwrap();
        assert_eq!(id.msp_id, "HospitalAMSP");
        assert_eq!(id.common_name, "alice");
        assert!(id.has_role("client"));
        assert_eq!(id.attrs.get("role").map(String::as_str), Some("patient"));
        for i in 0..50u32 {
            let msg = i.to_be_bytes();
            let sig = user.sign(&msg);
            id.verify(&msg, &sig).unwrap();
            assert_eq!(
                id.verify(b"other", &sig).unwrap_err(),
                MspError::BadSignature
            );
        }
    }

    #[test]
    fn high_s_is_rejected() {
        let ca = OrgCa::generate("HospitalAMSP", "hospital-a").unwrap();
        let user = ca.issue("bob", CertRole::Client, &[]).unwrap();
        let msp = Msp::new([ca.org_msp().unwrap()]);
        let id = msp.deserialize(user.serialized()).unwrap();
        let sig = Signature::from_der(&user.sign(b"m")).unwrap();
        // (r, n - s) is the same signature with high S.
        let (r, s) = sig.split_scalars();
        let high = Signature::from_scalars(r, -*s).unwrap();
        assert!(high.normalize_s().is_some());
        assert_eq!(
            id.verify(b"m", high.to_der().as_bytes()).unwrap_err(),
            MspError::HighS
        );
    }

    #[test]
    fn foreign_and_unknown_orgs_are_rejected() {
        let a = OrgCa::generate("HospitalAMSP", "hospital-a").unwrap();
        let b = OrgCa::generate("HospitalBMSP", "hospital-b").unwrap();
        let msp = Msp::new([a.org_msp().unwrap()]);
        let mallory = b.issue("mallory", CertRole::Client, &[]).unwrap();
        assert_eq!(
            msp.deserialize(mallory.serialized()).unwrap_err(),
            MspError::UnknownMsp("HospitalBMSP".into())
        );
        // A cert from org B's CA claiming to be in org A.
        let forged = SerializedIdentity {
            mspid: "HospitalAMSP".into(),
            id_bytes: mallory.cert_pem().as_bytes().to_vec(),
        }
        .encode_to_vec();
        assert_eq!(
            msp.deserialize(&forged).unwrap_err(),
            MspError::UntrustedCertificate("HospitalAMSP".into())
        );
        assert!(matches!(
            msp.deserialize(b"\xff\xff").unwrap_err(),
            MspError::MalformedIdentity(_)
        ));
    }

    #[test]
    fn signing_identity_round_trips_through_pem() {
        let ca = OrgCa::generate("HospitalAMSP", "hospital-a").unwrap();
        let u = ca.issue("carol", CertRole::Admin, &[]).unwrap();
        let key_pem = u.key_pkcs8_pem().unwrap();
        let again = SigningIdentity::from_pem(u.msp_id(), u.cert_pem(), &key_pem).unwrap();
        assert_eq!(again.serialized(), u.serialized());
        let other = ca.issue("dave", CertRole::Client, &[]).unwrap();
        assert!(matches!(
            SigningIdentity::from_pem(u.msp_id(), u.cert_pem(), &other.key_pkcs8_pem().unwrap())
                .unwrap_err(),
            MspError::MalformedKey(_)
        ));
    }
}
