//! The UnixFS importer: bytes in, blocks and a root CID out, exactly as `ipfs add` builds them.
//!
//! Fixed-size chunks, a balanced DAG of at most 174 links per node, UnixFS `File` dag-pb
//! parents, raw or dag-pb leaves, CIDv0 or v1. The tree building is `rust-unixfs`'s
//! `FileAdder` (its balanced collector reproduces go-unixfs' layout); this module feeds it in
//! bounded pieces and hands out each block as soon as it is complete, so memory stays at about
//! one chunk plus one pending link list per tree level whatever the file size.

use bytes::Bytes;
use cid::Cid;
use futures::{Stream, StreamExt};
use rust_unixfs::file::adder::{BalancedCollector, Chunker as UnixfsChunker, FileAdder};

use crate::error::{BlobError, Result};
use crate::params::{CidVersion, ImportParams, MAX_LINKS_PER_NODE};

/// One content-addressed block: its CID and its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The CID naming the block (codec + sha2-256 of `data`).
    pub cid: Cid,
    /// The encoded block.
    pub data: Bytes,
}

/// A stored file: its root CID and its size in bytes (the file's, not the DAG's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Blob {
    /// Root CID of the file's DAG.
    pub cid: Cid,
    /// File size in bytes.
    pub size: u64,
}

/// Incremental importer. Push bytes in any slicing; every completed block is handed to the sink
/// in the order a store must write them (children before parents, the root last).
pub struct Importer {
    adder: FileAdder,
    size: u64,
    last: Option<Cid>,
}

impl std::fmt::Debug for Importer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Importer")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Importer {
    /// A new importer for one file.
    pub fn new(params: ImportParams) -> Self {
        let version = match params.cid_version {
            CidVersion::V0 => cid::Version::V0,
            CidVersion::V1 => cid::Version::V1,
        };
        let adder = FileAdder::builder()
            .with_chunker(UnixfsChunker::Size(params.chunker.chunk_size()))
            .with_collector(BalancedCollector::with_branching_factor(MAX_LINKS_PER_NODE))
            .with_cid_version(version)
            .with_raw_leaves(params.raw_leaves)
            .build();
        Importer {
            adder,
            size: 0,
            last: None,
        }
    }

    /// Bytes pushed so far.
    pub fn bytes_in(&self) -> u64 {
        self.size
    }

    /// Feeds `data`; calls `sink` for each block this completes.
    pub fn push<E>(
        &mut self,
        mut data: &[u8],
        sink: &mut impl FnMut(Block) -> Result<(), E>,
    ) -> Result<(), E> {
        self.size += data.len() as u64;
        while !data.is_empty() {
            let (blocks, consumed) = self.adder.push(data);
            for (cid, bytes) in blocks {
                self.last = Some(cid);
                sink(Block {
                    cid,
                    data: Bytes::from(bytes),
                })?;
            }
            data = &data[consumed..];
        }
        Ok(())
    }

    /// Ends the file: emits the remaining blocks (the root last) and returns the root.
    pub fn finish<E>(self, sink: &mut impl FnMut(Block) -> Result<(), E>) -> Result<Blob, E>
    where
        E: From<BlobError>,
    {
        let mut last = self.last;
        for (cid, bytes) in self.adder.finish() {
            last = Some(cid);
            sink(Block {
                cid,
                data: Bytes::from(bytes),
            })?;
        }
        // The importer always emits at least one block (an empty file is one empty leaf).
        let cid =
            last.ok_or_else(|| BlobError::Task("UnixFS importer produced no block".to_owned()))?;
        Ok(Blob {
            cid,
            size: self.size,
        })
    }
}

/// The CID of `data` under `params`, as `ipfs add --only-hash` prints it.
pub fn cid_of_bytes(data: &[u8], params: ImportParams) -> Result<Blob> {
    let mut importer = Importer::new(params);
    let mut discard = |_: Block| Ok::<(), BlobError>(());
    importer.push(data, &mut discard)?;
    importer.finish(&mut discard)
}

/// The CID of a byte stream under `params`, without storing anything (`ipfs add --only-hash`).
pub async fn cid_of_stream<S>(stream: S, params: ImportParams) -> Result<Blob>
where
    S: Stream<Item = std::io::Result<Bytes>>,
{
    let mut importer = Importer::new(params);
    let mut discard = |_: Block| Ok::<(), BlobError>(());
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BlobError::Input)?;
        importer.push(&chunk, &mut discard)?;
    }
    importer.finish(&mut discard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Chunker;

    fn blocks_of(data: &[u8], params: ImportParams, slice: usize) -> (Vec<Block>, Blob) {
        let mut out = Vec::new();
        let mut imp = Importer::new(params);
        let mut sink = |b: Block| {
            out.push(b);
            Ok::<(), BlobError>(())
        };
        for piece in data.chunks(slice.max(1)) {
            imp.push(piece, &mut sink).unwrap();
        }
        let blob = imp.finish(&mut sink).unwrap();
        (out, blob)
    }

    // Reference CIDs printed by Kubo (`ipfs add`), widely published.
    #[test]
    fn known_kubo_cids() {
        let v0 = ImportParams::kubo_default();
        let v1 = ImportParams::default();
        assert_eq!(
            cid_of_bytes(b"", v0).unwrap().cid.to_string(),
            "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
        );
        assert_eq!(
            cid_of_bytes(b"", v1).unwrap().cid.to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        assert_eq!(
            cid_of_bytes(b"hello world\n", v0).unwrap().cid.to_string(),
            "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
        );
        assert_eq!(
            cid_of_bytes(b"hello world\n", v1).unwrap().cid.to_string(),
            "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4"
        );
    }

    #[test]
    fn slicing_of_the_input_does_not_change_the_dag() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let params = ImportParams::default().with_chunker(Chunker::size(1000).unwrap());
        let (whole, root) = blocks_of(&data, params, data.len());
        for slice in [1, 999, 1000, 1001, 4096] {
            let (blocks, r) = blocks_of(&data, params, slice);
            assert_eq!(r, root);
            assert_eq!(blocks, whole);
        }
        // 100 leaves under one root; the root comes last.
        assert_eq!(whole.len(), 101);
        assert_eq!(whole.last().unwrap().cid, root.cid);
        assert_eq!(root.size, 100_000);
    }

    #[test]
    fn balanced_layout_has_at_most_174_links() {
        // 175 leaves need a second level: 174 + 1 leaves under two parents, one root.
        let params = ImportParams::default().with_chunker(Chunker::size(1).unwrap());
        let (blocks, _) = blocks_of(&[7u8; 175], params, 175);
        let parents: Vec<_> = blocks.iter().filter(|b| b.cid.codec() == 0x70).collect();
        assert_eq!(parents.len(), 3);
        let mut links = Vec::new();
        ipld_dagpb::links(&parents[0].data, &mut links).unwrap();
        assert_eq!(links.len(), 174);
        links.clear();
        ipld_dagpb::links(&parents[2].data, &mut links).unwrap();
        assert_eq!(links, vec![parents[0].cid, parents[1].cid]);
    }
}
