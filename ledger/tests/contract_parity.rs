//! The full EhrContract flow through the devnet twice over real gRPC: once
//! with the contract in-process, once out of process over the Fabric shim
//! (the `ehr-chaincode` CCaaS server, dialled by the devnet through
//! `protos.Chaincode/Connect`). The same proposals (same nonces and
//! timestamps, so the same tx ids) must give identical responses, validation
//! codes, events and final world state.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{CHANNEL, orgs};
use ehr_chaincode::contract::EhrContract;
use ehr_chaincode::shim::{ChaincodeService, ShimConfig};
use ehr_ledger::msp::SigningIdentity;
use ehr_ledger::msp::ca::CertRole;
use ehr_ledger::{Devnet, DevnetConfig, tx};
use ehr_proto::gateway::gateway_client::GatewayClient as RawClient;
use ehr_proto::gateway::{
    CommitStatusRequest, EndorseRequest, EvaluateRequest, SignedCommitStatusRequest, SubmitRequest,
};
use prost::Message;
use serde_json::{Value, json};
use sha2::Digest;
use tonic::transport::Channel;

const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

#[derive(Debug, PartialEq)]
enum Outcome {
    Committed {
        payload: Vec<u8>,
        code: i32,
        block: u64,
    },
    Evaluated(Vec<u8>),
    Failed {
        code: tonic::Code,
        message: String,
    },
}

struct Step {
    who: &'static str,
    submit: bool,
    function: &'static str,
    arg: Value,
}

fn step(who: &'static str, submit: bool, function: &'static str, arg: Value) -> Step {
    Step {
        who,
        submit,
        function,
        arg,
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

fn record(id: &str, patient: &str, category: &str) -> Value {
    json!({
        "record_id": id, "patient_id": patient, "category": category,
        "cid": cid_of(id.as_bytes()),
        "sha256": hex::encode(sha2::Sha256::digest(id.as_bytes())),
        "size": id.len(), "content_type": "application/fhir+json",
        "capsule_ref": format!("capsule:{id}"),
    })
}

fn script() -> Vec<Step> {
    let pk = |n: u8| format!("02{}", hex::encode([n; 32]));
    vec![
        step(
            "pat1",
            true,
            "RegisterPatient",
            json!({"patient_id":"p1","pre_public_key":pk(1)}),
        ),
        step(
            "adm1",
            true,
            "RegisterPatient",
            json!({"patient_id":"p2","pre_public_key":pk(2)}),
        ),
        step(
            "pat1",
            true,
            "RegisterPatient",
            json!({"patient_id":"p1","pre_public_key":pk(1)}),
        ),
        step("clin1", true, "AddRecord", record("r-lab", "p1", "lab")),
        step("clin1", true, "AddRecord", record("r-img", "p1", "imaging")),
        step("clin1", true, "AddRecord", record("r-note", "p1", "note")),
        step("clin1", true, "AddRecord", record("r2-lab", "p2", "lab")),
        step("bob", false, "GetPatient", json!({"patient_id":"p1"})),
        step("pat1", false, "ListRecords", json!({"patient_id":"p1"})),
        step("bob", false, "ListRecords", json!({"patient_id":"p1"})),
        step(
            "pat1",
            true,
            "GrantConsent",
            json!({
            "consent_id":"c1","patient_id":"p1",
            "grantee":{"type":"user","id":"dr-bob","org":"HospitalBMSP"},
            "scope":{"categories":["lab"]},"actions":["read"],"purposes":["TREAT"]}),
        ),
        step(
            "pat1",
            true,
            "GrantConsent",
            json!({
            "consent_id":"c2","patient_id":"p1",
            "grantee":{"type":"role","org":"HospitalCMSP","role":"clinician"},
            "scope":{"records":["r-img"]},"actions":["read"],"purposes":["TREAT","HRESCH"]}),
        ),
        step(
            "bob",
            true,
            "GrantConsent",
            json!({
            "consent_id":"c3","patient_id":"p1",
            "grantee":{"type":"user","id":"dr-bob","org":"HospitalBMSP"},
            "scope":{"categories":["note"]},"actions":["read"],"purposes":["TREAT"]}),
        ),
        step("pat1", false, "ListConsents", json!({"patient_id":"p1"})),
        step("pat1", false, "GetConsent", json!({"consent_id":"c1"})),
        step(
            "bob",
            true,
            "RequestAccess",
            json!({"record_id":"r-lab","action":"read","purpose":"TREAT"}),
        ),
        step(
            "bob",
            true,
            "RequestAccess",
            json!({"record_id":"r-img","action":"read","purpose":"TREAT"}),
        ),
        step(
            "bob",
            true,
            "RequestAccess",
            json!({"record_id":"r-note","action":"read","purpose":"ETREAT","justification":"unconscious patient in ER"}),
        ),
        step(
            "dave",
            true,
            "RequestAccess",
            json!({"record_id":"r-img","action":"read","purpose":"HRESCH"}),
        ),
        step("bob", false, "GetRecord", json!({"record_id":"r-lab"})),
        step("bob", false, "GetRecord", json!({"record_id":"r-img"})),
        step("pat1", true, "RevokeConsent", json!({"consent_id":"c1"})),
        step(
            "bob",
            true,
            "RequestAccess",
            json!({"record_id":"r-lab","action":"read","purpose":"TREAT"}),
        ),
        step("pat1", false, "QueryAccessLog", json!({"patient_id":"p1"})),
        step("aud1", false, "QueryAccessLog", json!({"patient_id":"p1"})),
        step(
            "aud1",
            false,
            "QueryAccessLog",
            json!({"patient_id":"p1","limit":2}),
        ),
        step(
            "aud1",
            true,
            "ReviewBreakGlass",
            json!({"event_id":"nope","outcome":"justified"}),
        ),
        step("pat1", true, "EraseRecord", json!({"record_id":"r-note"})),
        step("pat1", false, "ListRecords", json!({"patient_id":"p1"})),
        step("adm1", false, "Ping", json!({})),
        step("bob", false, "NoSuchFunction", json!({})),
    ]
}

struct Actors(BTreeMap<&'static str, SigningIdentity>);

fn actors(o: &common::Orgs) -> Actors {
    let mut m = BTreeMap::new();
    let mk = |org: usize, cn: &str, role: &str, extra: &[(&str, &str)]| {
        let mut attrs: Vec<(&str, &str)> = vec![("ehr.role", role)];
        attrs.extend_from_slice(extra);
        let ou = if role == "admin" {
            CertRole::Admin
        } else {
            CertRole::Client
        };
        o.cas[org].issue(cn, ou, &attrs).unwrap()
    };
    m.insert(
        "pat1",
        mk(0, "pat1", "patient", &[("ehr.patient_id", "p1")]),
    );
    m.insert(
        "clin1",
        mk(0, "dr-alice", "clinician", &[("department", "cardiology")]),
    );
    m.insert("adm1", mk(0, "admin1", "admin", &[]));
    m.insert("aud1", mk(0, "audrey", "auditor", &[]));
    m.insert(
        "bob",
        mk(1, "dr-bob", "clinician", &[("department", "cardiology")]),
    );
    m.insert("dave", mk(2, "dr-dave", "clinician", &[]));
    Actors(m)
}

async fn run(url: &str, actors: &Actors, steps: &[Step]) -> Vec<Outcome> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw: RawClient<Channel> = RawClient::new(ch);
    let mut out = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let who = &actors.0[s.who];
        let nonce = format!("parity-nonce-{i:04}").into_bytes();
        let ts = prost_types::Timestamp {
            seconds: T0 + 60 * i as i64,
            nanos: 0,
        };
        let p = tx::new_proposal_with(
            who,
            CHANNEL,
            "ehr",
            vec![
                s.function.as_bytes().to_vec(),
                s.arg.to_string().into_bytes(),
            ],
            BTreeMap::new(),
            &nonce,
            ts,
        )
        .unwrap();
        if !s.submit {
            let r = raw
                .evaluate(EvaluateRequest {
                    transaction_id: p.tx_id.clone(),
                    channel_id: CHANNEL.into(),
                    proposed_transaction: Some(p.signed),
                    target_organizations: vec![],
                })
                .await;
            out.push(match r {
                Ok(r) => Outcome::Evaluated(r.into_inner().result.unwrap().payload),
                Err(e) => Outcome::Failed {
                    code: e.code(),
                    message: e.message().to_string(),
                },
            });
            continue;
        }
        let r = raw
            .endorse(EndorseRequest {
                transaction_id: p.tx_id.clone(),
                channel_id: CHANNEL.into(),
                proposed_transaction: Some(p.signed),
                endorsing_organizations: vec![],
            })
            .await;
        let mut env = match r {
            Ok(r) => r.into_inner().prepared_transaction.unwrap(),
            Err(e) => {
                out.push(Outcome::Failed {
                    code: e.code(),
                    message: e.message().to_string(),
                });
                continue;
            }
        };
        let payload = tx::parse_transaction(&env).unwrap().response.payload;
        env.signature = who.sign(&env.payload);
        raw.submit(SubmitRequest {
            transaction_id: p.tx_id.clone(),
            channel_id: CHANNEL.into(),
            prepared_transaction: Some(env),
        })
        .await
        .unwrap();
        let request = CommitStatusRequest {
            transaction_id: p.tx_id.clone(),
            channel_id: CHANNEL.into(),
            identity: who.serialized().to_vec(),
        }
        .encode_to_vec();
        let signature = who.sign(&request);
        let st = raw
            .commit_status(SignedCommitStatusRequest { request, signature })
            .await
            .unwrap()
            .into_inner();
        out.push(Outcome::Committed {
            payload,
            code: st.result,
            block: st.block_number,
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehr_contract_in_process_and_over_the_shim_agree() {
    let o = orgs();
    let actors = actors(&o);
    let steps = script();

    // 1. In-process.
    let dir_a = tempfile::tempdir().unwrap();
    let a = Devnet::open(
        DevnetConfig::new(dir_a.path(), CHANNEL, o.orgs.clone())
            .with_chaincode("ehr", Arc::new(EhrContract::new())),
    )
    .unwrap();
    let ha = a.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let in_process = run(&format!("http://{}", ha.local_addr), &actors, &steps).await;

    // 2. Out of process: the chaincode's own CCaaS server, dialled by the devnet.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cc_addr = listener.local_addr().unwrap();
    let svc = ChaincodeService::new(
        EhrContract::new(),
        ShimConfig::new("ehr_1.0:parity").unwrap(),
    );
    let (stop_cc, cc_stopped) = tokio::sync::oneshot::channel::<()>();
    let cc_server = tokio::spawn(ehr_chaincode::shim::serve(listener, svc, None, async {
        let _ = cc_stopped.await;
    }));
    let dir_b = tempfile::tempdir().unwrap();
    let b = Devnet::open(
        DevnetConfig::new(dir_b.path(), CHANNEL, o.orgs.clone())
            .with_remote_chaincode("ehr", &format!("http://{cc_addr}")),
    )
    .unwrap();
    let hb = b.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let remote = run(&format!("http://{}", hb.local_addr), &actors, &steps).await;

    // The flow did real work: commits, rejections and queries.
    assert!(
        in_process
            .iter()
            .filter(|x| matches!(x, Outcome::Committed { code: 0, .. }))
            .count()
            >= 12
    );
    assert!(
        in_process
            .iter()
            .any(|x| matches!(x, Outcome::Failed { .. }))
    );
    let allowed = in_process.iter().filter(|x| match x {
        Outcome::Committed { payload, .. } => String::from_utf8_lossy(payload).contains("\"allow"),
        _ => false,
    });
    assert!(allowed.count() >= 1, "{in_process:#?}");

    for (i, (x, y)) in in_process.iter().zip(&remote).enumerate() {
        assert_eq!(x, y, "step {i} ({}) differs", steps[i].function);
    }
    assert_eq!(in_process.len(), remote.len());
    let sa = a.state_snapshot("ehr");
    assert!(!sa.is_empty());
    assert_eq!(sa, b.state_snapshot("ehr"));
    // Same events, block by block.
    assert_eq!(a.height(), b.height());
    for n in 1..a.height() {
        let ea = a.block_events(n).unwrap().events;
        let eb = b.block_events(n).unwrap().events;
        assert_eq!(ea, eb, "events of block {n}");
    }
    assert!(a.verify().verified);
    assert!(b.verify().verified);

    ha.shutdown().await.unwrap();
    hb.shutdown().await.unwrap();
    let _ = stop_cc.send(());
    let _ = cc_server.await;
}
