//! One peer stream: the REGISTER → REGISTERED → READY handshake, then
//! dispatch of INIT/TRANSACTION (each on its own blocking thread) and routing
//! of the peer's RESPONSE/ERROR replies to the waiting transaction by
//! `(channel_id, txid)`.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ehr_proto::protos::chaincode_message::Type;
use ehr_proto::protos::{ChaincodeAdditionalParams, ChaincodeMessage, Response as PbResponse};
use prost::Message;
use tokio::sync::watch;
use tonic::{Status, Streaming};

use super::proposal::parse_transaction;
use super::stub::{Outbound, ShimStub, short};
use crate::Chaincode;

/// `(channel_id, txid)`: how Fabric names a transaction on a stream.
type TxKey = (String, String);

/// Reply senders of the transactions in flight on one stream.
#[derive(Default, Clone)]
struct InFlight(Arc<Mutex<HashMap<TxKey, std_mpsc::Sender<ChaincodeMessage>>>>);

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<TxKey, std_mpsc::Sender<ChaincodeMessage>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single inserts/removes), so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// REGISTER sent, waiting for REGISTERED.
    Created,
    /// REGISTERED received, waiting for READY.
    Established,
    /// Serving transactions.
    Ready,
}

/// Drives one `Chaincode/Connect` stream.
pub(crate) struct StreamHandler {
    pub chaincode: Arc<dyn Chaincode>,
    pub out: Outbound,
    pub request_timeout: Duration,
    inflight: InFlight,
    state: State,
    stopping: watch::Receiver<bool>,
}

impl StreamHandler {
    pub fn new(
        chaincode: Arc<dyn Chaincode>,
        out: Outbound,
        request_timeout: Duration,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            chaincode,
            out,
            request_timeout,
            inflight: InFlight::default(),
            state: State::Created,
            stopping,
        }
    }

    /// Reads the peer's messages until the stream ends. REGISTER must already
    /// have been queued on `out`.
    pub async fn run(mut self, mut inbound: Streaming<ChaincodeMessage>) {
        let mut stopping = self.stopping.clone();
        loop {
            let next = tokio::select! {
                next = inbound.message() => next,
                () = async {
                    // Drop the borrow guard before awaiting anything else.
                    let _ = stopping.wait_for(|stop| *stop).await.map(drop);
                } => {
                    tracing::info!("ending chaincode stream: shutting down");
                    let _ = self
                        .out
                        .send(Err(Status::unavailable("chaincode is shutting down")))
                        .await;
                    break;
                }
            };
            let msg = match next {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    tracing::info!("peer closed the chaincode stream");
                    break;
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "chaincode stream failed");
                    break;
                }
            };
            if let Err(status) = self.handle(msg).await {
                tracing::warn!(message = status.message(), "ending chaincode stream");
                let _ = self.out.send(Err(status)).await;
                break;
            }
        }
        // Wake every transaction still waiting for a reply: their senders go.
        self.inflight.lock().clear();
    }

    /// Handles one inbound message. An `Err` ends the stream with that status.
    async fn handle(&mut self, msg: ChaincodeMessage) -> Result<(), Status> {
        let Ok(kind) = Type::try_from(msg.r#type) else {
            tracing::warn!(
                r#type = msg.r#type,
                "ignoring a chaincode message of a type this shim does not know"
            );
            return Ok(());
        };
        if kind == Type::Keepalive {
            let _ = self.out.send(Ok(msg)).await;
            return Ok(());
        }
        match (self.state, kind) {
            (State::Created, Type::Registered) => {
                tracing::info!("registered with the peer");
                self.state = State::Established;
                Ok(())
            }
            (State::Established, Type::Ready) => {
                self.on_ready(&msg);
                self.state = State::Ready;
                Ok(())
            }
            (State::Created | State::Established, Type::Error) => {
                Err(Status::failed_precondition(format!(
                    "peer refused registration: {}",
                    String::from_utf8_lossy(&msg.payload)
                )))
            }
            (State::Created | State::Established, other) => {
                Err(Status::failed_precondition(format!(
                    "unexpected {} before the stream is ready",
                    other.as_str_name()
                )))
            }
            (State::Ready, Type::Init | Type::Transaction) => {
                self.start_transaction(msg, kind).await;
                Ok(())
            }
            (State::Ready, Type::Response | Type::Error) => {
                self.route_reply(msg);
                Ok(())
            }
            (State::Ready, other) => {
                tracing::warn!(
                    r#type = other.as_str_name(),
                    tx = %short(&msg.txid),
                    "ignoring an unexpected chaincode message"
                );
                Ok(())
            }
        }
    }

    fn on_ready(&self, msg: &ChaincodeMessage) {
        if msg.payload.is_empty() {
            tracing::info!("peer is ready");
            return;
        }
        // Fabric 3.x announces its batching capabilities; this shim does not
        // batch, so they are only logged. An undecodable payload is ignored,
        // as Fabric's own shims do.
        match ChaincodeAdditionalParams::decode(msg.payload.as_slice()) {
            Ok(p) => tracing::info!(
                use_write_batch = p.use_write_batch,
                use_get_multiple_keys = p.use_get_multiple_keys,
                "peer is ready (Fabric 3.x capabilities announced, not used)"
            ),
            Err(e) => tracing::info!(error = %e, "peer is ready (READY payload not understood)"),
        }
    }

    fn route_reply(&self, msg: ChaincodeMessage) {
        let key = (msg.channel_id.clone(), msg.txid.clone());
        let sender = self.inflight.lock().get(&key).cloned();
        match sender {
            Some(sender) => {
                if sender.send(msg).is_err() {
                    tracing::debug!(tx = %short(&key.1), "reply for a transaction that just finished");
                }
            }
            None => tracing::warn!(
                tx = %short(&key.1),
                "ignoring a reply for no transaction in flight"
            ),
        }
    }

    async fn send_error(&self, txid: String, channel_id: String, text: String) {
        let msg = ChaincodeMessage {
            r#type: Type::Error as i32,
            payload: text.into_bytes(),
            txid,
            channel_id,
            ..Default::default()
        };
        let _ = self.out.send(Ok(msg)).await;
    }

    async fn start_transaction(&self, msg: ChaincodeMessage, kind: Type) {
        let (input, ctx) = match parse_transaction(&msg) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(tx = %short(&msg.txid), error = %e, "rejecting a malformed transaction");
                self.send_error(msg.txid, msg.channel_id, e.to_string())
                    .await;
                return;
            }
        };
        let key = (ctx.channel_id.clone(), ctx.tx_id.clone());
        let (reply_tx, reply_rx) = std_mpsc::channel();
        let duplicate = {
            let mut inflight = self.inflight.lock();
            if inflight.contains_key(&key) {
                true
            } else {
                inflight.insert(key.clone(), reply_tx);
                false
            }
        };
        if duplicate {
            tracing::warn!(tx = %short(&key.1), "rejecting a duplicate transaction");
            self.send_error(
                key.1,
                key.0,
                "a transaction with this id is already running on this channel".into(),
            )
            .await;
            return;
        }

        let function = loggable_function(input.args.first().map(Vec::as_slice));
        let stub = ShimStub::new(ctx, self.out.clone(), reply_rx, self.request_timeout);
        let chaincode = Arc::clone(&self.chaincode);
        let inflight = self.inflight.clone();
        let out = self.out.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let args = input.args;
            let joined = tokio::task::spawn_blocking(move || {
                let mut stub = stub;
                let response = if kind == Type::Init {
                    chaincode.init(&mut stub, &args)
                } else {
                    chaincode.invoke(&mut stub, &args)
                };
                (response, stub.take_event())
            })
            .await;
            // Free the id first so the peer may reuse it as soon as it sees the answer.
            inflight.lock().remove(&key);
            let (channel_id, txid) = key;
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            let reply = match joined {
                Ok((response, event)) => {
                    tracing::info!(
                        function = %function,
                        tx = %short(&txid),
                        kind = kind.as_str_name(),
                        status = response.status,
                        elapsed_ms,
                        "transaction completed"
                    );
                    ChaincodeMessage {
                        r#type: Type::Completed as i32,
                        payload: PbResponse {
                            status: response.status,
                            message: response.message,
                            payload: response.payload,
                        }
                        .encode_to_vec(),
                        txid,
                        channel_id,
                        chaincode_event: event,
                        ..Default::default()
                    }
                }
                Err(e) => {
                    tracing::error!(
                        function = %function,
                        tx = %short(&txid),
                        panicked = e.is_panic(),
                        elapsed_ms,
                        "chaincode failed to run"
                    );
                    ChaincodeMessage {
                        r#type: Type::Error as i32,
                        payload: b"chaincode failed to run (panicked)".to_vec(),
                        txid,
                        channel_id,
                        ..Default::default()
                    }
                }
            };
            let _ = out.send(Ok(reply)).await;
        });
    }
}

/// The function name (first argument) if it looks like one; never the other
/// arguments, which may carry personal data.
fn loggable_function(first: Option<&[u8]>) -> String {
    match first.and_then(|f| std::str::from_utf8(f).ok()) {
        Some(f)
            if !f.is_empty()
                && f.len() <= 64
                && f.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')) =>
        {
            f.to_owned()
        }
        Some(_) | None => "<unnamed>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::loggable_function;

    #[test]
    fn only_identifier_like_function_names_are_logged() {
        assert_eq!(loggable_function(Some(b"GrantConsent")), "GrantConsent");
        assert_eq!(loggable_function(Some(b"a b")), "<unnamed>");
        assert_eq!(loggable_function(Some(b"{\"ssn\":1}")), "<unnamed>");
        assert_eq!(loggable_function(Some(&[0xff])), "<unnamed>");
        assert_eq!(loggable_function(None), "<unnamed>");
    }
}
