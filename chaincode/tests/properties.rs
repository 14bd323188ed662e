//! Property tests over random consents and requests, through the real
//! contract on `MemStub`:
//! - a request is allowed exactly when an independent reference predicate
//!   (written here from the policy text, not from the contract's code) says
//!   some rule permits it, and an allow names the rule that did;
//! - every `RequestAccess` writes exactly one access-log entry;
//! - determinism: the same inputs on two fresh stubs give byte-identical
//!   responses, write sets, events and final state.

mod common;

use common::{Actor, T0, World, at, cast, record_args};
use ehr_chaincode::contract::decision::Reason;
use proptest::prelude::*;
use serde_json::{Value, json};

const CATEGORIES: [&str; 6] = ["lab", "imaging", "note", "prescription", "fhir", "other"];
const PURPOSES: [&str; 5] = ["TREAT", "HPAYMT", "HOPERAT", "HRESCH", "ETREAT"];
const ORGS: [&str; 3] = ["Org1MSP", "Org2MSP", "Org3MSP"];
const ROLES: [&str; 4] = ["patient", "clinician", "auditor", "admin"];
const USERS: [&str; 6] = [
    "dr-alice", "dr-bob", "dr-carol", "dr-dave", "admin2", "pat1x",
];
const DEPTS: [&str; 3] = ["cardiology", "oncology", "neurology"];
const JUSTIFICATIONS: [Option<&str>; 4] =
    [None, Some(""), Some("   "), Some("chest pain, unconscious")];
/// Records r0..r3 exist; index 4 is an unknown record.
const N_RECORDS: usize = 4;

#[derive(Debug, Clone)]
enum GranteeSpec {
    User(usize, usize),
    Org(usize),
    Role(usize, Option<usize>),
}

#[derive(Debug, Clone)]
enum CondSpec {
    One(usize),
    AnyOf(Vec<usize>),
}

#[derive(Debug, Clone)]
struct ConsentSpec {
    grantee: GranteeSpec,
    categories: Vec<usize>,
    records: Vec<usize>,
    write: bool,
    purposes: Vec<usize>,
    not_before: Option<i64>,
    not_after: Option<i64>,
    condition: Option<CondSpec>,
    revoked: bool,
    by_admin: bool,
}

#[derive(Debug, Clone)]
struct RequestSpec {
    actor: usize,
    record: usize,
    write: bool,
    purpose: usize,
    justification: usize,
    at: i64,
}

#[derive(Debug, Clone)]
struct Scenario {
    categories: [usize; N_RECORDS],
    erased: [bool; N_RECORDS],
    consents: Vec<ConsentSpec>,
    requests: Vec<RequestSpec>,
}

fn subset(n: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::sample::subsequence((0..n).collect::<Vec<_>>(), 0..=n)
}

fn grantee() -> impl Strategy<Value = GranteeSpec> {
    prop_oneof![
        (0..USERS.len(), 0..ORGS.len()).prop_map(|(u, o)| GranteeSpec::User(u, o)),
        (0..ORGS.len()).prop_map(GranteeSpec::Org),
        (0..ROLES.len(), proptest::option::of(0..ORGS.len()))
            .prop_map(|(r, o)| GranteeSpec::Role(r, o)),
    ]
}

fn condition() -> impl Strategy<Value = Option<CondSpec>> {
    proptest::option::weighted(
        0.3,
        prop_oneof![
            (0..DEPTS.len()).prop_map(CondSpec::One),
            proptest::sample::subsequence((0..DEPTS.len()).collect::<Vec<_>>(), 1..=3)
                .prop_map(CondSpec::AnyOf),
        ],
    )
}

fn consent_spec() -> impl Strategy<Value = ConsentSpec> {
    (
        grantee(),
        subset(CATEGORIES.len()),
        subset(N_RECORDS),
        any::<bool>(),
        proptest::sample::subsequence((0..PURPOSES.len()).collect::<Vec<_>>(), 1..=5),
        proptest::option::of(0i64..2000),
        proptest::option::of(1i64..2000),
        condition(),
        proptest::bool::weighted(0.25),
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |(
                grantee,
                categories,
                records,
                write,
                purposes,
                nb,
                na_delta,
                condition,
                revoked,
                by_admin,
            )| {
                // not_after is always after not_before and after the grant (T0+10).
                let not_after = na_delta.map(|d| nb.unwrap_or(10).max(10) + d);
                ConsentSpec {
                    grantee,
                    categories,
                    records,
                    write,
                    purposes,
                    not_before: nb,
                    not_after,
                    condition,
                    revoked,
                    by_admin,
                }
            },
        )
}

fn request_spec() -> impl Strategy<Value = RequestSpec> {
    (
        0..cast().all().len(),
        0..=N_RECORDS,
        proptest::bool::weighted(0.2),
        0..PURPOSES.len(),
        0..JUSTIFICATIONS.len(),
        20i64..4000,
    )
        .prop_map(
            |(actor, record, write, purpose, justification, at)| RequestSpec {
                actor,
                record,
                write,
                purpose,
                justification,
                at,
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        proptest::array::uniform4(0..CATEGORIES.len()),
        proptest::array::uniform4(proptest::bool::weighted(0.2)),
        proptest::collection::vec(consent_spec(), 0..5),
        proptest::collection::vec(request_spec(), 1..10),
    )
        .prop_map(|(categories, erased, consents, requests)| Scenario {
            categories,
            erased,
            consents,
            requests,
        })
}

fn record_id(i: usize) -> String {
    format!("r{i}")
}

fn grant_arg(i: usize, c: &ConsentSpec) -> Value {
    let grantee = match &c.grantee {
        GranteeSpec::User(u, o) => json!({"type":"user","id":USERS[*u],"org":ORGS[*o]}),
        GranteeSpec::Org(o) => json!({"type":"org","org":ORGS[*o]}),
        GranteeSpec::Role(r, Some(o)) => json!({"type":"role","role":ROLES[*r],"org":ORGS[*o]}),
        GranteeSpec::Role(r, None) => json!({"type":"role","role":ROLES[*r]}),
    };
    let mut categories: Vec<&str> = c.categories.iter().map(|&k| CATEGORIES[k]).collect();
    let records: Vec<String> = c.records.iter().map(|&k| record_id(k)).collect();
    if categories.is_empty() && records.is_empty() {
        categories.push("lab");
    }
    let actions = if c.write {
        json!(["read", "write"])
    } else {
        json!(["read"])
    };
    let purposes: Vec<&str> = c.purposes.iter().map(|&k| PURPOSES[k]).collect();
    let mut arg = json!({
        "consent_id": format!("c{i}"),
        "patient_id": "p1",
        "grantee": grantee,
        "scope": {"categories": categories, "records": records},
        "actions": actions,
        "purposes": purposes,
    });
    if let Some(nb) = c.not_before {
        arg["not_before"] = json!(at(nb));
    }
    if let Some(na) = c.not_after {
        arg["not_after"] = json!(at(na));
    }
    match &c.condition {
        Some(CondSpec::One(d)) => arg["conditions"] = json!({"department": DEPTS[*d]}),
        Some(CondSpec::AnyOf(ds)) => {
            let v: Vec<&str> = ds.iter().map(|&d| DEPTS[d]).collect();
            arg["conditions"] = json!({ "department": v });
        }
        None => {}
    }
    arg
}

// ---- The reference predicate: the policy, written plainly. ----

fn ref_grantee(c: &ConsentSpec, a: &Actor) -> bool {
    match &c.grantee {
        GranteeSpec::User(u, o) => a.user_id == USERS[*u] && a.msp == ORGS[*o],
        GranteeSpec::Org(o) => a.msp == ORGS[*o],
        GranteeSpec::Role(r, o) => a.role == ROLES[*r] && o.is_none_or(|o| a.msp == ORGS[o]),
    }
}

fn ref_condition(c: &ConsentSpec, a: &Actor) -> bool {
    let dept = a.attrs.get("department").map(String::as_str);
    match &c.condition {
        None => true,
        Some(CondSpec::One(d)) => dept == Some(DEPTS[*d]),
        Some(CondSpec::AnyOf(ds)) => ds.iter().any(|&d| dept == Some(DEPTS[d])),
    }
}

fn ref_consent_permits(s: &Scenario, c: &ConsentSpec, a: &Actor, r: &RequestSpec) -> bool {
    let covered_by_category = if c.categories.is_empty() && c.records.is_empty() {
        s.categories[r.record] == 0 // defaulted to lab
    } else {
        c.categories.contains(&s.categories[r.record])
    };
    ref_grantee(c, a)
        && ref_condition(c, a)
        && (c.records.contains(&r.record) || covered_by_category)
        && !c.revoked
        && c.not_before.is_none_or(|nb| r.at >= nb)
        && c.not_after.is_none_or(|na| r.at < na)
        && (!r.write || c.write)
        && c.purposes.contains(&r.purpose)
}

#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Deny,
    /// Allowed; the patient themselves.
    SelfAccess,
    /// Allowed by one of these consents (indices).
    Consent(Vec<usize>),
    BreakGlass,
}

fn reference(s: &Scenario, r: &RequestSpec) -> Expected {
    let a = cast().all()[r.actor];
    if r.record >= N_RECORDS || s.erased[r.record] || a.role == "auditor" {
        return Expected::Deny;
    }
    if a.role == "patient"
        && a.attrs.get("ehr.patient_id").map(String::as_str) == Some("p1")
        && a.msp == "Org1MSP"
    {
        return Expected::SelfAccess;
    }
    let permitting: Vec<usize> = s
        .consents
        .iter()
        .enumerate()
        .filter(|(_, c)| ref_consent_permits(s, c, a, r))
        .map(|(i, _)| i)
        .collect();
    if !permitting.is_empty() {
        return Expected::Consent(permitting);
    }
    let justified = JUSTIFICATIONS[r.justification].is_some_and(|j| !j.trim().is_empty());
    if PURPOSES[r.purpose] == "ETREAT" && a.role == "clinician" && justified && !r.write {
        return Expected::BreakGlass;
    }
    Expected::Deny
}

/// Runs a scenario; returns every call's response and tx record.
fn play(
    s: &Scenario,
) -> (
    World,
    Vec<(ehr_chaincode::Response, ehr_chaincode::memstub::TxRecord)>,
    Vec<Value>,
) {
    let c = cast();
    let mut w = World::new();
    let mut trace = Vec::new();
    let mut results = Vec::new();
    let mut step = |w: &mut World, who: &Actor, f: &str, arg: Value| {
        let o = w.call(who, f, arg.clone());
        assert!(o.ok(), "setup {f} {arg} failed: {}", o.response.message);
        trace.push((o.response.clone(), o.tx.clone()));
    };
    step(
        &mut w,
        &c.pat1,
        "RegisterPatient",
        json!({"patient_id":"p1","pre_public_key":common::pubkey(1)}),
    );
    for i in 0..N_RECORDS {
        step(
            &mut w,
            &c.clin1,
            "AddRecord",
            record_args(&record_id(i), "p1", CATEGORIES[s.categories[i]]),
        );
    }
    for i in 0..N_RECORDS {
        if s.erased[i] {
            step(
                &mut w,
                &c.pat1,
                "EraseRecord",
                json!({"record_id": record_id(i)}),
            );
        }
    }
    w.now = T0 + 10;
    for (i, cs) in s.consents.iter().enumerate() {
        let who = if cs.by_admin { &c.adm1 } else { &c.pat1 };
        step(&mut w, who, "GrantConsent", grant_arg(i, cs));
    }
    w.now = T0 + 15;
    for (i, cs) in s.consents.iter().enumerate() {
        if cs.revoked {
            step(
                &mut w,
                &c.pat1,
                "RevokeConsent",
                json!({"consent_id": format!("c{i}")}),
            );
        }
    }
    for r in &s.requests {
        w.now = T0 + r.at;
        let who = c.all()[r.actor];
        let record = if r.record < N_RECORDS {
            record_id(r.record)
        } else {
            "r-unknown".into()
        };
        let mut arg = json!({
            "record_id": record,
            "action": if r.write { "write" } else { "read" },
            "purpose": PURPOSES[r.purpose],
        });
        if let Some(j) = JUSTIFICATIONS[r.justification] {
            arg["justification"] = json!(j);
        }
        let before = w.event_count();
        let o = w.call(who, "RequestAccess", arg);
        assert_eq!(o.response.status, 200, "{}", o.response.message);
        assert_eq!(
            common::writes_under(&o.tx, "ehr.event"),
            1,
            "one log entry per decision"
        );
        assert_eq!(w.event_count(), before + 1);
        results.push(o.json());
        trace.push((o.response.clone(), o.tx.clone()));
    }
    (w, trace, results)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn allow_only_when_a_rule_permits(s in scenario()) {
        let (_, _, results) = play(&s);
        for (r, v) in s.requests.iter().zip(&results) {
            let expected = reference(&s, r);
            let reason = v["reason"].as_str().unwrap_or_default().to_string();
            let allowed = v["allowed"].as_bool().unwrap_or(false);
            let ctx = format!("request {r:?} -> {v}; reference {expected:?}");
            match &expected {
                Expected::Deny => {
                    prop_assert!(!allowed, "{}", ctx);
                    prop_assert!(Reason::DENIALS.contains(&reason.as_str()), "{}", ctx);
                }
                Expected::SelfAccess => {
                    prop_assert!(allowed, "{}", ctx);
                    prop_assert_eq!(reason.as_str(), "patient_self", "{}", ctx);
                }
                Expected::Consent(ids) => {
                    prop_assert!(allowed, "{}", ctx);
                    let id = reason.strip_prefix("consent:").map(str::to_owned);
                    let allowed_ids: Vec<String> = ids.iter().map(|i| format!("c{i}")).collect();
                    prop_assert!(id.as_ref().is_some_and(|id| allowed_ids.contains(id)), "{}", ctx);
                    prop_assert_eq!(&v["break_glass"], &json!(false));
                }
                Expected::BreakGlass => {
                    prop_assert!(allowed, "{}", ctx);
                    prop_assert_eq!(reason.as_str(), "break_glass", "{}", ctx);
                    prop_assert_eq!(&v["break_glass"], &json!(true));
                }
            }
        }
    }

    #[test]
    fn same_inputs_same_bytes(s in scenario()) {
        let (w1, t1, _) = play(&s);
        let (w2, t2, _) = play(&s);
        prop_assert_eq!(t1.len(), t2.len());
        for (a, b) in t1.iter().zip(&t2) {
            prop_assert_eq!(a, b);
        }
        prop_assert_eq!(w1.stub.state(), w2.stub.state());
    }
}
