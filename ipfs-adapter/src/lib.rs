//! `BlobStore`: content-addressed storage of (encrypted) EHR files, IPFS-style.
//!
//! - [`EmbeddedStore`]: a filesystem blockstore that imports files exactly as `ipfs add` does
//!   (same CIDs as Kubo for the same bytes and [`ImportParams`]), no daemon needed.
//! - [`KuboStore`]: a client of a real IPFS node's HTTP RPC API (Kubo, or js-ipfs in tests),
//!   which checks that the node stored what was sent.
//!
//! Both verify every block against its CID while streaming a file back.

pub mod cli;
pub mod embedded;
pub mod error;
pub mod import;
pub mod kubo;

pub mod params;
pub mod store;
pub mod verify;
pub mod walk;

pub use embedded::{EmbeddedOptions, EmbeddedStore, VerifyReport};
pub use error::{BlobError, Result};
pub use import::{Blob, Block, Importer, cid_of_bytes, cid_of_stream};
pub use kubo::{KuboConfig, KuboStore};

pub use params::{Chunker, CidVersion, ImportParams};
pub use store::{BlobStat, BlobStore, ByteStream, GcReport, PutOptions};
pub use walk::BlobStream;

pub use cid::Cid;
