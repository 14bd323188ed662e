//! The peer side of the Fabric chaincode shim, for chaincode-as-a-service:
//! the devnet dials the chaincode server's `protos.Chaincode/Connect` as a
//! Fabric 2.4+ peer does, and serves the chaincode's state calls from the
//! transaction simulator.
//!
//! ```text
//! chaincode (server)                     devnet (this, the client)
//!   REGISTER(ChaincodeID{name})  ───▶
//!                                ◀───   REGISTERED, READY
//!                                ◀───   TRANSACTION(txid, channel, ChaincodeInput, SignedProposal)
//!   GET_STATE / PUT_STATE / ...  ───▶   served by the Simulator
//!                                ◀───   RESPONSE / ERROR
//!   COMPLETED(Response, event) or ERROR ───▶
//! ```
//!
//! One stream carries every transaction; messages are routed by
//! (channel, txid). KEEPALIVE is echoed. Range and history iterators are
//! served in batches of [`BATCH`] (Fabric's default `maxResultLimit`) with
//! QUERY_STATE_NEXT / QUERY_STATE_CLOSE.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ehr_chaincode::stub::Stub;
use ehr_proto::protos::chaincode_client::ChaincodeClient;
use ehr_proto::protos::chaincode_message::Type;
use ehr_proto::protos::{
    ChaincodeId, ChaincodeInput, ChaincodeMessage, DelState, GetHistoryForKey, GetState,
    GetStateByRange, PutState, QueryMetadata, QueryResponse, QueryResponseMetadata,
    QueryResultBytes, QueryStateClose, QueryStateNext, Response,
};
use ehr_proto::queryresult::{KeyModification, Kv};
use prost::Message;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::simulator::Simulator;
use crate::tx::CheckedProposal;

/// Results per QueryResponse batch (Fabric's `maxResultLimit`).
pub const BATCH: usize = 100;
/// How long a transaction may run (Fabric's default `chaincode.executetimeout`).
pub const EXECUTE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_MESSAGE: usize = 100 * 1024 * 1024;

/// Failures talking to an out-of-process chaincode.
#[derive(Debug, Error)]
pub enum ShimError {
    #[error("cannot connect to chaincode at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("chaincode protocol: {0}")]
    Protocol(String),
    #[error("chaincode stream closed")]
    Closed,
    #[error("chaincode did not complete within {0:?}")]
    Timeout(Duration),
}

type Route = (String, String);

struct Conn {
    out: mpsc::UnboundedSender<ChaincodeMessage>,
    routes: Arc<Mutex<HashMap<Route, mpsc::UnboundedSender<ChaincodeMessage>>>>,
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// A chaincode served by a CCaaS server, reached over `Chaincode/Connect`.
pub struct RemoteChaincode {
    name: String,
    address: String,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

fn msg(t: Type, txid: &str, channel: &str, payload: Vec<u8>) -> ChaincodeMessage {
    ChaincodeMessage {
        r#type: t as i32,
        payload,
        txid: txid.to_string(),
        channel_id: channel.to_string(),
        ..Default::default()
    }
}

impl RemoteChaincode {
    /// A chaincode named `name` (the package id it registers with) at `address`.
    pub fn new(name: &str, address: &str) -> Self {
        Self {
            name: name.to_string(),
            address: address.to_string(),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    async fn connection(&self) -> Result<Arc<Conn>, ShimError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref()
            && c.alive.load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        let c = Arc::new(self.dial().await?);
        *g = Some(c.clone());
        Ok(c)
    }

    async fn dial(&self) -> Result<Conn, ShimError> {
        let err = |reason: String| ShimError::Connect {
            address: self.address.clone(),
            reason,
        };
        let channel = tonic::transport::Endpoint::from_shared(self.address.clone())
            .map_err(|e| err(e.to_string()))?
            .connect()
            .await
            .map_err(|e| err(e.to_string()))?;
        let mut client = ChaincodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let (out, rx) = mpsc::unbounded_channel();
        let mut inbound = client
            .connect(UnboundedReceiverStream::new(rx))
            .await
            .map_err(|e| err(e.to_string()))?
            .into_inner();
        // The chaincode speaks first: REGISTER with its package id in ChaincodeID.name.
        let first = tokio::time::timeout(Duration::from_secs(10), inbound.next())
            .await
            .map_err(|_| err("no REGISTER within 10s".into()))?
            .ok_or_else(|| err("stream closed before REGISTER".into()))?
            .map_err(|e| err(e.to_string()))?;
        if first.r#type != Type::Register as i32 {
            return Err(err(format!("expected REGISTER, got type {}", first.r#type)));
        }
        let id = ChaincodeId::decode(first.payload.as_slice())
            .map_err(|e| err(format!("REGISTER payload: {e}")))?;
        if id.name.is_empty() {
            return Err(err("chaincodeID name is empty".into()));
        }
        if id.name != self.name {
            tracing::info!(registered = %id.name, configured = %self.name, "chaincode registered under another name");
        }
        let send = |m: ChaincodeMessage| out.send(m).map_err(|_| err("stream closed".into()));
        send(msg(Type::Registered, "", "", Vec::new()))?;
        send(msg(Type::Ready, "", "", Vec::new()))?;

        let routes: Arc<Mutex<HashMap<Route, mpsc::UnboundedSender<ChaincodeMessage>>>> =
            Arc::default();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (r, a, o) = (routes.clone(), alive.clone(), out.clone());
        tokio::spawn(async move {
            while let Some(m) = inbound.next().await {
                let Ok(m) = m else { break };
                if m.r#type == Type::Keepalive as i32 {
                    let _ = o.send(m);
                    continue;
                }
                let key = (m.channel_id.clone(), m.txid.clone());
                let target = r.lock().ok().and_then(|g| g.get(&key).cloned());
                match target {
                    Some(t) => {
                        let _ = t.send(m);
                    }
                    None => {
                        tracing::warn!(txid = %m.txid, r#type = m.r#type, "chaincode message for no running transaction")
                    }
                }
            }
            a.store(false, std::sync::atomic::Ordering::Release);
            if let Ok(mut g) = r.lock() {
                g.clear(); // wakes every waiting transaction with Closed
            }
        });
        Ok(Conn { out, routes, alive })
    }

    /// Runs one transaction on the chaincode, serving its calls from `sim`.
    pub async fn execute(
        &self,
        sim: &mut Simulator,
        p: &CheckedProposal,
    ) -> Result<Response, ShimError> {
        let conn = self.connection().await?;
        let key = (p.channel_id.clone(), p.tx_id.clone());
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut g) = conn.routes.lock() {
            if g.contains_key(&key) {
                return Err(ShimError::Protocol(format!(
                    "transaction {} is already running",
                    p.tx_id
                )));
            }
            g.insert(key.clone(), tx);
        }
        let result = tokio::time::timeout(EXECUTE_TIMEOUT, run_tx(&conn, sim, p, &mut rx)).await;
        if let Ok(mut g) = conn.routes.lock() {
            g.remove(&key);
        }
        result.map_err(|_| ShimError::Timeout(EXECUTE_TIMEOUT))?
    }
}

enum Iter {
    Range {
        id: usize,
        left: Option<usize>,
        fetched: usize,
    },
    Items(std::vec::IntoIter<Vec<u8>>),
}

async fn run_tx(
    conn: &Conn,
    sim: &mut Simulator,
    p: &CheckedProposal,
    rx: &mut mpsc::UnboundedReceiver<ChaincodeMessage>,
) -> Result<Response, ShimError> {
    let input = ChaincodeInput {
        args: p.args.clone(),
        is_init: p.is_init,
        ..Default::default()
    };
    let mut m = msg(
        if p.is_init {
            Type::Init
        } else {
            Type::Transaction
        },
        &p.tx_id,
        &p.channel_id,
        input.encode_to_vec(),
    );
    m.proposal = Some(p.signed.clone());
    conn.out.send(m).map_err(|_| ShimError::Closed)?;
    let mut iters: HashMap<String, Iter> = HashMap::new();
    let mut next_iter = 0u64;
    while let Some(m) = rx.recv().await {
        let t = Type::try_from(m.r#type).unwrap_or(Type::Undefined);
        let reply = match t {
            Type::Completed => {
                let resp = Response::decode(m.payload.as_slice())
                    .map_err(|e| ShimError::Protocol(format!("COMPLETED payload: {e}")))?;
                if let Some(e) = m.chaincode_event
                    && !e.event_name.is_empty()
                {
                    sim.set_event(&e.event_name, &e.payload)
                        .map_err(|e| ShimError::Protocol(e.to_string()))?;
                }
                return Ok(resp);
            }
            Type::Error => {
                return Ok(Response {
                    status: ehr_chaincode::STATUS_ERROR,
                    message: String::from_utf8_lossy(&m.payload).into_owned(),
                    payload: Vec::new(),
                });
            }
            _ => serve(sim, t, &m.payload, &mut iters, &mut next_iter),
        };
        let (rt, payload) = match reply {
            Ok(b) => (Type::Response, b),
            Err(e) => (Type::Error, e.into_bytes()),
        };
        conn.out
            .send(msg(rt, &m.txid, &m.channel_id, payload))
            .map_err(|_| ShimError::Closed)?;
    }
    Err(ShimError::Closed)
}

fn dec<M: Message + Default>(b: &[u8]) -> Result<M, String> {
    M::decode(b).map_err(|e| format!("bad payload: {e}"))
}

fn serve(
    sim: &mut Simulator,
    t: Type,
    payload: &[u8],
    iters: &mut HashMap<String, Iter>,
    next_iter: &mut u64,
) -> Result<Vec<u8>, String> {
    let se = |e: ehr_chaincode::stub::StubError| e.to_string();
    match t {
        Type::GetState => {
            let g: GetState = dec(payload)?;
            let v = if g.collection.is_empty() {
                sim.get_state(&g.key).map_err(se)?
            } else {
                sim.get_private_data(&g.collection, &g.key).map_err(se)?
            };
            Ok(v.unwrap_or_default())
        }
        Type::GetPrivateDataHash => {
            let g: GetState = dec(payload)?;
            Ok(sim
                .get_private_data_hash(&g.collection, &g.key)
                .map_err(se)?
                .unwrap_or_default())
        }
        Type::PutState => {
            let p: PutState = dec(payload)?;
            if p.collection.is_empty() {
                sim.put_state(&p.key, &p.value).map_err(se)?;
            } else {
                sim.put_private_data(&p.collection, &p.key, &p.value)
                    .map_err(se)?;
            }
            Ok(Vec::new())
        }
        Type::DelState => {
            let d: DelState = dec(payload)?;
            if d.collection.is_empty() {
                sim.del_state(&d.key).map_err(se)?;
            } else {
                sim.del_private_data(&d.collection, &d.key).map_err(se)?;
            }
            Ok(Vec::new())
        }
        Type::GetStateByRange => {
            let r: GetStateByRange = dec(payload)?;
            if !r.collection.is_empty() {
                return Err("private data range queries are not supported by the devnet".into());
            }
            let page: Option<QueryMetadata> = if r.metadata.is_empty() {
                None
            } else {
                Some(dec(&r.metadata)?)
            };
            let start = match &page {
                Some(q) if !q.bookmark.is_empty() => q.bookmark.clone(),
                _ => r.start_key.clone(),
            };
            let id = sim.range_open(&start, &r.end_key);
            let left = page.as_ref().map(|q| q.page_size.max(0) as usize);
            *next_iter += 1;
            let name = format!("it{next_iter}");
            iters.insert(
                name.clone(),
                Iter::Range {
                    id,
                    left,
                    fetched: 0,
                },
            );
            next_batch(sim, iters, &name)
        }
        Type::QueryStateNext => {
            let q: QueryStateNext = dec(payload)?;
            if !iters.contains_key(&q.id) {
                return Err(format!("no iterator {:?}", q.id));
            }
            next_batch(sim, iters, &q.id)
        }
        Type::QueryStateClose => {
            let q: QueryStateClose = dec(payload)?;
            iters.remove(&q.id);
            Ok(QueryResponse {
                id: q.id,
                ..Default::default()
            }
            .encode_to_vec())
        }
        Type::GetHistoryForKey => {
            let h: GetHistoryForKey = dec(payload)?;
            let items: Vec<Vec<u8>> = sim
                .get_history_for_key(&h.key)
                .map_err(se)?
                .into_iter()
                .map(|m| {
                    KeyModification {
                        tx_id: m.tx_id,
                        value: m.value,
                        timestamp: Some(prost_types::Timestamp {
                            seconds: m.timestamp_secs,
                            nanos: m.timestamp_nanos,
                        }),
                        is_delete: m.is_delete,
                    }
                    .encode_to_vec()
                })
                .collect();
            *next_iter += 1;
            let name = format!("it{next_iter}");
            iters.insert(name.clone(), Iter::Items(items.into_iter()));
            next_batch(sim, iters, &name)
        }
        Type::GetQueryResult => {
            Err("rich queries need CouchDB; the devnet state is key-value only".into())
        }
        other => Err(format!("{other:?} is not supported by the devnet")),
    }
}

fn next_batch(
    sim: &mut Simulator,
    iters: &mut HashMap<String, Iter>,
    name: &str,
) -> Result<Vec<u8>, String> {
    let Some(it) = iters.get_mut(name) else {
        return Err(format!("no iterator {name:?}"));
    };
    let mut resp = QueryResponse {
        id: name.to_string(),
        ..Default::default()
    };
    match it {
        Iter::Range { id, left, fetched } => {
            let n = left.map_or(BATCH, |l| l.min(BATCH));
            let (rows, more) = sim.range_next(*id, n).map_err(|e| e.to_string())?;
            *fetched += rows.len();
            if let Some(l) = left {
                *l -= rows.len();
            }
            let bookmark = if more {
                // The next key, found by peeking without recording it.
                rows.last()
                    .map(|r| format!("{}\u{0}", r.key))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let ns = sim.namespace().to_string();
            resp.results = rows
                .into_iter()
                .map(|kv| QueryResultBytes {
                    result_bytes: Kv {
                        namespace: ns.clone(),
                        key: kv.key,
                        value: kv.value,
                    }
                    .encode_to_vec(),
                })
                .collect();
            let page_done = left.is_some_and(|l| l == 0);
            resp.has_more = more && !page_done;
            if left.is_some() {
                resp.metadata = QueryResponseMetadata {
                    fetched_records_count: *fetched as i32,
                    bookmark,
                }
                .encode_to_vec();
            }
        }
        Iter::Items(items) => {
            resp.results = items
                .by_ref()
                .take(BATCH)
                .map(|b| QueryResultBytes { result_bytes: b })
                .collect();
            resp.has_more = items.len() > 0;
        }
    }
    Ok(resp.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::TxContext;
    use crate::state::{Version, WorldState};
    use std::sync::RwLock;

    fn sim_with(n: usize) -> Simulator {
        let mut s = WorldState::default();
        let id: Arc<str> = Arc::from("t0");
        for i in 0..n {
            s.apply_write(
                "cc",
                &format!("k{i:03}"),
                Some(b"v"),
                Version {
                    block: 1,
                    tx: i as u64,
                },
                &id,
                Default::default(),
            );
        }
        Simulator::new(Arc::new(RwLock::new(s)), "cc", TxContext::default())
    }

    fn keys(r: &QueryResponse) -> Vec<String> {
        r.results
            .iter()
            .map(|b| Kv::decode(b.result_bytes.as_slice()).unwrap().key)
            .collect()
    }

    #[test]
    fn range_iterator_batches_and_closes() {
        let mut sim = sim_with(250);
        let mut iters = HashMap::new();
        let mut next = 0;
        let req = GetStateByRange {
            start_key: "k".into(),
            end_key: "l".into(),
            ..Default::default()
        };
        let first = QueryResponse::decode(
            serve(
                &mut sim,
                Type::GetStateByRange,
                &req.encode_to_vec(),
                &mut iters,
                &mut next,
            )
            .unwrap()
            .as_slice(),
        )
        .unwrap();
        assert_eq!(first.results.len(), BATCH);
        assert!(first.has_more);
        let mut all = keys(&first);
        loop {
            let n = QueryStateNext {
                id: first.id.clone(),
            };
            let r = QueryResponse::decode(
                serve(
                    &mut sim,
                    Type::QueryStateNext,
                    &n.encode_to_vec(),
                    &mut iters,
                    &mut next,
                )
                .unwrap()
                .as_slice(),
            )
            .unwrap();
            all.extend(keys(&r));
            if !r.has_more {
                break;
            }
        }
        assert_eq!(all.len(), 250);
        assert_eq!(all[0], "k000");
        assert_eq!(all[249], "k249");
        let c = QueryStateClose {
            id: first.id.clone(),
        };
        serve(
            &mut sim,
            Type::QueryStateClose,
            &c.encode_to_vec(),
            &mut iters,
            &mut next,
        )
        .unwrap();
        assert!(iters.is_empty());
        // The range was recorded as fully read.
        let res = sim.results();
        let kv =
            ehr_proto::kvrwset::KvrwSet::decode(res.rwset.ns_rwset[0].rwset.as_slice()).unwrap();
        assert!(kv.range_queries_info[0].itr_exhausted);
    }

    #[test]
    fn paginated_range_returns_pages_with_bookmarks() {
        let mut sim = sim_with(5);
        let mut iters = HashMap::new();
        let mut next = 0;
        let page = |bookmark: &str| GetStateByRange {
            start_key: "k000".into(),
            end_key: "k999".into(),
            metadata: QueryMetadata {
                page_size: 3,
                bookmark: bookmark.into(),
            }
            .encode_to_vec(),
            ..Default::default()
        };
        let r = QueryResponse::decode(
            serve(
                &mut sim,
                Type::GetStateByRange,
                &page("").encode_to_vec(),
                &mut iters,
                &mut next,
            )
            .unwrap()
            .as_slice(),
        )
        .unwrap();
        assert_eq!(keys(&r), ["k000", "k001", "k002"]);
        assert!(!r.has_more);
        let meta = QueryResponseMetadata::decode(r.metadata.as_slice()).unwrap();
        assert_eq!(meta.fetched_records_count, 3);
        assert!(!meta.bookmark.is_empty());
        let r2 = QueryResponse::decode(
            serve(
                &mut sim,
                Type::GetStateByRange,
                &page(&meta.bookmark).encode_to_vec(),
                &mut iters,
                &mut next,
            )
            .unwrap()
            .as_slice(),
        )
        .unwrap();
        assert_eq!(keys(&r2), ["k003", "k004"]);
        let meta2 = QueryResponseMetadata::decode(r2.metadata.as_slice()).unwrap();
        assert_eq!(
            (meta2.fetched_records_count, meta2.bookmark.as_str()),
            (2, "")
        );
    }

    #[test]
    fn unsupported_calls_are_errors_not_panics() {
        let mut sim = sim_with(0);
        let mut iters = HashMap::new();
        let mut next = 0;
        assert!(serve(&mut sim, Type::GetQueryResult, b"", &mut iters, &mut next).is_err());
        assert!(serve(&mut sim, Type::InvokeChaincode, b"", &mut iters, &mut next).is_err());
        assert!(
            serve(
                &mut sim,
                Type::GetState,
                b"\xff\xff\xff",
                &mut iters,
                &mut next
            )
            .is_err()
        );
        let q = QueryStateNext { id: "nope".into() };
        assert!(
            serve(
                &mut sim,
                Type::QueryStateNext,
                &q.encode_to_vec(),
                &mut iters,
                &mut next
            )
            .is_err()
        );
    }
}
