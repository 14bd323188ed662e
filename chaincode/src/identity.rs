//! Who is calling: the proposal creator, read the way Fabric's `cid` library
//! reads it.
//!
//! `stub.creator()` is a `msp.SerializedIdentity`: the MSP id and a PEM X.509
//! certificate. The peer has already checked the proposal signature against
//! that certificate and the certificate against the MSP, so the contract
//! trusts it and only reads it:
//! - the **MSP id** (the caller's organisation),
//! - the **attributes** a Fabric CA puts in extension `1.2.3.4.5.6.7.8.1` as
//!   JSON `{"attrs":{"name":"value",...}}`,
//! - the **user id**: attribute `ehr.user_id` if present, else the subject
//!   common name (the Fabric CA enrollment id).
//!
//! The identity of a caller inside ehrchain is the pair (MSP id, user id):
//! consents name users as `{type:"user", id, org}` and the access log records
//! `actor` + `actor_org`. A user id is only unique within its organisation,
//! which is why a user grantee always carries its org.
//!
//! Roles come from `ehr.role` (`patient`, `clinician`, `auditor`, `admin`);
//! a patient must also carry `ehr.patient_id`. Every other attribute
//! (`department`, `specialty`, `hf.Affiliation`, ...) is available to ABAC
//! conditions of consents.

use std::collections::BTreeMap;
use std::fmt;

use prost::Message;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::contract::validate::is_id;

/// Fabric CA's attribute extension OID.
pub const ATTRIBUTE_OID: &str = "1.2.3.4.5.6.7.8.1";
/// The attribute holding the ehrchain role.
pub const ATTR_ROLE: &str = "ehr.role";
/// The attribute holding a patient's id (patients only).
pub const ATTR_PATIENT_ID: &str = "ehr.patient_id";
/// The attribute overriding the user id (else the certificate CN).
pub const ATTR_USER_ID: &str = "ehr.user_id";

/// The largest creator we read (a certificate chain is a few KiB).
const MAX_CREATOR_BYTES: usize = 64 * 1024;

/// An ehrchain role, from attribute `ehr.role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Patient,
    Clinician,
    Auditor,
    Admin,
}

impl Role {
    /// The attribute value naming this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Clinician => "clinician",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    /// Parses an attribute value (exact, lowercase).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "patient" => Some(Role::Patient),
            "clinician" => Some(Role::Clinician),
            "auditor" => Some(Role::Auditor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of a transaction, as the contract sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The MSP id of the caller's organisation.
    pub msp_id: String,
    /// `ehr.user_id`, else the subject CN. Unique within `msp_id`.
    pub user_id: String,
    /// `ehr.role`.
    pub role: Role,
    /// `ehr.patient_id`; always present for [`Role::Patient`].
    pub patient_id: Option<String>,
    /// Every attribute of the certificate (including `ehr.*` and `hf.*`).
    pub attributes: BTreeMap<String, String>,
}

impl Identity {
    /// Whether the caller is patient `patient_id` of home organisation
    /// `home_org` (a patient certificate from another org never is).
    pub fn is_patient(&self, patient_id: &str, home_org: &str) -> bool {
        self.role == Role::Patient
            && self.patient_id.as_deref() == Some(patient_id)
            && self.msp_id == home_org
    }

    /// Whether the caller has `role` in organisation `org`.
    pub fn has_role_in(&self, role: Role, org: &str) -> bool {
        self.role == role && self.msp_id == org
    }
}

/// Why a creator is not a usable identity. Every variant is a 403.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    #[error("no creator identity in the proposal")]
    MissingCreator,
    #[error("creator identity too large ({0} bytes)")]
    TooLarge(usize),
    #[error("creator is not a msp.SerializedIdentity: {0}")]
    NotSerializedIdentity(String),
    #[error("creator MSP id is missing or malformed")]
    BadMspId,
    #[error("creator certificate is not PEM: {0}")]
    NotPem(String),
    #[error("creator certificate is not X.509: {0}")]
    NotX509(String),
    #[error("certificate attribute extension is malformed: {0}")]
    BadAttributes(String),
    #[error("certificate has no ehr.role attribute")]
    MissingRole,
    #[error("certificate has an unknown ehr.role {0:?}")]
    UnknownRole(String),
    #[error("a patient certificate needs a well-formed ehr.patient_id attribute")]
    MissingPatientId,
    #[error("certificate has no usable user id (ehr.user_id or subject CN)")]
    MissingUserId,
}

#[derive(Deserialize)]
struct AttributeDoc {
    #[serde(default)]
    attrs: BTreeMap<String, String>,
}

/// Reads the caller from the bytes of a `msp.SerializedIdentity`.
pub fn from_creator(creator: &[u8]) -> Result<Identity, IdentityError> {
    if creator.is_empty() {
        return Err(IdentityError::MissingCreator);
    }
    if creator.len() > MAX_CREATOR_BYTES {
        return Err(IdentityError::TooLarge(creator.len()));
    }
    let sid = ehr_proto::msp::SerializedIdentity::decode(creator)
        .map_err(|e| IdentityError::NotSerializedIdentity(e.to_string()))?;
    if !is_id(&sid.mspid) {
        return Err(IdentityError::BadMspId);
    }
    let (_, pem) = x509_parser::pem::parse_x509_pem(&sid.id_bytes)
        .map_err(|e| IdentityError::NotPem(e.to_string()))?;
    if pem.label != "CERTIFICATE" {
        return Err(IdentityError::NotPem(format!(
            "expected a CERTIFICATE block, got {:?}",
            pem.label
        )));
    }
    let (_, cert) = X509Certificate::from_der(&pem.contents)
        .map_err(|e| IdentityError::NotX509(e.to_string()))?;
    let attributes = attributes_of(&cert)?;

    let role_value = attributes
        .get(ATTR_ROLE)
        .ok_or(IdentityError::MissingRole)?;
    let role =
        Role::parse(role_value).ok_or_else(|| IdentityError::UnknownRole(role_value.clone()))?;

    let patient_id = match attributes.get(ATTR_PATIENT_ID) {
        Some(p) if is_id(p) => Some(p.clone()),
        Some(_) if role == Role::Patient => return Err(IdentityError::MissingPatientId),
        // A malformed patient id on a non-patient is ignored: it grants nothing.
        _ => None,
    };
    if role == Role::Patient && patient_id.is_none() {
        return Err(IdentityError::MissingPatientId);
    }

    let user_id = match attributes.get(ATTR_USER_ID) {
        Some(u) => u.clone(),
        None => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .ok_or(IdentityError::MissingUserId)?,
    };
    if !is_id(&user_id) {
        return Err(IdentityError::MissingUserId);
    }

    Ok(Identity {
        msp_id: sid.mspid,
        user_id,
        role,
        patient_id,
        attributes,
    })
}

/// The Fabric CA attributes of a certificate (empty if it has none).
fn attributes_of(cert: &X509Certificate<'_>) -> Result<BTreeMap<String, String>, IdentityError> {
    let mut found = None;
    for ext in cert.extensions() {
        if ext.oid.to_id_string() == ATTRIBUTE_OID {
            if found.is_some() {
                return Err(IdentityError::BadAttributes(
                    "the extension appears twice".into(),
                ));
            }
            found = Some(ext.value);
        }
    }
    let Some(raw) = found else {
        return Ok(BTreeMap::new());
    };
    let doc: AttributeDoc = serde_json::from_slice(raw)
        .map_err(|e| IdentityError::BadAttributes(format!("not {{\"attrs\":{{...}}}}: {e}")))?;
    Ok(doc.attrs)
}

#[cfg(test)]
pub(crate) mod testcert {
    //! Test certificates with Fabric CA attributes (also used by the
    //! contract's unit tests).
    use prost::Message;
    use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};

    /// A self-signed certificate PEM with subject CN `cn` and, when `attrs`
    /// is given, the attribute extension holding exactly that JSON text.
    pub fn cert_pem(cn: Option<&str>, attrs: Option<&str>) -> String {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        dn.push(DnType::OrganizationName, "org1.example.com");
        params.distinguished_name = dn;
        if let Some(a) = attrs {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &[1, 2, 3, 4, 5, 6, 7, 8, 1],
                    a.as_bytes().to_vec(),
                ));
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    /// Bytes of a `msp.SerializedIdentity`.
    pub fn creator(msp: &str, pem: &str) -> Vec<u8> {
        ehr_proto::msp::SerializedIdentity {
            mspid: msp.into(),
            id_bytes: pem.as_bytes().to_vec(),
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::testcert::{cert_pem, creator};
    use super::*;

    #[test]
    fn reads_msp_role_attributes_and_cn() {
        let pem = cert_pem(
            Some("dr-alice"),
            Some(
                r#"{"attrs":{"ehr.role":"clinician","department":"cardiology","hf.Type":"client"}}"#,
            ),
        );
        let id = from_creator(&creator("Org1MSP", &pem)).unwrap();
        assert_eq!(id.msp_id, "Org1MSP");
        assert_eq!(id.user_id, "dr-alice");
        assert_eq!(id.role, Role::Clinician);
        assert_eq!(id.patient_id, None);
        assert_eq!(id.attributes["department"], "cardiology");
        assert_eq!(id.attributes["hf.Type"], "client");
    }

    #[test]
    fn user_id_attribute_overrides_cn_and_patient_needs_id() {
        let pem = cert_pem(
            Some("enroll-7"),
            Some(
                r#"{"attrs":{"ehr.role":"patient","ehr.patient_id":"P-1","ehr.user_id":"pat-1"}}"#,
            ),
        );
        let id = from_creator(&creator("Org1MSP", &pem)).unwrap();
        assert_eq!(id.user_id, "pat-1");
        assert_eq!(id.patient_id.as_deref(), Some("P-1"));
        assert!(id.is_patient("P-1", "Org1MSP"));
        assert!(!id.is_patient("P-1", "Org2MSP"));
        assert!(!id.is_patient("P-2", "Org1MSP"));

        let pem = cert_pem(Some("x"), Some(r#"{"attrs":{"ehr.role":"patient"}}"#));
        assert_eq!(
            from_creator(&creator("Org1MSP", &pem)),
            Err(IdentityError::MissingPatientId)
        );
        let pem = cert_pem(
            Some("x"),
            Some(r#"{"attrs":{"ehr.role":"patient","ehr.patient_id":"a/b"}}"#),
        );
        assert_eq!(
            from_creator(&creator("Org1MSP", &pem)),
            Err(IdentityError::MissingPatientId)
        );
    }

    #[test]
    fn rejects_missing_or_unknown_role() {
        let pem = cert_pem(Some("u"), None);
        assert_eq!(
            from_creator(&creator("Org1MSP", &pem)),
            Err(IdentityError::MissingRole)
        );
        let pem = cert_pem(Some("u"), Some(r#"{"attrs":{"ehr.role":"janitor"}}"#));
        assert_eq!(
            from_creator(&creator("Org1MSP", &pem)),
            Err(IdentityError::UnknownRole("janitor".into()))
        );
        let pem = cert_pem(Some("u"), Some(r#"{"attrs":{"ehr.role":"Admin"}}"#));
        assert!(matches!(
            from_creator(&creator("Org1MSP", &pem)),
            Err(IdentityError::UnknownRole(_))
        ));
    }

    #[test]
    fn rejects_malformed_inputs() {
        assert_eq!(from_creator(&[]), Err(IdentityError::MissingCreator));
        assert!(matches!(
            from_creator(&[0xff, 0xff, 0xff]),
            Err(IdentityError::NotSerializedIdentity(_))
        ));
        let pem = cert_pem(Some("u"), Some(r#"{"attrs":{"ehr.role":"admin"}}"#));
        assert_eq!(
            from_creator(&creator("", &pem)),
            Err(IdentityError::BadMspId)
        );
        assert!(matches!(
            from_creator(&creator("Org1MSP", "not a pem")),
            Err(IdentityError::NotPem(_))
        ));
        let bogus = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            from_creator(&creator("Org1MSP", bogus)),
            Err(IdentityError::NotX509(_))
        ));
        let pem = cert_pem(Some("u"), Some("not json"));
        assert!(matches!(
            from_creator(&creator("Org1MSP", &pem)),
            Err(IdentityError::BadAttributes(_))
        ));
        let pem = cert_pem(Some("u"), Some(r#"{"attrs":{"ehr.role":1}}"#));
        assert!(matches!(
            from_creator(&creator("Org1MSP", &pem)),
            Err(IdentityError::BadAttributes(_))
        ));
    }

    #[test]
    fn needs_a_user_id() {
        let pem = cert_pem(None, Some(r#"{"attrs":{"ehr.role":"admin"}}"#));
        assert_eq!(
            from_creator(&creator("Org1MSP", &pem)),
            Err(IdentityError::MissingUserId)
        );
        let pem = cert_pem(Some("has space"), Some(r#"{"attrs":{"ehr.role":"admin"}}"#));
        assert_eq!(
            from_creator(&creator("Org1MSP", &pem)),
            Err(IdentityError::MissingUserId)
        );
    }
}
