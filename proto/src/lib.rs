//! Hyperledger Fabric 2.5 wire messages, written by us from Fabric's published
//! wire format with Fabric's package names and field numbers, so the bytes we
//! send and receive are exactly a real peer's. Module names follow the proto
//! packages: `common`, `msp`, `protos` (Fabric's `peer` package), `rwset`,
//! `kvrwset`, `orderer`, `gateway`.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod msp {
    tonic::include_proto!("msp");
}
