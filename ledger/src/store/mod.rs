//! Durable storage: the append-only block file (the source of truth, as in
//! Fabric the block store is), from which state, history and indexes are
//! rebuilt on open.

pub mod blockfile;
