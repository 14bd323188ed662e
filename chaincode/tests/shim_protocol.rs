//! The shim against a test peer over a real gRPC connection on 127.0.0.1:
//! handshake, every state request type, iterators, concurrency, keepalive,
//! events, error statuses and malformed input.

mod shim_support;

use std::collections::BTreeMap;

use ehr_proto::protos::chaincode_message::Type;
use ehr_proto::protos::{
    ChaincodeAdditionalParams, DelState, GetState, GetStateByRange, PutState, QueryStateClose,
};
use ehr_proto::queryresult::KeyModification;
use prost::Message;
use sha2::{Digest, Sha256};
use shim_support::*;

async fn ready_peer() -> (ShimServer, Peer) {
    let server = start_shim(TestChaincode, None).await;
    let mut peer = Peer::connect(server.addr).await;
    peer.handshake().await;
    (server, peer)
}

#[tokio::test]
async fn register_first_then_init_and_state_requests() {
    let (_server, mut peer) = ready_peer().await;

    // INIT runs Chaincode::init.
    peer.start_tx(Type::Init, "tx-init", &[b"init"]).await;
    let done = peer.finish("tx-init").await;
    assert_eq!(done.channel_id, CHANNEL);
    let r = completed(&done);
    assert_eq!((r.status, r.payload.as_slice()), (200, &b"init-ok"[..]));
    assert_eq!(peer.world.public["initialized"], b"yes");

    // PUT_STATE
    let r = completed(&peer.run_tx("tx1", &[b"put", b"k1", b"v1"]).await);
    assert_eq!(r.status, 200);
    let put = peer.requests.last().unwrap();
    assert_eq!(put.r#type, Type::PutState as i32);
    assert_eq!(put.txid, "tx1");
    assert_eq!(
        PutState::decode(put.payload.as_slice()).unwrap(),
        PutState {
            key: "k1".into(),
            value: b"v1".to_vec(),
            collection: String::new()
        }
    );
    assert_eq!(peer.world.public["k1"], b"v1");

    // GET_STATE (present and absent)
    let r = completed(&peer.run_tx("tx2", &[b"get", b"k1"]).await);
    assert_eq!((r.status, r.payload.as_slice()), (200, &b"v1"[..]));
    let get = peer.requests.last().unwrap();
    assert_eq!(get.r#type, Type::GetState as i32);
    assert_eq!(GetState::decode(get.payload.as_slice()).unwrap().key, "k1");
    let r = completed(&peer.run_tx("tx3", &[b"get", b"nope"]).await);
    assert_eq!(r.status, 404);

    // DEL_STATE
    let r = completed(&peer.run_tx("tx4", &[b"del", b"k1"]).await);
    assert_eq!(r.status, 200);
    let del = peer.requests.last().unwrap();
    assert_eq!(del.r#type, Type::DelState as i32);
    assert_eq!(DelState::decode(del.payload.as_slice()).unwrap().key, "k1");
    assert!(!peer.world.public.contains_key("k1"));
}

#[tokio::test]
async fn context_comes_from_the_signed_proposal() {
    let (_server, mut peer) = ready_peer().await;
    let opts = TxOpts {
        seconds: 1_234_567,
        nanos: 89,
        transient: BTreeMap::from([("dek".to_string(), b"secret".to_vec())]),
        ..Default::default()
    };
    let creator = hex::encode(&opts.creator);
    peer.send(transaction(Type::Transaction, "tx-ctx", &[b"ctx"], &opts))
        .await;
    let r = completed(&peer.finish("tx-ctx").await);
    assert_eq!(
        String::from_utf8(r.payload).unwrap(),
        format!("tx-ctx|{CHANNEL}|1234567.89|{creator}|dek=secret")
    );
}

#[tokio::test]
async fn range_pages_with_query_state_next_and_always_closes() {
    let (_server, mut peer) = ready_peer().await;
    for k in ["a", "b", "c", "d", "e", "x"] {
        peer.world
            .public
            .insert(k.into(), k.to_uppercase().into_bytes());
    }
    // Everything in [a, x): 5 results in batches of 2 → 2 QUERY_STATE_NEXT.
    let r = completed(&peer.run_tx("tx1", &[b"range", b"a", b"x", b""]).await);
    assert_eq!(
        String::from_utf8(r.payload).unwrap(),
        "a=A\nb=B\nc=C\nd=D\ne=E\n"
    );
    assert_eq!(
        peer.request_types(),
        [
            Type::GetStateByRange,
            Type::QueryStateNext,
            Type::QueryStateNext,
            Type::QueryStateClose
        ]
    );
    let range = GetStateByRange::decode(peer.requests[0].payload.as_slice()).unwrap();
    assert_eq!(
        (range.start_key.as_str(), range.end_key.as_str()),
        ("a", "x")
    );
    // Not a paginated query: Fabric forbids writes after one.
    assert!(range.metadata.is_empty());
    let close = QueryStateClose::decode(peer.requests[3].payload.as_slice()).unwrap();
    assert_eq!(close.id, "it1");
    assert!(peer.world.iterators.is_empty());

    // Unbounded end, stopping early at limit 3: the iterator still has more
    // on the peer's side, and the shim closes it.
    peer.requests.clear();
    let r = completed(&peer.run_tx("tx2", &[b"range", b"b", b"", b"3"]).await);
    assert_eq!(String::from_utf8(r.payload).unwrap(), "b=B\nc=C\nd=D\n");
    assert_eq!(
        peer.request_types(),
        [
            Type::GetStateByRange,
            Type::QueryStateNext,
            Type::QueryStateClose
        ]
    );
    assert_eq!(peer.world.closed, ["it1", "it2"]);
    assert!(peer.world.iterators.is_empty(), "no iterator left open");

    // A single batch (has_more = false) is closed too.
    peer.requests.clear();
    let r = completed(&peer.run_tx("tx3", &[b"range", b"x", b"", b""]).await);
    assert_eq!(String::from_utf8(r.payload).unwrap(), "x=X\n");
    assert_eq!(
        peer.request_types(),
        [Type::GetStateByRange, Type::QueryStateClose]
    );
}

#[tokio::test]
async fn iterator_is_closed_when_the_peer_fails_midway() {
    let (_server, mut peer) = ready_peer().await;
    for k in ["a", "b", "c", "d"] {
        peer.world.public.insert(k.into(), b"v".to_vec());
    }
    peer.world.fail_next = Some(Type::QueryStateNext);
    let r = completed(&peer.run_tx("tx1", &[b"range", b"a", b"z", b""]).await);
    assert_eq!(r.status, 500);
    assert!(r.message.contains("injected failure"), "{}", r.message);
    assert_eq!(
        peer.request_types(),
        [
            Type::GetStateByRange,
            Type::QueryStateNext,
            Type::QueryStateClose
        ]
    );
    assert_eq!(peer.world.closed, ["it1"]);
}

#[tokio::test]
async fn history_is_read_through_the_iterator_and_closed() {
    let (_server, mut peer) = ready_peer().await;
    let entry = |tx: &str, v: &[u8], s: i64, del: bool| {
        let mut km = KeyModification {
            tx_id: tx.into(),
            value: v.to_vec(),
            timestamp: Some(Default::default()),
            is_delete: del,
        };
        if let Some(ts) = km.timestamp.as_mut() {
            ts.seconds = s;
            ts.nanos = 5;
        }
        km
    };
    peer.world.history.insert(
        "k".into(),
        vec![
            entry("t1", b"one", 10, false),
            entry("t2", b"two", 20, false),
            entry("t3", b"", 30, true),
        ],
    );
    let r = completed(&peer.run_tx("tx1", &[b"history", b"k"]).await);
    assert_eq!(
        String::from_utf8(r.payload).unwrap(),
        "t1:one:10.5:false\nt2:two:20.5:false\nt3::30.5:true\n"
    );
    assert_eq!(
        peer.request_types(),
        [
            Type::GetHistoryForKey,
            Type::QueryStateNext,
            Type::QueryStateClose
        ]
    );
    assert!(peer.world.iterators.is_empty());
}

#[tokio::test]
async fn private_data_uses_the_collection_field() {
    let (_server, mut peer) = ready_peer().await;
    let r = completed(
        &peer
            .run_tx("tx1", &[b"pput", b"pdc", b"k", b"secret"])
            .await,
    );
    assert_eq!(r.status, 200);
    let put = PutState::decode(peer.requests[0].payload.as_slice()).unwrap();
    assert_eq!(put.collection, "pdc");
    assert_eq!(peer.world.private[&("pdc".into(), "k".into())], b"secret");
    assert!(
        peer.world.public.is_empty(),
        "nothing written to public state"
    );

    let r = completed(&peer.run_tx("tx2", &[b"pget", b"pdc", b"k"]).await);
    assert_eq!(r.payload, b"secret");
    let get = GetState::decode(peer.requests[1].payload.as_slice()).unwrap();
    assert_eq!((get.collection.as_str(), get.key.as_str()), ("pdc", "k"));

    let r = completed(&peer.run_tx("tx3", &[b"phash", b"pdc", b"k"]).await);
    assert_eq!(peer.requests[2].r#type, Type::GetPrivateDataHash as i32);
    assert_eq!(
        String::from_utf8(r.payload).unwrap(),
        hex::encode(Sha256::digest(b"secret"))
    );

    let r = completed(&peer.run_tx("tx4", &[b"pdel", b"pdc", b"k"]).await);
    assert_eq!(r.status, 200);
    let del = DelState::decode(peer.requests[3].payload.as_slice()).unwrap();
    assert_eq!(del.collection, "pdc");
    assert!(peer.world.private.is_empty());

    // An empty collection name is refused before anything is sent.
    let before = peer.requests.len();
    let r = completed(&peer.run_tx("tx5", &[b"pget", b"", b"k"]).await);
    assert_eq!(r.status, 500);
    assert_eq!(peer.requests.len(), before);
}

#[tokio::test]
async fn event_rides_on_completed() {
    let (_server, mut peer) = ready_peer().await;
    let done = peer
        .run_tx("tx1", &[b"event", b"ConsentGranted", b"{\"id\":1}"])
        .await;
    assert_eq!(completed(&done).status, 200);
    let ev = done.chaincode_event.expect("event on COMPLETED");
    assert_eq!(ev.event_name, "ConsentGranted");
    assert_eq!(ev.payload, b"{\"id\":1}");

    let done = peer.run_tx("tx2", &[b"get", b"none"]).await;
    assert!(done.chaincode_event.is_none(), "no event unless set");
}

#[tokio::test]
async fn error_status_is_carried_in_completed() {
    let (_server, mut peer) = ready_peer().await;
    let r = completed(&peer.run_tx("tx1", &[b"fail", b"403", b"not allowed"]).await);
    assert_eq!((r.status, r.message.as_str()), (403, "not allowed"));
    let r = completed(&peer.run_tx("tx2", &[b"fail", b"500", b"boom"]).await);
    assert_eq!((r.status, r.message.as_str()), (500, "boom"));
}

#[tokio::test]
async fn peer_error_reply_fails_the_call_not_the_stream() {
    let (_server, mut peer) = ready_peer().await;
    peer.world.fail_next = Some(Type::PutState);
    let r = completed(&peer.run_tx("tx1", &[b"put", b"k", b"v"]).await);
    assert_eq!(r.status, 500);
    assert!(
        r.message.contains("PUT_STATE failed: injected failure"),
        "{}",
        r.message
    );
    let r = completed(&peer.run_tx("tx2", &[b"put", b"k", b"v"]).await);
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn two_transactions_in_flight_on_one_stream() {
    let (_server, mut peer) = ready_peer().await;
    peer.world.public.insert("g1".into(), b"one".to_vec());
    peer.world.public.insert("g2".into(), b"two".to_vec());
    peer.start_tx(Type::Transaction, "txA", &[b"gate", b"g1"])
        .await;
    peer.start_tx(Type::Transaction, "txB", &[b"gate", b"g2"])
        .await;
    // Hold both requests unanswered: a shim that ran transactions one at a
    // time would never send the second GET_STATE and this would time out.
    let first = peer.recv().await;
    let second = peer.recv().await;
    let mut txids = [first.txid.clone(), second.txid.clone()];
    txids.sort();
    assert_eq!(txids, ["txA", "txB"]);
    assert!(first.r#type == Type::GetState as i32 && second.r#type == Type::GetState as i32);
    // Answer in reverse order: replies are routed by txid.
    let (a2, a1) = (peer.answer(&second), peer.answer(&first));
    peer.send(a2).await;
    peer.send(a1).await;
    let mut results = BTreeMap::new();
    for _ in 0..2 {
        let m = peer.recv().await;
        let r = completed(&m);
        results.insert(m.txid.clone(), r.payload);
    }
    assert_eq!(results["txA"], b"one");
    assert_eq!(results["txB"], b"two");
}

#[tokio::test]
async fn same_txid_on_two_channels_is_routed_separately() {
    let (_server, mut peer) = ready_peer().await;
    peer.start_tx(Type::Transaction, "same", &[b"gate", b"g"])
        .await;
    let mut other = transaction(Type::Transaction, "same", &[b"ctx"], &TxOpts::default());
    other.channel_id = "otherchannel".into();
    peer.send(other).await;
    let mut got_ctx = false;
    let mut got_gate = false;
    while !(got_ctx && got_gate) {
        let m = peer.recv().await;
        if m.r#type == Type::GetState as i32 {
            assert_eq!(m.channel_id, CHANNEL);
            let reply = msg(Type::Response, &m.txid, &m.channel_id, b"G".to_vec());
            peer.send(reply).await;
        } else {
            let r = completed(&m);
            if m.channel_id == "otherchannel" {
                assert!(
                    String::from_utf8(r.payload)
                        .unwrap()
                        .starts_with("same|otherchannel|")
                );
                got_ctx = true;
            } else {
                assert_eq!(r.payload, b"G");
                got_gate = true;
            }
        }
    }
}

#[tokio::test]
async fn duplicate_txid_in_flight_is_rejected() {
    let (_server, mut peer) = ready_peer().await;
    peer.start_tx(Type::Transaction, "dup", &[b"gate", b"g"])
        .await;
    let req = peer.recv().await;
    assert_eq!(req.r#type, Type::GetState as i32);
    peer.start_tx(Type::Transaction, "dup", &[b"get", b"g"])
        .await;
    let err = peer.recv().await;
    assert_eq!(err.r#type, Type::Error as i32);
    assert_eq!(err.txid, "dup");
    assert!(String::from_utf8_lossy(&err.payload).contains("already running"));
    // The first one is unaffected.
    let reply = peer.answer(&req);
    peer.send(reply).await;
    assert_eq!(completed(&peer.recv().await).status, 404);
}

#[tokio::test]
async fn keepalive_is_echoed_before_and_after_ready() {
    let server = start_shim(TestChaincode, None).await;
    let mut peer = Peer::connect(server.addr).await;
    let register = peer.recv().await;
    assert_eq!(register.r#type, Type::Register as i32);
    peer.send(msg(Type::Keepalive, "", "", b"ka1".to_vec()))
        .await;
    let echo = peer.recv().await;
    assert_eq!(
        (echo.r#type, echo.payload.as_slice()),
        (Type::Keepalive as i32, &b"ka1"[..])
    );
    peer.send(msg(Type::Registered, "", "", Vec::new())).await;
    peer.send(msg(Type::Ready, "", "", Vec::new())).await;
    peer.send(msg(Type::Keepalive, "", "", b"ka2".to_vec()))
        .await;
    let echo = peer.recv().await;
    assert_eq!(
        (echo.r#type, echo.payload.as_slice()),
        (Type::Keepalive as i32, &b"ka2"[..])
    );
    assert_eq!(
        completed(&peer.run_tx("tx1", &[b"put", b"k", b"v"]).await).status,
        200
    );
}

#[tokio::test]
async fn fabric3_ready_with_extra_fields_is_accepted() {
    let server = start_shim(TestChaincode, None).await;
    let mut peer = Peer::connect(server.addr).await;
    let mut payload = ChaincodeAdditionalParams {
        use_write_batch: true,
        max_size_write_batch: 1000,
        use_get_multiple_keys: true,
        max_size_get_multiple_keys: 1000,
    }
    .encode_to_vec();
    // ...and a field from a Fabric newer still (field 9, varint 1).
    payload.extend_from_slice(&[0x48, 0x01]);
    peer.handshake_with(payload).await;
    // Transactions work and the shim does not use batched writes.
    assert_eq!(
        completed(&peer.run_tx("tx1", &[b"put", b"k", b"v"]).await).status,
        200
    );
    assert_eq!(peer.request_types(), [Type::PutState]);
}

#[tokio::test]
async fn unknown_and_unexpected_messages_are_ignored() {
    let (_server, mut peer) = ready_peer().await;
    // A type number this Fabric version does not have, and a known type the
    // peer never sends to a chaincode, and a reply for no transaction.
    let mut unknown = msg(Type::Undefined, "x", CHANNEL, Vec::new());
    unknown.r#type = 99;
    peer.send(unknown).await;
    peer.send(msg(Type::GetStateMultiple, "x", CHANNEL, Vec::new()))
        .await;
    peer.send(msg(Type::Response, "ghost", CHANNEL, b"?".to_vec()))
        .await;
    assert_eq!(
        completed(&peer.run_tx("tx1", &[b"put", b"k", b"v"]).await).status,
        200
    );
}

#[tokio::test]
async fn malformed_transactions_get_error_and_the_stream_stays_usable() {
    let (_server, mut peer) = ready_peer().await;

    // Payload that is not a ChaincodeInput (field 1 claims 127 bytes).
    let mut bad_input = transaction(Type::Transaction, "bad1", &[b"get"], &TxOpts::default());
    bad_input.payload = vec![0x0a, 0x7f, 0x01];
    // No signed proposal at all.
    let mut no_proposal = transaction(Type::Transaction, "bad2", &[b"get"], &TxOpts::default());
    no_proposal.proposal = None;
    // Proposal bytes that are garbage.
    let mut bad_proposal = transaction(Type::Transaction, "bad3", &[b"get"], &TxOpts::default());
    if let Some(p) = bad_proposal.proposal.as_mut() {
        p.proposal_bytes = vec![0xff; 5];
    }
    // Channel header with another tx id.
    let mismatch = transaction(
        Type::Transaction,
        "bad4",
        &[b"get"],
        &TxOpts {
            header_tx_id: Some("other".into()),
            ..Default::default()
        },
    );
    // No creator.
    let no_creator = transaction(
        Type::Transaction,
        "bad5",
        &[b"get"],
        &TxOpts {
            creator: Vec::new(),
            ..Default::default()
        },
    );
    for (m, expect) in [
        (bad_input, "ChaincodeInput"),
        (no_proposal, "no signed proposal"),
        (bad_proposal, "Proposal"),
        (mismatch, "tx_id"),
        (no_creator, "creator"),
    ] {
        let txid = m.txid.clone();
        peer.send(m).await;
        let err = peer.recv().await;
        assert_eq!(err.r#type, Type::Error as i32, "{txid}");
        assert_eq!(
            (err.txid.as_str(), err.channel_id.as_str()),
            (txid.as_str(), CHANNEL)
        );
        let text = String::from_utf8_lossy(&err.payload);
        assert!(text.contains(expect), "{txid}: {text}");
    }
    assert!(peer.requests.is_empty(), "no chaincode ran");
    assert_eq!(
        completed(&peer.run_tx("ok", &[b"put", b"k", b"v"]).await).status,
        200
    );
}

#[tokio::test]
async fn a_panicking_chaincode_yields_error_and_the_stream_stays_usable() {
    let (_server, mut peer) = ready_peer().await;
    let m = peer.run_tx("tx1", &[b"panic"]).await;
    assert_eq!(m.r#type, Type::Error as i32);
    assert_eq!(m.txid, "tx1");
    assert_eq!(
        completed(&peer.run_tx("tx2", &[b"put", b"k", b"v"]).await).status,
        200
    );
}

#[tokio::test]
async fn transaction_before_ready_ends_the_stream() {
    let server = start_shim(TestChaincode, None).await;
    let mut peer = Peer::connect(server.addr).await;
    let _register = peer.recv().await;
    peer.send(msg(Type::Registered, "", "", Vec::new())).await;
    peer.start_tx(Type::Transaction, "early", &[b"get", b"k"])
        .await;
    let status = peer
        .recv_end()
        .await
        .expect_err("stream ends with an error");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("TRANSACTION"),
        "{}",
        status.message()
    );

    // The server still serves new streams.
    let mut again = Peer::connect(server.addr).await;
    again.handshake().await;
    assert_eq!(
        completed(&again.run_tx("tx1", &[b"put", b"k", b"v"]).await).status,
        200
    );
}

#[tokio::test]
async fn peer_refusing_registration_ends_the_stream() {
    let server = start_shim(TestChaincode, None).await;
    let mut peer = Peer::connect(server.addr).await;
    let _register = peer.recv().await;
    peer.send(msg(
        Type::Error,
        "",
        "",
        b"chaincode ehr_1.0 not installed".to_vec(),
    ))
    .await;
    let status = peer
        .recv_end()
        .await
        .expect_err("stream ends with an error");
    assert!(
        status.message().contains("not installed"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn an_unanswered_request_times_out() {
    let server = start_shim_with(TestChaincode, None, |c| {
        c.request_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let mut peer = Peer::connect(server.addr).await;
    peer.handshake().await;
    peer.start_tx(Type::Transaction, "slow", &[b"get", b"k"])
        .await;
    let req = peer.recv().await;
    assert_eq!(req.r#type, Type::GetState as i32);
    // Never answered: the transaction fails by itself.
    let r = completed(&peer.recv().await);
    assert_eq!(r.status, 500);
    assert!(r.message.contains("no reply to GET_STATE"), "{}", r.message);
}
