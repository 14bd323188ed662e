//! The hospital gateway: REST API, JWT auth, file encryption, persistence and
//! the `ehr` command line.

pub mod api;
pub mod audit;
pub mod auth;
pub mod chain;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod db;
pub mod fabric;
pub mod fsutil;
pub mod identity;
pub mod metrics;
pub mod pipeline;
pub mod projector;
pub mod proxy;
pub mod reconcile;
pub mod serve;
pub mod up;
