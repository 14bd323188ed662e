//! The embedded single-node ledger ("devnet peer + orderer") and the Fabric
//! Gateway client.

pub mod hash;
pub mod msp;
pub mod simulator;
pub mod state;
pub mod store;
