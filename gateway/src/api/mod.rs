//! The REST API.

pub mod error;
