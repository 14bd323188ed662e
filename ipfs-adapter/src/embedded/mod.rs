//! The embedded backend: a filesystem blockstore with Kubo-identical CIDs and no daemon.
//!
//! Layout under the store's directory:
//! - `blocks/<xy>/<multihash hex>`: one file per block, keyed by multihash (so the CIDv0 and
//!   CIDv1 of a node share it), sharded by the two hex digits before the last one, like
//!   Kubo's `next-to-last/2` flatfs;
//! - `pins.json`: the recursive pin set;
//! - `tmp/`: temp files of writes in progress (cleared by garbage collection).
//!
//! Every file is written atomically (temp, fsync, rename, fsync of the directory). Several
//! processes may share a store (e.g. `ehr up` and an operator's `ehr blob gc`): writers hold a
//! shared `flock` on the `lock` file and garbage collection an exclusive one, so a collection
//! never removes the blocks of a `put` still in progress in another process.

mod fsutil;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use multihash::Multihash;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, OwnedRwLockReadGuard, RwLock, mpsc};

use crate::error::{BlobError, Result};
use crate::import::{Blob, Block, Importer};
use crate::store::{BlobStat, BlobStore, ByteStream, GcReport, PutOptions, file_size_of_root};
use crate::verify::{SHA2_256, check_supported, verify_block};
use crate::walk::{BlobStream, BlockSource, block_links, open_verified};

const PINS_FILE: &str = "pins.json";
const LOCK_FILE: &str = "lock";
const PINS_LOCK_FILE: &str = "pins.lock";
/// Blocks queued between the importer and the writer thread.
const WRITE_QUEUE: usize = 8;

/// Options of the embedded store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Fsync every block and directory (default true). Off is only for throwaway stores.
    pub durable: bool,
    /// Blocks read ahead (and verified in parallel) by `get`.
    pub read_ahead: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            durable: true,
            read_ahead: 4,
        }
    }
}

/// What [`EmbeddedStore::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blocks rehashed.
    pub blocks: u64,
    /// Bytes rehashed.
    pub bytes: u64,
    /// Block files whose bytes do not hash to their name.
    pub corrupt: Vec<PathBuf>,
    /// Files in `blocks/` whose name is not a sha2-256 multihash.
    pub unknown: Vec<PathBuf>,
    /// Blocks missing from pinned DAGs, as (pin, missing block).
    pub missing: Vec<(Cid, Cid)>,
}

impl VerifyReport {
    /// True when nothing is corrupt, unknown or missing.
    pub fn is_ok(&self) -> bool {
        self.corrupt.is_empty() && self.unknown.is_empty() && self.missing.is_empty()
    }
}

#[derive(Serialize, Deserialize, Default)]
struct PinFile {
    recursive: Vec<String>,
}

struct Inner {
    root: PathBuf,
    blocks: PathBuf,
    tmp: PathBuf,
    opts: EmbeddedOptions,
    pins: Mutex<BTreeSet<Cid>>,
    /// Writers (put, pin) hold it shared; garbage collection holds it exclusively.
    gc_lock: Arc<RwLock<()>>,
    lock_path: PathBuf,
}

/// What a writer holds: the in-process GC lock (shared) and the cross-process `flock` (shared).
type WriteGuards = (OwnedRwLockReadGuard<()>, std::fs::File);

/// The embedded filesystem blockstore. Cheap to clone (shared state).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

/// The file name of a block: lowercase hex of its multihash.
fn block_key(mh: &Multihash<64>) -> String {
    hex::encode(mh.to_bytes())
}

impl Inner {
    fn block_path(&self, mh: &Multihash<64>) -> PathBuf {
        let key = block_key(mh);
        // next-to-last/2 sharding: the two characters before the last one.
        let shard = &key[key.len() - 3..key.len() - 1];
        self.blocks.join(shard).join(key)
    }

    /// Writes one block unless an intact copy is already there (a corrupt copy is replaced, so
    /// storing a file again repairs it).
    fn write_block(&self, block: &Block) -> Result<()> {
        let path = self.block_path(block.cid.hash());
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.len() == block.data.len() as u64
            && std::fs::read(&path).is_ok_and(|old| old == block.data)
        {
            return Ok(());
        }
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            fsutil::ensure_dir(dir)?;
            if self.opts.durable {
                fsutil::sync_dir(&self.blocks)?;
            }
        }
        fsutil::write_atomic(&self.tmp, &path, &block.data, self.opts.durable)
    }

    fn read_block_sync(&self, cid: &Cid) -> Result<Vec<u8>> {
        let path = self.block_path(cid.hash());
        match std::fs::read(&path) {
            Ok(data) => Ok(data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(*cid)),
            Err(e) => Err(BlobError::io("read block", path)(e)),
        }
    }

    /// Every block reachable from `roots`, as block keys. Verifies each dag-pb block it decodes;
    /// fails rather than guess when a pinned DAG is missing or corrupt.
    fn reachable(&self, roots: &[Cid]) -> Result<HashSet<String>> {
        let mut live = HashSet::new();
        let mut stack: Vec<Cid> = roots.to_vec();
        while let Some(cid) = stack.pop() {
            if !live.insert(block_key(cid.hash())) {
                continue;
            }
            if cid.codec() == crate::verify::RAW_CODEC {
                if !self.block_path(cid.hash()).exists() {
                    return Err(BlobError::NotFound(cid));
                }
                continue;
            }
            let data = self.read_block_sync(&cid)?;
            verify_block(&cid, &data)?;
            stack.extend(block_links(&cid, &data)?);
        }
        Ok(live)
    }

    fn save_pins(&self, pins: &BTreeSet<Cid>) -> Result<()> {
        let file = PinFile {
            recursive: pins.iter().map(Cid::to_string).collect(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| BlobError::Task(format!("encoding the pin set: {e}")))?;
        fsutil::write_atomic(
            &self.tmp,
            &self.root.join(PINS_FILE),
            &json,
            self.opts.durable,
        )
    }

    /// Takes the cross-process store lock: shared for writers, exclusive for garbage
    /// collection. Released when the returned file is dropped.
    fn flock(&self, exclusive: bool) -> Result<std::fs::File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(BlobError::io("open", &self.lock_path))?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .map_err(BlobError::io("lock", &self.lock_path))?;
        Ok(file)
    }

    fn block_files(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        let shards = match std::fs::read_dir(&self.blocks) {
            Ok(d) => d,
            Err(e) => return Err(BlobError::io("list", &self.blocks)(e)),
        };
        for shard in shards {
            let shard = shard.map_err(BlobError::io("list", &self.blocks))?;
            let shard_path = shard.path();
            if !shard_path.is_dir() {
                files.push(shard_path);
                continue;
            }
            for f in std::fs::read_dir(&shard_path).map_err(BlobError::io("list", &shard_path))? {
                files.push(f.map_err(BlobError::io("list", &shard_path))?.path());
            }
        }
        files.sort();
        Ok(files)
    }
}

/// Reads the pin set; a missing file is an empty set.
fn load_pins(path: &Path) -> Result<BTreeSet<Cid>> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(BlobError::io("read", path)(e)),
    };
    let file: PinFile = serde_json::from_slice(&raw).map_err(|e| {
        BlobError::InvalidInput(format!("{} is not a pin set: {e}", path.display()))
    })?;
    file.recursive
        .iter()
        .map(|s| crate::verify::parse_cid(s))
        .collect()
}

/// The sha2-256 multihash a block file's name spells, if it does.
fn key_to_multihash(path: &Path) -> Option<Multihash<64>> {
    let name = path.file_name()?.to_str()?;
    let bytes = hex::decode(name).ok()?;
    let mh = Multihash::<64>::from_bytes(&bytes).ok()?;
    (mh.code() == SHA2_256 && mh.size() == 32).then_some(mh)
}

#[async_trait]
impl BlockSource for Inner {
    async fn fetch_block(&self, cid: Cid) -> Result<Bytes> {
        let path = self.block_path(cid.hash());
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(cid)),
            Err(e) => Err(BlobError::io("read block", path)(e)),
        }
    }

    fn read_ahead(&self) -> usize {
        self.opts.read_ahead
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` with default options.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(dir, EmbeddedOptions::default()).await
    }

    /// Opens (creating if needed) the store in `dir`.
    pub async fn open_with(dir: impl Into<PathBuf>, opts: EmbeddedOptions) -> Result<Self> {
        let root: PathBuf = dir.into();
        let blocks = root.join("blocks");
        let tmp = root.join("tmp");
        let pins_path = root.join(PINS_FILE);
        let lock_path = root.join(LOCK_FILE);
        let (b, t) = (blocks.clone(), tmp.clone());
        let pins = tokio::task::spawn_blocking(move || -> Result<BTreeSet<Cid>> {
            fsutil::ensure_dir(&b)?;
            fsutil::ensure_dir(&t)?;
            load_pins(&pins_path)
        })
        .await??;
        tracing::debug!(root = %root.display(), pins = pins.len(), "opened embedded blob store");
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                root,
                blocks,
                tmp,
                opts,
                pins: Mutex::new(pins),
                gc_lock: Arc::new(RwLock::new(())),
                lock_path,
            }),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The file holding the block named `cid` (for operators and corruption tests).
    pub fn block_path(&self, cid: &Cid) -> PathBuf {
        self.inner.block_path(cid.hash())
    }

    /// The pinned CIDs.
    pub async fn pins(&self) -> Vec<Cid> {
        self.inner.pins.lock().await.iter().copied().collect()
    }

    /// Rehashes every block of the store and checks that every pinned DAG is complete.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let inner = Arc::clone(&self.inner);
        let pins = self.pins().await;
        tokio::task::spawn_blocking(move || {
            let mut report = VerifyReport::default();
            for path in inner.block_files()? {
                let Some(mh) = key_to_multihash(&path) else {
                    report.unknown.push(path);
                    continue;
                };
                let data = std::fs::read(&path).map_err(BlobError::io("read block", &path))?;
                report.blocks += 1;
                report.bytes += data.len() as u64;
                if Sha256::digest(&data).as_slice() != mh.digest() {
                    report.corrupt.push(path);
                }
            }
            for pin in pins {
                let mut stack = vec![pin];
                let mut seen = HashSet::new();
                while let Some(cid) = stack.pop() {
                    if !seen.insert(cid) {
                        continue;
                    }
                    if cid.codec() == crate::verify::RAW_CODEC {
                        if !inner.block_path(cid.hash()).exists() {
                            report.missing.push((pin, cid));
                        }
                        continue;
                    }
                    match inner.read_block_sync(&cid) {
                        Ok(data) => {
                            if verify_block(&cid, &data).is_ok() {
                                stack.extend(block_links(&cid, &data).unwrap_or_default());
                            }
                        }
                        Err(BlobError::NotFound(_)) => report.missing.push((pin, cid)),
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(report)
        })
        .await?
    }

    async fn flock(&self, exclusive: bool) -> Result<std::fs::File> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.flock(exclusive)).await?
    }

    /// Read-modify-write of the pin set under an exclusive `flock` of `pins.lock`, starting from
    /// what is on disk (another process may have changed it). Returns whether it changed.
    async fn update_pins(&self, cid: Cid, add: bool) -> Result<bool> {
        let mut pins = self.inner.pins.lock().await;
        let inner = Arc::clone(&self.inner);
        let (changed, now) =
            tokio::task::spawn_blocking(move || -> Result<(bool, BTreeSet<Cid>)> {
                let lock_path = inner.root.join(PINS_LOCK_FILE);
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(BlobError::io("open", &lock_path))?;
                lock.lock().map_err(BlobError::io("lock", &lock_path))?;
                let mut set = load_pins(&inner.root.join(PINS_FILE))?;
                let changed = if add {
                    set.insert(cid)
                } else {
                    set.remove(&cid)
                };
                if changed {
                    inner.save_pins(&set)?;
                }
                Ok((changed, set))
            })
            .await??;
        *pins = now;
        Ok(changed)
    }

    /// Re-reads `pins.json` (another process sharing the store may have changed it).
    async fn reload_pins(&self) -> Result<()> {
        let path = self.inner.root.join(PINS_FILE);
        let pins = tokio::task::spawn_blocking(move || load_pins(&path)).await??;
        *self.inner.pins.lock().await = pins;
        Ok(())
    }

    /// Imports `data` and writes its blocks on a blocking thread, which keeps `guards` (the
    /// write locks) until its last write.
    async fn write_blocks(
        &self,
        data: ByteStream,
        opts: PutOptions,
        guards: Arc<WriteGuards>,
    ) -> Result<Blob> {
        let (tx, mut rx) = mpsc::channel::<Block>(WRITE_QUEUE);
        let inner = Arc::clone(&self.inner);
        let writer = tokio::task::spawn_blocking(move || -> Result<()> {
            let _held = guards;
            while let Some(block) = rx.blocking_recv() {
                inner.write_block(&block)?;
            }
            Ok(())
        });
        let imported = async {
            let mut importer = Importer::new(opts.params);
            let mut ready: Vec<Block> = Vec::new();
            let mut data = data;
            while let Some(chunk) = data.next().await {
                let chunk = chunk.map_err(BlobError::Input)?;
                importer.push(&chunk, &mut |b| {
                    ready.push(b);
                    Ok::<(), BlobError>(())
                })?;
                for b in ready.drain(..) {
                    if tx.send(b).await.is_err() {
                        return Ok(None); // the writer failed; its error is reported below
                    }
                }
            }
            let blob = importer.finish(&mut |b| {
                ready.push(b);
                Ok::<(), BlobError>(())
            })?;
            for b in ready.drain(..) {
                if tx.send(b).await.is_err() {
                    return Ok(None);
                }
            }
            Ok::<_, BlobError>(Some(blob))
        }
        .await;
        drop(tx);
        let written = writer.await?;
        match (imported?, written) {
            (_, Err(e)) => Err(e),
            (Some(blob), Ok(())) => Ok(blob),
            (None, Ok(())) => Err(BlobError::Task("block writer stopped early".to_owned())),
        }
    }
}

#[async_trait]
impl BlobStore for EmbeddedStore {
    async fn put(&self, data: ByteStream, opts: PutOptions) -> Result<Blob> {
        // Both locks are shared with the writer thread, so they last until its last write even
        // if this future is dropped, and here until the pin is recorded.
        let guards = Arc::new((
            Arc::clone(&self.inner.gc_lock).read_owned().await,
            self.flock(false).await?,
        ));
        let blob = self.write_blocks(data, opts, Arc::clone(&guards)).await?;
        if opts.pin {
            self.update_pins(blob.cid, true).await?;
        }
        tracing::debug!(cid = %blob.cid, size = blob.size, pinned = opts.pin, "stored blob");
        Ok(blob)
    }

    async fn get(&self, cid: &Cid) -> Result<BlobStream> {
        open_verified(Arc::clone(&self.inner), *cid).await
    }

    async fn pin(&self, cid: &Cid) -> Result<()> {
        check_supported(cid)?;
        let _writing = self.inner.gc_lock.read().await;
        let _flock = self.flock(false).await?;
        let inner = Arc::clone(&self.inner);
        let root = *cid;
        tokio::task::spawn_blocking(move || inner.reachable(&[root])).await??;
        self.update_pins(*cid, true).await?;
        Ok(())
    }

    async fn unpin(&self, cid: &Cid) -> Result<bool> {
        self.update_pins(*cid, false).await
    }

    async fn has(&self, cid: &Cid) -> Result<bool> {
        check_supported(cid)?;
        let path = self.inner.block_path(cid.hash());
        Ok(tokio::fs::try_exists(&path)
            .await
            .map_err(BlobError::io("stat", path))?)
    }

    async fn stat(&self, cid: &Cid) -> Result<BlobStat> {
        check_supported(cid)?;
        let block = self.inner.fetch_block(*cid).await?;
        verify_block(cid, &block)?;
        let size = file_size_of_root(cid, &block)?;
        let pinned = self.inner.pins.lock().await.contains(cid);
        Ok(BlobStat {
            cid: *cid,
            size,
            root_block_size: block.len() as u64,
            pinned,
        })
    }

    async fn gc(&self) -> Result<GcReport> {
        let _exclusive = self.inner.gc_lock.write().await;
        let _flock = self.flock(true).await?;
        // Another process may have pinned something since we opened the store.
        self.reload_pins().await?;
        let pins = self.pins().await;
        let inner = Arc::clone(&self.inner);
        let report = tokio::task::spawn_blocking(move || -> Result<GcReport> {
            let live = inner.reachable(&pins)?;
            let mut report = GcReport {
                removed_blocks: 0,
                freed_bytes: Some(0),
            };
            for path in inner.block_files()? {
                let keep = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| live.contains(n));
                if keep || key_to_multihash(&path).is_none() {
                    continue;
                }
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(&path).map_err(BlobError::io("remove block", &path))?;
                report.removed_blocks += 1;
                report.freed_bytes = report.freed_bytes.map(|f| f + len);
            }
            // No write is in progress (we hold the lock): leftover temp files are garbage.
            if let Ok(entries) = std::fs::read_dir(&inner.tmp) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            Ok(report)
        })
        .await??;
        tracing::info!(
            removed = report.removed_blocks,
            "garbage-collected the embedded blob store"
        );
        Ok(report)
    }

    async fn check(&self) -> Result<()> {
        let blocks = self.inner.blocks.clone();
        tokio::fs::metadata(&blocks)
            .await
            .map(|_| ())
            .map_err(BlobError::io("stat", blocks))
    }
}
