//! The gRPC service (`protos.Chaincode/Connect`) and a function that serves
//! it on a listener, with or without TLS.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ehr_proto::protos::chaincode_message::Type;
use ehr_proto::protos::chaincode_server::{Chaincode as ChaincodeRpc, ChaincodeServer};
use ehr_proto::protos::{ChaincodeId, ChaincodeMessage};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use super::handler::StreamHandler;
use super::{MAX_MESSAGE_SIZE, ShimError};
use crate::Chaincode;

/// How long a transaction waits for the peer's answer to one request before
/// it gives up (Fabric's peer abandons a transaction after 30 s by default).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Messages queued towards the peer per stream before senders wait.
const OUTBOUND_QUEUE: usize = 64;

/// What the shim needs to know besides the chaincode.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// The chaincode package id (e.g. `ehr_1.0:4f3a…`), sent in REGISTER as
    /// `ChaincodeID.name`. Must match the package id the peer expects.
    pub chaincode_id: String,
    /// See [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
}

impl ShimConfig {
    /// A configuration with the default request timeout. Fails on an empty
    /// package id (a peer rejects it with "chaincodeID name is empty").
    pub fn new(chaincode_id: impl Into<String>) -> Result<Self, ShimError> {
        let chaincode_id = chaincode_id.into();
        if chaincode_id.trim().is_empty() {
            return Err(ShimError::invalid("CHAINCODE_ID", "must not be empty"));
        }
        Ok(Self {
            chaincode_id,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }
}

/// The `protos.Chaincode` gRPC service: one [`StreamHandler`] per `Connect`.
#[derive(Clone)]
pub struct ChaincodeService {
    chaincode: Arc<dyn Chaincode>,
    config: Arc<ShimConfig>,
    /// Turns true when the server shuts down: every stream then ends (a peer
    /// never closes its stream by itself).
    stopping: Arc<watch::Sender<bool>>,
}

impl ChaincodeService {
    /// Serves `chaincode` under `config`.
    pub fn new(chaincode: impl Chaincode, config: ShimConfig) -> Self {
        Self {
            chaincode: Arc::new(chaincode),
            config: Arc::new(config),
            stopping: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Ends every open stream with UNAVAILABLE and refuses new ones.
    pub fn stop_streams(&self) {
        self.stopping.send_replace(true);
    }

    /// The tonic service, with Fabric's 100 MiB message limits.
    pub fn into_server(self) -> ChaincodeServer<Self> {
        ChaincodeServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

#[tonic::async_trait]
impl ChaincodeRpc for ChaincodeService {
    type ConnectStream = ReceiverStream<Result<ChaincodeMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<ChaincodeMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        if *self.stopping.borrow() {
            return Err(Status::unavailable("chaincode is shutting down"));
        }
        let remote = request.remote_addr();
        tracing::info!(?remote, "peer connected");
        let inbound = request.into_inner();
        let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
        // The chaincode speaks first: REGISTER with the package id in
        // ChaincodeID.name (field 2).
        let register = ChaincodeMessage {
            r#type: Type::Register as i32,
            payload: ChaincodeId {
                name: self.config.chaincode_id.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
            ..Default::default()
        };
        out.send(Ok(register))
            .await
            .map_err(|_| Status::internal("outbound stream closed"))?;
        let handler = StreamHandler::new(
            Arc::clone(&self.chaincode),
            out,
            self.config.request_timeout,
            self.stopping.subscribe(),
        );
        tokio::spawn(handler.run(inbound));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves `service` on `listener` (TLS when `tls` is given) until `shutdown`
/// completes; then ends every open stream and returns once connections close.
pub async fn serve(
    listener: TcpListener,
    service: ChaincodeService,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ShimError> {
    // `Server::tcp_nodelay` has no effect with `serve_with_incoming*`: set it on
    // the incoming stream, or every multi-request transaction waits on Nagle
    // (~44 ms steps, measured against a real Fabric 2.5.16 peer).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let stopper = service.clone();
    let shutdown = async move {
        shutdown.await;
        stopper.stop_streams();
    };
    builder
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
