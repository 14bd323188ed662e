//! Import parameters: the knobs of `ipfs add` that change a file's CID.

use std::fmt;
use std::str::FromStr;

use crate::error::BlobError;

/// Kubo's default chunk size (`size-262144`).
pub const DEFAULT_CHUNK_SIZE: usize = 262_144;
/// The largest chunk Kubo accepts (`chunk.ChunkSizeLimit`, 1 MiB).
pub const MAX_CHUNK_SIZE: usize = 1_048_576;
/// Kubo's balanced layout puts at most this many links in one node.
pub const MAX_LINKS_PER_NODE: usize = 174;

/// The CID version of the DAG's dag-pb nodes (`--cid-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CidVersion {
    /// CIDv0: base58btc `Qm…`, dag-pb nodes only.
    V0,
    /// CIDv1: printed in base32 `bafy…` / `bafk…`.
    V1,
}

impl CidVersion {
    /// The number as Kubo's `cid-version` argument spells it.
    pub fn as_u8(self) -> u8 {
        match self {
            CidVersion::V0 => 0,
            CidVersion::V1 => 1,
        }
    }
}

impl TryFrom<u8> for CidVersion {
    type Error = BlobError;
    fn try_from(v: u8) -> Result<Self, BlobError> {
        match v {
            0 => Ok(CidVersion::V0),
            1 => Ok(CidVersion::V1),
            other => Err(BlobError::InvalidInput(format!(
                "cid version must be 0 or 1, got {other}"
            ))),
        }
    }
}

/// A fixed-size chunker, `size-N` on Kubo's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Chunker(usize);

impl Chunker {
    /// A chunker cutting `size` bytes per leaf; `1..=MAX_CHUNK_SIZE`.
    pub fn size(size: usize) -> Result<Self, BlobError> {
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(BlobError::InvalidInput(format!(
                "chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes, got {size}"
            )));
        }
        Ok(Chunker(size))
    }

    /// Bytes per leaf.
    pub fn chunk_size(self) -> usize {
        self.0
    }
}

impl Default for Chunker {
    fn default() -> Self {
        Chunker(DEFAULT_CHUNK_SIZE)
    }
}

impl fmt::Display for Chunker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "size-{}", self.0)
    }
}

impl FromStr for Chunker {
    type Err = BlobError;
    /// Parses `size-N` (the only chunker this crate implements; Kubo's `rabin` and `buzhash`
    /// are rejected with a clear error).
    fn from_str(s: &str) -> Result<Self, BlobError> {
        let n = s.strip_prefix("size-").ok_or_else(|| {
            BlobError::InvalidInput(format!(
                "unsupported chunker {s:?}: only fixed-size chunkers \"size-N\" are supported"
            ))
        })?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BlobError::InvalidInput(format!(
                "chunker {s:?}: N in \"size-N\" must be a decimal number of bytes"
            )));
        }
        let size: usize = n.parse().map_err(|_| {
            BlobError::InvalidInput(format!("chunker {s:?}: chunk size is too large"))
        })?;
        Chunker::size(size)
    }
}

/// Everything that decides the CID of a file, as `ipfs add` flags.
///
/// The default is this project's: CIDv1, raw leaves, `size-262144` (what `ipfs add
/// --cid-version 1` does). [`ImportParams::kubo_default`] is plain `ipfs add`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImportParams {
    /// CID version of dag-pb nodes.
    pub cid_version: CidVersion,
    /// Leaves are raw blocks (codec `raw`, CIDv1) instead of UnixFS dag-pb nodes.
    pub raw_leaves: bool,
    /// How the file is cut into leaves.
    pub chunker: Chunker,
}

impl Default for ImportParams {
    fn default() -> Self {
        ImportParams::for_version(CidVersion::V1)
    }
}

impl ImportParams {
    /// Parameters with Kubo's defaults for the given CID version: raw leaves exactly when v1.
    pub fn for_version(cid_version: CidVersion) -> Self {
        ImportParams {
            cid_version,
            raw_leaves: cid_version == CidVersion::V1,
            chunker: Chunker::default(),
        }
    }

    /// What a plain `ipfs add` does: CIDv0, dag-pb leaves, `size-262144`.
    pub fn kubo_default() -> Self {
        ImportParams::for_version(CidVersion::V0)
    }

    /// Same parameters with another chunker.
    pub fn with_chunker(self, chunker: Chunker) -> Self {
        ImportParams { chunker, ..self }
    }

    /// Same parameters with raw leaves on or off.
    pub fn with_raw_leaves(self, raw_leaves: bool) -> Self {
        ImportParams { raw_leaves, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunker_parses_size_n_and_rejects_the_rest() {
        assert_eq!(
            "size-262144".parse::<Chunker>().unwrap().chunk_size(),
            262_144
        );
        assert_eq!("size-1".parse::<Chunker>().unwrap().chunk_size(), 1);
        assert_eq!(
            "size-1048576".parse::<Chunker>().unwrap().chunk_size(),
            MAX_CHUNK_SIZE
        );
        for bad in [
            "size-0",
            "size-1048577",
            "size-",
            "size--1",
            "size-+5",
            "size-1e3",
            "rabin",
            "buzhash",
            "262144",
            "size-99999999999999999999999",
        ] {
            assert!(bad.parse::<Chunker>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn defaults_follow_kubo() {
        let v0 = ImportParams::kubo_default();
        assert_eq!((v0.cid_version, v0.raw_leaves), (CidVersion::V0, false));
        let v1 = ImportParams::default();
        assert_eq!((v1.cid_version, v1.raw_leaves), (CidVersion::V1, true));
        assert_eq!(v1.chunker.to_string(), "size-262144");
        assert!(CidVersion::try_from(2).is_err());
    }
}
