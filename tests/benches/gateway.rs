//! Gateway benchmark (`cargo bench -p ehr-tests --bench gateway`): upload
//! throughput over HTTP for 1 MiB and 100 MiB files next to the raw
//! AES-256-GCM + SHA-256 throughput measured in the same run, and the rate
//! and latency of access decisions (allowed reads of a small record, and
//! denied reads, each an on-chain RequestAccess). Prints a Markdown table.
//! `EHR_BENCH_QUICK=1` shrinks the run (CI smoke).

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

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let quick = std::env::var("EHR_BENCH_QUICK").is_ok();
    let net = Net::start(Services::Embedded, 200 * MIB as u64)
        .await?
        .expect("embedded");
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
    let r = net
        .http
        .post(format!(
            "{}/patients/{pid}/records?category=note",
            net.api("hospital-a")
        ))
        .bearer_auth(&patient)
        .body(data(1024))
        .send()
        .await?;
    let v: Value = r.json().await?;
    let rid = v["record_id"].as_str().unwrap_or_default().to_owned();
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
    net.stop().await
}
