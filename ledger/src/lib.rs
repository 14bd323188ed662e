//! The embedded single-node ledger ("devnet": a Fabric peer + orderer for
//! one channel on one machine) and the Fabric Gateway client.
//!
//! - [`devnet::Devnet`]: open a ledger, endorse/submit/commit, `verify`,
//!   lookups for audit proofs; [`service`] serves it as `gateway.Gateway`.
//! - [`client::GatewayClient`]: a Fabric Gateway client that talks to the
//!   devnet or to a real Fabric peer's gateway with the same messages.
//! - [`msp`]: identities, signatures and a devnet CA.

pub mod block;
pub mod ccshim;
pub mod client;
pub mod devnet;
pub mod hash;
pub mod msp;
pub mod rpc_error;
pub mod service;
pub mod simulator;
pub mod state;
pub mod store;
pub mod tx;

pub use devnet::{
    BatchConfig, BlockEvents, ChaincodeHost, Devnet, DevnetConfig, Endorsed, LedgerError,
    OrgConfig, TxProof, TxStatus, VerifyReport,
};
