//! Durable file writes: temp file, fsync, rename, fsync of the directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{BlobError, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp-file name unique within this machine for the life of the process.
pub(crate) fn temp_path(tmp_dir: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    tmp_dir.join(format!("{}-{n}.tmp", std::process::id()))
}

/// Fsyncs a directory so a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BlobError::io("fsync directory", dir))
}

/// Writes `data` to `dest` atomically: readers see the old file or the whole new one, never a
/// part. With `durable`, the data and the rename are fsynced.
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, data: &[u8], durable: bool) -> Result<()> {
    let tmp = temp_path(tmp_dir);
    let result = (|| {
        let mut f = File::create(&tmp).map_err(BlobError::io("create", &tmp))?;
        f.write_all(data).map_err(BlobError::io("write", &tmp))?;
        if durable {
            f.sync_all().map_err(BlobError::io("fsync", &tmp))?;
        }
        drop(f);
        fs::rename(&tmp, dest).map_err(BlobError::io("rename into place", dest))?;
        if durable && let Some(parent) = dest.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and parents) if missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(BlobError::io("create directory", dir))
}
