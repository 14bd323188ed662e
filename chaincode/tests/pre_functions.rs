//! The threshold-PRE functions through `Chaincode::invoke` on `MemStub`:
//! the org key registry (`RegisterOrgKeys`, `GetOrgKeys`, `ListOrgKeys`),
//! `GetPreGrant`, and proxy admins reading a consent.

mod common;

use std::sync::OnceLock;

use common::{
    Actor, T0, World, actor, cast, event_name, lab_consent, pubkey, rejected, request, writes_under,
};
use ehr_chaincode::stub::{Stub, create_composite_key};
use serde_json::{Value, json};

/// An admin of Org4MSP (a proxy org in these scenarios).
fn adm4() -> &'static Actor {
    static A: OnceLock<Actor> = OnceLock::new();
    A.get_or_init(|| actor("adm4", "Org4MSP", "admin4", "admin", &[]))
}

/// `pubkey(n)` as the contract stores it.
fn canon(n: u8) -> String {
    format!("0x{}", pubkey(n))
}

fn keys(reader: u8, proxy: u8) -> Value {
    json!({"reader_public_key": pubkey(reader), "proxy_public_key": pubkey(proxy)})
}

/// A lab consent of p1 for dr-bob (Org2MSP) with a 2-of-2 PRE grant to
/// the proxies Org3MSP and Org4MSP.
fn pre_consent(id: &str) -> Value {
    let mut a = lab_consent(id, json!({"type":"user","id":"dr-bob","org":"Org2MSP"}));
    a["pre"] = json!({
        "grantee_public_key": pubkey(7), "verifying_key": pubkey(8),
        "threshold": 2, "shares": 2, "proxies": ["Org3MSP", "Org4MSP"],
        "kfrag_commitments": ["ab".repeat(32), "cd".repeat(32)],
    });
    a
}

fn event_id(v: &Value) -> String {
    v["event_id"].as_str().unwrap().to_string()
}

#[test]
fn register_org_keys_rules() {
    let c = cast();
    let mut w = World::new();
    // Bad or equal keys, unknown fields: 400, nothing written.
    for arg in [
        json!({"reader_public_key": "02abc", "proxy_public_key": pubkey(2)}),
        json!({"reader_public_key": pubkey(1), "proxy_public_key": format!("04{}", "ab".repeat(32))}),
        json!({"reader_public_key": pubkey(1)}),
        keys(1, 1),
        json!({"reader_public_key": pubkey(1), "proxy_public_key": canon(1)}),
        json!({"reader_public_key": pubkey(1), "proxy_public_key": pubkey(2), "org": "Org2MSP"}),
    ] {
        rejected(
            &w.call(&c.adm1, "RegisterOrgKeys", arg.clone()),
            "invalid_argument",
        );
    }
    // Only admins, for their own org.
    for who in [&c.clin1, &c.pat1, &c.aud1, &c.bob] {
        rejected(&w.call(who, "RegisterOrgKeys", keys(1, 2)), "forbidden");
    }

    let o = w.call(&c.adm1, "RegisterOrgKeys", keys(1, 2));
    let first = o.json();
    assert_eq!(
        first,
        json!({"org": "Org1MSP", "reader_public_key": canon(1), "proxy_public_key": canon(2),
               "registered_by": "admin1", "registered_at": "2023-11-14T22:13:20Z",
               "tx_id": o.tx.tx_id})
    );
    assert_eq!(writes_under(&o.tx, "ehr.orgkeys"), 1);
    assert_eq!(o.tx.writes.len(), 1);
    assert_eq!(event_name(&o), "OrgKeysRegistered");
    let (_, payload) = o.tx.event.clone().unwrap();
    let ev: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        ev,
        json!({"org": "Org1MSP", "reader_public_key": canon(1), "proxy_public_key": canon(2),
               "tx_id": o.tx.tx_id})
    );

    // The same keys again (in another encoding): nothing written, no event,
    // the existing entry answered.
    w.now = T0 + 60;
    let o = w.call(
        &c.adm1,
        "RegisterOrgKeys",
        json!({"reader_public_key": canon(1), "proxy_public_key": pubkey(2).to_uppercase()}),
    );
    assert_eq!(o.json(), first);
    assert!(o.tx.writes.is_empty(), "{:?}", o.tx.writes);
    assert!(o.tx.event.is_none());
    // Still admin-only when nothing would change.
    rejected(
        &w.call(&c.clin1, "RegisterOrgKeys", keys(1, 2)),
        "forbidden",
    );

    // Rotation: new entry, new event; the key's history has both.
    w.now = T0 + 120;
    let o = w.call(&c.adm1, "RegisterOrgKeys", keys(1, 3));
    let rotated = o.json();
    assert_eq!(event_name(&o), "OrgKeysRegistered");
    assert_eq!(rotated["proxy_public_key"], canon(3));
    assert_eq!(rotated["reader_public_key"], canon(1));
    assert_eq!(rotated["registered_at"], common::at(120));
    assert_eq!(rotated["tx_id"], o.tx.tx_id);
    assert_eq!(
        w.ok(&c.dave, "GetOrgKeys", json!({"org": "Org1MSP"})),
        rotated
    );
    let key = create_composite_key("ehr.orgkeys", &["Org1MSP"]).unwrap();
    let history = w.stub.get_history_for_key(&key).unwrap();
    assert_eq!(history.len(), 2);
    let old: Value = serde_json::from_slice(&history[0].value).unwrap();
    let new: Value = serde_json::from_slice(&history[1].value).unwrap();
    assert_eq!((&old, &new), (&first, &rotated));

    // Another org's admin registers its own org only.
    let o = w.call(&c.adm2, "RegisterOrgKeys", keys(1, 3));
    assert_eq!(o.json()["org"], "Org2MSP");
    assert_eq!(
        w.ok(&c.dave, "GetOrgKeys", json!({"org": "Org1MSP"}))["tx_id"],
        rotated["tx_id"]
    );
}

#[test]
fn get_and_list_org_keys() {
    let c = cast();
    let mut w = World::new();
    rejected(
        &w.call(&c.dave, "GetOrgKeys", json!({"org": "Org1MSP"})),
        "not_found",
    );
    rejected(
        &w.call(&c.dave, "GetOrgKeys", json!({"org": "Org/1"})),
        "invalid_argument",
    );
    rejected(
        &w.call(&c.dave, "GetOrgKeys", json!({})),
        "invalid_argument",
    );
    assert_eq!(w.ok(&c.dave, "ListOrgKeys", json!({})), json!({"orgs": []}));
    // Registered out of order; listed in org order.
    for (i, who) in [&c.adm3, &c.adm1, &c.adm2].into_iter().enumerate() {
        let n = 10 * (i as u8 + 1);
        w.ok(who, "RegisterOrgKeys", keys(n, n + 1));
    }
    let got = w.ok(&c.pat1, "GetOrgKeys", json!({"org": "Org2MSP"}));
    assert_eq!(got["reader_public_key"], canon(30));
    assert_eq!(got["proxy_public_key"], canon(31));
    assert_eq!(got["registered_by"], "admin2");

    let orgs = |v: &Value| -> Vec<String> {
        v["orgs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["org"].as_str().unwrap().to_string())
            .collect()
    };
    let p1 = w.ok(&c.bob, "ListOrgKeys", json!({"limit": 2}));
    assert_eq!(orgs(&p1), ["Org1MSP", "Org2MSP"]);
    assert_eq!(p1["orgs"][1], got);
    let bookmark = p1["bookmark"].clone();
    assert!(bookmark.is_string());
    let p2 = w.ok(
        &c.aud1,
        "ListOrgKeys",
        json!({"limit": 2, "bookmark": bookmark}),
    );
    assert_eq!(orgs(&p2), ["Org3MSP"]);
    assert!(p2.get("bookmark").is_none());
    assert_eq!(
        orgs(&w.ok(&c.pat1, "ListOrgKeys", json!({}))),
        ["Org1MSP", "Org2MSP", "Org3MSP"]
    );
    for arg in [
        json!({"limit": 0}),
        json!({"limit": 1001}),
        json!({"bookmark": "zz"}),
        json!({"bookmark": hex::encode("\u{0}ehr.patient\u{0}p1\u{0}")}),
        json!({"org": "Org1MSP"}),
    ] {
        rejected(&w.call(&c.bob, "ListOrgKeys", arg), "invalid_argument");
    }
    // Queries write nothing.
    for (f, arg) in [
        ("GetOrgKeys", json!({"org": "Org1MSP"})),
        ("ListOrgKeys", json!({"limit": 1})),
    ] {
        let o = w.call(&c.dave, f, arg);
        assert!(o.ok(), "{f}: {}", o.response.message);
        assert!(o.tx.writes.is_empty() && o.tx.event.is_none(), "{f} wrote");
    }
}

#[test]
fn get_pre_grant_visibility_and_answer() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    let granted = w.ok(&c.pat1, "GrantConsent", pre_consent("c-pre"));
    // A consent without PRE, for dr-carol.
    w.ok(
        &c.pat1,
        "GrantConsent",
        lab_consent(
            "c-plain",
            json!({"type":"user","id":"dr-carol","org":"Org2MSP"}),
        ),
    );
    w.now = T0 + 100;
    let d = request(&mut w, &c.bob, "r-lab", "TREAT", None);
    assert_eq!(d["consent_id"], "c-pre");
    let ev = event_id(&d);

    let want = json!({
        "event_id": ev, "record_id": "r-lab", "patient_id": "p1", "patient_org": "Org1MSP",
        "actor": "dr-bob", "actor_org": "Org2MSP", "time_unix": T0 + 100, "decision": "allow",
        "current": true, "consent_id": "c-pre", "consent_status": "active",
        "capsule_ref": "capsule:r-lab", "patient_public_key": canon(1),
        "pre": {
            "grantee_public_key": canon(7), "verifying_key": canon(8),
            "threshold": 2, "shares": 2, "proxies": ["Org3MSP", "Org4MSP"],
            "kfrag_commitments": ["ab".repeat(32), "cd".repeat(32)],
        },
    });
    assert_eq!(want["pre"], granted["pre"]);
    // The reader's gateway (actor-org admin) and each proxy-org admin.
    for who in [&c.adm2, &c.adm3, adm4()] {
        let o = w.call(who, "GetPreGrant", json!({"event_id": ev}));
        assert_eq!(o.json(), want, "{}", who.name);
        assert!(o.tx.writes.is_empty() && o.tx.event.is_none());
    }
    // Not: the home-org admin (not a proxy), the actor himself, another
    // clinician of the actor org, a proxy-org clinician, the patient, auditors.
    for who in [
        &c.adm1, &c.bob, &c.carol, &c.dave, &c.pat1, &c.aud1, &c.aud2,
    ] {
        rejected(
            &w.call(who, "GetPreGrant", json!({"event_id": ev})),
            "forbidden",
        );
    }
    rejected(
        &w.call(&c.adm2, "GetPreGrant", json!({"event_id": "0".repeat(64)})),
        "not_found",
    );
    rejected(
        &w.call(&c.adm2, "GetPreGrant", json!({"event_id": "a b"})),
        "invalid_argument",
    );
    rejected(
        &w.call(&c.adm2, "GetPreGrant", json!({"event_id": ev, "x": 1})),
        "invalid_argument",
    );

    // No consent decided a patient's own read: 409 (for the actor-org admin).
    let own = event_id(&request(&mut w, &c.pat1, "r-img", "TREAT", None));
    let o = w.call(&c.adm1, "GetPreGrant", json!({"event_id": own}));
    assert!(o.response.message.contains("not decided by a consent"));
    rejected(&o, "conflict");
    rejected(
        &w.call(&c.adm3, "GetPreGrant", json!({"event_id": own})),
        "forbidden",
    );
    // Nor a break-glass read, nor a denial.
    let bg = event_id(&request(&mut w, &c.dave, "r-note", "ETREAT", Some("ER")));
    rejected(
        &w.call(&c.adm3, "GetPreGrant", json!({"event_id": bg})),
        "conflict",
    );
    let denied = event_id(&request(&mut w, &c.dave, "r-lab", "TREAT", None));
    rejected(
        &w.call(&c.adm3, "GetPreGrant", json!({"event_id": denied})),
        "conflict",
    );
    // A consent without a PRE grant: 409; its proxies are nobody's, so a
    // proxy org of another consent gets 403.
    let plain = request(&mut w, &c.carol, "r-lab", "TREAT", None);
    assert_eq!(plain["consent_id"], "c-plain");
    let plain = event_id(&plain);
    let o = w.call(&c.adm2, "GetPreGrant", json!({"event_id": plain}));
    assert!(o.response.message.contains("has no PRE grant"));
    rejected(&o, "conflict");
    rejected(
        &w.call(&c.adm3, "GetPreGrant", json!({"event_id": plain})),
        "forbidden",
    );
}

#[test]
fn get_pre_grant_currency_follows_get_access_event() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    w.ok(&c.pat1, "GrantConsent", pre_consent("c-pre"));
    let mut expiring = pre_consent("c-pre2");
    expiring["scope"] = json!({"categories": ["imaging"]});
    expiring["not_after"] = json!(common::at(1000));
    w.ok(&c.pat1, "GrantConsent", expiring);
    let mut note = pre_consent("c-pre3");
    note["scope"] = json!({"categories": ["note"]});
    w.ok(&c.pat1, "GrantConsent", note);
    let on_lab = event_id(&request(&mut w, &c.bob, "r-lab", "TREAT", None));
    let on_img = event_id(&request(&mut w, &c.bob, "r-img", "TREAT", None));
    let on_note = event_id(&request(&mut w, &c.bob, "r-note", "TREAT", None));

    // (current, consent_status) by GetPreGrant, checked against GetAccessEvent.
    let state = |w: &mut World, ev: &str| -> (bool, String) {
        let g = w.ok(&c.adm3, "GetPreGrant", json!({"event_id": ev}));
        let e = w.ok(&c.adm3, "GetAccessEvent", json!({"event_id": ev}));
        assert_eq!(g["current"], e["current"], "{ev}");
        (
            g["current"].as_bool().unwrap(),
            g["consent_status"].as_str().unwrap().to_string(),
        )
    };
    for ev in [&on_lab, &on_img, &on_note] {
        assert_eq!(state(&mut w, ev), (true, "active".into()));
    }

    // Revocation.
    w.now = T0 + 10;
    w.ok(&c.pat1, "RevokeConsent", json!({"consent_id": "c-pre"}));
    assert_eq!(state(&mut w, &on_lab), (false, "revoked".into()));
    assert_eq!(state(&mut w, &on_note), (true, "active".into()));

    // Erasure: still answered, capsule_ref as stored, not current.
    w.ok(&c.pat1, "EraseRecord", json!({"record_id": "r-note"}));
    assert_eq!(state(&mut w, &on_note), (false, "active".into()));
    let g = w.ok(adm4(), "GetPreGrant", json!({"event_id": on_note}));
    assert_eq!(g["capsule_ref"], "capsule:r-note");
    assert_eq!(g["decision"], "allow");

    // Expiry of the consent's window.
    assert_eq!(state(&mut w, &on_img), (true, "active".into()));
    w.now = T0 + 1000;
    assert_eq!(state(&mut w, &on_img), (false, "expired".into()));
}

#[test]
fn proxy_admins_may_read_the_consent() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    w.ok(&c.pat1, "GrantConsent", pre_consent("c-pre"));
    w.ok(
        &c.pat1,
        "GrantConsent",
        lab_consent("c-plain", json!({"type":"org","org":"Org3MSP"})),
    );
    for who in [&c.adm3, adm4()] {
        let o = w.call(who, "GetConsent", json!({"consent_id": "c-pre"}));
        let v = o.json();
        assert_eq!(v["status"], "active");
        assert_eq!(v["pre"]["kfrag_commitments"][1], "cd".repeat(32));
        assert!(o.tx.writes.is_empty() && o.tx.event.is_none());
    }
    // Not another org's admin, a proxy org's clinician, or a proxy admin
    // for a consent it is no proxy of; listing stays as it was.
    for who in [&c.adm2, &c.dave] {
        rejected(
            &w.call(who, "GetConsent", json!({"consent_id": "c-pre"})),
            "forbidden",
        );
    }
    rejected(
        &w.call(&c.adm3, "GetConsent", json!({"consent_id": "c-plain"})),
        "forbidden",
    );
    rejected(
        &w.call(&c.adm3, "ListConsents", json!({"patient_id": "p1"})),
        "forbidden",
    );
    // The patient, a home-org admin and auditors still read it.
    for who in [&c.pat1, &c.adm1, &c.aud2] {
        w.ok(who, "GetConsent", json!({"consent_id": "c-pre"}));
    }
}

/// An allowed `RequestAccess` answer carries the record's metadata (what a
/// break-glass reader needs to fetch it); a denial and the event do not.
#[test]
fn allowed_decisions_carry_the_record_metadata() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    w.now = T0 + 10;
    // Break-glass by a clinician of another org, who may not read metadata.
    let meta = w.call(&c.bob, "GetRecord", json!({"record_id": "r-lab"}));
    rejected(&meta, "forbidden");
    let o = w.call(
        &c.bob,
        "RequestAccess",
        json!({"record_id": "r-lab", "action": "read", "purpose": "ETREAT", "justification": "unconscious patient"}),
    );
    let d = o.json();
    assert_eq!(d["allowed"], true);
    assert_eq!(d["record"]["record_id"], "r-lab");
    assert_eq!(d["record"]["capsule_ref"], "capsule:r-lab");
    assert!(d["record"]["sha256"].as_str().is_some());
    let (name, payload) = o.tx.event.clone().expect("an event");
    assert_eq!(name, "AccessDecision");
    let ev: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(ev["allowed"], true);
    assert!(
        ev.get("record").is_none(),
        "the event carries no record: {ev}"
    );
    // A denial carries nothing.
    let d = request(&mut w, &c.bob, "r-lab", "TREAT", None);
    assert_eq!(d["allowed"], false);
    assert!(d.get("record").is_none());
}
