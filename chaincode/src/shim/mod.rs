//! The Fabric chaincode shim, chaincode-as-a-service (CCaaS) style: a gRPC
//! server for `protos.Chaincode/Connect` that a Fabric 2.4+ peer (or the
//! embedded devnet ledger) dials.
//!
//! On every new stream the chaincode speaks first:
//!
//! ```text
//! chaincode                           peer
//!   REGISTER(ChaincodeID{name}) ───▶
//!                               ◀─── REGISTERED
//!                               ◀─── READY (Fabric 3.x: ChaincodeAdditionalParams payload)
//!                               ◀─── INIT / TRANSACTION (txid, channel_id, SignedProposal)
//!   GET_STATE / PUT_STATE / ... ───▶           (any number, same txid)
//!                               ◀─── RESPONSE / ERROR
//!   COMPLETED(peer.Response) or ERROR ───▶
//! ```
//!
//! Transactions run concurrently: each on a blocking thread
//! ([`tokio::task::spawn_blocking`]) with a [`stub::ShimStub`] whose calls send
//! a request on the stream and block until the peer's reply for the same
//! `(channel_id, txid)` is routed back to it. KEEPALIVE is echoed; message
//! types this shim does not know (a newer Fabric) are logged and ignored; a
//! malformed transaction is answered with ERROR and the stream stays up.

mod handler;
pub mod proposal;
pub mod server;
pub mod stub;
pub mod tls;

pub use server::{ChaincodeService, ShimConfig, serve};
pub use tls::TlsFiles;

use thiserror::Error;

/// Fabric's default gRPC message size limit (100 MiB), used for both
/// directions so large proposals and state values pass as they do in Fabric.
pub const MAX_MESSAGE_SIZE: usize = 100 * 1024 * 1024;

/// Why the shim could not start or could not use an inbound message.
#[derive(Debug, Error)]
pub enum ShimError {
    /// A protobuf field could not be decoded.
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    /// A required part of the message is missing or inconsistent.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// TLS material could not be read or used.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// An I/O error (binding the listener, reading files).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ShimError {
    pub(crate) fn decode(what: &'static str, source: prost::DecodeError) -> Self {
        Self::Decode { what, source }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            reason: reason.into(),
        }
    }
}
