//! Every contract function through `Chaincode::invoke` on `MemStub`: the
//! happy paths, who may call them, input validation, and that a rejected
//! call writes nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{
    Outcome, T0, World, actor, at, cast, event_name, lab_consent, pubkey, record_args, rejected,
    request,
};
use ehr_chaincode::Chaincode;
use ehr_chaincode::contract::EhrContract;
use ehr_chaincode::memstub::MemStub;
use ehr_chaincode::stub::TxTimestamp;
use prost::Message;
use serde_json::{Value, json};

#[test]
fn register_patient_rules() {
    let c = cast();
    let mut w = World::new();
    let arg = json!({"patient_id":"p1","pre_public_key":pubkey(1)});
    rejected(
        &w.call(&c.clin1, "RegisterPatient", arg.clone()),
        "forbidden",
    );
    rejected(
        &w.call(
            &c.adm2,
            "RegisterPatient",
            json!({"patient_id":"p1","home_org":"Org1MSP","pre_public_key":pubkey(1)}),
        ),
        "forbidden",
    );
    rejected(
        &w.call(&c.pat2, "RegisterPatient", arg.clone()),
        "forbidden",
    );
    rejected(
        &w.call(
            &c.pat1_fake,
            "RegisterPatient",
            json!({"patient_id":"p1","home_org":"Org1MSP","pre_public_key":pubkey(1)}),
        ),
        "forbidden",
    );
    rejected(
        &w.call(
            &c.pat1,
            "RegisterPatient",
            json!({"patient_id":"p1","pre_public_key":"02abc"}),
        ),
        "invalid_argument",
    );
    rejected(
        &w.call(
            &c.pat1,
            "RegisterPatient",
            json!({"patient_id":"p/1","pre_public_key":pubkey(1)}),
        ),
        "invalid_argument",
    );
    rejected(
        &w.call(
            &c.pat1,
            "RegisterPatient",
            json!({"patient_id":"p1","pre_public_key":pubkey(1),"name":"Jane"}),
        ),
        "invalid_argument",
    );

    let o = w.call(&c.pat1, "RegisterPatient", arg.clone());
    let p = o.json();
    assert_eq!(event_name(&o), "PatientRegistered");
    assert_eq!(p["home_org"], "Org1MSP");
    assert_eq!(p["pre_public_key"], format!("0x{}", pubkey(1)));
    assert_eq!(p["registered_at"], "2023-11-14T22:13:20Z");
    assert_eq!(p["registered_by"], "pat1");
    rejected(&w.call(&c.adm1, "RegisterPatient", arg), "conflict");

    // A home-org admin registers for the patient; anyone may read it.
    w.ok(
        &c.adm1,
        "RegisterPatient",
        json!({"patient_id":"p2","pre_public_key":pubkey(2)}),
    );
    let got = w.ok(&c.dave, "GetPatient", json!({"patient_id":"p1"}));
    assert_eq!(got, p);
    rejected(
        &w.call(&c.dave, "GetPatient", json!({"patient_id":"p9"})),
        "not_found",
    );
}

#[test]
fn add_record_rules() {
    let c = cast();
    let mut w = World::new();
    rejected(
        &w.call(&c.clin1, "AddRecord", record_args("r1", "p1", "lab")),
        "not_found",
    );
    w.ok(
        &c.pat1,
        "RegisterPatient",
        json!({"patient_id":"p1","pre_public_key":pubkey(1)}),
    );
    w.ok(
        &c.pat2,
        "RegisterPatient",
        json!({"patient_id":"p2","pre_public_key":pubkey(2)}),
    );

    for who in [&c.bob, &c.adm2, &c.aud1, &c.pat2, &c.pat1_fake] {
        rejected(
            &w.call(who, "AddRecord", record_args("r1", "p1", "lab")),
            "forbidden",
        );
    }
    let mut bad = Vec::new();
    for (field, v) in [
        ("cid", json!("QmNotACid")),
        ("cid", json!("bafy-../../etc")),
        ("sha256", json!("ABCDEF")),
        ("size", json!(-1)),
        ("size", json!(64u64 * 1024 * 1024 * 1024 + 1)),
        ("content_type", json!("not a mime")),
        ("capsule_ref", json!("")),
        ("category", json!("xray")),
        ("record_id", json!("../r1")),
        ("supersedes", json!("a b")),
    ] {
        let mut a = record_args("r1", "p1", "lab");
        a[field] = v;
        bad.push(a);
    }
    for a in bad {
        rejected(
            &w.call(&c.clin1, "AddRecord", a.clone()),
            "invalid_argument",
        );
    }

    let o = w.call(&c.clin1, "AddRecord", record_args("r1", "p1", "lab"));
    let r = o.json();
    assert_eq!(event_name(&o), "RecordAdded");
    assert_eq!(r["uploader"], "dr-alice");
    assert_eq!(r["uploader_org"], "Org1MSP");
    assert_eq!(r["erased"], false);
    assert_eq!(r["tx_id"], o.tx.tx_id);
    rejected(
        &w.call(&c.pat1, "AddRecord", record_args("r1", "p1", "lab")),
        "conflict",
    );

    // Patient and home admin may add; the id defaults to r- + tx id prefix.
    let mut a = record_args("x", "p1", "imaging");
    a.as_object_mut().unwrap().remove("record_id");
    let o = w.call(&c.pat1, "AddRecord", a);
    assert_eq!(o.json()["record_id"], format!("r-{}", &o.tx.tx_id[..24]));
    let mut a = record_args("r2", "p1", "note");
    a["supersedes"] = json!("r1");
    a["size"] = json!(0);
    w.ok(&c.adm1, "AddRecord", a);
    w.ok(&c.pat2, "AddRecord", record_args("q1", "p2", "lab"));
    let mut a = record_args("r3", "p1", "note");
    a["supersedes"] = json!("nope");
    rejected(&w.call(&c.clin1, "AddRecord", a), "not_found");
    let mut a = record_args("r3", "p1", "note");
    a["supersedes"] = json!("q1");
    rejected(&w.call(&c.clin1, "AddRecord", a), "invalid_argument");
}

#[test]
fn record_visibility_and_erasure() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    let ids = |v: &Value| -> BTreeSet<String> {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["record_id"].as_str().unwrap().to_string())
            .collect()
    };
    let all: BTreeSet<String> = ["r-erased", "r-img", "r-lab", "r-note"]
        .map(String::from)
        .into();
    for who in [&c.pat1, &c.clin1, &c.adm1, &c.aud2] {
        assert_eq!(
            ids(&w.ok(who, "ListRecords", json!({"patient_id":"p1"}))),
            all,
            "{}",
            who.name
        );
    }
    // Without consent another org sees nothing and may not get a record.
    assert!(ids(&w.ok(&c.bob, "ListRecords", json!({"patient_id":"p1"}))).is_empty());
    rejected(
        &w.call(&c.bob, "GetRecord", json!({"record_id":"r-lab"})),
        "forbidden",
    );
    rejected(
        &w.call(&c.bob, "GetRecord", json!({"record_id":"r-zzz"})),
        "not_found",
    );
    // A lab consent shows lab records (the erased one included, flagged).
    w.ok(
        &c.pat1,
        "GrantConsent",
        lab_consent("c1", json!({"type":"user","id":"dr-bob","org":"Org2MSP"})),
    );
    let seen = ids(&w.ok(&c.bob, "ListRecords", json!({"patient_id":"p1"})));
    assert_eq!(seen, ["r-erased", "r-lab"].map(String::from).into());
    assert_eq!(
        w.ok(&c.bob, "GetRecord", json!({"record_id":"r-lab"}))["category"],
        "lab"
    );
    rejected(
        &w.call(&c.bob, "GetRecord", json!({"record_id":"r-img"})),
        "forbidden",
    );
    // Pagination over records.
    let p1 = w.ok(&c.pat1, "ListRecords", json!({"patient_id":"p1","limit":3}));
    assert_eq!(p1["records"].as_array().unwrap().len(), 3);
    let p2 = w.ok(
        &c.pat1,
        "ListRecords",
        json!({"patient_id":"p1","limit":3,"bookmark":p1["bookmark"]}),
    );
    assert_eq!(p2["records"].as_array().unwrap().len(), 1);
    assert!(p2.get("bookmark").is_none());
    // Erasure: patient or home admin, once.
    rejected(
        &w.call(&c.clin1, "EraseRecord", json!({"record_id":"r-lab"})),
        "forbidden",
    );
    rejected(
        &w.call(&c.adm2, "EraseRecord", json!({"record_id":"r-lab"})),
        "forbidden",
    );
    rejected(
        &w.call(&c.pat1, "EraseRecord", json!({"record_id":"r-erased"})),
        "conflict",
    );
    let o = w.call(&c.adm1, "EraseRecord", json!({"record_id":"r-lab"}));
    assert_eq!(o.json()["erased"], true);
    assert_eq!(o.json()["erased_by"], "admin1");
    assert_eq!(event_name(&o), "RecordErased");
    assert_eq!(
        request(&mut w, &c.bob, "r-lab", "TREAT", None)["reason"],
        "record_erased"
    );
}

#[test]
fn grant_consent_validation() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    w.now = T0 + 10;
    let base = lab_consent("c1", json!({"type":"user","id":"dr-bob","org":"Org2MSP"}));
    let variants: Vec<(&str, Value)> = vec![
        ("actions", json!(["write"])),
        ("actions", json!([])),
        ("actions", json!(["read", "read"])),
        ("actions", json!(["read", "delete"])),
        ("purposes", json!([])),
        ("purposes", json!(["TREAT", "TREAT"])),
        ("purposes", json!(["treat"])),
        ("scope", json!({})),
        ("scope", json!({"categories": [], "records": []})),
        ("scope", json!({"categories": ["lab", "lab"]})),
        ("scope", json!({"records": ["bad id"]})),
        ("grantee", json!({"type":"user","id":"dr-bob"})),
        ("grantee", json!({"type":"user","org":"Org2MSP"})),
        ("grantee", json!({"type":"org"})),
        ("grantee", json!({"type":"org","org":"Org2MSP","id":"x"})),
        ("grantee", json!({"type":"role","org":"Org2MSP"})),
        ("grantee", json!({"type":"role","role":"surgeon"})),
        ("grantee", json!({"type":"group","org":"Org2MSP"})),
        ("not_after", json!(at(5))),
        ("not_after", json!("tomorrow")),
        ("not_before", json!("2023-11-14 22:13:20Z")),
        ("conditions", json!({"department": []})),
        ("conditions", json!({"department": ["a", "a"]})),
        ("conditions", json!({"bad name": "x"})),
        ("conditions", json!({"department": ""})),
        ("conditions", json!({"department": 5})),
        ("consent_id", json!("c/1")),
        ("unexpected", json!(1)),
    ];
    for (field, v) in variants {
        let mut a = base.clone();
        a[field] = v.clone();
        let o = w.call(&c.pat1, "GrantConsent", a);
        assert_eq!(
            o.code(),
            "invalid_argument",
            "{field}={v}: {}",
            o.response.message
        );
        rejected(&o, "invalid_argument");
    }
    let mut a = base.clone();
    a["not_before"] = json!(at(500));
    a["not_after"] = json!(at(500));
    rejected(&w.call(&c.pat1, "GrantConsent", a), "invalid_argument");
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("a{i}"), json!("v"))).collect();
    let mut a = base.clone();
    a["conditions"] = Value::Object(many);
    rejected(&w.call(&c.pat1, "GrantConsent", a), "invalid_argument");
    // Scoped records must exist and be the patient's.
    let mut a = base.clone();
    a["scope"] = json!({"records": ["r-missing"]});
    rejected(&w.call(&c.pat1, "GrantConsent", a), "not_found");
    let mut a = base.clone();
    a["scope"] = json!({"records": ["r2-lab"]});
    rejected(&w.call(&c.pat1, "GrantConsent", a), "invalid_argument");
    // Who may grant.
    for who in [&c.clin1, &c.adm2, &c.pat2, &c.pat1_fake, &c.aud1, &c.bob] {
        rejected(&w.call(who, "GrantConsent", base.clone()), "forbidden");
    }
    let mut a = base.clone();
    a["patient_id"] = json!("p-unknown");
    rejected(&w.call(&c.pat1, "GrantConsent", a), "not_found");

    let o = w.call(&c.pat1, "GrantConsent", base.clone());
    let v = o.json();
    assert_eq!(v["status"], "active");
    assert_eq!(v["delegate"], false);
    assert_eq!(v["granted_by"], "pat1");
    assert_eq!(event_name(&o), "ConsentGranted");
    rejected(&w.call(&c.pat1, "GrantConsent", base.clone()), "conflict");

    // Delegate grant by a home-org admin, derived id, offset times normalised to Z.
    let mut a = base.clone();
    a.as_object_mut().unwrap().remove("consent_id");
    a["not_before"] = json!("2023-11-15T00:30:00+02:00");
    let o = w.call(&c.adm1, "GrantConsent", a);
    let v = o.json();
    assert_eq!(v["consent_id"], format!("c-{}", &o.tx.tx_id[..24]));
    assert_eq!(v["delegate"], true);
    assert_eq!(v["status"], "pending");
    assert_eq!(v["not_before"], "2023-11-14T22:30:00Z");
    let (_, payload) = o.tx.event.clone().unwrap();
    let ev: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(ev["delegate"], true);
}

#[test]
fn pre_grant_validation() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    let pre = |t: u32, n: u32, proxies: &[&str], commits: usize| {
        let mut a = lab_consent(
            "c-pre",
            json!({"type":"user","id":"dr-bob","org":"Org2MSP"}),
        );
        a["pre"] = json!({
            "grantee_public_key": format!("0x{}", pubkey(7)),
            "verifying_key": pubkey(8),
            "threshold": t, "shares": n, "proxies": proxies,
            "kfrag_commitments": vec!["ab".repeat(32); commits],
        });
        a
    };
    for a in [
        pre(0, 2, &["Org1MSP", "Org2MSP"], 2),
        pre(3, 2, &["Org1MSP", "Org2MSP"], 2),
        pre(1, 2, &["Org1MSP", "Org1MSP"], 2),
        pre(1, 2, &["Org1MSP"], 2),
        pre(1, 2, &["Org1MSP", "Org2MSP"], 1),
        pre(1, 17, &[], 0),
    ] {
        rejected(&w.call(&c.pat1, "GrantConsent", a), "invalid_argument");
    }
    let mut a = pre(2, 3, &["Org1MSP", "Org2MSP", "Org3MSP"], 3);
    a["pre"]["grantee_public_key"] = json!("nope");
    rejected(&w.call(&c.pat1, "GrantConsent", a), "invalid_argument");
    // The kfrags' verifying key is required and must be a key.
    let mut a = pre(2, 3, &["Org1MSP", "Org2MSP", "Org3MSP"], 3);
    a["pre"].as_object_mut().unwrap().remove("verifying_key");
    let o = w.call(&c.pat1, "GrantConsent", a);
    assert!(
        o.response.message.contains("pre.verifying_key is required"),
        "{}",
        o.response.message
    );
    rejected(&o, "invalid_argument");
    let mut a = pre(2, 3, &["Org1MSP", "Org2MSP", "Org3MSP"], 3);
    a["pre"]["verifying_key"] = json!("04abc");
    rejected(&w.call(&c.pat1, "GrantConsent", a), "invalid_argument");
    let mut a = pre(2, 3, &["Org1MSP", "Org2MSP", "Org3MSP"], 3);
    a["pre"]["grantee_public_key"] = json!(pubkey(7));
    a["pre"]["verifying_key"] = json!(pubkey(8).to_uppercase());
    let v = w.ok(&c.pat1, "GrantConsent", a);
    assert_eq!(v["pre"]["grantee_public_key"], format!("0x{}", pubkey(7)));
    assert_eq!(v["pre"]["verifying_key"], format!("0x{}", pubkey(8)));
    assert_eq!(v["pre"]["threshold"], 2);
    let stored = w.ok(&c.pat1, "GetConsent", json!({"consent_id":"c-pre"}));
    assert_eq!(stored["pre"]["verifying_key"], format!("0x{}", pubkey(8)));
}

#[test]
fn revoke_and_list_consents() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    for i in 0..5 {
        w.ok(
            &c.pat1,
            "GrantConsent",
            lab_consent(&format!("c{i}"), json!({"type":"org","org":"Org2MSP"})),
        );
    }
    rejected(
        &w.call(&c.bob, "RevokeConsent", json!({"consent_id":"c1"})),
        "forbidden",
    );
    rejected(
        &w.call(&c.adm2, "RevokeConsent", json!({"consent_id":"c1"})),
        "forbidden",
    );
    rejected(
        &w.call(&c.pat1, "RevokeConsent", json!({"consent_id":"nope"})),
        "not_found",
    );
    w.now = T0 + 100;
    let o = w.call(&c.pat1, "RevokeConsent", json!({"consent_id":"c1"}));
    assert_eq!(o.json()["status"], "revoked");
    assert_eq!(o.json()["revoked_at"], at(100));
    assert_eq!(o.json()["revoked_by_delegate"], false);
    assert_eq!(event_name(&o), "ConsentRevoked");
    rejected(
        &w.call(&c.adm1, "RevokeConsent", json!({"consent_id":"c1"})),
        "conflict",
    );
    assert_eq!(
        w.ok(&c.adm1, "RevokeConsent", json!({"consent_id":"c2"}))["revoked_by_delegate"],
        true
    );

    for who in [&c.bob, &c.clin1, &c.adm2, &c.pat2] {
        rejected(
            &w.call(who, "ListConsents", json!({"patient_id":"p1"})),
            "forbidden",
        );
        rejected(
            &w.call(who, "GetConsent", json!({"consent_id":"c0"})),
            "forbidden",
        );
    }
    assert_eq!(
        w.ok(&c.aud2, "GetConsent", json!({"consent_id":"c1"}))["status"],
        "revoked"
    );
    for who in [&c.pat1, &c.adm1, &c.aud1, &c.aud2] {
        let mut statuses = Vec::new();
        let mut bookmark = Value::Null;
        loop {
            let mut arg = json!({"patient_id":"p1","limit":2});
            if !bookmark.is_null() {
                arg["bookmark"] = bookmark.clone();
            }
            let page = w.ok(who, "ListConsents", arg);
            let items = page["consents"].as_array().unwrap();
            assert!(items.len() <= 2);
            statuses.extend(
                items
                    .iter()
                    .map(|c| (c["consent_id"].clone(), c["status"].clone())),
            );
            bookmark = page.get("bookmark").cloned().unwrap_or(Value::Null);
            if bookmark.is_null() {
                break;
            }
        }
        let want: Vec<(Value, Value)> = ["active", "revoked", "revoked", "active", "active"]
            .iter()
            .enumerate()
            .map(|(i, s)| (json!(format!("c{i}")), json!(s)))
            .collect();
        assert_eq!(statuses, want);
    }
}

#[test]
fn access_log_queries_and_visibility() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    w.ok(
        &c.pat1,
        "GrantConsent",
        lab_consent("c1", json!({"type":"org","org":"Org2MSP"})),
    );
    // Ten decisions at distinct times.
    let plan: Vec<(&common::Actor, &str, &str, Option<&str>)> = vec![
        (&c.bob, "r-lab", "TREAT", None),          // allow consent (t+100)
        (&c.bob, "r-img", "TREAT", None),          // deny out_of_scope
        (&c.carol, "r-lab", "HPAYMT", None),       // deny purpose
        (&c.dave, "r-note", "ETREAT", Some("ER")), // allow break-glass
        (&c.pat1, "r-img", "TREAT", None),         // allow self
        (&c.clin1, "r-lab", "TREAT", None),        // deny grantee
        (&c.aud1, "r-lab", "TREAT", None),         // deny role
        (&c.pat2, "r2-lab", "TREAT", None),        // allow self (p2)
        (&c.bob, "r-nope", "TREAT", None),         // deny not found
        (&c.clin1, "r-img", "ETREAT", Some("code blue")), // allow break-glass
    ];
    let mut ids = Vec::new();
    for (i, (who, rec, purpose, j)) in plan.iter().enumerate() {
        w.now = T0 + 100 * (i as i64 + 1);
        ids.push(
            request(&mut w, who, rec, purpose, *j)["event_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let events = |v: &Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_string())
            .collect()
    };
    let pick = |idx: &[usize]| -> Vec<String> { idx.iter().map(|&i| ids[i].clone()).collect() };

    // Auditor: everything, in time order; filters.
    let all = w.ok(&c.aud2, "QueryAccessLog", json!({}));
    assert_eq!(events(&all), ids);
    assert_eq!(
        events(&w.ok(&c.aud1, "QueryAccessLog", json!({"break_glass": true}))),
        pick(&[3, 9])
    );
    assert_eq!(
        events(&w.ok(&c.aud1, "QueryAccessLog", json!({"decision": "allow"}))),
        pick(&[0, 3, 4, 7, 9])
    );
    assert_eq!(
        events(&w.ok(&c.aud1, "QueryAccessLog", json!({"purpose": "HPAYMT"}))),
        pick(&[2])
    );
    assert_eq!(
        events(&w.ok(&c.aud1, "QueryAccessLog", json!({"org": "Org2MSP"}))),
        pick(&[0, 1, 2, 8])
    );
    assert_eq!(
        events(&w.ok(
            &c.aud1,
            "QueryAccessLog",
            json!({"actor": "dr-bob", "decision": "deny"})
        )),
        pick(&[1, 8])
    );
    assert_eq!(
        events(&w.ok(&c.aud1, "QueryAccessLog", json!({"patient_id": "p1"}))),
        pick(&[0, 1, 2, 3, 4, 5, 6, 9])
    );
    assert_eq!(
        events(&w.ok(
            &c.aud1,
            "QueryAccessLog",
            json!({"from": at(300), "to": at(700)})
        )),
        pick(&[2, 3, 4, 5])
    );
    assert_eq!(
        events(&w.ok(
            &c.aud1,
            "QueryAccessLog",
            json!({"patient_id":"p1","from": at(300), "to": at(700), "break_glass": false})
        )),
        pick(&[2, 4, 5])
    );
    // Paging: 3 at a time covers everything once, in order.
    let mut got = Vec::new();
    let mut bookmark = Value::Null;
    loop {
        let mut arg = json!({"limit": 3});
        if !bookmark.is_null() {
            arg["bookmark"] = bookmark.clone();
        }
        let page = w.ok(&c.aud1, "QueryAccessLog", arg);
        got.extend(events(&page));
        bookmark = page.get("bookmark").cloned().unwrap_or(Value::Null);
        if bookmark.is_null() {
            break;
        }
    }
    assert_eq!(got, ids);
    // A bookmark only works for the query that made it.
    let page = w.ok(
        &c.aud1,
        "QueryAccessLog",
        json!({"limit": 1, "org": "Org2MSP"}),
    );
    rejected(
        &w.call(
            &c.aud1,
            "QueryAccessLog",
            json!({"limit": 1, "org": "Org3MSP", "bookmark": page["bookmark"]}),
        ),
        "invalid_argument",
    );
    rejected(
        &w.call(&c.aud1, "QueryAccessLog", json!({"bookmark": "zz"})),
        "invalid_argument",
    );
    rejected(
        &w.call(&c.aud1, "QueryAccessLog", json!({"limit": 0})),
        "invalid_argument",
    );
    rejected(
        &w.call(&c.aud1, "QueryAccessLog", json!({"limit": 1001})),
        "invalid_argument",
    );
    rejected(
        &w.call(
            &c.aud1,
            "QueryAccessLog",
            json!({"from": at(5), "to": at(5)}),
        ),
        "invalid_argument",
    );

    // Patient: own only.
    assert_eq!(
        events(&w.ok(&c.pat1, "QueryAccessLog", json!({}))),
        pick(&[0, 1, 2, 3, 4, 5, 6, 9])
    );
    assert_eq!(
        events(&w.ok(&c.pat2, "QueryAccessLog", json!({}))),
        pick(&[7])
    );
    rejected(
        &w.call(&c.pat2, "QueryAccessLog", json!({"patient_id":"p1"})),
        "forbidden",
    );
    assert!(events(&w.ok(&c.pat1_fake, "QueryAccessLog", json!({}))).is_empty());
    // Clinician: own actions only.
    assert_eq!(
        events(&w.ok(&c.bob, "QueryAccessLog", json!({}))),
        pick(&[0, 1, 8])
    );
    assert_eq!(
        events(&w.ok(&c.clin1, "QueryAccessLog", json!({"patient_id":"p1"}))),
        pick(&[5, 9])
    );
    rejected(
        &w.call(&c.bob, "QueryAccessLog", json!({"actor":"dr-carol"})),
        "forbidden",
    );
    rejected(
        &w.call(&c.bob, "QueryAccessLog", json!({"org":"Org1MSP"})),
        "forbidden",
    );
    // Admin: actions of their org's people, and accesses to their org's patients.
    assert_eq!(
        events(&w.ok(&c.adm2, "QueryAccessLog", json!({}))),
        pick(&[0, 1, 2, 8])
    );
    assert_eq!(
        events(&w.ok(&c.adm3, "QueryAccessLog", json!({}))),
        pick(&[3])
    );
    assert_eq!(
        events(&w.ok(&c.adm1, "QueryAccessLog", json!({}))),
        pick(&[0, 1, 2, 3, 4, 5, 6, 7, 9])
    );

    // The entry itself.
    let e = &all["events"][3];
    assert_eq!(e["break_glass"], true);
    assert_eq!(e["justification"], "ER");
    assert_eq!(e["reason"], "break_glass");
    assert_eq!(e["actor_role"], "clinician");
    assert_eq!(e["patient_org"], "Org1MSP");
    assert_eq!(e["time"], at(400));
    assert_eq!(e["time_unix"], T0 + 400);
}

#[test]
fn break_glass_review_and_event_currency() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    w.ok(&c.pat1, "GrantConsent", {
        let mut a = lab_consent("c1", json!({"type":"user","id":"dr-bob","org":"Org2MSP"}));
        a["pre"] = json!({"grantee_public_key": pubkey(9), "verifying_key": pubkey(10),
                          "threshold": 1, "shares": 1,
                          "proxies": ["Org3MSP"], "kfrag_commitments": ["00ff"]});
        a
    });
    let by_consent = request(&mut w, &c.bob, "r-lab", "TREAT", None)["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let bg = request(&mut w, &c.dave, "r-img", "ETREAT", Some("ER"))["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let denied = request(&mut w, &c.carol, "r-lab", "TREAT", None)["event_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Who may read an event.
    for who in [&c.bob, &c.pat1, &c.aud2, &c.adm1, &c.adm2, &c.adm3] {
        let v = w.ok(who, "GetAccessEvent", json!({"event_id": by_consent}));
        assert_eq!(v["current"], true, "{}", who.name);
    }
    for who in [&c.carol, &c.dave, &c.clin1, &c.pat2] {
        rejected(
            &w.call(who, "GetAccessEvent", json!({"event_id": by_consent})),
            "forbidden",
        );
    }
    rejected(
        &w.call(
            &c.aud1,
            "GetAccessEvent",
            json!({"event_id": "0".repeat(64)}),
        ),
        "not_found",
    );
    assert_eq!(
        w.ok(&c.aud1, "GetAccessEvent", json!({"event_id": denied}))["current"],
        false
    );

    // Reviews: auditors only, break-glass only, once.
    let arg = json!({"event_id": bg, "outcome": "unjustified", "note": "no emergency recorded"});
    for who in [&c.adm1, &c.clin1, &c.pat1] {
        rejected(&w.call(who, "ReviewBreakGlass", arg.clone()), "forbidden");
    }
    rejected(
        &w.call(
            &c.aud1,
            "ReviewBreakGlass",
            json!({"event_id": by_consent, "outcome": "justified"}),
        ),
        "invalid_argument",
    );
    rejected(
        &w.call(
            &c.aud1,
            "ReviewBreakGlass",
            json!({"event_id": bg, "outcome": "maybe"}),
        ),
        "invalid_argument",
    );
    rejected(
        &w.call(
            &c.aud1,
            "ReviewBreakGlass",
            json!({"event_id": bg, "outcome": "justified", "note": "x".repeat(513)}),
        ),
        "invalid_argument",
    );
    assert_eq!(
        w.ok(&c.dave, "GetAccessEvent", json!({"event_id": bg}))["current"],
        true
    );
    let o = w.call(&c.aud1, "ReviewBreakGlass", arg.clone());
    assert_eq!(o.json()["reviewer"], "audrey");
    assert_eq!(event_name(&o), "BreakGlassReviewed");
    rejected(&w.call(&c.aud2, "ReviewBreakGlass", arg), "conflict");
    let v = w.ok(&c.dave, "GetAccessEvent", json!({"event_id": bg}));
    assert_eq!(v["review"]["outcome"], "unjustified");
    assert_eq!(v["current"], false);

    // Revocation makes a consent-based decision stale; so does erasure.
    w.ok(&c.pat1, "RevokeConsent", json!({"consent_id": "c1"}));
    assert_eq!(
        w.ok(&c.bob, "GetAccessEvent", json!({"event_id": by_consent}))["current"],
        false
    );
    let self_read = request(&mut w, &c.pat1, "r-note", "TREAT", None)["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        w.ok(&c.pat1, "GetAccessEvent", json!({"event_id": self_read}))["current"],
        true
    );
    w.ok(&c.pat1, "EraseRecord", json!({"record_id": "r-note"}));
    assert_eq!(
        w.ok(&c.pat1, "GetAccessEvent", json!({"event_id": self_read}))["current"],
        false
    );
}

#[test]
fn malformed_requests_are_rejected_without_a_log_entry() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    let before = w.event_count();
    for arg in [
        json!({"record_id": "r-lab", "action": "read"}),
        json!({"record_id": "r-lab", "action": "copy", "purpose": "TREAT"}),
        json!({"record_id": "r-lab", "action": "read", "purpose": "FUN"}),
        json!({"record_id": "r lab", "action": "read", "purpose": "TREAT"}),
        json!({"record_id": "r-lab", "action": "read", "purpose": "ETREAT", "justification": "a\u{7}b"}),
        json!({"record_id": "r-lab", "action": "read", "purpose": "ETREAT", "justification": "x".repeat(513)}),
        json!({"record_id": "r-lab", "action": "read", "purpose": "TREAT", "extra": true}),
        json!(["r-lab"]),
    ] {
        rejected(&w.call(&c.bob, "RequestAccess", arg), "invalid_argument");
    }
    assert_eq!(w.event_count(), before);
}

#[test]
fn identity_and_dispatch_errors() {
    let cc = EhrContract::new();
    let mut stub = MemStub::new();
    let run = |stub: &mut MemStub, args: Vec<Vec<u8>>| {
        stub.begin(
            "a".repeat(64),
            TxTimestamp {
                seconds: T0,
                nanos: 0,
            },
        );
        let r = cc.invoke(stub, &args);
        let tx = stub.discard();
        assert!(tx.writes.is_empty());
        r
    };
    let code = |r: &ehr_chaincode::Response| -> String {
        let v: Value = serde_json::from_str(&r.message).unwrap();
        v["code"].as_str().unwrap().to_string()
    };
    let ping = vec![b"Ping".to_vec(), b"{}".to_vec()];
    // No creator, garbage creator, no role, unknown role.
    let r = run(&mut stub, ping.clone());
    assert_eq!((r.status, code(&r).as_str()), (403, "forbidden"));
    stub.set_creator(vec![1, 2, 3]);
    assert_eq!(run(&mut stub, ping.clone()).status, 403);
    let attrs = BTreeMap::from([("department".to_string(), "x".to_string())]);
    let norole = ehr_proto::msp::SerializedIdentity {
        mspid: "Org1MSP".into(),
        id_bytes: common::cert_pem("someone", &attrs).into_bytes(),
    };
    stub.set_creator(norole.encode_to_vec());
    let r = run(&mut stub, ping.clone());
    assert!(r.message.contains("ehr.role"), "{}", r.message);
    assert_eq!(r.status, 403);
    let janitor = actor("j", "Org1MSP", "jan", "janitor", &[]);
    stub.set_creator(janitor.creator.clone());
    assert_eq!(run(&mut stub, ping.clone()).status, 403);
    // Dispatch errors.
    stub.set_creator(cast().bob.creator.clone());
    for args in [
        vec![],
        vec![b"Nope".to_vec()],
        vec![vec![0xff]],
        vec![b"Ping".to_vec(), b"{}".to_vec(), b"{}".to_vec()],
        vec![b"GetPatient".to_vec(), b"not json".to_vec()],
        vec![b"GetPatient".to_vec(), vec![b' '; 256 * 1024 + 1]],
    ] {
        let r = run(&mut stub, args);
        assert_eq!(
            (r.status, code(&r).as_str()),
            (400, "invalid_argument"),
            "{}",
            r.message
        );
    }
    // Ping answers who the contract thinks the caller is.
    let r = run(&mut stub, ping.clone());
    let v: Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(
        v,
        json!({"user_id":"dr-bob","org":"Org2MSP","role":"clinician","time":"2023-11-14T22:13:20Z","tx_id":"a".repeat(64)})
    );
    // Ping without an argument works too; a timestamp out of range is internal.
    assert!(run(&mut stub, vec![b"Ping".to_vec()]).is_ok());
    stub.begin(
        "t1",
        TxTimestamp {
            seconds: -5,
            nanos: 0,
        },
    );
    assert_eq!(cc.invoke(&mut stub, &ping).status, 500);
    stub.discard();
    // init is a no-op.
    assert!(cc.init(&mut stub, &[]).is_ok());
}

#[test]
fn read_sets_and_read_only_functions() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    w.ok(
        &c.pat1,
        "GrantConsent",
        lab_consent("c1", json!({"type":"org","org":"Org2MSP"})),
    );
    let scans_consents = |o: &Outcome| {
        o.tx.range_reads
            .iter()
            .any(|(s, _)| s.starts_with("\u{0}ehr.consent\u{0}"))
    };
    let req = json!({"record_id":"r-lab","action":"read","purpose":"TREAT"});
    // The patient, an auditor and an erased record never need the consents,
    // so a concurrent grant cannot invalidate those transactions.
    assert!(!scans_consents(&w.call(
        &c.pat1,
        "RequestAccess",
        req.clone()
    )));
    assert!(!scans_consents(&w.call(
        &c.aud1,
        "RequestAccess",
        req.clone()
    )));
    let erased = json!({"record_id":"r-erased","action":"read","purpose":"TREAT"});
    assert!(!scans_consents(&w.call(&c.bob, "RequestAccess", erased)));
    assert!(scans_consents(&w.call(
        &c.bob,
        "RequestAccess",
        req.clone()
    )));

    // Queries write nothing and set no event.
    let e = w.ok(&c.bob, "RequestAccess", req)["event_id"].clone();
    for (who, f, arg) in [
        (&c.bob, "GetPatient", json!({"patient_id":"p1"})),
        (&c.bob, "GetRecord", json!({"record_id":"r-lab"})),
        (&c.bob, "ListRecords", json!({"patient_id":"p1"})),
        (&c.pat1, "GetConsent", json!({"consent_id":"c1"})),
        (&c.pat1, "ListConsents", json!({"patient_id":"p1"})),
        (&c.bob, "GetAccessEvent", json!({"event_id": e})),
        (&c.aud1, "QueryAccessLog", json!({})),
        (&c.bob, "Ping", json!({})),
    ] {
        let o = w.call(who, f, arg);
        assert!(o.ok(), "{f}: {}", o.response.message);
        assert!(o.tx.writes.is_empty() && o.tx.event.is_none(), "{f} wrote");
    }
}
