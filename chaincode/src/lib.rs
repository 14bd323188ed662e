//! The ehrchain contract over a [`stub::Stub`] trait, and its Fabric shim.

pub mod stub;
