//! The `ehr-chaincode` binary: its options, and the real contract served
//! over the shim to a test peer.

mod shim_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ehr_proto::protos::chaincode_message::Type;
use prost::Message;
use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair};
use shim_support::*;

const BIN: &str = env!("CARGO_BIN_EXE_ehr-chaincode");

#[test]
fn help_names_every_environment_variable() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "CHAINCODE_SERVER_ADDRESS",
        "CHAINCODE_ID",
        "CHAINCODE_TLS_KEY_FILE",
        "CHAINCODE_TLS_CERT_FILE",
        "CHAINCODE_TLS_CLIENT_CA_FILE",
    ] {
        assert!(help.contains(var), "--help does not mention {var}:\n{help}");
    }
}

fn bare_command() -> Command {
    let mut c = Command::new(BIN);
    for var in [
        "CHAINCODE_SERVER_ADDRESS",
        "CHAINCODE_ID",
        "CHAINCODE_TLS_KEY_FILE",
        "CHAINCODE_TLS_CERT_FILE",
        "CHAINCODE_TLS_CLIENT_CA_FILE",
        "CHAINCODE_REQUEST_TIMEOUT_SECS",
    ] {
        c.env_remove(var);
    }
    c
}

#[test]
fn refuses_to_start_without_id_or_with_half_tls() {
    let out = bare_command()
        .env("CHAINCODE_SERVER_ADDRESS", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success(), "CHAINCODE_ID is required");

    let out = bare_command()
        .env("CHAINCODE_SERVER_ADDRESS", "127.0.0.1:0")
        .env("CHAINCODE_ID", CC_ID)
        .env("CHAINCODE_TLS_CERT_FILE", "/nonexistent/cert.pem")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a cert without a key is refused");

    let out = bare_command()
        .env("CHAINCODE_SERVER_ADDRESS", "127.0.0.1:0")
        .env("CHAINCODE_ID", CC_ID)
        .env("CHAINCODE_TLS_CERT_FILE", "/nonexistent/cert.pem")
        .env("CHAINCODE_TLS_KEY_FILE", "/nonexistent/key.pem")
        .output()
        .unwrap();
    assert!(!out.status.success(), "unreadable TLS files are refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}

/// The child process, stopped (by its pid) when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no log line containing {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn creator_with_role(cn: &str, role: &str) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &[1, 2, 3, 4, 5, 6, 7, 8, 1],
            format!(r#"{{"attrs":{{"ehr.role":"{role}"}}}}"#).into_bytes(),
        ));
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    ehr_proto::msp::SerializedIdentity {
        mspid: "Org1MSP".into(),
        id_bytes: pem.into_bytes(),
    }
    .encode_to_vec()
}

#[tokio::test]
async fn serves_the_ehr_contract_to_a_peer_and_stops_on_sigterm() {
    let mut child = bare_command()
        .env("CHAINCODE_SERVER_ADDRESS", "127.0.0.1:0")
        .env("CHAINCODE_ID", CC_ID)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut running = Running { child, lines };
    let line = running.wait_for("ehr-chaincode listening");
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .expect("address in the log line")
        .parse()
        .unwrap();

    let mut peer = Peer::connect(addr).await;
    peer.handshake().await;
    let opts = TxOpts {
        creator: creator_with_role("dr-alice", "clinician"),
        ..Default::default()
    };
    peer.send(transaction(
        Type::Transaction,
        "tx-ping-1",
        &[b"Ping"],
        &opts,
    ))
    .await;
    let r = completed(&peer.finish("tx-ping-1").await);
    assert_eq!(r.status, 200, "{}", r.message);
    let pong: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(pong["user_id"], "dr-alice");
    assert_eq!(pong["org"], "Org1MSP");
    assert_eq!(pong["tx_id"], "tx-ping-1");

    // The log names the function, tx and status, never the arguments.
    let done = running.wait_for("transaction completed");
    assert!(
        done.contains("function=Ping") && done.contains("status=200"),
        "{done}"
    );

    // SIGTERM ends the open stream with UNAVAILABLE (a peer then redials),
    // and the process exits once the peer has let go of the connection.
    running.terminate();
    let end = peer
        .recv_end()
        .await
        .expect_err("stream ends with a status");
    assert_eq!(end.code(), tonic::Code::Unavailable);
    drop(peer);
    let started = std::time::Instant::now();
    running.wait_for("ehr-chaincode stopped");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for the grace period"
    );
    let status = running.child.wait().unwrap();
    assert!(status.success(), "{status}");
}
