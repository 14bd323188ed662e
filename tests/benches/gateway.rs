//! Gateway benchmark (`cargo bench -p ehr-tests --bench gateway`): upload
//! throughput over HTTP for 1 MiB and 100 MiB files next to the raw
//! AES-256-GCM + SHA-256 throughput measured in the same run, and the rate
//! and latency of access decisions (allowed reads of a small record, and
//! denied reads, each an on-chain RequestAccess), and the latency of
//! access-log queries answered by the event projection vs the chaincode
//! over ~10,000 logged decisions. Prints Markdown tables.
//! `EHR_BENCH_QUICK=1` shrinks the run (CI smoke); `EHR_BENCH_ONLY=audit`
//! runs only the audit queries (`EHR_BENCH_AUDIT_EVENTS`, default 10000).

use std::time::{Duration, Instant};

use anyhow::Result;
use ehr_gateway::crypto::stream::{DEFAULT_CHUNK_SIZE, Dek, Encryptor};
use ehr_tests::{Net, Services};
use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

fn data(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(131) ^ (i >> 11) as u8)
        .collect()
}

/// Raw cipher + hash throughput in MiB/s (64 KiB pieces, as HTTP delivers).
fn raw_mib_s(bytes: &[u8], reps: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..reps {
        let dek = Dek::generate();
        let (mut enc, header) = Encryptor::new(&dek, DEFAULT_CHUNK_SIZE).expect("chunk size");
        let mut h = Sha256::new();
        h.update(header);
        let mut out = Vec::with_capacity(128 * 1024);
        for piece in bytes.chunks(64 * 1024) {
            enc.update(piece, &mut out).expect("encrypt");
            h.update(&out);
            out.clear();
        }
        enc.finish(&mut out).expect("finish");
        h.update(&out);
        std::hint::black_box(h.finalize());
    }
    (bytes.len() * reps) as f64 / MIB as f64 / start.elapsed().as_secs_f64()
}

async fn upload_mib_s(net: &Net, token: &str, pid: &str, bytes: &[u8], reps: usize) -> Result<f64> {
    let url = format!(
        "{}/patients/{pid}/records?category=imaging",
        net.api("hospital-a")
    );
    let start = Instant::now();
    for _ in 0..reps {
        let r = net
            .http
            .post(&url)
            .bearer_auth(token)
            .body(bytes.to_vec())
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "upload: {}", r.status());
    }
    Ok((bytes.len() * reps) as f64 / MIB as f64 / start.elapsed().as_secs_f64())
}

struct Rate {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn rate(
    net: &Net,
    url: &str,
    token: &str,
    total: usize,
    concurrency: usize,
    want: u16,
) -> Result<Rate> {
    let start = Instant::now();
    let lat: Vec<Result<Duration>> = futures::stream::iter(0..total)
        .map(|_| async {
            let t = Instant::now();
            let r = net.http.get(url).bearer_auth(token).send().await?;
            let status = r.status().as_u16();
            let _ = r.bytes().await?;
            anyhow::ensure!(status == want, "status {status}, want {want}");
            Ok(t.elapsed())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = start.elapsed();
    let mut lat: Vec<Duration> = lat.into_iter().collect::<Result<_>>()?;
    lat.sort();
    let pct = |p: f64| {
        lat[((lat.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(lat.len() - 1)]
    };
    Ok(Rate {
        rps: total as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    })
}

/// Sequential latency of `n` GETs; the `x-audit-source` that answered.
async fn latency(
    net: &Net,
    url: &str,
    token: &str,
    n: usize,
) -> Result<(Duration, Duration, String)> {
    let mut lat = Vec::with_capacity(n);
    let mut source = String::new();
    for i in 0..n + 3 {
        let t = Instant::now();
        let r = net.http.get(url).bearer_auth(token).send().await?;
        anyhow::ensure!(r.status() == 200, "{url}: {}", r.status());
        source = r
            .headers()
            .get("x-audit-source")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        let _ = r.bytes().await?;
        if i >= 3 {
            lat.push(t.elapsed());
        }
    }
    lat.sort();
    let pct = |p: f64| {
        lat[((lat.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(lat.len() - 1)]
    };
    Ok((pct(0.50), pct(0.99), source))
}

/// Fills the access log with `events` denied reads, then times access-log
/// queries from the projection and from the chaincode.
/// Uploads a 1 KiB note for the patient; its record id.
async fn small_record(net: &Net, token: &str, pid: &str) -> Result<String> {
    let r = net
        .http
        .post(format!(
            "{}/patients/{pid}/records?category=note",
            net.api("hospital-a")
        ))
        .bearer_auth(token)
        .body(data(1024))
        .send()
        .await?;
    let v: Value = r.json().await?;
    Ok(v["record_id"].as_str().unwrap_or_default().to_owned())
}

async fn audit_queries(net: &Net, events: usize, reps: usize) -> Result<()> {
    let patient = net.token("hospital-a", "patient-a").await?;
    let outsider = net.token("hospital-c", "doctor-c").await?;
    let auditor = net.token("hospital-a", "auditor-a").await?;
    let admin_b = net.token("hospital-b", "admin").await?;
    let pid = net.patient_id("patient-a").expect("demo patient");
    let rid = small_record(net, &patient, &pid).await?;
    let start = Instant::now();
    let fill = rate(
        net,
        &format!(
            "{}/records/{rid}/content?purpose=TREAT",
            net.api("hospital-c")
        ),
        &outsider,
        events,
        32,
        403,
    )
    .await?;
    eprintln!(
        "logged {events} decisions in {:.1} s ({:.0}/s)",
        start.elapsed().as_secs_f64(),
        fill.rps
    );
    let a = net.api("hospital-a");
    let cases = [
        (
            "auditor, first page of everything (`/audit/events?limit=100`)",
            format!("{a}/audit/events?limit=100"),
            &auditor,
        ),
        (
            "patient's own log (`/patients/{id}/access-log?limit=100`)",
            format!("{a}/patients/{pid}/access-log?limit=100"),
            &patient,
        ),
        (
            "auditor, by actor org + decision (`?org=hospital-c&decision=deny&limit=100`)",
            format!("{a}/audit/events?org=hospital-c&decision=deny&limit=100"),
            &auditor,
        ),
        (
            "auditor, a filter nothing matches (`?purpose=HRESCH`)",
            format!("{a}/audit/events?purpose=HRESCH&limit=100"),
            &auditor,
        ),
        (
            "admin of an uninvolved org (`/audit/events` at hospital-b)",
            format!("{}/audit/events?limit=100", net.api("hospital-b")),
            &admin_b,
        ),
    ];
    println!("
| access-log query over {events} logged decisions | projection p50 / p99 | ledger (chaincode) p50 / p99 |
|---|---|---|");
    for (label, url, token) in cases {
        let sep = if url.contains('?') { '&' } else { '?' };
        let (p50, p99, src) = latency(net, &url, token, reps).await?;
        anyhow::ensure!(src == "projection", "{url} answered by {src}");
        let (l50, l99, src) =
            latency(net, &format!("{url}{sep}source=ledger"), token, reps).await?;
        anyhow::ensure!(src == "ledger", "{url} answered by {src}");
        println!(
            "| {label} | {:.2} / {:.2} ms | {:.2} / {:.2} ms |",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            l50.as_secs_f64() * 1e3,
            l99.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = std::env::var("EHR_BENCH_QUICK").is_ok();
    let net = Net::start(Services::Embedded, 200 * MIB as u64)
        .await?
        .expect("embedded");
    if std::env::var("EHR_BENCH_ONLY").is_ok_and(|v| v == "audit") {
        let events = std::env::var("EHR_BENCH_AUDIT_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 300 } else { 10_000 });
        audit_queries(&net, events, if quick { 10 } else { 50 }).await?;
        return net.stop().await;
    }
    let patient = net.token("hospital-a", "patient-a").await?;
    let outsider = net.token("hospital-c", "doctor-c").await?;
    let pid = net.patient_id("patient-a").expect("demo patient");
    let one = data(MIB);
    let hundred = data(if quick { 8 * MIB } else { 100 * MIB });
    let big_label = if quick { "8 MiB" } else { "100 MiB" };

    let raw1 = raw_mib_s(&one, if quick { 5 } else { 50 });
    let raw100 = raw_mib_s(&hundred, if quick { 1 } else { 3 });
    let up1 = upload_mib_s(&net, &patient, &pid, &one, if quick { 3 } else { 20 }).await?;
    let up100 = upload_mib_s(&net, &patient, &pid, &hundred, if quick { 1 } else { 2 }).await?;

    // A small record for the decision benchmarks.
    let rid = small_record(&net, &patient, &pid).await?;
    let n = if quick { 40 } else { 400 };
    let allowed = rate(
        &net,
        &format!(
            "{}/records/{rid}/content?purpose=TREAT",
            net.api("hospital-a")
        ),
        &patient,
        n,
        16,
        200,
    )
    .await?;
    let denied = rate(
        &net,
        &format!(
            "{}/records/{rid}/content?purpose=TREAT",
            net.api("hospital-c")
        ),
        &outsider,
        n,
        16,
        403,
    )
    .await?;

    println!("\n| measurement | result |\n|---|---|");
    println!("| raw AES-256-GCM + SHA-256, 1 MiB | {raw1:.0} MiB/s |");
    println!("| raw AES-256-GCM + SHA-256, {big_label} | {raw100:.0} MiB/s |");
    println!("| HTTP upload (encrypt + hash + store + on-chain record), 1 MiB | {up1:.1} MiB/s |");
    println!(
        "| HTTP upload (encrypt + hash + store + on-chain record), {big_label} | {up100:.1} MiB/s |"
    );
    println!(
        "| allowed read of a 1 KiB record (RequestAccess + fetch + verify + decrypt), 16 concurrent | {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms |",
        allowed.rps,
        allowed.p50.as_secs_f64() * 1e3,
        allowed.p99.as_secs_f64() * 1e3
    );
    println!(
        "| denied read (RequestAccess logged, 403), 16 concurrent | {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms |",
        denied.rps,
        denied.p50.as_secs_f64() * 1e3,
        denied.p99.as_secs_f64() * 1e3
    );
    audit_queries(
        &net,
        if quick { 300 } else { 10_000 },
        if quick { 10 } else { 50 },
    )
    .await?;
    net.stop().await
}
