//! Enrolment: in embedded mode the gateway acts as its org's CA and issues
//! each user an X.509 certificate carrying their role and attributes in the
//! Fabric CA attribute extension, plus an Umbral key pair. Private keys are
//! sealed with the KEK before they reach the database.

use std::collections::BTreeMap;
use std::path::Path;

use ehr_ledger::msp::SigningIdentity;
use ehr_ledger::msp::ca::{CertRole, OrgCa};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::kek::Kek;
use crate::crypto::sealer::UmbralKeyPair;
use crate::db::users::{IdentityRow, User};

/// Certificate attribute names the chaincode reads.
pub mod attrs {
    /// The user's role (patient, clinician, auditor, admin).
    pub const ROLE: &str = "ehr.role";
    /// The user id (unique within the org).
    pub const USER_ID: &str = "ehr.user_id";
    /// A patient's id.
    pub const PATIENT_ID: &str = "ehr.patient_id";
}

/// Enrolment errors.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("CA: {0}")]
    Ca(String),
    #[error("CA files: {0}")]
    Io(#[from] std::io::Error),
    #[error("sealed key: {0}")]
    Kek(#[from] crate::crypto::kek::KekError),
    #[error("umbral key: {0}")]
    Seal(#[from] crate::crypto::sealer::SealError),
}

/// Loads the org CA from `dir/ca/` (cert PEM in clear, key sealed by the
/// KEK) or creates it.
pub fn load_or_create_ca(dir: &Path, org: &str, kek: &Kek) -> Result<OrgCa, IdentityError> {
    let cert_path = dir.join("ca").join("ca-cert.pem");
    let key_path = dir.join("ca").join("ca-key.sealed");
    let ctx = format!("ca:{org}");
    if cert_path.exists() {
        let cert = std::fs::read_to_string(&cert_path)?;
        let key = kek.open(&ctx, &std::fs::read(&key_path)?)?;
        let key =
            std::str::from_utf8(&key).map_err(|_| IdentityError::Ca("CA key is not PEM".into()))?;
        return OrgCa::from_pem(org, &cert, key).map_err(|e| IdentityError::Ca(e.to_string()));
    }
    let ca = OrgCa::generate(org, org).map_err(|e| IdentityError::Ca(e.to_string()))?;
    crate::fsutil::write_private(&key_path, &kek.seal(&ctx, ca.key_pem().as_bytes()))?;
    crate::fsutil::write_private(&cert_path, ca.cert_pem().as_bytes())?;
    Ok(ca)
}

fn key_ctx(user_id: &str) -> String {
    format!("identity:{user_id}:ecdsa")
}

fn umbral_ctx(user_id: &str) -> String {
    format!("identity:{user_id}:umbral")
}

/// Issues a certificate and Umbral key pair for `user`; returns the row to
/// store (keys sealed).
pub fn enroll(ca: &OrgCa, kek: &Kek, user: &User) -> Result<IdentityRow, IdentityError> {
    let mut all: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &user.attributes {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        all.insert(k.clone(), v);
    }
    all.insert(attrs::ROLE.into(), user.role.clone());
    all.insert(attrs::USER_ID.into(), user.user_id.clone());
    if let Some(p) = &user.patient_id {
        all.insert(attrs::PATIENT_ID.into(), p.clone());
    }
    let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Always a Fabric *client* (OU=client), also for ehrchain admins and the
    // gateway's own service identity: the contract reads `ehr.role`, never
    // the OU, and an OU=admin certificate would make its holder an admin of
    // the Fabric org (channel config updates, lifecycle) wherever the org's
    // MSP accepts this CA.
    let id = ca
        .issue(&user.user_id, CertRole::Client, &pairs)
        .map_err(|e| IdentityError::Ca(e.to_string()))?;
    let key_pem = Zeroizing::new(
        id.key_pkcs8_pem()
            .map_err(|e| IdentityError::Ca(e.to_string()))?,
    );
    let umbral = UmbralKeyPair::generate()?;
    Ok(IdentityRow {
        user_id: user.user_id.clone(),
        msp_id: ca.msp_id().to_owned(),
        cert_pem: id.cert_pem().to_owned(),
        key_sealed: kek.seal(&key_ctx(&user.user_id), key_pem.as_bytes()),
        umbral_pk: umbral.public.clone(),
        umbral_sk_sealed: kek.seal(&umbral_ctx(&user.user_id), &umbral.secret),
    })
}

/// The signing identity of a stored row.
pub fn signer(row: &IdentityRow, kek: &Kek) -> Result<SigningIdentity, IdentityError> {
    let key = kek.open(&key_ctx(&row.user_id), &row.key_sealed)?;
    let key = std::str::from_utf8(&key).map_err(|_| IdentityError::Ca("key is not PEM".into()))?;
    SigningIdentity::from_pem(&row.msp_id, &row.cert_pem, key)
        .map_err(|e| IdentityError::Ca(e.to_string()))
}

/// The Umbral key pair of a stored row.
pub fn umbral_keys(row: &IdentityRow, kek: &Kek) -> Result<UmbralKeyPair, IdentityError> {
    let seed = kek.open(&umbral_ctx(&row.user_id), &row.umbral_sk_sealed)?;
    Ok(UmbralKeyPair::from_seed(seed)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehr_ledger::msp::Msp;

    #[test]
    fn ca_persists_and_enrolled_identity_carries_attributes() {
        let d = tempfile::tempdir().unwrap();
        let kek = Kek::from_bytes(&[3; 32]);
        let ca = load_or_create_ca(d.path(), "hospital-b", &kek).unwrap();
        let again = load_or_create_ca(d.path(), "hospital-b", &kek).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        // The CA key on disk is not readable without the KEK.
        let raw = std::fs::read(d.path().join("ca/ca-key.sealed")).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("PRIVATE KEY"));
        assert!(load_or_create_ca(d.path(), "hospital-b", &Kek::from_bytes(&[4; 32])).is_err());

        let mut a = serde_json::Map::new();
        a.insert("department".into(), "cardiology".into());
        let user = User {
            user_id: "u-carol".into(),
            username: "carol".into(),
            role: "clinician".into(),
            attributes: a,
            patient_id: None,
        };
        let row = enroll(&ca, &kek, &user).unwrap();
        let s = signer(&row, &kek).unwrap();
        // Admins too are Fabric clients, never org admins.
        let admin = User {
            user_id: "u-root".into(),
            username: "root".into(),
            role: "admin".into(),
            attributes: serde_json::Map::new(),
            patient_id: None,
        };
        let arow = enroll(&ca, &kek, &admin).unwrap();
        let aid = Msp::new([ca.org_msp().unwrap()])
            .deserialize(signer(&arow, &kek).unwrap().serialized())
            .unwrap();
        assert!(aid.has_role("client") && !aid.has_role("admin"));
        assert_eq!(
            aid.attrs.get(attrs::ROLE).map(String::as_str),
            Some("admin")
        );
        let msp = Msp::new([ca.org_msp().unwrap()]);
        let id = msp.deserialize(s.serialized()).unwrap();
        assert_eq!(id.msp_id, "hospital-b");
        assert_eq!(
            id.attrs.get(attrs::ROLE).map(String::as_str),
            Some("clinician")
        );
        assert_eq!(
            id.attrs.get(attrs::USER_ID).map(String::as_str),
            Some("u-carol")
        );
        assert_eq!(
            id.attrs.get("department").map(String::as_str),
            Some("cardiology")
        );
        let sig = s.sign(b"msg");
        id.verify(b"msg", &sig).unwrap();
        let k = umbral_keys(&row, &kek).unwrap();
        assert_eq!(k.public, row.umbral_pk);
        // Keys are bound to their row.
        let mut moved = row.clone();
        moved.user_id = "u-mallory".into();
        assert!(signer(&moved, &kek).is_err());
    }
}
