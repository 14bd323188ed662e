//! Rough cost figures of the shim over a real gRPC stream on 127.0.0.1 with
//! the test peer: transactions per second, one at a time and with several
//! in flight. Ignored by default; run with
//! `cargo test -p ehr-chaincode --test shim_throughput -- --ignored --nocapture`.
//! The assertions are loose sanity bounds; the printed numbers are the point.

mod shim_support;

use std::time::Instant;

use ehr_proto::protos::chaincode_message::Type;
use shim_support::*;

const TXS: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn transactions_per_second() {
    let server = start_shim(TestChaincode, None).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.handshake().await;
    peer.world.public.insert("k".into(), b"v".to_vec());

    // One at a time: each tx is TRANSACTION → GET_STATE ↔ RESPONSE → COMPLETED.
    let t = Instant::now();
    for i in 0..TXS {
        let r = completed(&peer.run_tx(&format!("s{i}"), &[b"get", b"k"]).await);
        assert_eq!(r.status, 200);
    }
    let seq = t.elapsed();
    println!(
        "sequential: {TXS} txs (1 GET_STATE each) in {seq:?} = {:.0} tx/s, {:.1} µs/tx",
        TXS as f64 / seq.as_secs_f64(),
        seq.as_micros() as f64 / TXS as f64
    );

    // 16 in flight on the same stream.
    const IN_FLIGHT: usize = 16;
    let t = Instant::now();
    let mut started = 0;
    let mut done = 0;
    while started < IN_FLIGHT {
        peer.start_tx(Type::Transaction, &format!("c{started}"), &[b"get", b"k"])
            .await;
        started += 1;
    }
    while done < TXS {
        let m = peer.recv().await;
        if m.r#type == Type::Completed as i32 {
            done += 1;
            if started < TXS {
                peer.start_tx(Type::Transaction, &format!("c{started}"), &[b"get", b"k"])
                    .await;
                started += 1;
            }
        } else {
            let reply = peer.answer(&m);
            peer.send(reply).await;
        }
    }
    let conc = t.elapsed();
    println!(
        "{IN_FLIGHT} in flight: {TXS} txs in {conc:?} = {:.0} tx/s",
        TXS as f64 / conc.as_secs_f64()
    );
    assert!(seq.as_secs() < 60 && conc.as_secs() < 60);
}
