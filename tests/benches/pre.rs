//! Threshold proxy re-encryption benchmark, over HTTP against a whole
//! consortium (`cargo bench -p ehr-tests --bench pre`):
//! - grant: `POST /patients/{id}/consents` to another org, i.e. 2-of-3
//!   kfrags made and sealed per proxy, queued, `GrantConsent` committed
//!   on-chain, and the three kfrags delivered over gRPC (each proxy checks
//!   its kfrag against the on-chain commitment);
//! - a re-encrypted read of a 1 MiB record at another org: `RequestAccess`
//!   on-chain, the three proxies asked at once (each checks the decision on
//!   the ledger and re-encrypts), two cfrags verified, DEK opened, blob
//!   fetched, verified and decrypted;
//! - for comparison, the same record read at the patient's home gateway
//!   (DEK opened with the patient's key, no proxies), and a denied read
//!   (one `RequestAccess` committed: the ledger's share of every read).
//!
//! Sequential requests (latency, not throughput). Prints a Markdown table.
//! `EHR_BENCH_QUICK=1` shrinks the run.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use ehr_tests::{Net, Services};
use serde_json::{Value, json};

const MIB: usize = 1024 * 1024;

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize)
        .saturating_sub(1)
        .min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e3
}

fn row(label: &str, mut lat: Vec<Duration>) {
    lat.sort();
    println!(
        "| {label} | {} | {:.1} | {:.1} | {:.1} |",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = std::env::var("EHR_BENCH_QUICK").is_ok();
    let (grants, reads) = if quick { (5, 10) } else { (50, 100) };
    let net = Net::start(Services::Embedded, 4 * MIB as u64)
        .await?
        .expect("embedded");
    let a = net.api("hospital-a");
    let b = net.api("hospital-b");
    let patient = net.token("hospital-a", "patient-a").await?;
    let cardio = net.token("hospital-b", "cardio-b").await?;
    let pid = net.patient_id("patient-a").expect("demo patient");
    let body: Vec<u8> = (0..MIB)
        .map(|i| (i as u8).wrapping_mul(77) ^ (i >> 10) as u8)
        .collect();
    let r = net
        .http
        .post(format!("{a}/patients/{pid}/records?category=lab"))
        .bearer_auth(&patient)
        .body(body.clone())
        .send()
        .await?;
    ensure!(r.status() == 201, "upload: {}", r.status());
    let rid = r.json::<Value>().await?["record_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // Grants (each a separate consent, scoped to the record).
    let mut grant_lat = Vec::with_capacity(grants);
    for _ in 0..grants {
        let t = Instant::now();
        let r = net
            .http
            .post(format!("{a}/patients/{pid}/consents"))
            .bearer_auth(&patient)
            .json(&json!({
                "grantee": {"type": "role", "org": "hospital-b", "role": "clinician"},
                "scope": {"records": [rid]},
                "actions": ["read"],
                "purposes": ["TREAT"],
                "conditions": {"department": "cardiology"}
            }))
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await?;
        ensure!(status == 201, "grant: {status} {v}");
        ensure!(
            v["key_grant"]["pending"] == json!([]),
            "undelivered kfrags: {v}"
        );
        grant_lat.push(t.elapsed());
    }

    let read = |url: String, token: String| {
        let http = net.http.clone();
        let want = body.len();
        async move {
            let t = Instant::now();
            let r = http.get(url).bearer_auth(token).send().await?;
            let status = r.status();
            let got = r.bytes().await?;
            ensure!(status == 200 && got.len() == want, "read: {status}");
            Ok::<Duration, anyhow::Error>(t.elapsed())
        }
    };
    let url_b = format!("{b}/records/{rid}/content?purpose=TREAT");
    let url_a = format!("{a}/records/{rid}/content?purpose=TREAT");
    // Warm the channels.
    read(url_b.clone(), cardio.clone()).await?;
    let mut cross = Vec::with_capacity(reads);
    for _ in 0..reads {
        cross.push(read(url_b.clone(), cardio.clone()).await?);
    }
    let mut home = Vec::with_capacity(reads);
    for _ in 0..reads {
        home.push(read(url_a.clone(), patient.clone()).await?);
    }
    // The on-chain floor: a denied read is one RequestAccess committed, nothing else.
    let derm = net.token("hospital-b", "derm-b").await?;
    let mut denied = Vec::with_capacity(reads);
    for _ in 0..reads {
        let t = Instant::now();
        let r = net.http.get(&url_b).bearer_auth(&derm).send().await?;
        ensure!(r.status() == 403, "denied read: {}", r.status());
        let _ = r.bytes().await?;
        denied.push(t.elapsed());
    }

    println!("\n| operation (sequential, over HTTP) | n | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    row(
        "grant to another org: 2-of-3 kfrags + GrantConsent committed + 3 deliveries",
        grant_lat,
    );
    row(
        "re-encrypted read of 1 MiB at another org (RequestAccess + 2-of-3 proxies + decrypt)",
        cross,
    );
    row(
        "home read of the same 1 MiB (RequestAccess + patient key + decrypt)",
        home,
    );
    row(
        "denied read at another org (RequestAccess committed, 403): the on-chain floor",
        denied,
    );
    net.stop().await
}
