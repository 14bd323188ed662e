//! Hyperledger Fabric 2.5 wire messages, written by us from Fabric's published
//! wire format with Fabric's package names and field numbers, so the bytes we
//! send and receive are exactly a real peer's. Module names follow the proto
//! packages: `common`, `msp`, `protos` (Fabric's `peer` package), `queryresult`,
//! `rwset`, `kvrwset`, `orderer`, `gateway`; ehrchain's own protocols are under
//! [`ehr`].
//!
//! A few Fabric 3.x additions are included and marked as such in the `.proto`
//! files (e.g. `ChaincodeMessage` types `WRITE_BATCH_STATE`/`GET_STATE_MULTIPLE`,
//! `ChaincodeAdditionalParams`); a 2.5 peer never sends them.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// `common`: envelopes, headers, blocks, statuses, signature policies.
pub mod common {
    tonic::include_proto!("common");
}

/// `msp`: serialized identities.
pub mod msp {
    tonic::include_proto!("msp");
}

/// `protos`: Fabric's peer package — proposals, responses, transactions, the
/// chaincode shim stream and its payloads, private data collection configs.
pub mod protos {
    tonic::include_proto!("protos");
}

/// `queryresult`: results of range/rich queries and key history.
pub mod queryresult {
    tonic::include_proto!("queryresult");
}

/// `rwset`: transaction read/write sets (public and private).
pub mod rwset {
    tonic::include_proto!("rwset");
}

/// `kvrwset`: the key/value data model of a read/write set.
pub mod kvrwset {
    tonic::include_proto!("kvrwset");
}

/// `orderer`: seek positions for block delivery, broadcast/deliver service.
pub mod orderer {
    tonic::include_proto!("orderer");
}

/// `gateway`: the Fabric Gateway service and its messages.
pub mod gateway {
    tonic::include_proto!("gateway");
}

/// ehrchain's own messages (not Fabric's).
pub mod ehr {
    /// `ehr.proxy.v1`: the gateway-to-gateway key proxy service (threshold
    /// proxy re-encryption), see `ehr/proxy/proxy.proto`.
    pub mod proxy {
        pub mod v1 {
            tonic::include_proto!("ehr.proxy.v1");
        }
    }
}
