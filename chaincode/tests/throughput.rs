//! Rough cost figures of the contract on `MemStub` (no peer, no network):
//! decisions per second against a patient with many consents, log paging,
//! and bytes written per decision. Ignored by default; run with
//! `cargo test -p ehr-chaincode --test throughput -- --ignored --nocapture`.
//! The assertions are loose sanity bounds; the printed numbers are the point.

mod common;

use std::time::Instant;

use common::{T0, World, cast, writes_under};
use serde_json::json;

fn grant_many(w: &mut World, n: usize) {
    let c = cast();
    w.now = T0 + 10;
    for i in 0..n {
        // Consents for other users; the last one is for dr-bob.
        let user = if i + 1 == n {
            "dr-bob".to_string()
        } else {
            format!("user-{i}")
        };
        w.ok(
            &c.pat1,
            "GrantConsent",
            json!({
                "consent_id": format!("c{i:05}"), "patient_id": "p1",
                "grantee": {"type":"user","id":user,"org":"Org2MSP"},
                "scope": {"categories": ["lab"]}, "actions": ["read"], "purposes": ["TREAT"],
            }),
        );
    }
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn decision_cost_by_number_of_consents() {
    let c = cast();
    for n in [1usize, 10, 100, 1000] {
        let mut w = World::new();
        w.standard();
        grant_many(&mut w, n);
        w.now = T0 + 100;
        let calls = 200;
        let mut bytes = 0usize;
        let start = Instant::now();
        for _ in 0..calls {
            let o = w.call(
                &c.bob,
                "RequestAccess",
                json!({"record_id":"r-lab","action":"read","purpose":"TREAT"}),
            );
            assert!(o.ok());
            assert_eq!(writes_under(&o.tx, "ehr.event"), 1);
            bytes +=
                o.tx.writes
                    .iter()
                    .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                    .sum::<usize>();
        }
        let per = start.elapsed() / calls;
        println!(
            "RequestAccess with {n:>4} consents: {per:>10.2?} per decision, {:.0}/s, {} bytes written per decision",
            1.0 / per.as_secs_f64(),
            bytes / calls as usize
        );
    }
}

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn log_query_cost() {
    let c = cast();
    let mut w = World::new();
    w.standard();
    let n = 10_000;
    let start = Instant::now();
    for i in 0..n {
        w.now = T0 + 100 + i as i64;
        let who = if i % 10 == 0 { &c.dave } else { &c.bob };
        w.ok(
            who,
            "RequestAccess",
            json!({"record_id":"r-lab","action":"read","purpose":"TREAT"}),
        );
    }
    println!("{n} decisions logged in {:.2?}", start.elapsed());

    let start = Instant::now();
    let (mut pages, mut total) = (0, 0);
    let mut bookmark = serde_json::Value::Null;
    loop {
        let mut arg = json!({"patient_id":"p1","limit":100});
        if !bookmark.is_null() {
            arg["bookmark"] = bookmark.clone();
        }
        let v = w.ok(&c.aud1, "QueryAccessLog", arg);
        total += v["events"].as_array().unwrap().len();
        pages += 1;
        bookmark = v.get("bookmark").cloned().unwrap_or_default();
        if bookmark.is_null() {
            break;
        }
    }
    assert_eq!(total, n);
    let el = start.elapsed();
    println!(
        "paged {total} events by patient in {pages} pages of 100: {el:.2?} ({:.2?}/page)",
        el / pages
    );

    // A selective filter: dr-dave's 1,000 events via the actor index vs a
    // decision filter over the time index.
    let start = Instant::now();
    let v = w.ok(
        &c.aud1,
        "QueryAccessLog",
        json!({"actor":"dr-dave","limit":1000}),
    );
    assert_eq!(v["events"].as_array().unwrap().len(), 1000);
    println!(
        "1000 events of one actor via its index: {:.2?}",
        start.elapsed()
    );
    let start = Instant::now();
    let v = w.ok(
        &c.aud1,
        "QueryAccessLog",
        json!({"purpose":"HRESCH","limit":1000}),
    );
    assert!(v["events"].as_array().unwrap().is_empty());
    println!(
        "filter matching nothing over 10,000 events (scan budget 10,000): {:.2?}, bookmark returned: {}",
        start.elapsed(),
        v.get("bookmark").is_some()
    );
}
