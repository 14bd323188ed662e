//! A small devnet certificate authority (rcgen), issuing the certificates a
//! Fabric CA would: a self-signed P-256 org CA, and user/peer/admin
//! certificates with the NodeOU in the subject `OU` and Fabric CA attributes
//! in extension 1.2.3.4.5.6.7.8.1.
//!
//! The attribute extension matches Fabric CA's `attrmgr`: a non-critical
//! extension whose value (the `extnValue` octets) is the raw JSON
//! `{"attrs":{"name":"value",...}}` as Go's `json.Marshal` writes it (keys
//! sorted, `<`, `>` and `&` escaped as `\u003c`, `\u003e`, `\u0026`). Like
//! Fabric CA's enrolment certificates it carries `hf.EnrollmentID`,
//! `hf.Type` and `hf.Affiliation` besides the caller's attributes.

use std::collections::BTreeMap;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::{FABRIC_ATTRS_OID, MspError, OrgMsp, SigningIdentity};

/// Validity of devnet certificates.
const VALIDITY: Duration = Duration::days(3650);

/// The NodeOU of an issued certificate (Fabric's `OU=client|peer|admin|orderer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    Client,
    Peer,
    Admin,
    Orderer,
}

impl CertRole {
    /// The OU string Fabric's NodeOUs config expects.
    pub fn as_ou(self) -> &'static str {
        match self {
            CertRole::Client => "client",
            CertRole::Peer => "peer",
            CertRole::Admin => "admin",
            CertRole::Orderer => "orderer",
        }
    }
}

/// An org's CA: its MSP id, certificate and key (PEM).
#[derive(Clone)]
pub struct OrgCa {
    msp_id: String,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for OrgCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgCa")
            .field("msp_id", &self.msp_id)
            .finish_non_exhaustive()
    }
}

fn ca_err(e: rcgen::Error) -> MspError {
    MspError::MalformedCertificate(e.to_string())
}

fn random_serial() -> Result<SerialNumber, MspError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| MspError::MalformedKey(e.to_string()))?;
    b[0] &= 0x7f; // positive INTEGER
    b[0] |= 0x01; // and 16 bytes long
    Ok(SerialNumber::from_slice(&b))
}

impl OrgCa {
    /// Creates a new org CA with a fresh P-256 key; `org_name` goes into the
    /// subject (`CN=ca.<org_name>, O=<org_name>`).
    pub fn generate(msp_id: &str, org_name: &str) -> Result<Self, MspError> {
        if msp_id.is_empty() || org_name.is_empty() {
            return Err(MspError::MalformedIdentity(
                "MSP id and org name must not be empty".into(),
            ));
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(ca_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("ca.{org_name}"));
        dn.push(DnType::OrganizationName, org_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + VALIDITY;
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(ca_err)?;
        Ok(Self {
            msp_id: msp_id.to_string(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Loads a CA saved with [`OrgCa::cert_pem`] and [`OrgCa::key_pem`].
    pub fn from_pem(msp_id: &str, cert_pem: &str, key_pem: &str) -> Result<Self, MspError> {
        // Checks both parse and belong together.
        SigningIdentity::from_pem(msp_id, cert_pem, key_pem)?;
        Ok(Self {
            msp_id: msp_id.to_string(),
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The org's MSP id.
    pub fn msp_id(&self) -> &str {
        &self.msp_id
    }

    /// The CA certificate, PEM (this is what defines the org to the ledger).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Keep it secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The org as the MSP sees it.
    pub fn org_msp(&self) -> Result<OrgMsp, MspError> {
        OrgMsp::new(&self.msp_id, &self.cert_pem)
    }

    /// Issues a certificate for `common_name` with NodeOU `role` and Fabric CA
    /// attributes `attrs`, with a fresh P-256 key.
    pub fn issue(
        &self,
        common_name: &str,
        role: CertRole,
        attrs: &[(&str, &str)],
    ) -> Result<SigningIdentity, MspError> {
        if common_name.is_empty() {
            return Err(MspError::MalformedIdentity("empty common name".into()));
        }
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(ca_err)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).map_err(ca_err)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(ca_err)?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationalUnitName, role.as_ou());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + VALIDITY;
        params.serial_number = Some(random_serial()?);

        let mut all: BTreeMap<String, String> = BTreeMap::new();
        all.insert("hf.Affiliation".into(), String::new());
        all.insert("hf.EnrollmentID".into(), common_name.to_string());
        all.insert("hf.Type".into(), role.as_ou().to_string());
        for (k, v) in attrs {
            all.insert((*k).to_string(), (*v).to_string());
        }
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                FABRIC_ATTRS_OID,
                fabric_attrs_json(&all)?,
            ));
        let cert = params.signed_by(&key, &issuer).map_err(ca_err)?;
        SigningIdentity::from_pem(&self.msp_id, &cert.pem(), &key.serialize_pem())
    }
}

/// The attribute extension value as Fabric CA writes it:
/// Go `json.Marshal(&Attributes{Attrs: map[string]string{...}})`.
pub fn fabric_attrs_json(attrs: &BTreeMap<String, String>) -> Result<Vec<u8>, MspError> {
    #[derive(serde::Serialize)]
    struct Attributes<'a> {
        attrs: &'a BTreeMap<String, String>,
    }
    let s = serde_json::to_string(&Attributes { attrs })
        .map_err(|e| MspError::MalformedCertificate(e.to_string()))?;
    // Go's encoder escapes these for HTML safety; they can only occur inside
    // JSON strings here, so replacing them keeps the JSON equivalent.
    Ok(s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn attribute_extension_is_raw_json_like_fabric_ca() {
        let ca = OrgCa::generate("HospitalBMSP", "hospital-b").unwrap();
        let u = ca
            .issue(
                "dr-who",
                CertRole::Client,
                &[("role", "clinician"), ("department", "A&E <1>")],
            )
            .unwrap();
        let der = &super::super::pem_certificates(u.cert_pem().as_bytes()).unwrap()[0];
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.2.3.4.5.6.7.8.1")
            .unwrap();
        assert!(!ext.critical);
        assert_eq!(
            std::str::from_utf8(ext.value).unwrap(),
            r#"{"attrs":{"department":"A\u0026E \u003c1\u003e","hf.Affiliation":"","hf.EnrollmentID":"dr-who","hf.Type":"client","role":"clinician"}}"#
        );
        let ous: Vec<_> = cert
            .subject()
            .iter_organizational_unit()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(ous, vec!["client".to_string()]);
        assert!(!cert.is_ca());
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        assert!(ca_pem.parse_x509().unwrap().is_ca());
    }

    #[test]
    fn reloaded_ca_issues_certs_the_org_accepts() {
        let ca = OrgCa::generate("HospitalCMSP", "hospital-c").unwrap();
        let again = OrgCa::from_pem(ca.msp_id(), ca.cert_pem(), ca.key_pem()).unwrap();
        let peer = again.issue("peer0", CertRole::Peer, &[]).unwrap();
        let msp = super::super::Msp::new([ca.org_msp().unwrap()]);
        let id = msp.deserialize(peer.serialized()).unwrap();
        assert!(id.has_role("peer"));
        assert_eq!(id.attrs.get("hf.Type").map(String::as_str), Some("peer"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(id.valid_at(now));
        assert!(!id.valid_at(now + 20 * 365 * 86400));
    }
}
