//! Crash safety: a child process commits under load and prints every
//! acknowledged transaction; the parent kills it with SIGKILL mid-load,
//! reopens the ledger and checks that every acknowledged transaction is
//! there, valid, with its write applied, and that `verify` passes.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CHANNEL, KvChaincode};
use ehr_ledger::msp::ca::{CertRole, OrgCa};
use ehr_ledger::{Devnet, DevnetConfig, OrgConfig, tx};
use ehr_proto::protos::TxValidationCode;

const CHILD_ENV: &str = "EHR_LEDGER_CRASH_CHILD_DIR";
const ACKS_BEFORE_KILL: usize = 400;

fn load_orgs(dir: &Path) -> (Vec<OrgCa>, Vec<OrgConfig>) {
    let mut cas = Vec::new();
    let mut orgs = Vec::new();
    for msp in ["HospitalAMSP", "HospitalBMSP"] {
        let cert = std::fs::read_to_string(dir.join(format!("{msp}.crt"))).unwrap();
        let key = std::fs::read_to_string(dir.join(format!("{msp}.key"))).unwrap();
        let ca = OrgCa::from_pem(msp, &cert, &key).unwrap();
        orgs.push(OrgConfig::from_ca(&ca).unwrap());
        cas.push(ca);
    }
    (cas, orgs)
}

fn open(dir: &Path, orgs: Vec<OrgConfig>) -> Devnet {
    Devnet::open(
        DevnetConfig::new(dir.join("ledger"), CHANNEL, orgs)
            .with_chaincode("kv", Arc::new(KvChaincode)),
    )
    .unwrap()
}

/// The child: commit forever (bounded), printing `ACK <tx_id> <key>` after
/// each commit status comes back.
fn child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (cas, orgs) = load_orgs(dir);
        let devnet = open(dir, orgs);
        let user = cas[0].issue("loader", CertRole::Client, &[]).unwrap();
        let mut tasks = Vec::new();
        for t in 0..16 {
            let devnet = devnet.clone();
            let user = user.clone();
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let mut i = 0u64;
                while started.elapsed() < Duration::from_secs(60) {
                    let key = format!("t{t}-{i}");
                    let p = tx::new_proposal(
                        &user,
                        CHANNEL,
                        "kv",
                        vec![b"put".to_vec(), key.clone().into_bytes(), b"v".to_vec()],
                        BTreeMap::new(),
                    )
                    .unwrap();
                    let e = devnet.endorse(&p.signed, &[]).await.unwrap();
                    let mut env = e.prepared;
                    env.signature = user.sign(&env.payload);
                    devnet.submit(&env).unwrap();
                    let st = devnet.commit_status(&e.tx_id).await.unwrap();
                    assert_eq!(st.code, TxValidationCode::Valid);
                    println!("ACK {} {key}", e.tx_id);
                    i += 1;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn acknowledged_commits_survive_kill_9() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (msp, name) in [
        ("HospitalAMSP", "hospital-a"),
        ("HospitalBMSP", "hospital-b"),
    ] {
        let ca = OrgCa::generate(msp, name).unwrap();
        std::fs::write(dir.path().join(format!("{msp}.crt")), ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join(format!("{msp}.key")), ca.key_pem()).unwrap();
    }
    let mut proc = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "acknowledged_commits_survive_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = proc.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut acked: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.len() < ACKS_BEFORE_KILL && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (id, key) = rest.split_once(' ').unwrap();
            acked.push((id.to_string(), key.to_string()));
        }
    }
    assert_eq!(acked.len(), ACKS_BEFORE_KILL, "child stopped early");
    // SIGKILL while the load is running.
    proc.kill().unwrap();
    // Whatever the child printed before it died was acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("ACK ")
            && let Some((id, key)) = rest.split_once(' ')
        {
            acked.push((id.to_string(), key.to_string()));
        }
    }
    proc.wait().unwrap();

    let (_, orgs) = load_orgs(dir.path());
    let devnet = open(dir.path(), orgs);
    let state: BTreeMap<String, Vec<u8>> = devnet.state_snapshot("kv").into_iter().collect();
    for (id, key) in &acked {
        let st = devnet
            .try_commit_status(id)
            .unwrap_or_else(|| panic!("acknowledged tx {id} lost after kill -9"));
        assert_eq!(st.code, TxValidationCode::Valid);
        assert_eq!(state.get(key).map(Vec::as_slice), Some(&b"v"[..]), "{key}");
    }
    let report = devnet.verify();
    assert!(report.verified, "{report:?}");
    assert!(devnet.height() > 1);
}
