//! The ehrchain contract over a [`stub::Stub`] trait, and its Fabric shim.
//!
//! Hosts (the shim, the embedded ledger, unit tests) run any [`Chaincode`]:
//! they hand it a `&mut dyn Stub` and the proposal's arguments (function name
//! first, as `peer chaincode invoke -c '{"Args":["Fn","{json}"]}'` sends them)
//! and get back a [`Response`], exactly Fabric's `peer.Response`.

pub mod contract;
pub mod identity;
pub mod memstub;
pub mod shim;
pub mod stub;

/// Fabric's `shim.OK`.
pub const STATUS_OK: i32 = 200;
/// Fabric's `shim.ERRORTHRESHOLD`: a status at or above it fails endorsement.
pub const STATUS_ERROR_THRESHOLD: i32 = 400;
/// Fabric's `shim.ERROR`.
pub const STATUS_ERROR: i32 = 500;

/// A chaincode's answer (Fabric `peer.Response`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub status: i32,
    pub message: String,
    pub payload: Vec<u8>,
}

impl Response {
    pub fn ok(payload: Vec<u8>) -> Self {
        Self {
            status: STATUS_OK,
            message: String::new(),
            payload,
        }
    }
    pub fn error(status: i32, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            payload: Vec::new(),
        }
    }
    pub fn is_ok(&self) -> bool {
        self.status < STATUS_ERROR_THRESHOLD
    }
}

/// A contract a host can run. Must be deterministic: every endorsing peer
/// computes identical bytes from identical state and proposal.
pub trait Chaincode: Send + Sync + 'static {
    fn init(&self, stub: &mut dyn stub::Stub, args: &[Vec<u8>]) -> Response;
    fn invoke(&self, stub: &mut dyn stub::Stub, args: &[Vec<u8>]) -> Response;
}
