//! What the contract stores on the ledger and returns, as serde structs
//! (field order is declaration order, so the JSON bytes are deterministic).
//!
//! Nothing here is PHI: ids, organisation ids, hashes, CIDs, codes and
//! times. The only free text is a break-glass justification and a review
//! note, each capped at 512 characters; clients must not put PHI in them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::time::Time;
use crate::identity::Role;

/// A registered patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patient {
    pub patient_id: String,
    /// MSP id of the patient's home organisation.
    pub home_org: String,
    /// The patient's Umbral public key, `0x` + 66 hex digits.
    pub pre_public_key: String,
    pub registered_at: Time,
    /// User id of the registering caller (the patient or a home-org admin).
    pub registered_by: String,
}

/// Kinds of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Lab,
    Imaging,
    Note,
    Prescription,
    Fhir,
    Other,
}

impl Category {
    /// Every category.
    pub const ALL: [Category; 6] = [
        Category::Lab,
        Category::Imaging,
        Category::Note,
        Category::Prescription,
        Category::Fhir,
        Category::Other,
    ];
}

/// Metadata of one encrypted EHR file (the ciphertext is in IPFS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub record_id: String,
    pub patient_id: String,
    pub category: Category,
    /// CID of the ciphertext.
    pub cid: String,
    /// SHA-256 of the ciphertext stored at `cid`, lowercase hex (a plaintext hash
    /// on-chain would let anyone confirm a guessed small document).
    pub sha256: String,
    /// Plaintext size in bytes.
    pub size: u64,
    pub content_type: String,
    /// Where the DEK capsule is kept (opaque to the contract).
    pub capsule_ref: String,
    /// User id and MSP id of the uploader.
    pub uploader: String,
    pub uploader_org: String,
    pub created_at: Time,
    pub tx_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<String>,
    /// Crypto-shredded: content is gone, metadata stays for the audit trail.
    pub erased: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_by: Option<String>,
}

/// What a consent or request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Write,
}

impl Action {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
        }
    }
}

/// HL7 v3 purpose-of-use codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Purpose {
    /// Treatment.
    #[serde(rename = "TREAT")]
    Treat,
    /// Payment.
    #[serde(rename = "HPAYMT")]
    Payment,
    /// Healthcare operations.
    #[serde(rename = "HOPERAT")]
    Operations,
    /// Research.
    #[serde(rename = "HRESCH")]
    Research,
    /// Emergency treatment (break-glass).
    #[serde(rename = "ETREAT")]
    Emergency,
}

impl Purpose {
    /// Every purpose.
    pub const ALL: [Purpose; 5] = [
        Purpose::Treat,
        Purpose::Payment,
        Purpose::Operations,
        Purpose::Research,
        Purpose::Emergency,
    ];

    /// The HL7 code.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Treat => "TREAT",
            Purpose::Payment => "HPAYMT",
            Purpose::Operations => "HOPERAT",
            Purpose::Research => "HRESCH",
            Purpose::Emergency => "ETREAT",
        }
    }
}

/// How a consent names its grantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GranteeType {
    /// One user (`id`) of one organisation (`org`).
    User,
    /// Everyone in organisation `org`.
    Org,
    /// Everyone with `role`, in `org` if given, else in any organisation.
    Role,
}

/// Who a consent is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grantee {
    #[serde(rename = "type")]
    pub kind: GranteeType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// Which records a consent covers: any record listed or of any category
/// listed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<Category>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<String>,
}

/// An ABAC condition value: one accepted value or any of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConditionValue {
    One(String),
    AnyOf(Vec<String>),
}

impl ConditionValue {
    /// Whether `v` satisfies the condition (exact, case-sensitive).
    pub fn accepts(&self, v: &str) -> bool {
        match self {
            ConditionValue::One(x) => x == v,
            ConditionValue::AnyOf(xs) => xs.iter().any(|x| x == v),
        }
    }
}

/// Metadata of a proxy re-encryption grant (the kfrags themselves are
/// off-chain, each sealed to one proxy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreGrant {
    /// The grantee's Umbral public key, `0x` + 66 hex digits.
    pub grantee_public_key: String,
    /// The patient's Umbral signing public key that signed the kfrags,
    /// `0x` + 66 hex digits (proxies verify kfrags against it). Required
    /// for new grants; absent only on grants stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifying_key: Option<String>,
    /// t: cfrags needed.
    pub threshold: u32,
    /// n: kfrags made, one per proxy.
    pub shares: u32,
    /// MSP ids of the n proxies, distinct.
    pub proxies: Vec<String>,
    /// One hex commitment per kfrag, in proxy order.
    pub kfrag_commitments: Vec<String>,
}

/// A consent as stored. Its status is derived at query time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub consent_id: String,
    pub patient_id: String,
    pub grantee: Grantee,
    pub scope: Scope,
    pub actions: Vec<Action>,
    pub purposes: Vec<Purpose>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conditions: BTreeMap<String, ConditionValue>,
    /// User id and MSP id of whoever granted it.
    pub granted_by: String,
    pub granted_by_org: String,
    pub granted_at: Time,
    pub tx_id: String,
    /// Granted by a home-org admin on the patient's behalf.
    pub delegate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// Revoked by a home-org admin on the patient's behalf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by_delegate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre: Option<PreGrant>,
}

/// An organisation's registered Umbral public keys (one entry per org;
/// a rotation overwrites it, the key history keeps the earlier ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgKeys {
    /// The organisation's MSP id.
    pub org: String,
    /// The key re-encrypted capsules are opened with (the org's gateway as
    /// a reader), `0x` + 66 hex digits.
    pub reader_public_key: String,
    /// The key kfrags are sealed to (the org's gateway as a proxy),
    /// `0x` + 66 hex digits.
    pub proxy_public_key: String,
    /// User id of the registering admin.
    pub registered_by: String,
    pub registered_at: Time,
    pub tx_id: String,
}

/// A consent's status at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentStatus {
    Active,
    Revoked,
    Expired,
    /// Not yet valid (`now < not_before`).
    Pending,
}

impl Consent {
    /// The status at `now`: revoked wins, then pending before `not_before`,
    /// expired from `not_after` on (the window is `[not_before, not_after)`).
    pub fn status_at(&self, now: Time) -> ConsentStatus {
        if self.revoked_at.is_some() {
            ConsentStatus::Revoked
        } else if self.not_before.is_some_and(|nb| now < nb) {
            ConsentStatus::Pending
        } else if self.not_after.is_some_and(|na| now >= na) {
            ConsentStatus::Expired
        } else {
            ConsentStatus::Active
        }
    }
}

/// A consent with its derived status, as returned to callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentView {
    pub status: ConsentStatus,
    #[serde(flatten)]
    pub consent: Consent,
}

/// allow | deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// One access decision in the access log. Immutable once written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvent {
    /// The transaction id.
    pub event_id: String,
    pub tx_id: String,
    pub time: Time,
    /// Unix seconds of `time` (for range filters outside the ledger).
    pub time_unix: i64,
    pub actor: String,
    pub actor_org: String,
    pub actor_role: Role,
    /// Absent when the record was unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    /// The patient's home org (lets home-org admins see their patients' log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_org: Option<String>,
    pub record_id: String,
    pub action: Action,
    pub purpose: Purpose,
    pub decision: Verdict,
    pub reason: String,
    pub break_glass: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_id: Option<String>,
    /// Allowed by a consent that a home-org admin granted as delegate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<bool>,
}

/// justified | unjustified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewOutcome {
    Justified,
    Unjustified,
}

/// An auditor's review of a break-glass access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassReview {
    pub event_id: String,
    pub outcome: ReviewOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub reviewer: String,
    pub reviewer_org: String,
    pub reviewed_at: Time,
    pub tx_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time::from_unix(s, 0).unwrap()
    }

    fn consent() -> Consent {
        Consent {
            consent_id: "c1".into(),
            patient_id: "p1".into(),
            grantee: Grantee {
                kind: GranteeType::Org,
                id: None,
                org: Some("Org2MSP".into()),
                role: None,
            },
            scope: Scope {
                categories: vec![Category::Lab],
                records: vec![],
            },
            actions: vec![Action::Read],
            purposes: vec![Purpose::Treat],
            not_before: Some(t(100)),
            not_after: Some(t(200)),
            conditions: BTreeMap::new(),
            granted_by: "u".into(),
            granted_by_org: "Org1MSP".into(),
            granted_at: t(50),
            tx_id: "tx".into(),
            delegate: false,
            revoked_at: None,
            revoked_by: None,
            revoked_by_delegate: None,
            pre: None,
        }
    }

    #[test]
    fn status_window_is_half_open_and_revocation_wins() {
        let mut c = consent();
        assert_eq!(c.status_at(t(99)), ConsentStatus::Pending);
        assert_eq!(c.status_at(t(100)), ConsentStatus::Active);
        assert_eq!(c.status_at(t(199)), ConsentStatus::Active);
        assert_eq!(c.status_at(t(200)), ConsentStatus::Expired);
        c.revoked_at = Some(t(150));
        assert_eq!(c.status_at(t(120)), ConsentStatus::Revoked);
    }

    #[test]
    fn json_shapes_are_stable() {
        let v = ConsentView {
            status: ConsentStatus::Active,
            consent: consent(),
        };
        let s = serde_json::to_string(&v).unwrap();
        assert!(s.starts_with(r#"{"status":"active","consent_id":"c1","patient_id":"p1","grantee":{"type":"org","org":"Org2MSP"},"scope":{"categories":["lab"]},"actions":["read"],"purposes":["TREAT"],"not_before":"1970-01-01T00:01:40Z""#), "{s}");
        let back: ConsentView = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
        assert!(ConditionValue::AnyOf(vec!["a".into(), "b".into()]).accepts("b"));
        assert!(!ConditionValue::One("a".into()).accepts("A"));
    }

    #[test]
    fn pre_grants_stored_without_a_verifying_key_still_read() {
        let old = r#"{"grantee_public_key":"0x02","threshold":1,"shares":1,"proxies":["O"],"kfrag_commitments":["00"]}"#;
        let g: PreGrant = serde_json::from_str(old).unwrap();
        assert_eq!(g.verifying_key, None);
        assert_eq!(serde_json::to_string(&g).unwrap(), old);
        let g = PreGrant {
            verifying_key: Some("0x03".into()),
            ..g
        };
        assert_eq!(
            serde_json::to_string(&g).unwrap(),
            r#"{"grantee_public_key":"0x02","verifying_key":"0x03","threshold":1,"shares":1,"proxies":["O"],"kfrag_commitments":["00"]}"#
        );
        let unknown = old.replace("\"threshold\"", "\"extra\":1,\"threshold\"");
        assert!(serde_json::from_str::<PreGrant>(&unknown).is_err());
    }
}
