//! Shared test helpers: deterministic data streams and the IPFS node's URL.
#![allow(dead_code)]

use bytes::Bytes;
use ehr_ipfs::{BlobStream, ByteStream};
use futures::StreamExt;

pub const MIB: u64 = 1 << 20;
pub const CHUNK: u64 = 262_144;

/// The sizes every backend must round-trip.
pub const SIZES: &[(&str, u64)] = &[
    ("empty", 0),
    ("1 byte", 1),
    ("one chunk", CHUNK),
    ("one chunk + 1", CHUNK + 1),
    ("1 MiB", MIB),
    ("10 MiB", 10 * MIB),
    ("100 MiB", 100 * MIB),
];

/// SplitMix64: a tiny seeded PRNG, so big inputs are regenerated instead of kept.
#[derive(Clone)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Prng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` pseudo-random bytes from `seed`, cut into pieces of `piece` bytes (the last shorter).
/// Pieces are multiples of 8 so the output does not depend on `piece`.
pub fn data_stream(seed: u64, len: u64, piece: usize) -> ByteStream {
    assert!(piece.is_multiple_of(8) && piece > 0);
    let mut rng = Prng::new(seed);
    let mut left = len;
    Box::pin(futures::stream::iter(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(piece as u64) as usize;
        let mut buf = vec![0u8; n];
        rng.fill(&mut buf);
        left -= n as u64;
        Some(Ok(Bytes::from(buf)))
    })))
}

/// The whole of a (small) deterministic input.
pub fn data_vec(seed: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    Prng::new(seed).fill(&mut v);
    v
}

/// Compares a verified stream against the deterministic input, without buffering it whole.
pub async fn assert_stream_matches(mut stream: BlobStream, seed: u64, len: u64) {
    let mut rng = Prng::new(seed);
    // Regenerate in 8-byte words; keep the unconsumed tail of the last word.
    let mut pending: Vec<u8> = Vec::new();
    let mut seen = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("stream item");
        let mut rest: &[u8] = &chunk;
        while !rest.is_empty() {
            if pending.is_empty() {
                let want = rest.len().max(8).div_ceil(8) * 8;
                pending = vec![0u8; want];
                rng.fill(&mut pending);
            }
            let n = rest.len().min(pending.len());
            assert_eq!(
                &rest[..n],
                &pending[..n],
                "content differs at byte {}",
                seen
            );
            pending.drain(..n);
            rest = &rest[n..];
            seen += n as u64;
        }
        assert!(seen <= len, "stream longer than {len}");
    }
    assert_eq!(seen, len, "stream length");
}

/// Collects a stream whole (small inputs only).
pub async fn collect(mut stream: BlobStream) -> ehr_ipfs::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// The IPFS node's API URL from `IPFS_API_URL`. Unset: fails under `CI=true`, otherwise
/// prints a loud SKIPPED line and returns `None`.
pub fn node_url(test: &str) -> Option<String> {
    match std::env::var("IPFS_API_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "{test}: IPFS_API_URL is not set and CI=true; start a node with \
                     `scripts/ipfs-node.sh start` (scripts/test.sh does) and export its URL"
                );
            }
            eprintln!(
                "\n*** SKIPPED: IPFS_API_URL not set ({test}); run `export IPFS_API_URL=$(scripts/ipfs-node.sh start)` ***\n"
            );
            None
        }
    }
}
