//! The devnet over real gRPC with the Fabric Gateway client: commit, MVCC
//! conflicts, signature and MSP checks, chaincode events, tamper detection.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

use common::{CHANNEL, orgs};
use ehr_ledger::client::{Checkpoint, GatewayClient};
use ehr_ledger::msp::SigningIdentity;
use ehr_ledger::msp::ca::{CertRole, OrgCa};
use ehr_ledger::tx;
use ehr_proto::gateway::gateway_client::GatewayClient as RawClient;
use ehr_proto::gateway::{EndorseRequest, SubmitRequest};
use ehr_proto::protos::TxValidationCode;
use futures::StreamExt;

async fn serve(devnet: &ehr_ledger::Devnet) -> (ehr_ledger::service::ServeHandle, String) {
    let h = devnet.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("http://{}", h.local_addr);
    (h, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_evaluate_and_prove_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let o = orgs();
    let devnet = common::open(dir.path(), &o);
    let (h, url) = serve(&devnet).await;
    let alice = GatewayClient::connect(&url, o.user(0, "alice"))
        .await
        .unwrap();

    let r = alice
        .submit(CHANNEL, "kv", "put", &[b"k1", b"v1"])
        .await
        .unwrap();
    assert_eq!(r.code, TxValidationCode::Valid);
    assert_eq!(r.payload, b"v1");
    assert_eq!(r.block, 1);
    assert_eq!(r.tx_id.len(), 64);
    let got = alice
        .evaluate(CHANNEL, "kv", "get", &[b"k1"])
        .await
        .unwrap();
    assert_eq!(got, b"v1");

    // A user of another org sees the same state.
    let bob = GatewayClient::connect(&url, o.user(1, "bob"))
        .await
        .unwrap();
    assert_eq!(
        bob.evaluate(CHANNEL, "kv", "get", &[b"k1"]).await.unwrap(),
        b"v1"
    );

    // Chaincode errors: Evaluate → UNKNOWN, Endorse → ABORTED; nothing committed.
    let e = alice
        .evaluate(CHANNEL, "kv", "fail", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Unknown), "{e}");
    assert!(e.to_string().contains("asked to fail"));
    let e = alice.submit(CHANNEL, "kv", "fail", &[]).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Aborted), "{e}");
    let e = alice
        .evaluate(CHANNEL, "nope", "get", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::NotFound), "{e}");
    let e = alice
        .evaluate("otherchannel", "kv", "get", &[b"k1"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::NotFound), "{e}");

    // Audit proof: tx id → block, block hash, validation code.
    let proof = devnet.tx_proof(&r.tx_id).unwrap();
    assert_eq!((proof.block, proof.tx_num), (1, 0));
    assert_eq!(proof.code, TxValidationCode::Valid);
    let b1 = devnet.block(1).unwrap();
    assert_eq!(proof.block_hash, ehr_ledger::block::header_hash(&b1));
    let b2 = alice
        .submit(CHANNEL, "kv", "put", &[b"k2", b"v2"])
        .await
        .unwrap();
    let hdr2 = devnet.block(b2.block).unwrap().header.unwrap();
    assert_eq!(hdr2.previous_hash, proof.block_hash.to_vec());

    let report = devnet.verify();
    assert!(report.verified, "{report:?}");
    assert_eq!(report.height, devnet.height());
    h.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mvcc_read_conflict_is_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let o = orgs();
    let devnet = common::open(dir.path(), &o);
    let (_h, url) = serve(&devnet).await;
    let c = GatewayClient::connect(&url, o.user(0, "alice"))
        .await
        .unwrap();
    c.submit(CHANNEL, "kv", "add", &[b"n", b"10"])
        .await
        .unwrap();

    // Both endorsed on the same state (n = 10, same version).
    let a = c
        .endorse(CHANNEL, "kv", "add", &[b"n", b"1"], BTreeMap::new())
        .await
        .unwrap();
    let b = c
        .endorse(CHANNEL, "kv", "add", &[b"n", b"100"], BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(a.payload, b"11");
    assert_eq!(b.payload, b"110");
    let a_id = c.submit_prepared(a).await.unwrap();
    let (a_code, a_block) = c.commit_status(CHANNEL, &a_id).await.unwrap();
    let b_id = c.submit_prepared(b).await.unwrap();
    let (b_code, b_block) = c.commit_status(CHANNEL, &b_id).await.unwrap();
    assert_eq!(a_code, TxValidationCode::Valid);
    assert_eq!(b_code, TxValidationCode::MvccReadConflict);
    assert!(b_block >= a_block);
    // The second transaction's write was not applied.
    assert_eq!(
        c.evaluate(CHANNEL, "kv", "get", &[b"n"]).await.unwrap(),
        b"11"
    );
    // ... and the chain records it as invalid, which verify agrees with.
    assert_eq!(
        devnet.tx_proof(&b_id).unwrap().code,
        TxValidationCode::MvccReadConflict
    );
    assert!(devnet.verify().verified);

    // Conflicts inside one block too: submit both before either commits.
    let x = c
        .endorse(CHANNEL, "kv", "add", &[b"m", b"1"], BTreeMap::new())
        .await
        .unwrap();
    let y = c
        .endorse(CHANNEL, "kv", "add", &[b"m", b"2"], BTreeMap::new())
        .await
        .unwrap();
    let x_id = c.submit_prepared(x).await.unwrap();
    let y_id = c.submit_prepared(y).await.unwrap();
    let (xc, _) = c.commit_status(CHANNEL, &x_id).await.unwrap();
    let (yc, _) = c.commit_status(CHANNEL, &y_id).await.unwrap();
    assert_eq!(
        (xc, yc),
        (TxValidationCode::Valid, TxValidationCode::MvccReadConflict)
    );
    assert_eq!(
        c.evaluate(CHANNEL, "kv", "get", &[b"m"]).await.unwrap(),
        b"1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_and_unknown_msp_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let o = orgs();
    let devnet = common::open(dir.path(), &o);
    let (_h, url) = serve(&devnet).await;
    let mut raw = RawClient::new(
        tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let alice = o.user(0, "alice");

    // A proposal whose signature is over other bytes.
    let mut p = tx::new_proposal(
        &alice,
        CHANNEL,
        "kv",
        vec![b"put".to_vec(), b"k".to_vec(), b"v".to_vec()],
        BTreeMap::new(),
    )
    .unwrap();
    p.signed.signature = alice.sign(b"something else");
    let e = raw
        .endorse(EndorseRequest {
            transaction_id: p.tx_id.clone(),
            channel_id: CHANNEL.into(),
            proposed_transaction: Some(p.signed),
            endorsing_organizations: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("signature"), "{}", e.message());

    // A proposal signed by a key that is not the certificate's.
    let other = o.user(0, "mallory");
    let forged = SigningIdentity::from_pem(
        alice.msp_id(),
        alice.cert_pem(),
        &alice.key_pkcs8_pem().unwrap(),
    )
    .unwrap();
    let mut p = tx::new_proposal(
        &forged,
        CHANNEL,
        "kv",
        vec![b"get".to_vec(), b"k".to_vec()],
        BTreeMap::new(),
    )
    .unwrap();
    p.signed.signature = other.sign(&p.signed.proposal_bytes);
    let e = raw
        .endorse(EndorseRequest {
            transaction_id: p.tx_id.clone(),
            channel_id: CHANNEL.into(),
            proposed_transaction: Some(p.signed),
            endorsing_organizations: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // A client of an org the channel does not know.
    let stranger_ca = OrgCa::generate("StrangerMSP", "stranger").unwrap();
    let stranger = stranger_ca.issue("eve", CertRole::Client, &[]).unwrap();
    let s = GatewayClient::connect(&url, stranger).await.unwrap();
    let e = s.evaluate(CHANNEL, "kv", "get", &[b"k"]).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied));
    assert!(e.to_string().contains("unknown MSP"), "{e}");
    // A stranger's cert claiming to be HospitalAMSP.
    let pretender_ca = OrgCa::generate("HospitalAMSP", "fake-a").unwrap();
    let pretender = pretender_ca.issue("eve", CertRole::Client, &[]).unwrap();
    let s = GatewayClient::connect(&url, pretender).await.unwrap();
    let e = s
        .submit(CHANNEL, "kv", "put", &[b"k", b"x"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied));

    // A prepared transaction whose envelope signature is wrong.
    let c = GatewayClient::connect(&url, alice.clone()).await.unwrap();
    let prepared = c
        .endorse(CHANNEL, "kv", "put", &[b"k", b"v"], BTreeMap::new())
        .await
        .unwrap();
    let mut env = prepared.envelope.clone();
    env.signature = alice.sign(b"not the payload");
    let e = raw
        .submit(SubmitRequest {
            transaction_id: prepared.tx_id.clone(),
            channel_id: CHANNEL.into(),
            prepared_transaction: Some(env),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // Tampering with the endorsed payload (signed properly by the client)
    // breaks the endorsement: committed as ENDORSEMENT_POLICY_FAILURE.
    let mut env = prepared.envelope.clone();
    let i = env.payload.len() - 40;
    env.payload[i] ^= 0x55;
    env.signature = alice.sign(&env.payload);
    let res = raw
        .submit(SubmitRequest {
            transaction_id: prepared.tx_id.clone(),
            channel_id: CHANNEL.into(),
            prepared_transaction: Some(env),
        })
        .await;
    if res.is_ok() {
        let (code, _) = c.commit_status(CHANNEL, &prepared.tx_id).await.unwrap();
        assert_ne!(code, TxValidationCode::Valid);
    }
    assert_eq!(
        c.evaluate(CHANNEL, "kv", "get", &[b"k"]).await.unwrap(),
        b""
    );
    assert!(devnet.verify().verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaincode_events_replay_from_a_start_block_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let o = orgs();
    let devnet = common::open(dir.path(), &o);
    let (_h, url) = serve(&devnet).await;
    let c = GatewayClient::connect(&url, o.user(0, "alice"))
        .await
        .unwrap();
    let mut blocks = Vec::new();
    for i in 0..4 {
        let r = c
            .submit(
                CHANNEL,
                "kv",
                "emit",
                &[format!("E{i}").as_bytes(), format!("p{i}").as_bytes()],
            )
            .await
            .unwrap();
        blocks.push(r.block);
    }
    // A failed (MVCC) tx's event must not be delivered: none here, but a
    // plain put between events has none either.
    c.submit(CHANNEL, "kv", "put", &[b"x", b"y"]).await.unwrap();

    // Replay from the block of event 1.
    let mut s = c
        .chaincode_events(
            CHANNEL,
            "kv",
            Some(Checkpoint {
                block: blocks[1],
                after_tx_id: None,
            }),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let it = tokio::time::timeout(std::time::Duration::from_secs(10), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(it);
    }
    assert_eq!(
        got.iter()
            .map(|i| i.event.event_name.as_str())
            .collect::<Vec<_>>(),
        ["E1", "E2", "E3"]
    );
    assert_eq!(got[0].block, blocks[1]);
    assert_eq!(got[0].event.payload, b"p1");
    // Live: a new event arrives on the open stream.
    c.submit(CHANNEL, "kv", "emit", &[b"E4", b"p4"])
        .await
        .unwrap();
    let live = tokio::time::timeout(std::time::Duration::from_secs(10), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(live.event.event_name, "E4");
    drop(s);

    // Resume after E2: E3 and E4 only.
    let mut s = c
        .chaincode_events(CHANNEL, "kv", Some(got[1].checkpoint()))
        .await
        .unwrap();
    let a = s.next().await.unwrap().unwrap();
    let b = s.next().await.unwrap().unwrap();
    assert_eq!(
        (a.event.event_name.as_str(), b.event.event_name.as_str()),
        ("E3", "E4")
    );
    // The query system chaincode, as a Fabric peer serves it: the height
    // (BlockchainInfo field 1) and any block's events, also for a block
    // without any (the plain put).
    let info = c
        .evaluate(CHANNEL, "qscc", "GetChainInfo", &[CHANNEL.as_bytes()])
        .await
        .unwrap();
    assert_eq!(info.first(), Some(&0x08), "height comes first");
    assert_eq!(u64::from(info[1]), devnet.height());
    let e1 = c.block_events(CHANNEL, blocks[1]).await.unwrap();
    assert_eq!(e1.len(), 1);
    assert_eq!(
        (e1[0].event_name.as_str(), e1[0].payload.as_slice()),
        ("E1", &b"p1"[..])
    );
    let put_block = devnet.height() - 2;
    assert!(c.block_events(CHANNEL, put_block).await.unwrap().is_empty());
    assert!(
        c.block_events(CHANNEL, 0).await.unwrap().is_empty(),
        "genesis"
    );
    assert!(c.block_events(CHANNEL, devnet.height()).await.is_err());
    assert!(
        c.evaluate(CHANNEL, "qscc", "GetChainInfo", &[b"other-channel"])
            .await
            .is_err()
    );
    // Events of another chaincode name: none.
    let mut other = c
        .chaincode_events(CHANNEL, "other", Some(Checkpoint::default()))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), other.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_the_tampered_block() {
    let dir = tempfile::tempdir().unwrap();
    let o = orgs();
    let devnet = common::open(dir.path(), &o);
    let (_h, url) = serve(&devnet).await;
    let c = GatewayClient::connect(&url, o.user(2, "carol"))
        .await
        .unwrap();
    let mut last = 0;
    for i in 0..5 {
        last = c
            .submit(CHANNEL, "kv", "put", &[format!("k{i}").as_bytes(), b"v"])
            .await
            .unwrap()
            .block;
    }
    assert!(last >= 5);
    assert!(devnet.verify().verified);
    assert!(devnet.verify_hash_chain().verified);
    // Flip one byte inside block 3's stored record.
    let (off, len) = devnet.block_file_range(3).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(devnet.block_file_path())
        .unwrap();
    let pos = off + len / 2;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos).unwrap();
    f.write_all_at(&[b[0] ^ 0x20], pos).unwrap();
    f.sync_all().unwrap();
    let report = devnet.verify();
    assert!(!report.verified);
    assert_eq!(report.first_bad_block, Some(3), "{report:?}");

    // A forger who also fixes the frame CRC: rewrite block 2's validation
    // code (TRANSACTIONS_FILTER, not covered by the block hash) from VALID to
    // MVCC_READ_CONFLICT. The record of a one-tx block ends with the
    // metadata entries `0a 01 <code> 0a 00 0a 00`.
    let (off2, len2) = devnet.block_file_range(2).unwrap();
    let mut rec = vec![0u8; len2 as usize];
    f.read_exact_at(&mut rec, off2).unwrap();
    let n = rec.len();
    assert_eq!(&rec[n - 7..], &[0x0a, 0x01, 0x00, 0x0a, 0x00, 0x0a, 0x00]);
    rec[n - 5] = TxValidationCode::MvccReadConflict as u8;
    forge(&f, off2, 2, &rec);
    let report = devnet.verify();
    assert_eq!(report.first_bad_block, Some(2), "{report:?}");
    assert!(report.reason.unwrap().contains("validation code"));
    // The cheap check does not re-run validation, so it stops at block 3.
    assert_eq!(devnet.verify_hash_chain().first_bad_block, Some(3));
    // Changing an envelope byte instead breaks the data hash.
    rec[n - 5] = 0;
    let i = rec.len() / 2;
    rec[i] ^= 0x01;
    forge(&f, off2, 2, &rec);
    let report = devnet.verify();
    assert_eq!(report.first_bad_block, Some(2), "{report:?}");
    assert_eq!(devnet.verify_hash_chain().first_bad_block, Some(2));
    // A second process cannot open the ledger while it is open.
    let busy = match ehr_ledger::Devnet::open(common::config(dir.path(), &o)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened twice"),
    };
    assert!(busy.contains("in use"), "{busy}");
    // Reopening refuses the damaged store and names the block.
    _h.shutdown().await.unwrap();
    drop(c);
    drop(devnet);
    let err = match ehr_ledger::Devnet::open(common::config(dir.path(), &o)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a damaged block file must not open"),
    };
    assert!(err.contains("block 3"), "{err}");
}

/// Rewrites a block record in place with a correct frame CRC
/// (frame header: magic, number, length, CRC, then the payload at `off`).
fn forge(f: &std::fs::File, off: u64, number: u64, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&number.to_le_bytes());
    h.update(payload);
    f.write_all_at(&h.finalize().to_le_bytes(), off - 4)
        .unwrap();
    f.write_all_at(payload, off).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_state_and_refuses_other_orgs() {
    let dir = tempfile::tempdir().unwrap();
    let o = orgs();
    let ids;
    {
        let devnet = common::open(dir.path(), &o);
        let (h, url) = serve(&devnet).await;
        let c = GatewayClient::connect(&url, o.user(0, "alice"))
            .await
            .unwrap();
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                c.submit(CHANNEL, "kv", "add", &[b"n", format!("{i}").as_bytes()])
                    .await
                    .unwrap(),
            );
        }
        ids = v;
        h.shutdown().await.unwrap();
    }
    let devnet = common::open(dir.path(), &o);
    for r in &ids {
        let s = devnet.try_commit_status(&r.tx_id).unwrap();
        assert_eq!((s.block, s.code), (r.block, TxValidationCode::Valid));
    }
    let (_h, url) = serve(&devnet).await;
    let c = GatewayClient::connect(&url, o.user(1, "bob"))
        .await
        .unwrap();
    assert_eq!(
        c.evaluate(CHANNEL, "kv", "get", &[b"n"]).await.unwrap(),
        b"3"
    );
    assert!(devnet.verify().verified);
    _h.shutdown().await.unwrap();
    drop(c);
    drop(devnet);
    let other = orgs();
    let err = match ehr_ledger::Devnet::open(common::config(dir.path(), &other)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened with other orgs"),
    };
    assert!(err.contains("genesis"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_data_commits_off_chain_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let o = orgs();
    let secret = b"very-secret-kfrag-bytes".to_vec();
    let tx_id;
    {
        let devnet = common::open(dir.path(), &o);
        let (h, url) = serve(&devnet).await;
        let c = GatewayClient::connect(&url, o.user(0, "alice"))
            .await
            .unwrap();
        let transient = BTreeMap::from([("secret".to_string(), secret.clone())]);
        let r = c
            .submit_transient(CHANNEL, "kv", "pput", &[b"kfrags", b"p1"], transient)
            .await
            .unwrap();
        assert_eq!(r.code, TxValidationCode::Valid);
        tx_id = r.tx_id;
        assert_eq!(
            c.evaluate(CHANNEL, "kv", "pget", &[b"kfrags", b"p1"])
                .await
                .unwrap(),
            secret
        );
        assert_eq!(
            c.evaluate(CHANNEL, "kv", "phash", &[b"kfrags", b"p1"])
                .await
                .unwrap(),
            ehr_ledger::hash::sha256(&secret).to_vec()
        );
        // The block (what a Fabric peer would share) holds only hashes.
        let b = devnet.block(r.block).unwrap();
        let data = &b.data.unwrap().data[0];
        assert!(!data.windows(secret.len()).any(|w| w == secret.as_slice()));
        assert!(devnet.verify().verified);
        h.shutdown().await.unwrap();
    }
    let devnet = common::open(dir.path(), &o);
    assert_eq!(
        devnet.try_commit_status(&tx_id).unwrap().code,
        TxValidationCode::Valid
    );
    let (_h, url) = serve(&devnet).await;
    let c = GatewayClient::connect(&url, o.user(1, "bob"))
        .await
        .unwrap();
    assert_eq!(
        c.evaluate(CHANNEL, "kv", "pget", &[b"kfrags", b"p1"])
            .await
            .unwrap(),
        secret
    );
    assert!(devnet.verify().verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_write_is_cut_off_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let o = orgs();
    let (height, path) = {
        let devnet = common::open(dir.path(), &o);
        let (h, url) = serve(&devnet).await;
        let c = GatewayClient::connect(&url, o.user(0, "alice"))
            .await
            .unwrap();
        for i in 0..3 {
            c.submit(CHANNEL, "kv", "put", &[format!("k{i}").as_bytes(), b"v"])
                .await
                .unwrap();
        }
        h.shutdown().await.unwrap();
        (devnet.height(), devnet.block_file_path())
    };
    // A crash in the middle of appending the next block: its frame header
    // says 4 KiB follow, but only part of them reached the disk.
    let clean_len = std::fs::metadata(&path).unwrap().len();
    let mut torn = Vec::new();
    torn.extend_from_slice(b"EHRB");
    torn.extend_from_slice(&height.to_le_bytes());
    torn.extend_from_slice(&4096u32.to_le_bytes());
    torn.extend_from_slice(&0xdeadbeefu32.to_le_bytes());
    torn.extend_from_slice(&[0x0a; 1000]);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&torn).unwrap();
    }
    let devnet = common::open(dir.path(), &o);
    assert_eq!(devnet.height(), height);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), clean_len);
    assert!(devnet.verify().verified);
    // And the ledger goes on from there.
    let (_h, url) = serve(&devnet).await;
    let c = GatewayClient::connect(&url, o.user(0, "alice"))
        .await
        .unwrap();
    let r = c
        .submit(CHANNEL, "kv", "put", &[b"after", b"crash"])
        .await
        .unwrap();
    assert_eq!((r.block, r.code), (height, TxValidationCode::Valid));
    assert_eq!(
        c.evaluate(CHANNEL, "kv", "get", &[b"k2"]).await.unwrap(),
        b"v"
    );
    assert!(devnet.verify().verified);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubmitted_transaction_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let o = orgs();
    let devnet = common::open(dir.path(), &o);
    let (_h, url) = serve(&devnet).await;
    let c = GatewayClient::connect(&url, o.user(0, "alice"))
        .await
        .unwrap();
    let p = c
        .endorse(CHANNEL, "kv", "add", &[b"n", b"5"], BTreeMap::new())
        .await
        .unwrap();
    let id = c.submit_prepared(p.clone()).await.unwrap();
    let (code, block) = c.commit_status(CHANNEL, &id).await.unwrap();
    assert_eq!(code, TxValidationCode::Valid);
    // The same signed transaction again: ordered, then marked DUPLICATE_TXID.
    c.submit_prepared(p).await.unwrap();
    let marker = c.submit(CHANNEL, "kv", "put", &[b"m", b"1"]).await.unwrap();
    let dup_block = devnet.block(marker.block).unwrap();
    let height = devnet.height();
    let filters: Vec<u8> = (block + 1..height)
        .flat_map(|n| ehr_ledger::block::tx_filter(&devnet.block(n).unwrap()).to_vec())
        .collect();
    assert!(
        filters.contains(&(TxValidationCode::DuplicateTxid as u8)),
        "{filters:?} {dup_block:?}"
    );
    // Applied once; the first commit stays the tx's status and proof.
    assert_eq!(
        c.evaluate(CHANNEL, "kv", "get", &[b"n"]).await.unwrap(),
        b"5"
    );
    assert_eq!(devnet.tx_proof(&id).unwrap().block, block);
    assert_eq!(
        c.commit_status(CHANNEL, &id).await.unwrap(),
        (TxValidationCode::Valid, block)
    );
    assert!(devnet.verify().verified);
    // Endorsing a proposal whose tx id is already committed is refused.
    let alice = o.user(0, "alice2");
    let mk = || {
        tx::new_proposal_with(
            &alice,
            CHANNEL,
            "kv",
            vec![b"get".to_vec(), b"n".to_vec()],
            BTreeMap::new(),
            b"fixed-nonce",
            prost_types::Timestamp::default(),
        )
        .unwrap()
    };
    let first = devnet.endorse(&mk().signed, &[]).await.unwrap();
    let mut env = first.prepared;
    env.signature = alice.sign(&env.payload);
    devnet.submit(&env).unwrap();
    devnet.commit_status(&first.tx_id).await.unwrap();
    let again = devnet.endorse(&mk().signed, &[]).await;
    assert!(
        matches!(again, Err(ehr_ledger::LedgerError::Duplicate(_))),
        "{again:?}"
    );
}
