//! The access decision, as a pure function of the caller, the record, the
//! patient's consents, the request and the time. No ledger access here: the
//! contract loads the inputs, calls [`decide`], and logs the result.
//!
//! Deny by default. Rules, first match wins:
//! 1. unknown record → deny `record_not_found`
//! 2. erased record → deny `record_erased`
//! 3. auditor → deny `role_not_permitted` (auditors never read content)
//! 4. the record's patient (role patient, same `ehr.patient_id`, caller MSP
//!    = home org) → allow `patient_self`
//! 5. an active consent matching grantee, ABAC conditions, scope, action and
//!    purpose → allow `consent:<id>` (the first such consent in id order)
//! 6. purpose `ETREAT` (break-glass): not a clinician → deny
//!    `break_glass_role_not_permitted`; no justification → deny
//!    `break_glass_requires_justification`; action other than read → deny
//!    `action_not_permitted`; else allow `break_glass` (flagged for review)
//! 7. deny with the most specific consent mismatch (see [`Mismatch`]), or
//!    `no_consent` when the patient has no consent at all.

use std::fmt;

use super::model::{Action, Consent, ConsentStatus, GranteeType, Patient, Purpose, Record};
use super::time::Time;
use crate::identity::{Identity, Role};

/// Why a consent does not permit a request. Checked in declaration order;
/// a consent that fails later in the order matches the request more
/// closely, so its failure is the more specific denial reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Not for this user / org / role.
    Grantee,
    /// For this grantee, but an ABAC condition on the caller's attributes fails.
    Attribute,
    /// Does not cover this record (neither its id nor its category).
    Scope,
    /// Covers it, but was revoked.
    Revoked,
    /// Covers it, but `not_before` is still ahead.
    NotYetValid,
    /// Covers it, but `not_after` has passed.
    Expired,
    /// In force, but not for this action.
    Action,
    /// In force and for this action, but not for this purpose of use.
    Purpose,
}

impl Mismatch {
    /// How far the consent got: higher is more specific. The three status
    /// failures share one stage.
    fn stage(self) -> u8 {
        match self {
            Mismatch::Grantee => 0,
            Mismatch::Attribute => 1,
            Mismatch::Scope => 2,
            Mismatch::Revoked | Mismatch::NotYetValid | Mismatch::Expired => 3,
            Mismatch::Action => 4,
            Mismatch::Purpose => 5,
        }
    }

    fn reason(self) -> Reason {
        match self {
            Mismatch::Grantee => Reason::GranteeMismatch,
            Mismatch::Attribute => Reason::AttributeMismatch,
            Mismatch::Scope => Reason::OutOfScope,
            Mismatch::Revoked => Reason::ConsentRevoked,
            Mismatch::NotYetValid => Reason::ConsentNotYetValid,
            Mismatch::Expired => Reason::ConsentExpired,
            Mismatch::Action => Reason::ActionNotPermitted,
            Mismatch::Purpose => Reason::PurposeNotPermitted,
        }
    }
}

/// The reason of a decision, written to the access log as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    PatientSelf,
    Consent(String),
    BreakGlass,
    RecordNotFound,
    RecordErased,
    RoleNotPermitted,
    NoConsent,
    ConsentRevoked,
    ConsentExpired,
    ConsentNotYetValid,
    PurposeNotPermitted,
    ActionNotPermitted,
    GranteeMismatch,
    AttributeMismatch,
    OutOfScope,
    BreakGlassRequiresJustification,
    BreakGlassRoleNotPermitted,
}

impl Reason {
    /// Every denial reason code.
    pub const DENIALS: [&'static str; 14] = [
        "record_not_found",
        "record_erased",
        "role_not_permitted",
        "no_consent",
        "consent_revoked",
        "consent_expired",
        "consent_not_yet_valid",
        "purpose_not_permitted",
        "action_not_permitted",
        "grantee_mismatch",
        "attribute_mismatch",
        "out_of_scope",
        "break_glass_requires_justification",
        "break_glass_role_not_permitted",
    ];
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Reason::PatientSelf => "patient_self",
            Reason::Consent(id) => return write!(f, "consent:{id}"),
            Reason::BreakGlass => "break_glass",
            Reason::RecordNotFound => "record_not_found",
            Reason::RecordErased => "record_erased",
            Reason::RoleNotPermitted => "role_not_permitted",
            Reason::NoConsent => "no_consent",
            Reason::ConsentRevoked => "consent_revoked",
            Reason::ConsentExpired => "consent_expired",
            Reason::ConsentNotYetValid => "consent_not_yet_valid",
            Reason::PurposeNotPermitted => "purpose_not_permitted",
            Reason::ActionNotPermitted => "action_not_permitted",
            Reason::GranteeMismatch => "grantee_mismatch",
            Reason::AttributeMismatch => "attribute_mismatch",
            Reason::OutOfScope => "out_of_scope",
            Reason::BreakGlassRequiresJustification => "break_glass_requires_justification",
            Reason::BreakGlassRoleNotPermitted => "break_glass_role_not_permitted",
        };
        f.write_str(s)
    }
}

/// What is being asked.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub action: Action,
    pub purpose: Purpose,
    /// Already trimmed; `None` when blank.
    pub justification: Option<&'a str>,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    pub reason: Reason,
    pub break_glass: bool,
    /// The consent that allowed it.
    pub consent: Option<&'a Consent>,
}

impl<'a> Decision<'a> {
    fn deny(reason: Reason) -> Self {
        Self {
            allowed: false,
            reason,
            break_glass: false,
            consent: None,
        }
    }
}

/// Whether a consent names the caller (grantee only, no ABAC).
pub fn grantee_matches(c: &Consent, caller: &Identity) -> bool {
    let g = &c.grantee;
    let org_ok = |required: bool| match g.org.as_deref() {
        Some(o) => o == caller.msp_id,
        None => !required,
    };
    match g.kind {
        GranteeType::User => g.id.as_deref() == Some(caller.user_id.as_str()) && org_ok(true),
        GranteeType::Org => org_ok(true),
        GranteeType::Role => g.role == Some(caller.role) && org_ok(false),
    }
}

/// Whether every ABAC condition holds on the caller's attributes.
pub fn conditions_match(c: &Consent, caller: &Identity) -> bool {
    c.conditions.iter().all(|(attr, want)| {
        caller
            .attributes
            .get(attr)
            .is_some_and(|have| want.accepts(have))
    })
}

/// Whether a consent's scope covers a record.
pub fn scope_covers(c: &Consent, record: &Record) -> bool {
    c.scope.records.contains(&record.record_id) || c.scope.categories.contains(&record.category)
}

/// Checks one consent against a request; `purpose: None` accepts any
/// purpose (used to decide which metadata a caller may list).
pub fn match_consent(
    c: &Consent,
    caller: &Identity,
    record: &Record,
    action: Action,
    purpose: Option<Purpose>,
    now: Time,
) -> Result<(), Mismatch> {
    if c.patient_id != record.patient_id || !grantee_matches(c, caller) {
        return Err(Mismatch::Grantee);
    }
    if !conditions_match(c, caller) {
        return Err(Mismatch::Attribute);
    }
    if !scope_covers(c, record) {
        return Err(Mismatch::Scope);
    }
    match c.status_at(now) {
        ConsentStatus::Active => {}
        ConsentStatus::Revoked => return Err(Mismatch::Revoked),
        ConsentStatus::Pending => return Err(Mismatch::NotYetValid),
        ConsentStatus::Expired => return Err(Mismatch::Expired),
    }
    if !c.actions.contains(&action) {
        return Err(Mismatch::Action);
    }
    if let Some(p) = purpose
        && !c.purposes.contains(&p)
    {
        return Err(Mismatch::Purpose);
    }
    Ok(())
}

/// Decides a request (see the module docs for the rules). `target` is the
/// record and its patient, `None` when the record does not exist;
/// `consents` are the patient's consents in consent-id order.
pub fn decide<'a>(
    caller: &Identity,
    target: Option<(&Record, &Patient)>,
    consents: &'a [Consent],
    req: Request<'_>,
    now: Time,
) -> Decision<'a> {
    let Some((record, patient)) = target else {
        return Decision::deny(Reason::RecordNotFound);
    };
    if record.erased {
        return Decision::deny(Reason::RecordErased);
    }
    if caller.role == Role::Auditor {
        return Decision::deny(Reason::RoleNotPermitted);
    }
    if caller.is_patient(&record.patient_id, &patient.home_org) {
        return Decision {
            allowed: true,
            reason: Reason::PatientSelf,
            break_glass: false,
            consent: None,
        };
    }
    let mut best: Option<Mismatch> = None;
    for c in consents {
        match match_consent(c, caller, record, req.action, Some(req.purpose), now) {
            Ok(()) => {
                return Decision {
                    allowed: true,
                    reason: Reason::Consent(c.consent_id.clone()),
                    break_glass: false,
                    consent: Some(c),
                };
            }
            Err(m) => {
                if best.is_none_or(|b| m.stage() > b.stage()) {
                    best = Some(m);
                }
            }
        }
    }
    if req.purpose == Purpose::Emergency {
        if caller.role != Role::Clinician {
            return Decision::deny(Reason::BreakGlassRoleNotPermitted);
        }
        if req.justification.is_none() {
            return Decision::deny(Reason::BreakGlassRequiresJustification);
        }
        if req.action != Action::Read {
            return Decision::deny(Reason::ActionNotPermitted);
        }
        return Decision {
            allowed: true,
            reason: Reason::BreakGlass,
            break_glass: true,
            consent: None,
        };
    }
    Decision::deny(best.map_or(Reason::NoConsent, Mismatch::reason))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::contract::model::{Category, ConditionValue, Grantee, Scope};

    fn t(s: i64) -> Time {
        Time::from_unix(s, 0).unwrap()
    }

    fn caller(role: Role, org: &str, user: &str, attrs: &[(&str, &str)]) -> Identity {
        Identity {
            msp_id: org.into(),
            user_id: user.into(),
            role,
            patient_id: (role == Role::Patient).then(|| user.to_string()),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn record() -> Record {
        Record {
            record_id: "r1".into(),
            patient_id: "p1".into(),
            category: Category::Lab,
            cid: "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o".into(),
            sha256: "a".repeat(64),
            size: 1,
            content_type: "text/plain".into(),
            capsule_ref: "cap".into(),
            uploader: "p1".into(),
            uploader_org: "Org1MSP".into(),
            created_at: t(1),
            tx_id: "tx".into(),
            supersedes: None,
            erased: false,
            erased_at: None,
            erased_by: None,
        }
    }

    fn patient() -> Patient {
        Patient {
            patient_id: "p1".into(),
            home_org: "Org1MSP".into(),
            pre_public_key: format!("0x02{}", "ab".repeat(32)),
            registered_at: t(1),
            registered_by: "p1".into(),
        }
    }

    fn consent(id: &str, grantee: Grantee) -> Consent {
        Consent {
            consent_id: id.into(),
            patient_id: "p1".into(),
            grantee,
            scope: Scope {
                categories: vec![Category::Lab],
                records: vec![],
            },
            actions: vec![Action::Read],
            purposes: vec![Purpose::Treat],
            not_before: None,
            not_after: None,
            conditions: BTreeMap::new(),
            granted_by: "p1".into(),
            granted_by_org: "Org1MSP".into(),
            granted_at: t(1),
            tx_id: "tx".into(),
            delegate: false,
            revoked_at: None,
            revoked_by: None,
            revoked_by_delegate: None,
            pre: None,
        }
    }

    fn user(id: &str, org: &str) -> Grantee {
        Grantee {
            kind: GranteeType::User,
            id: Some(id.into()),
            org: Some(org.into()),
            role: None,
        }
    }

    fn req(purpose: Purpose, j: Option<&str>) -> Request<'_> {
        Request {
            action: Action::Read,
            purpose,
            justification: j,
        }
    }

    #[test]
    fn ordered_rules() {
        let (r, p) = (record(), patient());
        let doc = caller(Role::Clinician, "Org2MSP", "doc", &[]);
        let none: Vec<Consent> = vec![];
        let d = decide(&doc, None, &none, req(Purpose::Treat, None), t(10));
        assert_eq!(d.reason, Reason::RecordNotFound);
        let mut erased = r.clone();
        erased.erased = true;
        let me = caller(Role::Patient, "Org1MSP", "p1", &[]);
        let d = decide(
            &me,
            Some((&erased, &p)),
            &none,
            req(Purpose::Treat, None),
            t(10),
        );
        assert_eq!((d.allowed, d.reason), (false, Reason::RecordErased));
        let d = decide(&me, Some((&r, &p)), &none, req(Purpose::Treat, None), t(10));
        assert_eq!((d.allowed, d.reason), (true, Reason::PatientSelf));
        // Same patient id from another org is not the patient.
        let fake = caller(Role::Patient, "Org2MSP", "p1", &[]);
        let d = decide(
            &fake,
            Some((&r, &p)),
            &none,
            req(Purpose::Treat, None),
            t(10),
        );
        assert_eq!((d.allowed, d.reason), (false, Reason::NoConsent));
        let aud = caller(Role::Auditor, "Org1MSP", "aud", &[]);
        let cs = vec![consent(
            "c1",
            Grantee {
                kind: GranteeType::Role,
                id: None,
                org: None,
                role: Some(Role::Auditor),
            },
        )];
        let d = decide(&aud, Some((&r, &p)), &cs, req(Purpose::Treat, None), t(10));
        assert_eq!(d.reason, Reason::RoleNotPermitted);
    }

    #[test]
    fn consent_allows_and_most_specific_mismatch_wins() {
        let (r, p) = (record(), patient());
        let doc = caller(
            Role::Clinician,
            "Org2MSP",
            "doc",
            &[("department", "cardio")],
        );
        let good = consent("c2", user("doc", "Org2MSP"));
        let other = consent("c1", user("someone", "Org2MSP"));
        let cs = vec![other.clone(), good.clone()];
        let d = decide(&doc, Some((&r, &p)), &cs, req(Purpose::Treat, None), t(10));
        assert_eq!(d.reason, Reason::Consent("c2".into()));
        assert_eq!(d.consent.map(|c| c.consent_id.as_str()), Some("c2"));

        // Revoked is more specific than someone else's consent.
        let mut revoked = good.clone();
        revoked.revoked_at = Some(t(5));
        let cs = vec![other.clone(), revoked];
        let d = decide(&doc, Some((&r, &p)), &cs, req(Purpose::Treat, None), t(10));
        assert_eq!(d.reason, Reason::ConsentRevoked);

        // Purpose mismatch beats an expired one.
        let mut expired = good.clone();
        expired.not_after = Some(t(5));
        let mut research = good.clone();
        research.purposes = vec![Purpose::Research];
        let cs = vec![expired, research];
        let d = decide(&doc, Some((&r, &p)), &cs, req(Purpose::Treat, None), t(10));
        assert_eq!(d.reason, Reason::PurposeNotPermitted);

        let mut abac = good.clone();
        abac.conditions.insert(
            "department".into(),
            ConditionValue::AnyOf(vec!["onco".into()]),
        );
        let cs = vec![abac];
        let d = decide(&doc, Some((&r, &p)), &cs, req(Purpose::Treat, None), t(10));
        assert_eq!(d.reason, Reason::AttributeMismatch);

        let mut imaging = good.clone();
        imaging.scope.categories = vec![Category::Imaging];
        let cs = vec![imaging];
        let d = decide(&doc, Some((&r, &p)), &cs, req(Purpose::Treat, None), t(10));
        assert_eq!(d.reason, Reason::OutOfScope);

        let cs = vec![good];
        let d = decide(
            &doc,
            Some((&r, &p)),
            &cs,
            Request {
                action: Action::Write,
                purpose: Purpose::Treat,
                justification: None,
            },
            t(10),
        );
        assert_eq!(d.reason, Reason::ActionNotPermitted);
    }

    #[test]
    fn break_glass() {
        let (r, p) = (record(), patient());
        let none: Vec<Consent> = vec![];
        let doc = caller(Role::Clinician, "Org3MSP", "doc", &[]);
        let d = decide(
            &doc,
            Some((&r, &p)),
            &none,
            req(Purpose::Emergency, Some("unconscious")),
            t(10),
        );
        assert_eq!(
            (d.allowed, d.break_glass, d.reason),
            (true, true, Reason::BreakGlass)
        );
        let d = decide(
            &doc,
            Some((&r, &p)),
            &none,
            req(Purpose::Emergency, None),
            t(10),
        );
        assert_eq!(d.reason, Reason::BreakGlassRequiresJustification);
        let adm = caller(Role::Admin, "Org1MSP", "adm", &[]);
        let d = decide(
            &adm,
            Some((&r, &p)),
            &none,
            req(Purpose::Emergency, Some("x")),
            t(10),
        );
        assert_eq!(d.reason, Reason::BreakGlassRoleNotPermitted);
        let w = Request {
            action: Action::Write,
            purpose: Purpose::Emergency,
            justification: Some("x"),
        };
        let d = decide(&doc, Some((&r, &p)), &none, w, t(10));
        assert_eq!(d.reason, Reason::ActionNotPermitted);
        // A matching ETREAT consent is used before break-glass.
        let mut c = consent("c1", user("doc", "Org3MSP"));
        c.purposes = vec![Purpose::Emergency];
        let cs = vec![c];
        let d = decide(
            &doc,
            Some((&r, &p)),
            &cs,
            req(Purpose::Emergency, None),
            t(10),
        );
        assert_eq!((d.allowed, d.break_glass), (true, false));
    }

    #[test]
    fn grantee_kinds() {
        let doc = caller(Role::Clinician, "Org2MSP", "doc", &[]);
        let org = consent(
            "c",
            Grantee {
                kind: GranteeType::Org,
                id: None,
                org: Some("Org2MSP".into()),
                role: None,
            },
        );
        assert!(grantee_matches(&org, &doc));
        let role_any = consent(
            "c",
            Grantee {
                kind: GranteeType::Role,
                id: None,
                org: None,
                role: Some(Role::Clinician),
            },
        );
        assert!(grantee_matches(&role_any, &doc));
        let role_org1 = consent(
            "c",
            Grantee {
                kind: GranteeType::Role,
                id: None,
                org: Some("Org1MSP".into()),
                role: Some(Role::Clinician),
            },
        );
        assert!(!grantee_matches(&role_org1, &doc));
        assert!(!grantee_matches(
            &consent("c", user("doc", "Org1MSP")),
            &doc
        ));
    }
}
