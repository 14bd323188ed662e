//! [`ShimStub`]: the [`Stub`] a transaction sees under the shim. Every call
//! is one request on the peer stream (GET_STATE, PUT_STATE, ...) tagged with
//! the transaction's `(channel_id, txid)`; the calling (blocking) thread waits
//! for the peer's RESPONSE or ERROR, which the stream handler routes back here.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use ehr_proto::protos::chaincode_message::Type;
use ehr_proto::protos::{
    ChaincodeEvent, ChaincodeMessage, DelState, GetHistoryForKey, GetState, GetStateByRange,
    PutState, QueryResponse, QueryStateClose, QueryStateNext,
};
use ehr_proto::queryresult;
use prost::Message;
use tokio::sync::mpsc::Sender;

use super::proposal::TxContext;
use crate::stub::{KeyModification, Kv, Stub, StubError, StubResult, TxTimestamp};

/// Outbound half of the peer stream, shared by the handler and every stub.
pub(crate) type Outbound = Sender<Result<ChaincodeMessage, tonic::Status>>;

/// The shim's [`Stub`]: talks to the peer for one transaction.
pub struct ShimStub {
    ctx: TxContext,
    out: Outbound,
    replies: Receiver<ChaincodeMessage>,
    timeout: Duration,
    /// Set once a request went unanswered or the stream closed: any later
    /// reply could belong to the abandoned request, so the stub stops.
    broken: bool,
    event: Option<ChaincodeEvent>,
}

impl ShimStub {
    pub(crate) fn new(
        ctx: TxContext,
        out: Outbound,
        replies: Receiver<ChaincodeMessage>,
        timeout: Duration,
    ) -> Self {
        Self {
            ctx,
            out,
            replies,
            timeout,
            broken: false,
            event: None,
        }
    }

    /// The event set by the chaincode, if any (goes on COMPLETED).
    pub(crate) fn take_event(&mut self) -> Option<ChaincodeEvent> {
        self.event.take()
    }

    /// Sends one request and blocks for the peer's reply. RESPONSE yields its
    /// payload; ERROR becomes [`StubError::Peer`] with the peer's message.
    fn call(&mut self, kind: Type, payload: Vec<u8>) -> StubResult<Vec<u8>> {
        if self.broken {
            return Err(StubError::Peer(
                "the stream to the peer is no longer usable for this transaction".into(),
            ));
        }
        // Nothing is outstanding, so anything queued is a stray duplicate.
        while self.replies.try_recv().is_ok() {}
        let msg = ChaincodeMessage {
            r#type: kind as i32,
            payload,
            txid: self.ctx.tx_id.clone(),
            channel_id: self.ctx.channel_id.clone(),
            ..Default::default()
        };
        if self.out.blocking_send(Ok(msg)).is_err() {
            self.broken = true;
            return Err(StubError::Peer("the stream to the peer is closed".into()));
        }
        match self.replies.recv_timeout(self.timeout) {
            Ok(reply) => match Type::try_from(reply.r#type) {
                Ok(Type::Response) => Ok(reply.payload),
                Ok(Type::Error) => Err(StubError::Peer(format!(
                    "{} failed: {}",
                    kind.as_str_name(),
                    String::from_utf8_lossy(&reply.payload)
                ))),
                _ => Err(StubError::Peer(format!(
                    "unexpected reply type {} to {}",
                    reply.r#type,
                    kind.as_str_name()
                ))),
            },
            Err(RecvTimeoutError::Timeout) => {
                self.broken = true;
                Err(StubError::Peer(format!(
                    "no reply to {} within {:?}",
                    kind.as_str_name(),
                    self.timeout
                )))
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.broken = true;
                Err(StubError::Peer("the stream to the peer is closed".into()))
            }
        }
    }

    fn call_query(&mut self, kind: Type, payload: Vec<u8>) -> StubResult<QueryResponse> {
        let bytes = self.call(kind, payload)?;
        QueryResponse::decode(bytes.as_slice()).map_err(|e| {
            StubError::Peer(format!(
                "cannot decode QueryResponse to {}: {e}",
                kind.as_str_name()
            ))
        })
    }

    /// Reads an iterator's results, fetching further batches with
    /// QUERY_STATE_NEXT while the peer has more and `limit` is not reached.
    /// Then always closes the iterator (QUERY_STATE_CLOSE), whatever happened.
    fn drain<T>(
        &mut self,
        first: QueryResponse,
        limit: Option<u32>,
        decode: impl Fn(&[u8]) -> StubResult<T>,
    ) -> StubResult<Vec<T>> {
        let id = first.id.clone();
        let result = self.collect(first, limit, decode);
        self.close_iterator(&id);
        result
    }

    fn collect<T>(
        &mut self,
        first: QueryResponse,
        limit: Option<u32>,
        decode: impl Fn(&[u8]) -> StubResult<T>,
    ) -> StubResult<Vec<T>> {
        let max = limit.map_or(usize::MAX, |l| l as usize);
        let mut out = Vec::new();
        let mut batch = first;
        loop {
            for r in &batch.results {
                if out.len() >= max {
                    return Ok(out);
                }
                out.push(decode(&r.result_bytes)?);
            }
            if out.len() >= max || !batch.has_more {
                return Ok(out);
            }
            if batch.id.is_empty() {
                return Err(StubError::Peer(
                    "peer reported more results without an iterator id".into(),
                ));
            }
            let next = QueryStateNext {
                id: batch.id.clone(),
            }
            .encode_to_vec();
            batch = self.call_query(Type::QueryStateNext, next)?;
        }
    }

    fn close_iterator(&mut self, id: &str) {
        let payload = QueryStateClose { id: id.to_owned() }.encode_to_vec();
        if let Err(e) = self.call(Type::QueryStateClose, payload) {
            tracing::warn!(tx = %short(&self.ctx.tx_id), error = %e, "closing a query iterator failed");
        }
    }

    fn get(&mut self, kind: Type, collection: &str, key: &str) -> StubResult<Option<Vec<u8>>> {
        check_key(key)?;
        let payload = GetState {
            key: key.to_owned(),
            collection: collection.to_owned(),
        }
        .encode_to_vec();
        let value = self.call(kind, payload)?;
        // Fabric answers an absent key with an empty payload.
        Ok((!value.is_empty()).then_some(value))
    }

    fn put(&mut self, collection: &str, key: &str, value: &[u8]) -> StubResult<()> {
        check_key(key)?;
        if value.is_empty() {
            // A peer records an empty value as a delete.
            return Err(StubError::InvalidKey(format!(
                "empty value for key {key:?} (use a delete)"
            )));
        }
        let payload = PutState {
            key: key.to_owned(),
            value: value.to_vec(),
            collection: collection.to_owned(),
        }
        .encode_to_vec();
        self.call(Type::PutState, payload).map(drop)
    }

    fn del(&mut self, collection: &str, key: &str) -> StubResult<()> {
        check_key(key)?;
        let payload = DelState {
            key: key.to_owned(),
            collection: collection.to_owned(),
        }
        .encode_to_vec();
        self.call(Type::DelState, payload).map(drop)
    }
}

fn check_key(key: &str) -> StubResult<()> {
    if key.is_empty() {
        return Err(StubError::InvalidKey("empty key".into()));
    }
    Ok(())
}

fn check_collection(collection: &str) -> StubResult<()> {
    if collection.is_empty() {
        return Err(StubError::InvalidKey("empty collection name".into()));
    }
    Ok(())
}

/// The first 8 characters of a tx id, for logs.
pub(crate) fn short(tx_id: &str) -> &str {
    tx_id.get(..8).unwrap_or(tx_id)
}

fn decode_kv(bytes: &[u8]) -> StubResult<Kv> {
    let kv = queryresult::Kv::decode(bytes)
        .map_err(|e| StubError::Peer(format!("cannot decode a range result: {e}")))?;
    Ok(Kv {
        key: kv.key,
        value: kv.value,
    })
}

fn decode_key_modification(bytes: &[u8]) -> StubResult<KeyModification> {
    let km = queryresult::KeyModification::decode(bytes)
        .map_err(|e| StubError::Peer(format!("cannot decode a history entry: {e}")))?;
    let ts = km.timestamp.unwrap_or_default();
    Ok(KeyModification {
        tx_id: km.tx_id,
        value: km.value,
        timestamp_secs: ts.seconds,
        timestamp_nanos: ts.nanos,
        is_delete: km.is_delete,
    })
}

impl Stub for ShimStub {
    fn tx_id(&self) -> &str {
        &self.ctx.tx_id
    }

    fn channel_id(&self) -> &str {
        &self.ctx.channel_id
    }

    fn tx_timestamp(&self) -> TxTimestamp {
        self.ctx.timestamp
    }

    fn creator(&self) -> &[u8] {
        &self.ctx.creator
    }

    fn transient(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.ctx.transient
    }

    fn get_state(&mut self, key: &str) -> StubResult<Option<Vec<u8>>> {
        self.get(Type::GetState, "", key)
    }

    fn put_state(&mut self, key: &str, value: &[u8]) -> StubResult<()> {
        self.put("", key, value)
    }

    fn del_state(&mut self, key: &str) -> StubResult<()> {
        self.del("", key)
    }

    /// Uses a plain (not paginated) range query and stops reading at `limit`:
    /// Fabric refuses writes in a transaction that ran a paginated query
    /// (`QueryMetadata`), and contracts scan in read-write transactions.
    fn get_state_by_range(
        &mut self,
        start: &str,
        end: &str,
        limit: Option<u32>,
    ) -> StubResult<Vec<Kv>> {
        if !end.is_empty() && end < start {
            return Err(StubError::InvalidKey(format!(
                "range end {end:?} before start {start:?}"
            )));
        }
        if limit == Some(0) {
            return Ok(Vec::new());
        }
        let payload = GetStateByRange {
            start_key: start.to_owned(),
            end_key: end.to_owned(),
            collection: String::new(),
            metadata: Vec::new(),
        }
        .encode_to_vec();
        let first = self.call_query(Type::GetStateByRange, payload)?;
        self.drain(first, limit, decode_kv)
    }

    fn get_history_for_key(&mut self, key: &str) -> StubResult<Vec<KeyModification>> {
        check_key(key)?;
        let payload = GetHistoryForKey {
            key: key.to_owned(),
        }
        .encode_to_vec();
        let first = self.call_query(Type::GetHistoryForKey, payload)?;
        self.drain(first, None, decode_key_modification)
    }

    fn get_private_data(&mut self, collection: &str, key: &str) -> StubResult<Option<Vec<u8>>> {
        check_collection(collection)?;
        self.get(Type::GetState, collection, key)
    }

    fn put_private_data(&mut self, collection: &str, key: &str, value: &[u8]) -> StubResult<()> {
        check_collection(collection)?;
        self.put(collection, key, value)
    }

    fn del_private_data(&mut self, collection: &str, key: &str) -> StubResult<()> {
        check_collection(collection)?;
        self.del(collection, key)
    }

    fn get_private_data_hash(
        &mut self,
        collection: &str,
        key: &str,
    ) -> StubResult<Option<Vec<u8>>> {
        check_collection(collection)?;
        self.get(Type::GetPrivateDataHash, collection, key)
    }

    fn set_event(&mut self, name: &str, payload: &[u8]) -> StubResult<()> {
        if name.is_empty() {
            return Err(StubError::InvalidKey("empty event name".into()));
        }
        self.event = Some(ChaincodeEvent {
            event_name: name.to_owned(),
            payload: payload.to_vec(),
            ..Default::default()
        });
        Ok(())
    }
}
