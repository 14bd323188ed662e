//! The one error type of the blob store.

use cid::Cid;

/// Everything that can go wrong storing or reading a blob.
///
/// Messages never contain file content, only CIDs, sizes, paths and the backend's own error text.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// A caller-supplied value was rejected before anything was done.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A block's bytes do not hash to the CID that names it: corruption or substitution.
    #[error("block {cid} failed verification: its bytes do not hash to its CID")]
    Corrupt {
        /// The CID the block was fetched by.
        cid: Cid,
    },

    /// The DAG is well-formed block by block but inconsistent as a file
    /// (wrong sizes, unexpected node type, undecodable node).
    #[error("malformed DAG at {cid}: {reason}")]
    MalformedDag {
        /// The block where the inconsistency was found.
        cid: Cid,
        /// What is wrong.
        reason: String,
    },

    /// The block (or blob) is not in the store.
    #[error("block {0} not found")]
    NotFound(Cid),

    /// The IPFS node returned a CID other than the one computed locally for the same bytes.
    #[error("the IPFS node returned CID {returned}, but the bytes sent hash to {expected}")]
    CidMismatch {
        /// The CID computed locally.
        expected: String,
        /// The CID the node reported.
        returned: String,
    },

    /// The IPFS node could not be reached.
    #[error("IPFS node at {url} is unreachable ({reason}); is it running?")]
    NodeDown {
        /// The API base URL.
        url: String,
        /// The transport error.
        reason: String,
    },

    /// The IPFS node did not answer in time.
    #[error("IPFS node call {call} timed out after {secs:.1}s")]
    Timeout {
        /// The RPC path, e.g. `/api/v0/block/get`.
        call: String,
        /// The limit that was exceeded.
        secs: f64,
    },

    /// The IPFS node answered with an error.
    #[error("IPFS node call {call} failed (HTTP {status}): {message}")]
    Node {
        /// The RPC path.
        call: String,
        /// HTTP status code.
        status: u16,
        /// The node's error message.
        message: String,
    },

    /// The IPFS node answered something we could not understand.
    #[error("unexpected answer from IPFS node call {call}: {reason}")]
    Protocol {
        /// The RPC path.
        call: String,
        /// What was wrong with the answer.
        reason: String,
    },

    /// The input stream given to `put` failed.
    #[error("reading the input failed: {0}")]
    Input(#[source] std::io::Error),

    /// A filesystem operation of the embedded store failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A background task panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl BlobError {
    /// Builds an [`BlobError::Io`] from an operation name and a path.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<std::path::PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| BlobError::Io { op, path, source }
    }
}

impl From<tokio::task::JoinError> for BlobError {
    fn from(e: tokio::task::JoinError) -> Self {
        BlobError::Task(e.to_string())
    }
}

/// Result alias of this crate.
pub type Result<T, E = BlobError> = std::result::Result<T, E>;
