//! The access-decision table: every case runs on a fresh ledger through the
//! real contract (real certificates, `Chaincode::invoke`, `MemStub`), and
//! asserts the decision, its reason, the break-glass flag, and that exactly
//! one access-log entry was written (in the transaction's write set and in
//! committed state), with a matching `AccessDecision` event.

mod common;

use std::collections::BTreeSet;

use common::{Actor, T0, World, at, cast, writes_under};
use ehr_chaincode::contract::decision::Reason;
use serde_json::{Value, json};

/// A consent to set up before the request: its `GrantConsent` argument
/// (without `patient_id`, which is p1 unless given), who grants it, and
/// whether to revoke it afterwards.
#[derive(Clone)]
struct Setup {
    arg: Value,
    revoke: bool,
    by_admin: bool,
}

fn consent(id: &'static str, grantee: Value, categories: &[&str], records: &[&str]) -> Setup {
    Setup {
        arg: json!({
            "consent_id": id,
            "grantee": grantee,
            "scope": {"categories": categories, "records": records},
            "actions": ["read"],
            "purposes": ["TREAT"],
        }),
        revoke: false,
        by_admin: false,
    }
}

impl Setup {
    fn with(mut self, field: &str, v: Value) -> Self {
        self.arg[field] = v;
        self
    }
    fn revoked(mut self) -> Self {
        self.revoke = true;
        self
    }
    fn by_admin(mut self) -> Self {
        self.by_admin = true;
        self
    }
}

fn user(id: &str, org: &str) -> Value {
    json!({"type":"user","id":id,"org":org})
}
fn org(o: &str) -> Value {
    json!({"type":"org","org":o})
}
fn role(r: &str, o: Option<&str>) -> Value {
    match o {
        Some(o) => json!({"type":"role","role":r,"org":o}),
        None => json!({"type":"role","role":r}),
    }
}

// The consents the table uses.
fn bob_lab() -> Setup {
    consent("c-bob", user("dr-bob", "Org2MSP"), &["lab"], &[])
}
fn bob_expired() -> Setup {
    bob_lab().with("not_after", json!(at(100)))
}
fn bob_pending() -> Setup {
    bob_lab().with("not_before", json!(at(10_000)))
}
fn bob_window() -> Setup {
    bob_lab()
        .with("not_before", json!(at(50)))
        .with("not_after", json!(at(1_000)))
}
fn bob_research() -> Setup {
    bob_lab().with("purposes", json!(["HRESCH"]))
}
fn bob_org3() -> Setup {
    consent("c-bob3", user("dr-bob", "Org3MSP"), &["lab"], &[])
}
fn carol_lab() -> Setup {
    consent("c-carol", user("dr-carol", "Org2MSP"), &["lab"], &[])
}
fn admins_org2() -> Setup {
    consent("c-adm2", role("admin", Some("Org2MSP")), &["lab"], &[])
}
fn org2() -> Setup {
    consent("c-org2", org("Org2MSP"), &["lab"], &[])
}
fn clinicians_any() -> Setup {
    consent("c-clin", role("clinician", None), &["lab"], &[])
}
fn clinicians_org2() -> Setup {
    consent("c-clin2", role("clinician", Some("Org2MSP")), &["lab"], &[])
}
fn org2_cardio() -> Setup {
    org2().with("conditions", json!({"department":"cardiology"}))
}
fn org2_onco_neuro() -> Setup {
    org2().with("conditions", json!({"department":["oncology","neurology"]}))
}
fn org2_cardio_surgery() -> Setup {
    org2().with(
        "conditions",
        json!({"department":"cardiology","specialty":"surgery"}),
    )
}
fn bob_img_record() -> Setup {
    consent("c-rec", user("dr-bob", "Org2MSP"), &[], &["r-img"])
}
fn bob_img_note() -> Setup {
    consent(
        "c-cat",
        user("dr-bob", "Org2MSP"),
        &["imaging", "note"],
        &[],
    )
}
fn bob_rw() -> Setup {
    bob_lab().with("actions", json!(["read", "write"]))
}
fn dave_emergency() -> Setup {
    consent("c-er", role("clinician", Some("Org3MSP")), &["lab"], &[])
        .with("purposes", json!(["ETREAT"]))
}
fn bob_delegate() -> Setup {
    bob_lab().by_admin()
}
fn bob_img_only() -> Setup {
    consent("c-bobimg", user("dr-bob", "Org2MSP"), &["imaging"], &[])
}

struct Case {
    name: String,
    setup: Vec<Setup>,
    who: Actor,
    record: &'static str,
    action: &'static str,
    purpose: &'static str,
    justification: Option<&'static str>,
    /// Expected reason (`consent:<id>` for consent allows).
    reason: String,
    allowed: bool,
    break_glass: bool,
}

#[derive(Clone)]
struct Req {
    who: Actor,
    record: &'static str,
    action: &'static str,
    purpose: &'static str,
    justification: Option<&'static str>,
}

fn req(who: &Actor, record: &'static str, action: &'static str, purpose: &'static str) -> Req {
    Req {
        who: who.clone(),
        record,
        action,
        purpose,
        justification: None,
    }
}

impl Req {
    fn just(mut self, j: &'static str) -> Self {
        self.justification = Some(j);
        self
    }
}

fn allow(name: &str, setup: &[Setup], r: Req, reason: &str) -> Case {
    case(name, setup, r, reason, true, reason == "break_glass")
}

fn deny(name: &str, setup: &[Setup], r: Req, reason: &str) -> Case {
    case(name, setup, r, reason, false, false)
}

fn case(name: &str, setup: &[Setup], r: Req, reason: &str, allowed: bool, bg: bool) -> Case {
    Case {
        name: name.to_string(),
        setup: setup.to_vec(),
        who: r.who,
        record: r.record,
        action: r.action,
        purpose: r.purpose,
        justification: r.justification,
        reason: reason.to_string(),
        allowed,
        break_glass: bg,
    }
}

fn table() -> Vec<Case> {
    let c = cast();
    let none: &[Setup] = &[];
    let mut t = vec![
        // --- No consent at all: roles × actions × purposes. ---
        allow(
            "patient reads own lab",
            none,
            req(&c.pat1, "r-lab", "read", "TREAT"),
            "patient_self",
        ),
        allow(
            "patient writes own lab",
            none,
            req(&c.pat1, "r-lab", "write", "TREAT"),
            "patient_self",
        ),
        allow(
            "patient reads own imaging for research",
            none,
            req(&c.pat1, "r-img", "read", "HRESCH"),
            "patient_self",
        ),
        allow(
            "patient reads own note in emergency",
            none,
            req(&c.pat1, "r-note", "read", "ETREAT"),
            "patient_self",
        ),
        deny(
            "patient reads own erased record",
            none,
            req(&c.pat1, "r-erased", "read", "TREAT"),
            "record_erased",
        ),
        deny(
            "patient reads unknown record",
            none,
            req(&c.pat1, "r-nope", "read", "TREAT"),
            "record_not_found",
        ),
        deny(
            "fake patient cert from other org",
            none,
            req(&c.pat1_fake, "r-lab", "read", "TREAT"),
            "no_consent",
        ),
        deny(
            "other patient reads p1",
            none,
            req(&c.pat2, "r-lab", "read", "TREAT"),
            "no_consent",
        ),
        allow(
            "other patient reads own record",
            none,
            req(&c.pat2, "r2-lab", "read", "TREAT"),
            "patient_self",
        ),
        deny(
            "home-org clinician without consent",
            none,
            req(&c.clin1, "r-lab", "read", "TREAT"),
            "no_consent",
        ),
        deny(
            "home-org clinician writes without consent",
            none,
            req(&c.clin1, "r-lab", "write", "TREAT"),
            "no_consent",
        ),
        deny(
            "other-org clinician without consent",
            none,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "no_consent",
        ),
        deny(
            "other-org clinician payment purpose",
            none,
            req(&c.bob, "r-lab", "read", "HPAYMT"),
            "no_consent",
        ),
        deny(
            "other-org clinician operations purpose",
            none,
            req(&c.bob, "r-lab", "read", "HOPERAT"),
            "no_consent",
        ),
        deny(
            "home admin without consent",
            none,
            req(&c.adm1, "r-lab", "read", "TREAT"),
            "no_consent",
        ),
        deny(
            "other-org admin without consent",
            none,
            req(&c.adm2, "r-lab", "read", "TREAT"),
            "no_consent",
        ),
        deny(
            "home auditor reads content",
            none,
            req(&c.aud1, "r-lab", "read", "TREAT"),
            "role_not_permitted",
        ),
        deny(
            "other-org auditor reads content",
            none,
            req(&c.aud2, "r-lab", "read", "HOPERAT"),
            "role_not_permitted",
        ),
        deny(
            "auditor writes",
            none,
            req(&c.aud1, "r-lab", "write", "TREAT"),
            "role_not_permitted",
        ),
        deny(
            "auditor break-glass",
            none,
            req(&c.aud1, "r-lab", "read", "ETREAT").just("audit"),
            "role_not_permitted",
        ),
        deny(
            "auditor unknown record",
            none,
            req(&c.aud1, "r-nope", "read", "TREAT"),
            "record_not_found",
        ),
        deny(
            "auditor erased record",
            none,
            req(&c.aud2, "r-erased", "read", "TREAT"),
            "record_erased",
        ),
        deny(
            "clinician unknown record",
            none,
            req(&c.bob, "r-nope", "read", "TREAT"),
            "record_not_found",
        ),
        deny(
            "admin unknown record",
            none,
            req(&c.adm2, "r-nope", "write", "HPAYMT"),
            "record_not_found",
        ),
        deny(
            "clinician erased record",
            none,
            req(&c.bob, "r-erased", "read", "TREAT"),
            "record_erased",
        ),
        // --- Break-glass. ---
        allow(
            "break-glass other-org clinician",
            none,
            req(&c.bob, "r-lab", "read", "ETREAT").just("unconscious in ER"),
            "break_glass",
        ),
        allow(
            "break-glass home clinician",
            none,
            req(&c.clin1, "r-img", "read", "ETREAT").just("cardiac arrest"),
            "break_glass",
        ),
        allow(
            "break-glass third-org clinician",
            none,
            req(&c.dave, "r-note", "read", "ETREAT").just("trauma"),
            "break_glass",
        ),
        deny(
            "break-glass without justification",
            none,
            req(&c.bob, "r-lab", "read", "ETREAT"),
            "break_glass_requires_justification",
        ),
        deny(
            "break-glass blank justification",
            none,
            req(&c.bob, "r-lab", "read", "ETREAT").just("   "),
            "break_glass_requires_justification",
        ),
        deny(
            "break-glass write",
            none,
            req(&c.bob, "r-lab", "write", "ETREAT").just("need to amend"),
            "action_not_permitted",
        ),
        deny(
            "break-glass by admin",
            none,
            req(&c.adm1, "r-lab", "read", "ETREAT").just("urgent"),
            "break_glass_role_not_permitted",
        ),
        deny(
            "break-glass by other-org admin",
            none,
            req(&c.adm2, "r-lab", "read", "ETREAT").just("urgent"),
            "break_glass_role_not_permitted",
        ),
        deny(
            "break-glass by other patient",
            none,
            req(&c.pat2, "r-lab", "read", "ETREAT").just("family"),
            "break_glass_role_not_permitted",
        ),
        deny(
            "break-glass by fake patient",
            none,
            req(&c.pat1_fake, "r-lab", "read", "ETREAT"),
            "break_glass_role_not_permitted",
        ),
        deny(
            "break-glass on erased record",
            none,
            req(&c.bob, "r-erased", "read", "ETREAT").just("ER"),
            "record_erased",
        ),
        deny(
            "break-glass on unknown record",
            none,
            req(&c.bob, "r-nope", "read", "ETREAT").just("ER"),
            "record_not_found",
        ),
    ];

    // --- An active user consent: dr-bob@Org2, lab, read, TREAT. ---
    let s = [bob_lab()];
    t.extend([
        allow(
            "user consent matches",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "consent:c-bob",
        ),
        deny(
            "user consent wrong purpose",
            &s,
            req(&c.bob, "r-lab", "read", "HPAYMT"),
            "purpose_not_permitted",
        ),
        deny(
            "user consent research purpose",
            &s,
            req(&c.bob, "r-lab", "read", "HRESCH"),
            "purpose_not_permitted",
        ),
        deny(
            "user consent write not granted",
            &s,
            req(&c.bob, "r-lab", "write", "TREAT"),
            "action_not_permitted",
        ),
        deny(
            "user consent other category",
            &s,
            req(&c.bob, "r-img", "read", "TREAT"),
            "out_of_scope",
        ),
        deny(
            "user consent note category",
            &s,
            req(&c.bob, "r-note", "read", "TREAT"),
            "out_of_scope",
        ),
        deny(
            "user consent wrong user same org",
            &s,
            req(&c.carol, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        deny(
            "user consent same user id other org",
            &s,
            req(&c.bob3, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        deny(
            "user consent third-org clinician",
            &s,
            req(&c.dave, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        deny(
            "user consent home clinician",
            &s,
            req(&c.clin1, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        deny(
            "user consent other-org admin",
            &s,
            req(&c.adm2, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        deny(
            "user consent home admin",
            &s,
            req(&c.adm1, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        deny(
            "user consent auditor",
            &s,
            req(&c.aud2, "r-lab", "read", "TREAT"),
            "role_not_permitted",
        ),
        allow(
            "user consent patient still self",
            &s,
            req(&c.pat1, "r-lab", "read", "TREAT"),
            "patient_self",
        ),
        deny(
            "user consent erased record",
            &s,
            req(&c.bob, "r-erased", "read", "TREAT"),
            "record_erased",
        ),
        deny(
            "user consent other patient's record",
            &s,
            req(&c.bob, "r2-lab", "read", "TREAT"),
            "no_consent",
        ),
        allow(
            "user consent out of scope but break-glass",
            &s,
            req(&c.bob, "r-img", "read", "ETREAT").just("stroke"),
            "break_glass",
        ),
        deny(
            "user consent ETREAT not granted, no justification",
            &s,
            req(&c.bob, "r-lab", "read", "ETREAT"),
            "break_glass_requires_justification",
        ),
        deny(
            "user consent unknown record",
            &s,
            req(&c.bob, "r-nope", "read", "TREAT"),
            "record_not_found",
        ),
    ]);

    // --- Consent states. ---
    let s = [bob_expired()];
    t.extend([
        deny(
            "expired consent",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "consent_expired",
        ),
        deny(
            "expired consent, write",
            &s,
            req(&c.bob, "r-lab", "write", "TREAT"),
            "consent_expired",
        ),
        deny(
            "expired consent, out of scope first",
            &s,
            req(&c.bob, "r-img", "read", "TREAT"),
            "out_of_scope",
        ),
        deny(
            "expired consent, other user",
            &s,
            req(&c.carol, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        allow(
            "expired consent, patient",
            &s,
            req(&c.pat1, "r-lab", "read", "TREAT"),
            "patient_self",
        ),
        allow(
            "expired consent, break-glass",
            &s,
            req(&c.bob, "r-lab", "read", "ETREAT").just("ER"),
            "break_glass",
        ),
    ]);
    let s = [bob_pending()];
    t.extend([
        deny(
            "not yet valid consent",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "consent_not_yet_valid",
        ),
        deny(
            "not yet valid consent, wrong purpose too",
            &s,
            req(&c.bob, "r-lab", "read", "HPAYMT"),
            "consent_not_yet_valid",
        ),
        deny(
            "not yet valid consent, write",
            &s,
            req(&c.bob, "r-lab", "write", "TREAT"),
            "consent_not_yet_valid",
        ),
        deny(
            "not yet valid consent, other org",
            &s,
            req(&c.bob3, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
    ]);
    let s = [bob_window()];
    t.extend([
        allow(
            "consent inside its window",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "consent:c-bob",
        ),
        deny(
            "windowed consent wrong action",
            &s,
            req(&c.bob, "r-lab", "write", "TREAT"),
            "action_not_permitted",
        ),
    ]);
    let s = [bob_lab().revoked()];
    t.extend([
        deny(
            "revoked consent",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "consent_revoked",
        ),
        deny(
            "revoked consent, other purpose",
            &s,
            req(&c.bob, "r-lab", "read", "HPAYMT"),
            "consent_revoked",
        ),
        deny(
            "revoked consent, other category",
            &s,
            req(&c.bob, "r-img", "read", "TREAT"),
            "out_of_scope",
        ),
        deny(
            "revoked consent, other user",
            &s,
            req(&c.carol, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        allow(
            "revoked consent, break-glass",
            &s,
            req(&c.bob, "r-lab", "read", "ETREAT").just("ER"),
            "break_glass",
        ),
    ]);
    let s = [bob_delegate().revoked()];
    t.push(deny(
        "delegate-granted consent revoked",
        &s,
        req(&c.bob, "r-lab", "read", "TREAT"),
        "consent_revoked",
    ));

    // --- Purpose. ---
    let s = [bob_research()];
    t.extend([
        deny(
            "research-only consent used for treatment",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "purpose_not_permitted",
        ),
        allow(
            "research-only consent used for research",
            &s,
            req(&c.bob, "r-lab", "read", "HRESCH"),
            "consent:c-bob",
        ),
        deny(
            "research-only consent used for operations",
            &s,
            req(&c.bob, "r-lab", "read", "HOPERAT"),
            "purpose_not_permitted",
        ),
    ]);

    // --- Grantee kinds: wrong org, wrong user, wrong role. ---
    let s = [bob_org3()];
    t.extend([
        deny(
            "consent names dr-bob of Org3, Org2's dr-bob asks",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        allow(
            "consent names dr-bob of Org3, he asks",
            &s,
            req(&c.bob3, "r-lab", "read", "TREAT"),
            "consent:c-bob3",
        ),
    ]);
    let s = [carol_lab()];
    t.extend([
        deny(
            "consent for carol, bob asks",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        allow(
            "consent for carol, carol asks",
            &s,
            req(&c.carol, "r-lab", "read", "TREAT"),
            "consent:c-carol",
        ),
    ]);
    let s = [admins_org2()];
    t.extend([
        deny(
            "role consent for admins, clinician asks",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        allow(
            "role consent for Org2 admins, Org2 admin asks",
            &s,
            req(&c.adm2, "r-lab", "read", "TREAT"),
            "consent:c-adm2",
        ),
        deny(
            "role consent for Org2 admins, Org1 admin asks",
            &s,
            req(&c.adm1, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        deny(
            "role consent for Org2 admins, Org3 admin asks",
            &s,
            req(&c.adm3, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
    ]);
    let s = [org2()];
    t.extend([
        allow(
            "org consent, Org2 clinician bob",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "consent:c-org2",
        ),
        allow(
            "org consent, Org2 clinician carol",
            &s,
            req(&c.carol, "r-lab", "read", "TREAT"),
            "consent:c-org2",
        ),
        allow(
            "org consent, Org2 admin",
            &s,
            req(&c.adm2, "r-lab", "read", "TREAT"),
            "consent:c-org2",
        ),
        allow(
            "org consent, Org2 patient certificate",
            &s,
            req(&c.pat1_fake, "r-lab", "read", "TREAT"),
            "consent:c-org2",
        ),
        deny(
            "org consent, Org2 auditor",
            &s,
            req(&c.aud2, "r-lab", "read", "TREAT"),
            "role_not_permitted",
        ),
        deny(
            "org consent, Org3 clinician",
            &s,
            req(&c.dave, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        deny(
            "org consent, Org1 clinician",
            &s,
            req(&c.clin1, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        deny(
            "org consent, out of scope",
            &s,
            req(&c.carol, "r-note", "read", "TREAT"),
            "out_of_scope",
        ),
    ]);
    let s = [clinicians_any()];
    t.extend([
        allow(
            "any-org clinician role consent, home clinician",
            &s,
            req(&c.clin1, "r-lab", "read", "TREAT"),
            "consent:c-clin",
        ),
        allow(
            "any-org clinician role consent, Org3 clinician",
            &s,
            req(&c.dave, "r-lab", "read", "TREAT"),
            "consent:c-clin",
        ),
        deny(
            "any-org clinician role consent, admin",
            &s,
            req(&c.adm2, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
        deny(
            "any-org clinician role consent, other patient",
            &s,
            req(&c.pat2, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
    ]);
    let s = [clinicians_org2()];
    t.extend([
        allow(
            "Org2 clinician role consent, bob",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "consent:c-clin2",
        ),
        deny(
            "Org2 clinician role consent, Org3 clinician",
            &s,
            req(&c.dave, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
    ]);

    // --- ABAC conditions. ---
    let s = [org2_cardio()];
    t.extend([
        allow(
            "ABAC department matches",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "consent:c-org2",
        ),
        deny(
            "ABAC department differs",
            &s,
            req(&c.carol, "r-lab", "read", "TREAT"),
            "attribute_mismatch",
        ),
        deny(
            "ABAC attribute missing",
            &s,
            req(&c.adm2, "r-lab", "read", "TREAT"),
            "attribute_mismatch",
        ),
        deny(
            "ABAC other org",
            &s,
            req(&c.dave, "r-lab", "read", "TREAT"),
            "grantee_mismatch",
        ),
    ]);
    let s = [org2_onco_neuro()];
    t.extend([
        allow(
            "ABAC any-of matches",
            &s,
            req(&c.carol, "r-lab", "read", "TREAT"),
            "consent:c-org2",
        ),
        deny(
            "ABAC any-of does not match",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "attribute_mismatch",
        ),
    ]);
    let s = [org2_cardio_surgery()];
    t.push(deny(
        "ABAC all conditions must hold",
        &s,
        req(&c.bob, "r-lab", "read", "TREAT"),
        "attribute_mismatch",
    ));

    // --- Scope by record and by category. ---
    let s = [bob_img_record()];
    t.extend([
        allow(
            "record-scoped consent, that record",
            &s,
            req(&c.bob, "r-img", "read", "TREAT"),
            "consent:c-rec",
        ),
        deny(
            "record-scoped consent, another record",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "out_of_scope",
        ),
        deny(
            "record-scoped consent, same category other record",
            &s,
            req(&c.bob, "r-note", "read", "TREAT"),
            "out_of_scope",
        ),
    ]);
    let s = [bob_img_note()];
    t.extend([
        allow(
            "category-scoped consent, note",
            &s,
            req(&c.bob, "r-note", "read", "TREAT"),
            "consent:c-cat",
        ),
        allow(
            "category-scoped consent, imaging",
            &s,
            req(&c.bob, "r-img", "read", "TREAT"),
            "consent:c-cat",
        ),
        deny(
            "category-scoped consent, lab",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "out_of_scope",
        ),
    ]);

    // --- Actions. ---
    let s = [bob_rw()];
    t.extend([
        allow(
            "read-write consent, write",
            &s,
            req(&c.bob, "r-lab", "write", "TREAT"),
            "consent:c-bob",
        ),
        allow(
            "read-write consent, read",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "consent:c-bob",
        ),
        deny(
            "read-write consent, write for payment",
            &s,
            req(&c.bob, "r-lab", "write", "HPAYMT"),
            "purpose_not_permitted",
        ),
    ]);

    // --- Emergency consent and delegates. ---
    let s = [dave_emergency()];
    t.extend([
        allow(
            "ETREAT consent needs no justification",
            &s,
            req(&c.dave, "r-lab", "read", "ETREAT"),
            "consent:c-er",
        ),
        deny(
            "ETREAT consent, treatment purpose",
            &s,
            req(&c.dave, "r-lab", "read", "TREAT"),
            "purpose_not_permitted",
        ),
    ]);
    let s = [bob_delegate()];
    t.push(allow(
        "delegate-granted consent",
        &s,
        req(&c.bob, "r-lab", "read", "TREAT"),
        "consent:c-bob",
    ));

    // --- Several consents: the first match allows, else the most specific denial. ---
    let s = [
        bob_lab().revoked().with("consent_id", json!("c-a")),
        bob_img_only().with("scope", json!({"categories":["lab"]})),
    ];
    t.push(allow(
        "revoked and active consent",
        &s,
        req(&c.bob, "r-lab", "read", "TREAT"),
        "consent:c-bobimg",
    ));
    let s = [carol_lab(), bob_img_only()];
    t.extend([
        deny(
            "someone else's consent and an out-of-scope one",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "out_of_scope",
        ),
        allow(
            "two consents, other record allowed",
            &s,
            req(&c.bob, "r-img", "read", "TREAT"),
            "consent:c-bobimg",
        ),
    ]);
    let s = [
        bob_expired(),
        bob_research().with("consent_id", json!("c-res")),
    ];
    t.push(deny(
        "expired one and wrong-purpose one",
        &s,
        req(&c.bob, "r-lab", "read", "TREAT"),
        "purpose_not_permitted",
    ));
    let s = [bob_pending(), carol_lab()];
    t.push(deny(
        "not-yet-valid one and someone else's",
        &s,
        req(&c.bob, "r-lab", "read", "TREAT"),
        "consent_not_yet_valid",
    ));
    let s = [org2_cardio(), bob_expired()];
    t.extend([
        allow(
            "ABAC org consent wins over an expired user one",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "consent:c-org2",
        ),
        deny(
            "attribute mismatch beats someone else's expired consent",
            &s,
            req(&c.carol, "r-lab", "read", "TREAT"),
            "attribute_mismatch",
        ),
    ]);
    // A p2 consent never covers p1.
    let s = [bob_lab()
        .with("patient_id", json!("p2"))
        .with("consent_id", json!("c-p2"))];
    t.extend([
        deny(
            "p2's consent does not cover p1",
            &s,
            req(&c.bob, "r-lab", "read", "TREAT"),
            "no_consent",
        ),
        allow(
            "p2's consent covers p2",
            &s,
            req(&c.bob, "r2-lab", "read", "TREAT"),
            "consent:c-p2",
        ),
    ]);
    t
}

/// Runs one case on a fresh world; returns a failure description.
fn run(case: &Case) -> Result<(), String> {
    let c = cast();
    let mut w = World::new();
    w.standard();
    w.now = T0 + 10;
    for s in &case.setup {
        let mut arg = s.arg.clone();
        if arg.get("patient_id").is_none() {
            arg["patient_id"] = json!("p1");
        }
        let granter = match (arg["patient_id"].as_str(), s.by_admin) {
            (_, true) => &c.adm1,
            (Some("p2"), false) => &c.pat2,
            _ => &c.pat1,
        };
        let granted = w.call(granter, "GrantConsent", arg.clone());
        if !granted.ok() {
            return Err(format!(
                "setup GrantConsent {arg} failed: {}",
                granted.response.message
            ));
        }
        if s.revoke {
            let id = granted.json()["consent_id"].clone();
            let r = w.call(granter, "RevokeConsent", json!({"consent_id": id}));
            if !r.ok() {
                return Err(format!(
                    "setup RevokeConsent failed: {}",
                    r.response.message
                ));
            }
        }
    }
    w.now = T0 + 500;
    let before = w.event_count();
    let mut arg = json!({"record_id": case.record, "action": case.action, "purpose": case.purpose});
    if let Some(j) = case.justification {
        arg["justification"] = json!(j);
    }
    let out = w.call(&case.who, "RequestAccess", arg);
    let mut errs = Vec::new();
    if out.response.status != 200 {
        return Err(format!(
            "status {} {}",
            out.response.status, out.response.message
        ));
    }
    let v = out.json();
    if v["allowed"] != json!(case.allowed) {
        errs.push(format!(
            "allowed={} expected {}",
            v["allowed"], case.allowed
        ));
    }
    if v["reason"] != json!(case.reason) {
        errs.push(format!("reason={} expected {}", v["reason"], case.reason));
    }
    if v["break_glass"] != json!(case.break_glass) {
        errs.push(format!("break_glass={}", v["break_glass"]));
    }
    // Exactly one access-log entry: in the write set and in committed state.
    let written = writes_under(&out.tx, "ehr.event");
    if written != 1 {
        errs.push(format!("{written} access events in the write set"));
    }
    if w.event_count() != before + 1 {
        errs.push(format!("event count {} -> {}", before, w.event_count()));
    }
    let event_id = v["event_id"].as_str().unwrap_or_default();
    if event_id != out.tx.tx_id {
        errs.push("event id is not the tx id".into());
    }
    match w.event(event_id) {
        None => errs.push("log entry not found".into()),
        Some(e) => {
            let want = if case.allowed { "allow" } else { "deny" };
            if e["decision"] != json!(want) || e["reason"] != json!(case.reason) {
                errs.push(format!("log entry {e}"));
            }
            if e["actor"] != json!(case.who.user_id) || e["actor_org"] != json!(case.who.msp) {
                errs.push("log entry actor".into());
            }
            if e["record_id"] != json!(case.record) {
                errs.push("log entry record".into());
            }
        }
    }
    match &out.tx.event {
        Some((name, payload)) if name == "AccessDecision" => {
            let p: Value = serde_json::from_slice(payload).unwrap_or_default();
            if p["allowed"] != v["allowed"] || p["event_id"] != v["event_id"] {
                errs.push("event payload differs from the result".into());
            }
            // The event carries the whole log entry (projections rely on it).
            if let (Some(entry), Some(obj)) = (w.event(event_id), p.as_object()) {
                let mut rest = obj.clone();
                rest.remove("allowed");
                if Value::Object(rest) != entry {
                    errs.push(format!(
                        "event payload {p} is not the log entry {entry} + allowed"
                    ));
                }
            }
        }
        other => errs.push(format!("chaincode event {other:?}")),
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

#[test]
fn decision_table() {
    let cases = table();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = run(case) {
            failures.push(format!("[{}] {e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn table_covers_every_denial_reason_and_every_role() {
    let cases = table();
    let denied: BTreeSet<&str> = cases
        .iter()
        .filter(|c| !c.allowed)
        .map(|c| c.reason.as_str())
        .collect();
    let all: BTreeSet<&str> = Reason::DENIALS.into_iter().collect();
    assert_eq!(denied, all, "denial reasons not covered");
    let allowed: BTreeSet<&str> = cases
        .iter()
        .filter(|c| c.allowed)
        .map(|c| c.reason.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        allowed,
        ["break_glass", "consent", "patient_self"]
            .into_iter()
            .collect()
    );
    let actors: BTreeSet<&str> = cases.iter().map(|c| c.who.name).collect();
    for a in cast().all() {
        assert!(actors.contains(a.name), "no case for {}", a.name);
    }
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
}
