//! Load generator for the devnet: committed tx/s and latency of the
//! EhrContract's `GrantConsent` and `RequestAccess`, end to end (client
//! signs the proposal, devnet endorses, client signs the transaction,
//! devnet orders + validates + fsyncs the block, commit status returns).
//!
//! ```sh
//! cargo run --release -p ehr-ledger --bin ledger-load -- --function grant --txs 20000
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use ehr_chaincode::contract::EhrContract;
use ehr_ledger::client::GatewayClient;
use ehr_ledger::msp::SigningIdentity;
use ehr_ledger::msp::ca::{CertRole, OrgCa};
use ehr_ledger::{BatchConfig, Devnet, DevnetConfig, OrgConfig, tx};
use ehr_proto::protos::TxValidationCode;
use sha2::Digest;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Function {
    Grant,
    Request,
    Mixed,
}

#[derive(Debug, Parser)]
#[command(about = "Committed tx/s and latency of the devnet ledger")]
struct Args {
    /// Which contract function to load.
    #[arg(long, value_enum, default_value = "grant")]
    function: Function,
    /// Transactions to commit in the measured phase.
    #[arg(long, default_value_t = 20_000)]
    txs: usize,
    /// Transactions in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Go through gRPC (the Fabric Gateway client) instead of the in-process API.
    #[arg(long)]
    grpc: bool,
    /// Turn off fdatasync (NOT durable; for comparison only).
    #[arg(long)]
    no_fsync: bool,
    /// Block cut: max transactions per block.
    #[arg(long, default_value_t = 500)]
    block_txs: usize,
    /// Block cut: milliseconds after the first transaction.
    #[arg(long, default_value_t = 2)]
    block_ms: u64,
    /// Only time ECDSA sign and verify (the per-transaction floor) and exit.
    #[arg(long)]
    crypto_only: bool,
    /// After the run, close the ledger and time reopening it (replay).
    #[arg(long)]
    reopen: bool,
    /// Data directory (default: a fresh temporary directory).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

const CHANNEL: &str = "ehr";

struct Actors {
    patients: Vec<SigningIdentity>,
    clin: SigningIdentity,
    bob: SigningIdentity,
}

enum Conn {
    Local(Devnet),
    Grpc(BTreeMap<String, GatewayClient>),
}

impl Conn {
    /// One transaction end to end; returns the validation code.
    async fn submit(
        &self,
        who: &SigningIdentity,
        f: &str,
        arg: String,
    ) -> Result<TxValidationCode> {
        match self {
            Conn::Local(d) => {
                let p = tx::new_proposal(
                    who,
                    CHANNEL,
                    "ehr",
                    vec![f.as_bytes().to_vec(), arg.into_bytes()],
                    BTreeMap::new(),
                )?;
                let e = d.endorse(&p.signed, &[]).await?;
                let mut env = e.prepared;
                env.signature = who.sign(&env.payload);
                d.submit(&env)?;
                Ok(d.commit_status(&e.tx_id).await?.code)
            }
            Conn::Grpc(clients) => {
                let c = clients
                    .get(who.cert_pem())
                    .context("no client for identity")?;
                Ok(c.submit(CHANNEL, "ehr", f, &[arg.as_bytes()]).await?.code)
            }
        }
    }
}

fn cid_of(data: &[u8]) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut bytes = vec![0x01, 0x55, 0x12, 0x20];
    bytes.extend(sha2::Sha256::digest(data));
    let mut out = String::from("b");
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in &bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn grant_arg(w: usize, i: usize) -> String {
    serde_json::json!({
        "consent_id": format!("c-{w}-{i}"), "patient_id": format!("p{w}"),
        "grantee": {"type":"user","id":"dr-bob","org":"HospitalBMSP"},
        "scope": {"categories":["lab"]}, "actions": ["read"], "purposes": ["TREAT"],
    })
    .to_string()
}

fn request_arg(w: usize) -> String {
    serde_json::json!({"record_id": format!("r{w}"), "action":"read", "purpose":"TREAT"})
        .to_string()
}

async fn setup(conn: &Conn, a: &Actors) -> Result<()> {
    for (w, p) in a.patients.iter().enumerate() {
        let pk = format!("02{}", hex::encode([(w % 250) as u8 + 1; 32]));
        let r = conn
            .submit(
                p,
                "RegisterPatient",
                serde_json::json!({"patient_id": format!("p{w}"), "pre_public_key": pk})
                    .to_string(),
            )
            .await?;
        if r != TxValidationCode::Valid {
            bail!("setup RegisterPatient: {r:?}");
        }
        let id = format!("r{w}");
        let rec = serde_json::json!({
            "record_id": id, "patient_id": format!("p{w}"), "category": "lab",
            "cid": cid_of(id.as_bytes()), "sha256": hex::encode(sha2::Sha256::digest(id.as_bytes())),
            "size": id.len(), "content_type": "application/fhir+json", "capsule_ref": format!("capsule:{id}"),
        });
        conn.submit(&a.clin, "AddRecord", rec.to_string()).await?;
        conn.submit(p, "GrantConsent", grant_arg(w, usize::MAX))
            .await?;
    }
    Ok(())
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    if args.crypto_only {
        return crypto_bench();
    }
    let tmp = tempfile_dir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| tmp.clone());

    let ca_a = OrgCa::generate("HospitalAMSP", "hospital-a")?;
    let ca_b = OrgCa::generate("HospitalBMSP", "hospital-b")?;
    let ca_c = OrgCa::generate("HospitalCMSP", "hospital-c")?;
    let orgs = vec![
        OrgConfig::from_ca(&ca_a)?,
        OrgConfig::from_ca(&ca_b)?,
        OrgConfig::from_ca(&ca_c)?,
    ];
    let mut cfg =
        DevnetConfig::new(&dir, CHANNEL, orgs).with_chaincode("ehr", Arc::new(EhrContract::new()));
    cfg.durable = !args.no_fsync;
    cfg.batch = BatchConfig {
        max_txs: args.block_txs,
        timeout: Duration::from_millis(args.block_ms),
        ..BatchConfig::default()
    };
    let devnet = Devnet::open(cfg.clone())?;

    let workers = args.concurrency.max(1);
    let patients = (0..workers)
        .map(|w| {
            ca_a.issue(
                &format!("pat{w}"),
                CertRole::Client,
                &[
                    ("ehr.role", "patient"),
                    ("ehr.patient_id", &format!("p{w}")),
                ],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let actors = Actors {
        patients,
        clin: ca_a.issue("dr-alice", CertRole::Client, &[("ehr.role", "clinician")])?,
        bob: ca_b.issue(
            "dr-bob",
            CertRole::Client,
            &[("ehr.role", "clinician"), ("department", "cardiology")],
        )?,
    };

    let mut _server = None;
    let conn = if args.grpc {
        let h = devnet.serve("127.0.0.1:0".parse()?).await?;
        let url = format!("http://{}", h.local_addr);
        // One HTTP/2 connection multiplexed by every identity, as a gateway
        // process would hold.
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .tcp_nodelay(true)
            .connect()
            .await?;
        let mut clients = BTreeMap::new();
        for id in actors.patients.iter().chain([&actors.clin, &actors.bob]) {
            clients.insert(
                id.cert_pem().to_string(),
                GatewayClient::from_channel(channel.clone(), id.clone()),
            );
        }
        _server = Some(h);
        Arc::new(Conn::Grpc(clients))
    } else {
        Arc::new(Conn::Local(devnet.clone()))
    };
    let actors = Arc::new(actors);

    let t_setup = Instant::now();
    setup(&conn, &actors).await?;
    let h0 = devnet.height();
    eprintln!(
        "setup: {} patients registered in {:.1}s",
        workers,
        t_setup.elapsed().as_secs_f64()
    );

    let per_worker = args.txs.div_ceil(workers);
    let cpu0 = process_cpu_secs();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let conn = conn.clone();
        let actors = actors.clone();
        let f = args.function;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_worker);
            let mut codes: BTreeMap<i32, usize> = BTreeMap::new();
            for i in 0..per_worker {
                let grant = match f {
                    Function::Grant => true,
                    Function::Request => false,
                    Function::Mixed => i % 2 == 0,
                };
                let t = Instant::now();
                let r = if grant {
                    conn.submit(&actors.patients[w], "GrantConsent", grant_arg(w, i))
                        .await
                } else {
                    conn.submit(&actors.bob, "RequestAccess", request_arg(w))
                        .await
                };
                match r {
                    Ok(code) => {
                        lat.push(t.elapsed());
                        *codes.entry(code as i32).or_default() += 1;
                    }
                    Err(e) => {
                        *codes.entry(-1).or_default() += 1;
                        tracing::warn!(error = %e, "transaction failed");
                    }
                }
            }
            (lat, codes)
        }));
    }
    let mut lat = Vec::new();
    let mut codes: BTreeMap<i32, usize> = BTreeMap::new();
    for t in tasks {
        let (l, c) = t.await?;
        lat.extend(l);
        for (k, v) in c {
            *codes.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu_secs() - cpu0;
    lat.sort();
    let valid = codes.get(&0).copied().unwrap_or(0);
    let blocks = devnet.height() - h0;
    println!(
        "function={:?} via={} durable={} concurrency={} block_txs={} block_ms={}",
        args.function,
        if args.grpc { "grpc" } else { "in-process" },
        !args.no_fsync,
        workers,
        args.block_txs,
        args.block_ms
    );
    println!(
        "committed valid: {valid} in {:.2}s = {:.0} tx/s; codes {:?} (0=VALID, 11=MVCC, -1=error)",
        elapsed.as_secs_f64(),
        valid as f64 / elapsed.as_secs_f64(),
        codes
    );
    println!(
        "latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} blocks, {:.0} tx/block",
        pct(&lat, 0.50).as_secs_f64() * 1e3,
        pct(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        blocks,
        lat.len() as f64 / blocks.max(1) as f64
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "process CPU in the measured phase: {cpu:.2} core-s = {:.0}% of {cores} cores; {:.0} committed tx per CPU-second",
        100.0 * cpu / elapsed.as_secs_f64() / cores as f64,
        valid as f64 / cpu.max(1e-9)
    );
    if std::env::var_os("LEDGER_LOAD_VERIFY").is_some() {
        let t = Instant::now();
        let r = devnet.verify();
        println!(
            "verify: {:?} height {} in {:.1}s",
            r.verified,
            r.height,
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let r = devnet.verify_hash_chain();
        println!(
            "verify_hash_chain: {:?} height {} in {:.2}s",
            r.verified,
            r.height,
            t.elapsed().as_secs_f64()
        );
    }
    if args.reopen {
        let height = devnet.height();
        drop(_server);
        drop(conn);
        drop(devnet);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        let again = Devnet::open(cfg)?;
        println!(
            "reopen (replay of {} blocks): {:.2}s, height {}",
            height,
            t.elapsed().as_secs_f64(),
            again.height()
        );
    }
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`).
fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn crypto_bench() -> Result<()> {
    let ca = OrgCa::generate("HospitalAMSP", "hospital-a")?;
    let id = ca.issue("bench", CertRole::Client, &[])?;
    let msp = ehr_ledger::msp::Msp::new([ca.org_msp()?]);
    let v = msp.deserialize(id.serialized())?;
    let msg = vec![7u8; 2048];
    let n = 5000;
    let t = Instant::now();
    let mut sig = Vec::new();
    for _ in 0..n {
        sig = id.sign(&msg);
    }
    let sign = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        v.verify(&msg, &sig)?;
    }
    let verify = t.elapsed() / n;
    println!("ECDSA P-256 on one core: sign {sign:?}, verify {verify:?} (2 KiB message)");
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let mut n = [0u8; 8];
    getrandom::fill(&mut n).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let p = std::env::temp_dir().join(format!("ehr-ledger-load-{}", hex::encode(n)));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}
