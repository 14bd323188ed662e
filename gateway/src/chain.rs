//! The gateway's view of the ledger: evaluate (query) and submit (endorse,
//! order, wait for commit) chaincode functions as a given signing identity.
//!
//! The real implementation is the Fabric Gateway client of `ehr-ledger`
//! (the devnet in `ehr up`, or a real Fabric peer); this trait keeps the REST
//! layer independent of the transport.

use async_trait::async_trait;
use serde::Deserialize;
use thiserror::Error;

/// The identity a proposal is signed with: MSP id, certificate and key.
pub use ehr_ledger::msp::SigningIdentity;

/// A committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub tx_id: String,
    pub block: u64,
    /// The chaincode's response payload.
    pub payload: Vec<u8>,
}

/// The result of re-verifying the hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVerification {
    pub height: u64,
    pub verified: bool,
    pub first_bad_block: Option<u64>,
}

/// A transaction's place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxProofView {
    pub tx_id: String,
    pub block: u64,
    /// Hex of the block header hash.
    pub block_hash: String,
    /// The block hash matches the verified chain and the tx is valid.
    pub verified: bool,
}

/// Ledger failures.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// The chaincode rejected the call (status >= 400); nothing was written.
    #[error("chaincode rejected the call ({status}): {message}")]
    Rejected {
        status: i32,
        code: String,
        message: String,
    },
    /// The transaction was ordered but invalidated at commit (e.g. MVCC).
    #[error("transaction {tx_id} invalid at commit: {reason}")]
    Invalidated { tx_id: String, reason: String },
    /// The ledger could not be reached.
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    /// This kind of ledger cannot do it (e.g. hash-chain verification of a
    /// real Fabric peer's blocks from the gateway).
    #[error("{0}")]
    NotSupported(String),
    /// Anything else the transport reported.
    #[error("ledger error: {0}")]
    Other(String),
}

#[derive(Deserialize)]
struct ContractErrorBody {
    code: String,
    message: String,
}

impl ChainError {
    /// Builds [`ChainError::Rejected`] from a chaincode response status and
    /// message (the contract's message is JSON `{code, message}`).
    pub fn rejected(status: i32, message: &str) -> Self {
        match serde_json::from_str::<ContractErrorBody>(message) {
            Ok(b) => Self::Rejected {
                status,
                code: b.code,
                message: b.message,
            },
            Err(_) => Self::Rejected {
                status,
                code: "chaincode_error".into(),
                message: message.to_owned(),
            },
        }
    }
}

/// Evaluate and submit chaincode functions.
#[async_trait]
pub trait Chain: Send + Sync {
    /// Runs `function(arg)` on a peer without ordering it (a query).
    async fn evaluate(
        &self,
        signer: &SigningIdentity,
        function: &str,
        arg: &serde_json::Value,
    ) -> Result<Vec<u8>, ChainError>;

    /// Endorses, orders and waits for the commit of `function(arg)`.
    async fn submit(
        &self,
        signer: &SigningIdentity,
        function: &str,
        arg: &serde_json::Value,
    ) -> Result<Committed, ChainError>;

    /// Re-verifies the ledger's hash chain.
    async fn verify_chain(&self) -> Result<ChainVerification, ChainError>;

    /// Where a transaction sits in the hash chain, checked against it.
    async fn tx_proof(&self, tx_id: &str) -> Result<Option<TxProofView>, ChainError>;

    /// The number of committed blocks (the next block's number).
    async fn height(&self) -> Result<u64, ChainError>;

    /// The highest block in `from..=to` holding events of the chaincode,
    /// when the ledger can tell cheaply.
    async fn last_event_block(&self, from: u64, to: u64) -> Result<EventScan, ChainError>;

    /// Checks the ledger is reachable (readiness).
    async fn check(&self) -> Result<(), ChainError>;
}

/// The answer of [`Chain::last_event_block`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventScan {
    /// The ledger cannot tell (too many blocks to look at, or it refused).
    Unknown,
    /// No block in the range has events of the chaincode.
    NoEvents,
    /// This block is the last one in the range that has some.
    At(u64),
}

impl From<ChainError> for crate::api::error::ApiError {
    fn from(e: ChainError) -> Self {
        use crate::api::error::ApiError;
        match e {
            ChainError::Rejected {
                status, message, ..
            } => match status {
                400 => ApiError::bad_request(message),
                401 | 403 => ApiError::forbidden(message),
                404 => ApiError::not_found(message),
                409 => ApiError::conflict(message),
                422 => ApiError::unprocessable(message),
                s if (400..500).contains(&s) => ApiError::bad_request(message),
                _ => ApiError::bad_gateway(format!("chaincode error: {message}")),
            },
            ChainError::Invalidated { .. } => ApiError::conflict(e.to_string()),
            ChainError::Unavailable(_) => {
                tracing::warn!(error = %e, "ledger unavailable");
                ApiError::unavailable("ledger unavailable")
            }
            ChainError::NotSupported(m) => ApiError::not_implemented(m),
            ChainError::Other(_) => ApiError::bad_gateway(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ApiError;
    use axum::http::StatusCode;

    #[test]
    fn contract_errors_map_to_http() {
        let e = ChainError::rejected(404, r#"{"code":"not_found","message":"no record r1"}"#);
        assert_eq!(
            e,
            ChainError::Rejected {
                status: 404,
                code: "not_found".into(),
                message: "no record r1".into()
            }
        );
        assert_eq!(ApiError::from(e).status, StatusCode::NOT_FOUND);
        assert_eq!(
            ApiError::from(ChainError::rejected(400, "plain text")).status,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::from(ChainError::rejected(500, "boom")).status,
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ApiError::from(ChainError::Unavailable("x".into())).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let e = ApiError::from(ChainError::NotSupported("needs the embedded ledger".into()));
        assert_eq!(e.status, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(e.message, "needs the embedded ledger");
    }
}
