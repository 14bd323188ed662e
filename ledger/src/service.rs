//! The devnet as a `gateway.Gateway` gRPC service — the same service a Fabric
//! 2.4+ peer exposes, so one client talks to both.
//!
//! Status codes follow Fabric's gateway where it matters to clients:
//! a chaincode error is `UNKNOWN` on Evaluate and `ABORTED` on Endorse, with
//! the chaincode's response in a `gateway.ErrorDetail` ([`crate::rpc_error`]); a
//! malformed request is `INVALID_ARGUMENT`; a bad signature, unknown MSP or
//! untrusted certificate is `PERMISSION_DENIED`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use ehr_proto::gateway::gateway_server::{Gateway, GatewayServer};
use ehr_proto::gateway::{
    ChaincodeEventsRequest, ChaincodeEventsResponse, CommitStatusRequest, CommitStatusResponse,
    EndorseRequest, EndorseResponse, EvaluateRequest, EvaluateResponse,
    SignedChaincodeEventsRequest, SignedCommitStatusRequest, SubmitRequest, SubmitResponse,
};
use ehr_proto::orderer::seek_position::Type as Seek;
use prost::Message;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::devnet::{BlockEvents, Devnet, LedgerError};
use crate::rpc_error::{self, Operation};
use crate::tx::TxError;

/// The endorser address named in error details (Fabric names the peer).
const DEVNET_ADDRESS: &str = "devnet";

/// Largest gRPC message accepted (Fabric's default, 100 MiB).
pub const MAX_MESSAGE: usize = 100 * 1024 * 1024;

fn status(e: LedgerError) -> Status {
    match e {
        LedgerError::Tx(TxError::Creator(_) | TxError::Signature(_) | TxError::Expired)
        | LedgerError::Msp(_) => Status::permission_denied(e.to_string()),
        LedgerError::Tx(_) => Status::invalid_argument(e.to_string()),
        LedgerError::UnknownChaincode(_) => Status::not_found(e.to_string()),
        LedgerError::Duplicate(_) => Status::already_exists(e.to_string()),
        LedgerError::Busy => Status::resource_exhausted(e.to_string()),
        LedgerError::ChaincodeHost(_) | LedgerError::Closed => Status::unavailable(e.to_string()),
        LedgerError::Chaincode { status, message } => {
            rpc_error::chaincode_error(Operation::Endorse, DEVNET_ADDRESS, "", status, &message)
        }
        other => Status::internal(other.to_string()),
    }
}

/// The `gateway.Gateway` implementation over a [`Devnet`].
#[derive(Clone)]
pub struct GatewayService {
    devnet: Devnet,
}

impl GatewayService {
    /// Serves `devnet`.
    pub fn new(devnet: Devnet) -> Self {
        Self { devnet }
    }

    /// The tonic service, with Fabric's message size limits.
    pub fn into_server(self) -> GatewayServer<Self> {
        GatewayServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn check_channel(&self, channel: &str) -> Result<(), Status> {
        if channel != self.devnet.channel() {
            return Err(Status::not_found(format!(
                "channel {channel:?} is not served here"
            )));
        }
        Ok(())
    }

    /// Checks a signed request: the identity is a member and signed `request`.
    fn check_signed(
        &self,
        identity: &[u8],
        request: &[u8],
        signature: &[u8],
    ) -> Result<(), Status> {
        let id = self
            .devnet
            .msp()
            .deserialize(identity)
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        id.verify(request, signature)
            .map_err(|e| Status::permission_denied(e.to_string()))
    }
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ChaincodeEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn endorse(
        &self,
        request: Request<EndorseRequest>,
    ) -> Result<Response<EndorseResponse>, Status> {
        let r = request.into_inner();
        self.check_channel(&r.channel_id)?;
        let sp = r
            .proposed_transaction
            .ok_or_else(|| Status::invalid_argument("a proposed transaction is required"))?;
        let e = self
            .devnet
            .endorse(&sp, &r.endorsing_organizations)
            .await
            .map_err(status)?;
        if !r.transaction_id.is_empty() && r.transaction_id != e.tx_id {
            return Err(Status::invalid_argument(
                "transaction id does not match the proposal",
            ));
        }
        Ok(Response::new(EndorseResponse {
            prepared_transaction: Some(e.prepared),
        }))
    }

    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let r = request.into_inner();
        self.check_channel(&r.channel_id)?;
        let env = r
            .prepared_transaction
            .ok_or_else(|| Status::invalid_argument("a prepared transaction is required"))?;
        let tx_id = self.devnet.submit(&env).map_err(status)?;
        if !r.transaction_id.is_empty() && r.transaction_id != tx_id {
            tracing::warn!(claimed = %r.transaction_id, %tx_id, "submit request names another tx id");
        }
        Ok(Response::new(SubmitResponse {}))
    }

    async fn commit_status(
        &self,
        request: Request<SignedCommitStatusRequest>,
    ) -> Result<Response<CommitStatusResponse>, Status> {
        let s = request.into_inner();
        let r = CommitStatusRequest::decode(s.request.as_slice())
            .map_err(|e| Status::invalid_argument(format!("commit status request: {e}")))?;
        self.check_channel(&r.channel_id)?;
        self.check_signed(&r.identity, &s.request, &s.signature)?;
        let st = self
            .devnet
            .commit_status(&r.transaction_id)
            .await
            .map_err(status)?;
        Ok(Response::new(CommitStatusResponse {
            result: st.code as i32,
            block_number: st.block,
        }))
    }

    async fn evaluate(
        &self,
        request: Request<EvaluateRequest>,
    ) -> Result<Response<EvaluateResponse>, Status> {
        let r = request.into_inner();
        self.check_channel(&r.channel_id)?;
        let sp = r
            .proposed_transaction
            .ok_or_else(|| Status::invalid_argument("a proposed transaction is required"))?;
        match self.devnet.evaluate(&sp).await {
            Ok(resp) => Ok(Response::new(EvaluateResponse { result: Some(resp) })),
            Err(LedgerError::Chaincode { status: s, message }) => Err(rpc_error::chaincode_error(
                Operation::Evaluate,
                DEVNET_ADDRESS,
                "",
                s,
                &message,
            )),
            Err(e) => Err(status(e)),
        }
    }

    type ChaincodeEventsStream = EventStream;

    async fn chaincode_events(
        &self,
        request: Request<SignedChaincodeEventsRequest>,
    ) -> Result<Response<Self::ChaincodeEventsStream>, Status> {
        let s = request.into_inner();
        let r = ChaincodeEventsRequest::decode(s.request.as_slice())
            .map_err(|e| Status::invalid_argument(format!("chaincode events request: {e}")))?;
        self.check_channel(&r.channel_id)?;
        self.check_signed(&r.identity, &s.request, &s.signature)?;
        let height = self.devnet.height();
        let start = match r.start_position.and_then(|p| p.r#type) {
            Some(Seek::Oldest(_)) => 0,
            Some(Seek::Newest(_)) => height.saturating_sub(1),
            Some(Seek::Specified(x)) => x.number,
            Some(Seek::NextCommit(_)) | None => height,
        };
        let (tx, rx) = mpsc::channel(64);
        let devnet = self.devnet.clone();
        let live = devnet.subscribe();
        tokio::spawn(stream_events(
            devnet,
            live,
            tx,
            start,
            r.chaincode_id,
            r.after_transaction_id,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn filtered(
    be: &BlockEvents,
    chaincode: &str,
    after_tx: &mut Option<String>,
) -> Option<ChaincodeEventsResponse> {
    let mut events: Vec<_> = be
        .events
        .iter()
        .filter(|e| e.chaincode_id == chaincode)
        .cloned()
        .collect();
    if let Some(after) = after_tx.take()
        && let Some(i) = events.iter().position(|e| e.tx_id == after)
    {
        events.drain(..=i);
    }
    if events.is_empty() {
        return None;
    }
    Some(ChaincodeEventsResponse {
        events,
        block_number: be.block,
    })
}

async fn stream_events(
    devnet: Devnet,
    mut live: broadcast::Receiver<Arc<BlockEvents>>,
    tx: mpsc::Sender<Result<ChaincodeEventsResponse, Status>>,
    mut next: u64,
    chaincode: String,
    after_tx: String,
) {
    let mut after = (!after_tx.is_empty()).then_some(after_tx);
    loop {
        // Replay what is on disk.
        while next < devnet.height() {
            match devnet.block_events(next) {
                Ok(be) => {
                    if let Some(r) = filtered(&be, &chaincode, &mut after)
                        && tx.send(Ok(r)).await.is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(status(e))).await;
                    return;
                }
            }
            after = None;
            next += 1;
        }
        // Then follow live commits.
        tokio::select! {
            got = live.recv() => match got {
                Ok(be) if be.block == next => {
                    if let Some(r) = filtered(&be, &chaincode, &mut after)
                        && tx.send(Ok(r)).await.is_err()
                    {
                        return;
                    }
                    after = None;
                    next += 1;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tx.closed() => return,
        }
    }
}

/// A running gateway server.
pub struct ServeHandle {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl ServeHandle {
    /// Stops accepting, lets running calls finish, and waits.
    pub async fn shutdown(mut self) -> Result<(), LedgerError> {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        match (&mut self.join).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LedgerError::ChaincodeHost(format!("gateway server: {e}"))),
            Err(e) => Err(LedgerError::ChaincodeHost(format!(
                "gateway server task: {e}"
            ))),
        }
    }
}

impl Devnet {
    /// Serves this ledger as `gateway.Gateway` on `addr` (e.g.
    /// `127.0.0.1:7051`, or port 0 for any free port).
    pub async fn serve(&self, addr: SocketAddr) -> Result<ServeHandle, LedgerError> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        // TCP_NODELAY on every accepted connection (tonic's
        // `Server::tcp_nodelay` does not apply to `serve_with_incoming`):
        // without it a response's HEADERS, DATA and trailers frames wait
        // for the client's delayed ACK, ~40 ms per call.
        let incoming = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |conn| {
                if let Ok(c) = &conn
                    && let Err(e) = c.set_nodelay(true)
                {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
                conn
            },
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = GatewayService::new(self.clone()).into_server();
        let join = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                }),
        );
        tracing::info!(%local_addr, channel = self.channel(), "devnet gateway listening");
        Ok(ServeHandle {
            local_addr,
            shutdown: Some(stop),
            join,
        })
    }
}
