//! A test "peer" for the shim: it dials the shim's real gRPC server on
//! 127.0.0.1, speaks Fabric's chaincode protocol, and answers the
//! chaincode's state requests from an in-memory world. Plus a small test
//! chaincode that exercises every `Stub` call.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use ehr_chaincode::shim::{self, ChaincodeService, ShimConfig};
use ehr_chaincode::stub::Stub;
use ehr_chaincode::{Chaincode, Response};
use ehr_proto::common::{ChannelHeader, Header, HeaderType, SignatureHeader};
use ehr_proto::protos::chaincode_client::ChaincodeClient;
use ehr_proto::protos::chaincode_message::Type;
use ehr_proto::protos::{
    ChaincodeInput, ChaincodeMessage, ChaincodeProposalPayload, DelState, GetHistoryForKey,
    GetState, GetStateByRange, Proposal, PutState, QueryResponse, QueryResultBytes,
    QueryStateClose, QueryStateNext, SignedProposal,
};
use ehr_proto::queryresult;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{ServerTlsConfig, Uri};

pub const CC_ID: &str = "ehr_1.0:0123456789abcdef";
pub const CHANNEL: &str = "mychannel";
/// How long the test peer waits for any one message before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A running shim server on 127.0.0.1; stops when dropped.
pub struct ShimServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for ShimServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the shim serving `cc` on an ephemeral 127.0.0.1 port.
pub async fn start_shim(cc: impl Chaincode, tls: Option<ServerTlsConfig>) -> ShimServer {
    start_shim_with(cc, tls, |_| {}).await
}

pub async fn start_shim_with(
    cc: impl Chaincode,
    tls: Option<ServerTlsConfig>,
    tweak: impl FnOnce(&mut ShimConfig),
) -> ShimServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = ShimConfig::new(CC_ID).unwrap();
    tweak(&mut config);
    let service = ChaincodeService::new(cc, config);
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        shim::serve(listener, service, tls, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    ShimServer {
        addr,
        stop: Some(stop),
    }
}

/// State kept by the test peer.
#[derive(Default)]
pub struct World {
    pub public: BTreeMap<String, Vec<u8>>,
    pub private: BTreeMap<(String, String), Vec<u8>>,
    pub history: BTreeMap<String, Vec<queryresult::KeyModification>>,
    /// Open iterators: id -> results not yet returned.
    pub iterators: HashMap<String, Vec<Vec<u8>>>,
    pub next_iterator: u64,
    /// Results per QueryResponse batch (Fabric's default is 100; small here
    /// to force QUERY_STATE_NEXT).
    pub batch_size: usize,
    /// Answer the next request of this type with ERROR.
    pub fail_next: Option<Type>,
    /// Iterator ids closed by QUERY_STATE_CLOSE.
    pub closed: Vec<String>,
}

/// The peer side of one `Chaincode/Connect` stream.
pub struct Peer {
    to_cc: mpsc::Sender<ChaincodeMessage>,
    from_cc: Streaming<ChaincodeMessage>,
    pub world: World,
    /// Every request the chaincode sent, in order.
    pub requests: Vec<ChaincodeMessage>,
}

impl Peer {
    /// Dials the shim (plain TCP) and opens the stream.
    pub async fn connect(addr: SocketAddr) -> Peer {
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let channel = tonic::transport::Endpoint::from(uri)
            .connect()
            .await
            .unwrap();
        Self::open(channel).await.unwrap()
    }

    /// Opens the stream over an established channel.
    pub async fn open(channel: tonic::transport::Channel) -> Result<Peer, tonic::Status> {
        let mut client = ChaincodeClient::new(channel);
        let (to_cc, rx) = mpsc::channel(64);
        let from_cc = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Peer {
            to_cc,
            from_cc,
            world: World {
                batch_size: 2,
                ..Default::default()
            },
            requests: Vec::new(),
        })
    }

    pub async fn send(&self, msg: ChaincodeMessage) {
        self.to_cc.send(msg).await.unwrap();
    }

    /// The next message from the chaincode (fails the test after RECV_TIMEOUT).
    pub async fn recv(&mut self) -> ChaincodeMessage {
        match tokio::time::timeout(RECV_TIMEOUT, self.from_cc.message()).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => panic!("chaincode closed the stream"),
            Ok(Err(s)) => panic!("stream error: {s}"),
            Err(_) => panic!("no message from the chaincode within {RECV_TIMEOUT:?}"),
        }
    }

    /// The stream's end: Ok(None) on a clean close, Err(status) on an error.
    pub async fn recv_end(&mut self) -> Result<Option<ChaincodeMessage>, tonic::Status> {
        tokio::time::timeout(RECV_TIMEOUT, self.from_cc.message())
            .await
            .expect("stream did not end in time")
    }

    /// Checks REGISTER, then sends REGISTERED and READY (with `ready_payload`).
    pub async fn handshake_with(&mut self, ready_payload: Vec<u8>) {
        let register = self.recv().await;
        assert_eq!(
            register.r#type,
            Type::Register as i32,
            "REGISTER comes first"
        );
        // ChaincodeID.name is field 2 (tag 0x12); field 1 (path, tag 0x0a)
        // is what a real peer rejects with "chaincodeID name is empty".
        assert_eq!(register.payload.first(), Some(&0x12));
        let id = ehr_proto::protos::ChaincodeId::decode(register.payload.as_slice()).unwrap();
        assert_eq!(id.name, CC_ID);
        assert!(id.path.is_empty());
        self.send(msg(Type::Registered, "", "", Vec::new())).await;
        self.send(msg(Type::Ready, "", "", ready_payload)).await;
    }

    pub async fn handshake(&mut self) {
        self.handshake_with(Vec::new()).await;
    }

    /// Sends a TRANSACTION (or INIT) for `args` with a well-formed proposal.
    pub async fn start_tx(&self, kind: Type, txid: &str, args: &[&[u8]]) {
        self.send(transaction(kind, txid, args, &TxOpts::default()))
            .await;
    }

    /// Runs one transaction to its end, answering its requests from the
    /// world; returns the final COMPLETED or ERROR.
    pub async fn run_tx(&mut self, txid: &str, args: &[&[u8]]) -> ChaincodeMessage {
        self.start_tx(Type::Transaction, txid, args).await;
        self.finish(txid).await
    }

    /// Serves requests until COMPLETED/ERROR for `txid` arrives. Requests of
    /// other transactions are served too; their final messages are a test
    /// failure (use `serve_until` for interleaving).
    pub async fn finish(&mut self, txid: &str) -> ChaincodeMessage {
        loop {
            let m = self.recv().await;
            let kind = Type::try_from(m.r#type).unwrap();
            match kind {
                Type::Completed | Type::Error => {
                    assert_eq!(m.txid, txid, "final message for another transaction");
                    return m;
                }
                _ => {
                    let reply = self.answer(&m);
                    self.requests.push(m);
                    self.send(reply).await;
                }
            }
        }
    }

    /// The peer's answer to one chaincode request, from the world.
    pub fn answer(&mut self, m: &ChaincodeMessage) -> ChaincodeMessage {
        let kind = Type::try_from(m.r#type).unwrap();
        assert_eq!(m.channel_id, CHANNEL, "request carries the channel");
        assert!(!m.txid.is_empty(), "request carries the txid");
        if self.world.fail_next == Some(kind) {
            self.world.fail_next = None;
            return msg(
                Type::Error,
                &m.txid,
                &m.channel_id,
                b"injected failure".to_vec(),
            );
        }
        let w = &mut self.world;
        let payload = match kind {
            Type::GetState | Type::GetPrivateDataHash => {
                let p = GetState::decode(m.payload.as_slice()).unwrap();
                let v = if p.collection.is_empty() {
                    w.public.get(&p.key).cloned()
                } else {
                    w.private.get(&(p.collection, p.key)).cloned()
                };
                match (kind, v) {
                    (Type::GetPrivateDataHash, Some(v)) => Sha256::digest(&v).to_vec(),
                    (_, v) => v.unwrap_or_default(),
                }
            }
            Type::PutState => {
                let p = PutState::decode(m.payload.as_slice()).unwrap();
                if p.collection.is_empty() {
                    w.public.insert(p.key, p.value);
                } else {
                    w.private.insert((p.collection, p.key), p.value);
                }
                Vec::new()
            }
            Type::DelState => {
                let p = DelState::decode(m.payload.as_slice()).unwrap();
                if p.collection.is_empty() {
                    w.public.remove(&p.key);
                } else {
                    w.private.remove(&(p.collection, p.key));
                }
                Vec::new()
            }
            Type::GetStateByRange => {
                let p = GetStateByRange::decode(m.payload.as_slice()).unwrap();
                assert!(p.collection.is_empty());
                let results: Vec<Vec<u8>> = w
                    .public
                    .iter()
                    .filter(|(k, _)| {
                        k.as_str() >= p.start_key.as_str()
                            && (p.end_key.is_empty() || k.as_str() < p.end_key.as_str())
                    })
                    .map(|(k, v)| {
                        queryresult::Kv {
                            namespace: "ehr".into(),
                            key: k.clone(),
                            value: v.clone(),
                        }
                        .encode_to_vec()
                    })
                    .collect();
                open_iterator(w, results)
            }
            Type::GetHistoryForKey => {
                let p = GetHistoryForKey::decode(m.payload.as_slice()).unwrap();
                let results = w
                    .history
                    .get(&p.key)
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(Message::encode_to_vec)
                    .collect();
                open_iterator(w, results)
            }
            Type::QueryStateNext => {
                let p = QueryStateNext::decode(m.payload.as_slice()).unwrap();
                let Some(rest) = w.iterators.remove(&p.id) else {
                    return msg(
                        Type::Error,
                        &m.txid,
                        &m.channel_id,
                        b"no such iterator".to_vec(),
                    );
                };
                batch(w, p.id, rest)
            }
            Type::QueryStateClose => {
                let p = QueryStateClose::decode(m.payload.as_slice()).unwrap();
                w.iterators.remove(&p.id);
                w.closed.push(p.id.clone());
                QueryResponse {
                    id: p.id,
                    ..Default::default()
                }
                .encode_to_vec()
            }
            other => panic!("the test peer does not serve {other:?}"),
        };
        msg(Type::Response, &m.txid, &m.channel_id, payload)
    }

    /// Types of the recorded requests, in order.
    pub fn request_types(&self) -> Vec<Type> {
        self.requests
            .iter()
            .map(|m| Type::try_from(m.r#type).unwrap())
            .collect()
    }
}

fn open_iterator(w: &mut World, results: Vec<Vec<u8>>) -> Vec<u8> {
    w.next_iterator += 1;
    let id = format!("it{}", w.next_iterator);
    batch(w, id, results)
}

/// Returns up to `batch_size` results; keeps the rest under the id. Like
/// Fabric, the iterator stays open (until QUERY_STATE_CLOSE) only while it
/// has more.
fn batch(w: &mut World, id: String, mut results: Vec<Vec<u8>>) -> Vec<u8> {
    let rest = results.split_off(results.len().min(w.batch_size));
    let has_more = !rest.is_empty();
    if has_more {
        w.iterators.insert(id.clone(), rest);
    }
    QueryResponse {
        results: results
            .into_iter()
            .map(|r| QueryResultBytes { result_bytes: r })
            .collect(),
        has_more,
        id,
        metadata: Vec::new(),
    }
    .encode_to_vec()
}

pub fn msg(kind: Type, txid: &str, channel: &str, payload: Vec<u8>) -> ChaincodeMessage {
    ChaincodeMessage {
        r#type: kind as i32,
        payload,
        txid: txid.into(),
        channel_id: channel.into(),
        ..Default::default()
    }
}

/// What goes into a test proposal.
pub struct TxOpts {
    pub creator: Vec<u8>,
    pub seconds: i64,
    pub nanos: i32,
    pub transient: BTreeMap<String, Vec<u8>>,
    /// Overrides the channel header's tx id (to test a mismatch).
    pub header_tx_id: Option<String>,
}

impl Default for TxOpts {
    fn default() -> Self {
        Self {
            creator: ehr_proto::msp::SerializedIdentity {
                mspid: "Org1MSP".into(),
                id_bytes: b"-----BEGIN CERTIFICATE-----\n...".to_vec(),
            }
            .encode_to_vec(),
            seconds: 1_700_000_000,
            nanos: 42,
            transient: BTreeMap::new(),
            header_tx_id: None,
        }
    }
}

/// A SignedProposal as a client makes it (signature not checked by the shim).
pub fn signed_proposal(txid: &str, args: &[&[u8]], o: &TxOpts) -> SignedProposal {
    let mut ch = ChannelHeader {
        r#type: HeaderType::EndorserTransaction as i32,
        channel_id: CHANNEL.into(),
        tx_id: o.header_tx_id.clone().unwrap_or_else(|| txid.into()),
        timestamp: Some(Default::default()),
        ..Default::default()
    };
    if let Some(ts) = ch.timestamp.as_mut() {
        ts.seconds = o.seconds;
        ts.nanos = o.nanos;
    }
    let header = Header {
        channel_header: ch.encode_to_vec(),
        signature_header: SignatureHeader {
            creator: o.creator.clone(),
            nonce: vec![7; 24],
        }
        .encode_to_vec(),
    };
    let input = input(args);
    let spec = ehr_proto::protos::ChaincodeInvocationSpec {
        chaincode_spec: Some(ehr_proto::protos::ChaincodeSpec {
            input: Some(input),
            ..Default::default()
        }),
    };
    let payload = ChaincodeProposalPayload {
        input: spec.encode_to_vec(),
        transient_map: o.transient.clone(),
    };
    let proposal = Proposal {
        header: header.encode_to_vec(),
        payload: payload.encode_to_vec(),
        extension: Vec::new(),
    };
    SignedProposal {
        proposal_bytes: proposal.encode_to_vec(),
        signature: b"not-checked".to_vec(),
    }
}

pub fn input(args: &[&[u8]]) -> ChaincodeInput {
    ChaincodeInput {
        args: args.iter().map(|a| a.to_vec()).collect(),
        ..Default::default()
    }
}

/// An INIT/TRANSACTION message as a peer sends it.
pub fn transaction(kind: Type, txid: &str, args: &[&[u8]], o: &TxOpts) -> ChaincodeMessage {
    ChaincodeMessage {
        r#type: kind as i32,
        payload: input(args).encode_to_vec(),
        txid: txid.into(),
        channel_id: CHANNEL.into(),
        proposal: Some(signed_proposal(txid, args, o)),
        ..Default::default()
    }
}

/// Decodes a COMPLETED message's `peer.Response`.
pub fn completed(m: &ChaincodeMessage) -> ehr_proto::protos::Response {
    assert_eq!(
        Type::try_from(m.r#type).unwrap(),
        Type::Completed,
        "expected COMPLETED, got {:?} {:?}",
        Type::try_from(m.r#type),
        String::from_utf8_lossy(&m.payload)
    );
    ehr_proto::protos::Response::decode(m.payload.as_slice()).unwrap()
}

/// A chaincode whose functions each exercise one `Stub` call.
pub struct TestChaincode;

fn arg(args: &[Vec<u8>], i: usize) -> String {
    String::from_utf8(args.get(i).cloned().unwrap_or_default()).unwrap()
}

fn fail(e: impl std::fmt::Display) -> Response {
    Response::error(500, e.to_string())
}

impl Chaincode for TestChaincode {
    fn init(&self, stub: &mut dyn Stub, _args: &[Vec<u8>]) -> Response {
        match stub.put_state("initialized", b"yes") {
            Ok(()) => Response::ok(b"init-ok".to_vec()),
            Err(e) => fail(e),
        }
    }

    fn invoke(&self, stub: &mut dyn Stub, args: &[Vec<u8>]) -> Response {
        let a = |i| arg(args, i);
        let r: Result<Vec<u8>, ehr_chaincode::stub::StubError> = match a(0).as_str() {
            "put" => stub.put_state(&a(1), a(2).as_bytes()).map(|()| Vec::new()),
            "get" | "gate" => match stub.get_state(&a(1)) {
                Ok(Some(v)) => Ok(v),
                Ok(None) => return Response::error(404, "missing"),
                Err(e) => Err(e),
            },
            "del" => stub.del_state(&a(1)).map(|()| Vec::new()),
            "range" => {
                let limit = a(3).parse::<u32>().ok();
                stub.get_state_by_range(&a(1), &a(2), limit).map(|kvs| {
                    let mut s = String::new();
                    for kv in kvs {
                        let _ = writeln!(s, "{}={}", kv.key, String::from_utf8_lossy(&kv.value));
                    }
                    s.into_bytes()
                })
            }
            "history" => stub.get_history_for_key(&a(1)).map(|h| {
                let mut s = String::new();
                for m in h {
                    let _ = writeln!(
                        s,
                        "{}:{}:{}.{}:{}",
                        m.tx_id,
                        String::from_utf8_lossy(&m.value),
                        m.timestamp_secs,
                        m.timestamp_nanos,
                        m.is_delete
                    );
                }
                s.into_bytes()
            }),
            "pput" => stub
                .put_private_data(&a(1), &a(2), a(3).as_bytes())
                .map(|()| Vec::new()),
            "pget" => match stub.get_private_data(&a(1), &a(2)) {
                Ok(Some(v)) => Ok(v),
                Ok(None) => return Response::error(404, "missing"),
                Err(e) => Err(e),
            },
            "pdel" => stub.del_private_data(&a(1), &a(2)).map(|()| Vec::new()),
            "phash" => stub
                .get_private_data_hash(&a(1), &a(2))
                .map(|h| hex::encode(h.unwrap_or_default()).into_bytes()),
            "event" => stub.set_event(&a(1), a(2).as_bytes()).map(|()| Vec::new()),
            "ctx" => {
                let ts = stub.tx_timestamp();
                let transient: Vec<String> = stub
                    .transient()
                    .iter()
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                    .collect();
                Ok(format!(
                    "{}|{}|{}.{}|{}|{}",
                    stub.tx_id(),
                    stub.channel_id(),
                    ts.seconds,
                    ts.nanos,
                    hex::encode(stub.creator()),
                    transient.join(",")
                )
                .into_bytes())
            }
            "fail" => return Response::error(a(1).parse().unwrap_or(500), a(2)),
            "panic" => panic!("test chaincode panics on purpose"),
            other => return Response::error(400, format!("unknown function {other}")),
        };
        match r {
            Ok(payload) => Response::ok(payload),
            Err(e) => fail(e),
        }
    }
}
