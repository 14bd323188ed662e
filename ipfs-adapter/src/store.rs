//! The `BlobStore` interface every backend implements.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use cid::Cid;
use futures::Stream;

use crate::error::Result;
use crate::import::Blob;
use crate::params::ImportParams;
use crate::walk::BlobStream;

/// An input byte stream for [`BlobStore::put`].
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// How to store a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOptions {
    /// The import parameters (they decide the CID).
    pub params: ImportParams,
    /// Pin the blob (recursively) once stored; unpinned blobs are garbage-collectable.
    pub pin: bool,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions {
            params: ImportParams::default(),
            pin: true,
        }
    }
}

/// What a store knows about a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobStat {
    /// The blob's root CID.
    pub cid: Cid,
    /// File size in bytes (from the root node).
    pub size: u64,
    /// Size of the root block in bytes.
    pub root_block_size: u64,
    /// Whether the blob is pinned (recursively).
    pub pinned: bool,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blocks removed.
    pub removed_blocks: u64,
    /// Bytes freed, when the backend reports it.
    pub freed_bytes: Option<u64>,
}

/// A content-addressed store of files (blobs), IPFS-style.
///
/// Every backend computes CIDs exactly as Kubo's `ipfs add` does with the same
/// [`ImportParams`], and every `get` verifies each block against its CID as it streams.
/// All operations are cancellation-safe: dropping a future or stream leaves the store
/// consistent (at worst, unpinned blocks that garbage collection removes).
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Stores the bytes of `data` as one file and returns its root CID and size. Memory use is
    /// bounded whatever the size of the input.
    async fn put(&self, data: ByteStream, opts: PutOptions) -> Result<Blob>;

    /// Streams the file named `cid`. The root block is fetched and verified before this returns
    /// (so a missing blob is an immediate [`crate::BlobError::NotFound`] or timeout); each later
    /// block is verified before its bytes are yielded.
    async fn get(&self, cid: &Cid) -> Result<BlobStream>;

    /// Pins `cid` recursively; every block of its DAG must be present.
    async fn pin(&self, cid: &Cid) -> Result<()>;

    /// Removes the pin of `cid`; returns whether it was pinned.
    async fn unpin(&self, cid: &Cid) -> Result<bool>;

    /// Whether the root block of `cid` is present in the store (without fetching from the network).
    async fn has(&self, cid: &Cid) -> Result<bool>;

    /// Size and pin state of `cid`.
    async fn stat(&self, cid: &Cid) -> Result<BlobStat>;

    /// Removes every block not reachable from a pin.
    async fn gc(&self) -> Result<GcReport>;

    /// Checks that the backend is usable (for readiness probes).
    async fn check(&self) -> Result<()>;
}

/// Reads the file size a root block declares: its length for a raw block, the UnixFS
/// `filesize` for a dag-pb `File` node.
pub(crate) fn file_size_of_root(cid: &Cid, block: &[u8]) -> Result<u64> {
    if cid.codec() == crate::verify::RAW_CODEC {
        return Ok(block.len() as u64);
    }
    let (_, size, _, _) = rust_unixfs::file::visit::IdleFileVisit::default()
        .start(block)
        .map_err(|e| crate::error::BlobError::MalformedDag {
            cid: *cid,
            reason: e.to_string(),
        })?;
    Ok(size)
}
