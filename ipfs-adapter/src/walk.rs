//! Reading a file back from its DAG, verifying every block before any of its bytes leave.
//!
//! The walk is depth-first in file order. Each block is fetched by CID from a [`BlockSource`],
//! rehashed against that CID (so a corrupted or substituted block is an error, never data), then
//! decoded as a raw leaf or a UnixFS `File` node. A few blocks ahead are fetched and verified
//! concurrently; memory stays at those blocks plus one link list per tree level. Dropping the
//! stream aborts the fetches in flight.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cid::Cid;
use futures::Stream;
use rust_unixfs::file::visit::IdleFileVisit;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{BlobError, Result};
use crate::verify::{RAW_CODEC, check_supported, verify_block};

/// A stream of a file's bytes; every item has been verified against its block's CID.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// Where blocks come from (a local blockstore, an IPFS node). Returns bytes as stored,
/// unverified: the walker verifies.
#[async_trait]
pub trait BlockSource: Send + Sync + 'static {
    /// The block named `cid`, or [`BlobError::NotFound`].
    async fn fetch_block(&self, cid: Cid) -> Result<Bytes>;

    /// How many blocks to fetch ahead of the reader.
    fn read_ahead(&self) -> usize {
        4
    }
}

type Fetch = AbortOnDropHandle<Result<Bytes>>;

fn spawn_fetch<S: BlockSource>(source: &Arc<S>, cid: Cid) -> Fetch {
    let source = Arc::clone(source);
    AbortOnDropHandle::new(tokio::spawn(async move {
        let data = source.fetch_block(cid).await?;
        verify_block(&cid, &data)?;
        Ok(data)
    }))
}

async fn join(fetch: Fetch) -> Result<Bytes> {
    fetch.await?
}

/// `content` as a zero-copy slice of `block` when it points into it, else a copy.
fn sub_bytes(block: &Bytes, content: &[u8]) -> Bytes {
    let start = block.as_ptr() as usize;
    let end = start + block.len();
    let p = content.as_ptr() as usize;
    if !content.is_empty() && p >= start && p + content.len() <= end {
        block.slice_ref(content)
    } else {
        Bytes::copy_from_slice(content)
    }
}

fn malformed(cid: Cid, e: impl std::fmt::Display) -> BlobError {
    BlobError::MalformedDag {
        cid,
        reason: e.to_string(),
    }
}

/// Fetches and verifies the root block of `root`, then streams the file, verifying every block.
pub async fn open_verified<S: BlockSource>(source: Arc<S>, root: Cid) -> Result<BlobStream> {
    check_supported(&root)?;
    let block = join(spawn_fetch(&source, root)).await?;
    Ok(verified_file(source, root, block))
}

/// Streams the file whose DAG is rooted at `root`, whose (verified) root block is `block`.
fn verified_file<S: BlockSource>(source: Arc<S>, root: Cid, block: Bytes) -> BlobStream {
    Box::pin(async_stream::try_stream! {
        let ahead = source.read_ahead().max(1);
        let (first, file_size, mut visit) = if root.codec() == RAW_CODEC {
            let (content, size, _, visit) = IdleFileVisit::default().start_from_raw(&block);
            (sub_bytes(&block, content), size, visit)
        } else {
            let (content, size, _, visit) = IdleFileVisit::default()
                .start(&block)
                .map_err(|e| malformed(root, e))?;
            (sub_bytes(&block, content), size, visit)
        };
        let mut emitted = first.len() as u64;
        if emitted > file_size {
            Err(malformed(root, "node holds more bytes than its filesize"))?;
        }
        if !first.is_empty() {
            yield first;
        }
        let mut inflight: HashMap<Cid, Fetch> = HashMap::new();
        let mut cache = None;
        while let Some(v) = visit.take() {
            let next = {
                let (next, rest) = v.pending_links();
                let wanted: Vec<Cid> = std::iter::once(next).chain(rest).take(ahead).copied().collect();
                for cid in wanted {
                    inflight.entry(cid).or_insert_with(|| spawn_fetch(&source, cid));
                }
                *next
            };
            let fetch = match inflight.remove(&next) {
                Some(f) => f,
                None => spawn_fetch(&source, next),
            };
            let block = join(fetch).await?;
            let (chunk, cont) = {
                let (content, cont) = v
                    .continue_walk(&block, &mut cache)
                    .map_err(|e| malformed(next, e))?;
                (sub_bytes(&block, content), cont)
            };
            visit = cont;
            emitted += chunk.len() as u64;
            if emitted > file_size {
                Err(malformed(next, "file is longer than its root's filesize"))?;
            }
            if !chunk.is_empty() {
                yield chunk;
            }
        }
        if emitted != file_size {
            Err(malformed(
                root,
                format!("file ended after {emitted} bytes, root says {file_size}"),
            ))?;
        }
    })
}

/// The direct children of a block (none for raw blocks), for pinning and garbage collection.
pub fn block_links(cid: &Cid, data: &[u8]) -> Result<Vec<Cid>> {
    if cid.codec() == RAW_CODEC {
        return Ok(Vec::new());
    }
    let mut links = Vec::new();
    ipld_dagpb::links(data, &mut links).map_err(|e| malformed(*cid, e))?;
    Ok(links)
}
