//! The block file: an append-only log of framed records, one per block,
//! made durable with `fdatasync` before a block is acknowledged.
//!
//! Frame layout (little endian):
//! ```text
//! magic "EHRB" (4) | block number u64 (8) | length u32 (4) | crc32(number || payload) u32 (4) | payload
//! ```
//! On open the file is scanned from the start. A frame that is incomplete or
//! fails its CRC is a *torn write* when no valid frame follows it (only the
//! last append, not yet fsynced when the process died, can be torn): the file
//! is truncated there and the loss logged. A bad frame *followed* by valid
//! frames is corruption, not a crash: open fails with the block number so an
//! operator runs `verify`, as a Fabric peer refuses a damaged block store.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use thiserror::Error;

const MAGIC: &[u8; 4] = b"EHRB";
const HEADER_LEN: usize = 20;
/// Upper bound on one block record, to reject a garbage length early.
pub const MAX_RECORD: usize = 512 * 1024 * 1024;

/// Block file failures.
#[derive(Debug, Error)]
pub enum BlockFileError {
    #[error("block file I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("block file is corrupt at block {number} (offset {offset}): {reason}")]
    Corrupt {
        number: u64,
        offset: u64,
        reason: String,
    },
    #[error("record of {0} bytes is too large")]
    TooLarge(usize),
    #[error("block {got} appended where {want} was expected")]
    OutOfOrder { got: u64, want: u64 },
    #[error("no block {0}")]
    NoSuchBlock(u64),
}

/// What [`BlockFile::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the end (a torn last write), 0 when the file was clean.
    pub truncated_bytes: u64,
}

/// An open block file. Appends are serialised; reads (`pread`) run
/// concurrently with an append.
#[derive(Debug)]
pub struct BlockFile {
    file: File,
    path: PathBuf,
    index: RwLock<Index>,
    append_lock: Mutex<()>,
    sync: bool,
}

#[derive(Debug, Clone)]
struct Index {
    /// Offset of each block's frame; index = block number.
    offsets: Vec<u64>,
    end: u64,
}

enum Frame {
    Ok { number: u64, len: usize },
    Bad(String),
}

fn read_frame(file: &File, offset: u64, file_len: u64) -> std::io::Result<Frame> {
    if file_len - offset < HEADER_LEN as u64 {
        return Ok(Frame::Bad("incomplete frame header".into()));
    }
    let mut h = [0u8; HEADER_LEN];
    file.read_exact_at(&mut h, offset)?;
    if &h[0..4] != MAGIC {
        return Ok(Frame::Bad("bad magic".into()));
    }
    let number = u64::from_le_bytes(h[4..12].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(h[12..16].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(h[16..20].try_into().unwrap_or_default());
    if len > MAX_RECORD || offset + (HEADER_LEN + len) as u64 > file_len {
        return Ok(Frame::Bad("frame runs past the end of the file".into()));
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, offset + HEADER_LEN as u64)?;
    if frame_crc(number, &payload) != crc {
        return Ok(Frame::Bad("CRC mismatch".into()));
    }
    Ok(Frame::Ok { number, len })
}

fn frame_crc(number: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&number.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Whether a valid frame for block `number` starts anywhere after `from`.
fn valid_frame_after(file: &File, from: u64, file_len: u64, number: u64) -> std::io::Result<bool> {
    let mut buf = Vec::new();
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(from))?;
    f.read_to_end(&mut buf)?;
    let mut i = 1;
    while i + 4 <= buf.len() {
        if &buf[i..i + 4] == MAGIC {
            let off = from + i as u64;
            if let Frame::Ok { number: n, .. } = read_frame(file, off, file_len)?
                && n >= number
            {
                return Ok(true);
            }
        }
        i += 1;
    }
    Ok(false)
}

impl BlockFile {
    /// Opens (creating if missing) the block file at `path`, recovering a torn
    /// tail. `sync = false` skips fsync (tests and benchmarks of the
    /// non-durable mode only).
    pub fn open(path: &Path, sync: bool) -> Result<(Self, Recovery), BlockFileError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let file_len = file.metadata()?.len();
        let mut offsets = Vec::new();
        let mut off = 0u64;
        let mut recovery = Recovery::default();
        while off < file_len {
            let expected = offsets.len() as u64;
            match read_frame(&file, off, file_len)? {
                Frame::Ok { number, len } if number == expected => {
                    offsets.push(off);
                    off += (HEADER_LEN + len) as u64;
                }
                Frame::Ok { number, .. } => {
                    return Err(BlockFileError::Corrupt {
                        number: expected,
                        offset: off,
                        reason: format!("found block {number}"),
                    });
                }
                Frame::Bad(reason) => {
                    if valid_frame_after(&file, off, file_len, expected)? {
                        return Err(BlockFileError::Corrupt {
                            number: expected,
                            offset: off,
                            reason,
                        });
                    }
                    tracing::warn!(
                        block = expected,
                        offset = off,
                        lost_bytes = file_len - off,
                        %reason,
                        "torn write at the end of the block file; truncating"
                    );
                    file.set_len(off)?;
                    file.sync_all()?;
                    recovery.truncated_bytes = file_len - off;
                    break;
                }
            }
        }
        let end = file.metadata()?.len();
        Ok((
            Self {
                file,
                path: path.to_path_buf(),
                index: RwLock::new(Index { offsets, end }),
                append_lock: Mutex::new(()),
                sync,
            },
            recovery,
        ))
    }

    /// The path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn index(&self) -> Index {
        match self.index.read() {
            Ok(i) => i.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn offset_of(&self, number: u64) -> Option<(u64, u64)> {
        let idx = match self.index.read() {
            Ok(i) => i,
            Err(p) => p.into_inner(),
        };
        let i = usize::try_from(number).ok()?;
        let off = *idx.offsets.get(i)?;
        let next = idx.offsets.get(i + 1).copied().unwrap_or(idx.end);
        Some((off, next))
    }

    /// Number of blocks stored.
    pub fn len(&self) -> u64 {
        match self.index.read() {
            Ok(i) => i.offsets.len() as u64,
            Err(p) => p.into_inner().offsets.len() as u64,
        }
    }

    /// Whether no block is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends block `number` (must be the next one) and, when durable, waits
    /// for `fdatasync`. When this returns `Ok` the block survives a crash.
    pub fn append(&self, number: u64, payload: &[u8]) -> Result<(), BlockFileError> {
        let _guard = match self.append_lock.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let Index { offsets, end } = self.index();
        if number != offsets.len() as u64 {
            return Err(BlockFileError::OutOfOrder {
                got: number,
                want: offsets.len() as u64,
            });
        }
        if payload.len() > MAX_RECORD {
            return Err(BlockFileError::TooLarge(payload.len()));
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(MAGIC);
        frame.extend_from_slice(&number.to_le_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&frame_crc(number, payload).to_le_bytes());
        frame.extend_from_slice(payload);
        let written = self.file.write_all_at(&frame, end).and_then(|()| {
            if self.sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            // Undo a partial append so the file stays well-formed.
            let _ = self.file.set_len(end);
            return Err(e.into());
        }
        let mut idx = match self.index.write() {
            Ok(i) => i,
            Err(p) => p.into_inner(),
        };
        idx.offsets.push(end);
        idx.end = end + frame.len() as u64;
        Ok(())
    }

    /// Reads block `number`'s payload, checking its frame CRC.
    pub fn read(&self, number: u64) -> Result<Vec<u8>, BlockFileError> {
        let (off, next) = self
            .offset_of(number)
            .ok_or(BlockFileError::NoSuchBlock(number))?;
        let mut h = [0u8; HEADER_LEN];
        self.file.read_exact_at(&mut h, off)?;
        let corrupt = |reason: &str| BlockFileError::Corrupt {
            number,
            offset: off,
            reason: reason.to_string(),
        };
        if &h[0..4] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let n = u64::from_le_bytes(h[4..12].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(h[12..16].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(h[16..20].try_into().unwrap_or_default());
        if n != number {
            return Err(corrupt("wrong block number in frame"));
        }
        if len > MAX_RECORD || off + (HEADER_LEN + len) as u64 != next {
            return Err(corrupt("bad frame length"));
        }
        let mut payload = vec![0u8; len];
        self.file
            .read_exact_at(&mut payload, off + HEADER_LEN as u64)?;
        if frame_crc(number, &payload) != crc {
            return Err(corrupt("CRC mismatch"));
        }
        Ok(payload)
    }

    /// Byte range `(offset, len)` of block `number`'s payload in the file
    /// (used by tamper tests).
    pub fn payload_range(&self, number: u64) -> Option<(u64, u64)> {
        let (off, next) = self.offset_of(number)?;
        Some((off + HEADER_LEN as u64, next - off - HEADER_LEN as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn payload(i: u64) -> Vec<u8> {
        format!("block-{i}-").repeat(10 + i as usize).into_bytes()
    }

    #[test]
    fn append_reopen_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blocks");
        {
            let (f, r) = BlockFile::open(&p, true).unwrap();
            assert_eq!(r, Recovery::default());
            for i in 0..20 {
                f.append(i, &payload(i)).unwrap();
            }
            assert!(matches!(
                f.append(7, b"x"),
                Err(BlockFileError::OutOfOrder { got: 7, want: 20 })
            ));
        }
        let (f, r) = BlockFile::open(&p, true).unwrap();
        assert_eq!(r.truncated_bytes, 0);
        assert_eq!(f.len(), 20);
        for i in 0..20 {
            assert_eq!(f.read(i).unwrap(), payload(i));
        }
        assert!(matches!(f.read(20), Err(BlockFileError::NoSuchBlock(20))));
    }

    #[test]
    fn torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blocks");
        let full_len;
        {
            let (f, _) = BlockFile::open(&p, true).unwrap();
            for i in 0..5 {
                f.append(i, &payload(i)).unwrap();
            }
            full_len = std::fs::metadata(&p).unwrap().len();
        }
        // Cut the last frame in the middle, as a crash during write would.
        let (_, last_len) = {
            let (f, _) = BlockFile::open(&p, true).unwrap();
            f.payload_range(4).unwrap()
        };
        let cut = full_len - last_len / 2;
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (f, r) = BlockFile::open(&p, true).unwrap();
        assert_eq!(f.len(), 4);
        assert!(r.truncated_bytes > 0);
        for i in 0..4 {
            assert_eq!(f.read(i).unwrap(), payload(i));
        }
        // The ledger goes on from there.
        f.append(4, b"again").unwrap();
        drop(f);
        let (f, r) = BlockFile::open(&p, true).unwrap();
        assert_eq!(r.truncated_bytes, 0);
        assert_eq!(f.read(4).unwrap(), b"again");

        // Garbage (zeros) appended after the last frame is also a torn tail.
        let mut raw = OpenOptions::new().append(true).open(&p).unwrap();
        raw.write_all(&[0u8; 37]).unwrap();
        drop(raw);
        let (f, r) = BlockFile::open(&p, true).unwrap();
        assert_eq!((f.len(), r.truncated_bytes), (5, 37));
    }

    #[test]
    fn corruption_in_the_middle_is_reported_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blocks");
        let (f, _) = BlockFile::open(&p, true).unwrap();
        for i in 0..6 {
            f.append(i, &payload(i)).unwrap();
        }
        let (off, _) = f.payload_range(2).unwrap();
        let before = std::fs::metadata(&p).unwrap().len();
        let raw = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut b = [0u8; 1];
        raw.read_exact_at(&mut b, off + 3).unwrap();
        raw.write_all_at(&[b[0] ^ 0x01], off + 3).unwrap();
        assert!(matches!(
            f.read(2),
            Err(BlockFileError::Corrupt { number: 2, .. })
        ));
        drop(f);
        match BlockFile::open(&p, true) {
            Err(BlockFileError::Corrupt { number, .. }) => assert_eq!(number, 2),
            other => panic!("expected corruption at block 2, got {other:?}"),
        }
        assert_eq!(std::fs::metadata(&p).unwrap().len(), before);
    }
}
