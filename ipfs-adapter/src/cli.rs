//! `ehr blob …`: the blob store on the command line.
//!
//! The `ehr` binary (gateway crate) embeds [`BlobCommand`] as a subcommand and calls [`run`].
//! `ehr blob cid FILE` prints exactly what `ipfs add --only-hash -Q` prints with the same
//! `--cid-version`, `--raw-leaves` and `--chunker` flags (defaults here: CIDv1, raw leaves,
//! `size-262144`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use tokio_util::io::ReaderStream;

use crate::embedded::EmbeddedStore;
use crate::error::BlobError;
use crate::import::cid_of_stream;
use crate::kubo::{KuboConfig, KuboStore};
use crate::params::{Chunker, CidVersion, ImportParams};
use crate::store::{BlobStore, ByteStream, PutOptions};
use crate::verify::parse_cid;

/// Read size when streaming a file in.
const READ_BUF: usize = 256 * 1024;

/// The flags of `ipfs add` that decide a CID.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// CID version: 0 (`Qm…`, dag-pb leaves unless --raw-leaves) or 1 (`bafy…`/`bafk…`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub cid_version: u8,
    /// Raw leaves (`--raw-leaves=true|false`); defaults to true with CIDv1, false with CIDv0.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub raw_leaves: Option<bool>,
    /// Chunker, `size-N` with 1 <= N <= 1048576.
    #[arg(long, default_value = "size-262144")]
    pub chunker: String,
}

impl ImportArgs {
    /// The import parameters these flags mean, as Kubo reads them.
    pub fn params(&self) -> Result<ImportParams, BlobError> {
        let version = CidVersion::try_from(self.cid_version)?;
        let chunker: Chunker = self.chunker.parse()?;
        let mut params = ImportParams::for_version(version).with_chunker(chunker);
        if let Some(raw) = self.raw_leaves {
            params = params.with_raw_leaves(raw);
        }
        Ok(params)
    }
}

/// Which store a command talks to.
#[derive(Debug, Clone, clap::Args)]
pub struct BackendArgs {
    /// Kubo RPC API URL (e.g. http://127.0.0.1:5001); without it, the embedded store is used.
    #[arg(long, env = "EHR_IPFS_API")]
    pub api: Option<String>,
    /// Directory of the embedded store.
    #[arg(long, env = "EHR_BLOB_STORE", default_value = ".ehr/blobs")]
    pub store: PathBuf,
    /// Limit in seconds for each call to the IPFS node.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_secs: u64,
}

impl BackendArgs {
    async fn open(&self) -> Result<Arc<dyn BlobStore>, CliError> {
        Ok(match &self.api {
            Some(url) => {
                let mut cfg = KuboConfig::new(url.clone());
                cfg.timeout = std::time::Duration::from_secs(self.timeout_secs);
                Arc::new(KuboStore::new(cfg)?)
            }
            None => Arc::new(EmbeddedStore::open(&self.store).await?),
        })
    }
}

/// `ehr blob …` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BlobCommand {
    /// Print FILE's CID exactly as `ipfs add --only-hash -Q` does; stores nothing.
    Cid {
        /// The file to hash.
        file: PathBuf,
        #[command(flatten)]
        import: ImportArgs,
    },
    /// Store FILE and print its CID.
    Put {
        /// The file to store.
        file: PathBuf,
        #[command(flatten)]
        import: ImportArgs,
        /// Do not pin (the blob can then be garbage-collected).
        #[arg(long)]
        no_pin: bool,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Write a blob to --output (or standard output), verifying every block.
    Get {
        /// The blob's CID.
        cid: String,
        /// Output file (written to FILE.part, renamed when complete and verified).
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Without CID: rehash every block of the embedded store and check pinned DAGs are
    /// complete. With CID: read that blob through, verifying every block.
    Verify {
        /// A blob to read through instead of checking the whole store.
        cid: Option<String>,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Pin a blob (all its blocks must be present).
    Pin {
        /// The blob's CID.
        cid: String,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Remove a blob's pin.
    Unpin {
        /// The blob's CID.
        cid: String,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Print a blob's size and pin state as JSON.
    Stat {
        /// The blob's CID.
        cid: String,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Remove every block not reachable from a pin.
    Gc {
        #[command(flatten)]
        backend: BackendArgs,
    },
}

/// What can go wrong running a blob command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A local file could not be read or written.
    #[error("{op} {path}: {source}")]
    File {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing to the output failed.
    #[error("writing output: {0}")]
    Output(#[source] std::io::Error),
    /// `verify` found problems.
    #[error("verification failed: {0}")]
    VerifyFailed(String),
}

async fn open_input(path: &Path) -> Result<ByteStream, CliError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|source| CliError::File {
            op: "open",
            path: path.to_owned(),
            source,
        })?;
    let meta = file.metadata().await.map_err(|source| CliError::File {
        op: "stat",
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() {
        return Err(CliError::File {
            op: "read",
            path: path.to_owned(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    Ok(Box::pin(ReaderStream::with_capacity(file, READ_BUF)))
}

fn line(out: &mut (dyn Write + Send), text: &str) -> Result<(), CliError> {
    writeln!(out, "{text}").map_err(CliError::Output)
}

/// Runs one `ehr blob` command, writing its result to `out`.
pub async fn run(cmd: BlobCommand, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    match cmd {
        BlobCommand::Cid { file, import } => {
            let params = import.params()?;
            let blob = cid_of_stream(open_input(&file).await?, params).await?;
            line(out, &blob.cid.to_string())
        }
        BlobCommand::Put {
            file,
            import,
            no_pin,
            backend,
        } => {
            let params = import.params()?;
            let input = open_input(&file).await?;
            let store = backend.open().await?;
            let blob = store
                .put(
                    input,
                    PutOptions {
                        params,
                        pin: !no_pin,
                    },
                )
                .await?;
            line(out, &blob.cid.to_string())
        }
        BlobCommand::Get {
            cid,
            output,
            backend,
        } => {
            let cid = parse_cid(&cid)?;
            let store = backend.open().await?;
            let stream = store.get(&cid).await?;
            match output {
                None => write_stream(stream, out).await,
                Some(path) => write_file(stream, &path).await,
            }
        }
        BlobCommand::Verify { cid, backend } => match cid {
            Some(cid) => {
                let cid = parse_cid(&cid)?;
                let store = backend.open().await?;
                let mut stream = store.get(&cid).await?;
                let mut bytes = 0u64;
                while let Some(chunk) = stream.next().await {
                    bytes += chunk?.len() as u64;
                }
                line(out, &format!("{cid}: ok, {bytes} bytes verified"))
            }
            None => {
                if backend.api.is_some() {
                    return Err(BlobError::InvalidInput(
                        "verifying a whole store needs the embedded store; give a CID to verify \
                         one blob on an IPFS node"
                            .into(),
                    )
                    .into());
                }
                let store = EmbeddedStore::open(&backend.store).await?;
                let report = store.verify().await?;
                let summary = format!(
                    "{} blocks, {} bytes rehashed; {} corrupt, {} unknown files, {} missing blocks",
                    report.blocks,
                    report.bytes,
                    report.corrupt.len(),
                    report.unknown.len(),
                    report.missing.len()
                );
                for p in &report.corrupt {
                    line(out, &format!("corrupt: {}", p.display()))?;
                }
                for p in &report.unknown {
                    line(out, &format!("unknown: {}", p.display()))?;
                }
                for (pin, block) in &report.missing {
                    line(out, &format!("missing: {block} (of pin {pin})"))?;
                }
                if report.is_ok() {
                    line(out, &format!("ok: {summary}"))
                } else {
                    Err(CliError::VerifyFailed(summary))
                }
            }
        },
        BlobCommand::Pin { cid, backend } => {
            let cid = parse_cid(&cid)?;
            backend.open().await?.pin(&cid).await?;
            line(out, &format!("pinned {cid}"))
        }
        BlobCommand::Unpin { cid, backend } => {
            let cid = parse_cid(&cid)?;
            let was = backend.open().await?.unpin(&cid).await?;
            line(
                out,
                &if was {
                    format!("unpinned {cid}")
                } else {
                    format!("{cid} was not pinned")
                },
            )
        }
        BlobCommand::Stat { cid, backend } => {
            let cid = parse_cid(&cid)?;
            let st = backend.open().await?.stat(&cid).await?;
            let json = serde_json::json!({
                "cid": st.cid.to_string(),
                "size": st.size,
                "root_block_size": st.root_block_size,
                "pinned": st.pinned,
            });
            line(out, &json.to_string())
        }
        BlobCommand::Gc { backend } => {
            let report = backend.open().await?.gc().await?;
            let freed = report
                .freed_bytes
                .map(|b| format!(", {b} bytes freed"))
                .unwrap_or_default();
            line(
                out,
                &format!("removed {} blocks{freed}", report.removed_blocks),
            )
        }
    }
}

async fn write_stream(
    mut stream: crate::walk::BlobStream,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk?).map_err(CliError::Output)?;
    }
    out.flush().map_err(CliError::Output)
}

async fn write_file(mut stream: crate::walk::BlobStream, path: &Path) -> Result<(), CliError> {
    use tokio::io::AsyncWriteExt;
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let file_err = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| CliError::File {
            op,
            path: p,
            source,
        }
    };
    let result = async {
        let mut f = tokio::fs::File::create(&part)
            .await
            .map_err(file_err("create", &part))?;
        while let Some(chunk) = stream.next().await {
            f.write_all(&chunk?)
                .await
                .map_err(file_err("write", &part))?;
        }
        f.sync_all().await.map_err(file_err("fsync", &part))?;
        drop(f);
        tokio::fs::rename(&part, path)
            .await
            .map_err(file_err("rename", path))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&part).await;
    }
    result
}
