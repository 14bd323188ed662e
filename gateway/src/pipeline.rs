//! The file pipelines: an upload body is encrypted chunk by chunk, hashed
//! (SHA-256 of the ciphertext) and streamed into the blob store; a download
//! spools the ciphertext from the store to a private temp file while hashing
//! it, checks the hash against the ledger, and only then decrypts it as a
//! stream. Memory stays bounded by a few chunks whatever the file size.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ehr_ipfs::{BlobError, BlobStore, ByteStream, Cid, PutOptions};
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::crypto::stream::{Decryptor, Dek, Encryptor, StreamError};

/// Pipeline failures.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("body larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the request body failed: {0}")]
    Body(String),
    #[error("blob store: {0}")]
    Store(#[from] BlobError),
    #[error("ciphertext hash mismatch: the stored blob is not the one recorded on-chain")]
    Integrity,
    #[error("decryption failed: {0}")]
    Crypto(#[from] StreamError),
    #[error("spool file: {0}")]
    Spool(#[from] io::Error),
}

/// What an encrypted upload produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub cid: Cid,
    /// Plaintext bytes read.
    pub plaintext_size: u64,
    /// Ciphertext bytes stored.
    pub ciphertext_size: u64,
    /// SHA-256 of the ciphertext, lowercase hex.
    pub sha256: String,
}

#[derive(Default)]
struct Tally {
    plaintext: u64,
    ciphertext: u64,
    hasher: Sha256,
    failure: Option<PipelineError>,
}

/// Encrypts `body` under `dek` and stores (and pins) the ciphertext.
/// Fails with [`PipelineError::TooLarge`] as soon as more than `limit`
/// plaintext bytes arrive; the partial blob is left unpinned.
pub async fn encrypt_into_store<S, E>(
    store: &dyn BlobStore,
    body: S,
    dek: &Dek,
    chunk_size: u32,
    limit: u64,
) -> Result<Stored, PipelineError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (enc, header) = Encryptor::new(dek, chunk_size)?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let t = tally.clone();
    let stream = async_stream::stream! {
        let mut enc = Some(enc);
        let mut body = Box::pin(body);
        {
            let mut t = lock(&t);
            t.hasher.update(header);
            t.ciphertext += header.len() as u64;
        }
        yield Ok(Bytes::copy_from_slice(&header));
        while let Some(item) = body.next().await {
            let chunk = match item {
                Ok(c) => c,
                Err(e) => {
                    lock(&t).failure = Some(PipelineError::Body(e.to_string()));
                    yield Err(io::Error::other("request body failed"));
                    return;
                }
            };
            let mut out = Vec::new();
            let res = {
                let mut t = lock(&t);
                t.plaintext += chunk.len() as u64;
                if t.plaintext > limit {
                    t.failure = Some(PipelineError::TooLarge { limit });
                    Err(io::Error::other("too large"))
                } else if let Some(e) = enc.as_mut() {
                    e.update(&chunk, &mut out).map_err(|err| {
                        t.failure = Some(PipelineError::Crypto(err));
                        io::Error::other("encryption failed")
                    })
                } else {
                    Ok(())
                }
            };
            if let Err(e) = res {
                yield Err(e);
                return;
            }
            if !out.is_empty() {
                {
                    let mut t = lock(&t);
                    t.hasher.update(&out);
                    t.ciphertext += out.len() as u64;
                }
                yield Ok(Bytes::from(out));
            }
        }
        let mut out = Vec::new();
        if let Some(Err(err)) = enc.take().map(|e| e.finish(&mut out)) {
            lock(&t).failure = Some(PipelineError::Crypto(err));
            yield Err(io::Error::other("encryption failed"));
            return;
        }
        {
            let mut t = lock(&t);
            t.hasher.update(&out);
            t.ciphertext += out.len() as u64;
        }
        yield Ok(Bytes::from(out));
    };
    let data: ByteStream = Box::pin(stream);
    let put = store
        .put(
            data,
            PutOptions {
                pin: true,
                ..Default::default()
            },
        )
        .await;
    let mut t = lock(&tally);
    if let Some(f) = t.failure.take() {
        return Err(f);
    }
    let blob = put?;
    let hasher = std::mem::take(&mut t.hasher);
    Ok(Stored {
        cid: blob.cid,
        plaintext_size: t.plaintext,
        ciphertext_size: t.ciphertext,
        sha256: hex::encode(hasher.finalize()),
    })
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // A poisoned tally only means another holder panicked; the data is
    // still consistent counters.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stores a small blob (e.g. a sealed key) pinned.
pub async fn put_small(store: &dyn BlobStore, bytes: Vec<u8>) -> Result<Cid, PipelineError> {
    let data: ByteStream = Box::pin(futures::stream::once(async move { Ok(Bytes::from(bytes)) }));
    Ok(store
        .put(
            data,
            PutOptions {
                pin: true,
                ..Default::default()
            },
        )
        .await?
        .cid)
}

/// Reads a small blob fully, refusing more than `limit` bytes.
pub async fn get_small(
    store: &dyn BlobStore,
    cid: &Cid,
    limit: usize,
) -> Result<Vec<u8>, PipelineError> {
    let mut s = store.get(cid).await?;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > limit {
            return Err(PipelineError::TooLarge {
                limit: limit as u64,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Fetches `cid` (each block verified by the store) into a private temp
/// file in `spool_dir` while hashing it; fails unless the SHA-256 equals
/// `expected_sha256` (hex).
pub async fn fetch_verified(
    store: &dyn BlobStore,
    cid: &Cid,
    expected_sha256: &str,
    spool_dir: &Path,
) -> Result<tokio::fs::File, PipelineError> {
    let mut s = store.get(cid).await?;
    tokio::fs::create_dir_all(spool_dir).await?;
    // Unlinked on creation: nothing is left behind whatever happens.
    let file = tempfile::tempfile_in(spool_dir)?;
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    let got = hasher.finalize();
    let want = hex::decode(expected_sha256).map_err(|_| PipelineError::Integrity)?;
    if got.as_slice() != want.as_slice() {
        return Err(PipelineError::Integrity);
    }
    use tokio::io::AsyncSeekExt;
    file.seek(io::SeekFrom::Start(0)).await?;
    Ok(file)
}

/// Decrypts a spooled ciphertext file as a stream of plaintext chunks. The
/// first chunk is decrypted before this returns, so a wrong key fails here
/// (before any response byte is sent).
pub async fn decrypt_file(
    mut file: tokio::fs::File,
    dek: &Dek,
) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static, PipelineError> {
    let mut dec = Decryptor::new(dek);
    let mut buf = vec![0u8; 64 * 1024];
    // Prime: read until the first plaintext appears or the file ends.
    let mut first = Vec::new();
    let mut eof = false;
    while first.is_empty() && !eof {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            eof = true;
        } else {
            dec.update(&buf[..n], &mut first)?;
        }
    }
    let mut dec = Some(dec);
    if eof && let Some(d) = dec.take() {
        d.finish(&mut first)?;
    }
    Ok(async_stream::stream! {
        if !first.is_empty() {
            yield Ok(Bytes::from(first));
        }
        while let Some(d) = dec.as_mut() {
            let n = match file.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => { yield Err(e); return; }
            };
            let mut out = Vec::new();
            let res = if n == 0 {
                dec.take().map(|d| d.finish(&mut out)).unwrap_or(Ok(()))
            } else {
                d.update(&buf[..n], &mut out)
            };
            if let Err(e) = res {
                tracing::error!(error = %e, "decryption failed mid-stream");
                yield Err(io::Error::other("decryption failed"));
                return;
            }
            if !out.is_empty() {
                yield Ok(Bytes::from(out));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ehr_ipfs::EmbeddedStore;

    fn body(
        data: Vec<u8>,
        piece: usize,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        let pieces: Vec<Result<Bytes, io::Error>> = data
            .chunks(piece)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(pieces)
    }

    async fn collect(s: impl Stream<Item = io::Result<Bytes>>) -> io::Result<Vec<u8>> {
        let mut s = Box::pin(s);
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn roundtrip_through_the_embedded_store() {
        let d = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(d.path().join("blobs")).await.unwrap();
        let dek = Dek::generate();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let st = encrypt_into_store(&store, body(data.clone(), 7777), &dek, 65536, 1 << 20)
            .await
            .unwrap();
        assert_eq!(st.plaintext_size, data.len() as u64);
        assert_eq!(
            st.ciphertext_size,
            crate::crypto::stream::ciphertext_len(data.len() as u64, 65536)
        );
        assert!(store.stat(&st.cid).await.unwrap().pinned);
        let f = fetch_verified(&store, &st.cid, &st.sha256, d.path())
            .await
            .unwrap();
        let out = collect(decrypt_file(f, &dek).await.unwrap()).await.unwrap();
        assert_eq!(out, data);
        // Empty file.
        let st0 = encrypt_into_store(&store, body(vec![], 1), &dek, 65536, 10)
            .await
            .unwrap();
        let f = fetch_verified(&store, &st0.cid, &st0.sha256, d.path())
            .await
            .unwrap();
        assert!(
            collect(decrypt_file(f, &dek).await.unwrap())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn limit_hash_mismatch_and_wrong_key() {
        let d = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(d.path().join("blobs")).await.unwrap();
        let dek = Dek::generate();
        let err = encrypt_into_store(&store, body(vec![1; 5000], 1000), &dek, 1024, 4096)
            .await
            .unwrap_err();
        assert!(
            matches!(err, PipelineError::TooLarge { limit: 4096 }),
            "{err}"
        );
        let st = encrypt_into_store(&store, body(vec![2; 5000], 1000), &dek, 1024, 1 << 20)
            .await
            .unwrap();
        let wrong = "00".repeat(32);
        assert!(matches!(
            fetch_verified(&store, &st.cid, &wrong, d.path()).await,
            Err(PipelineError::Integrity)
        ));
        let f = fetch_verified(&store, &st.cid, &st.sha256, d.path())
            .await
            .unwrap();
        assert!(matches!(
            decrypt_file(f, &Dek::generate()).await,
            Err(PipelineError::Crypto(_))
        ));
        // A body that fails mid-way is reported as a body error.
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(io::Error::other("client went away")),
        ]);
        assert!(matches!(
            encrypt_into_store(&store, failing, &dek, 1024, 1 << 20).await,
            Err(PipelineError::Body(_))
        ));
    }

    /// The same round trip against a real IPFS node when `IPFS_API_URL` is
    /// set (required under `CI=true`).
    #[tokio::test]
    async fn roundtrip_through_a_real_ipfs_node_when_available() {
        let Some(url) = crate::db::testdb::service_url("IPFS_API_URL", "http") else {
            return;
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let d = tempfile::tempdir().unwrap();
        let store = ehr_ipfs::KuboStore::new(ehr_ipfs::KuboConfig::new(url)).unwrap();
        let dek = Dek::generate();
        let data: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        let st = encrypt_into_store(&store, body(data.clone(), 65536), &dek, 65536, 1 << 20)
            .await
            .unwrap();
        let f = fetch_verified(&store, &st.cid, &st.sha256, d.path())
            .await
            .unwrap();
        let out = collect(decrypt_file(f, &dek).await.unwrap()).await.unwrap();
        assert_eq!(out, data);
        let small = put_small(&store, b"{}".to_vec()).await.unwrap();
        assert_eq!(get_small(&store, &small, 10).await.unwrap(), b"{}");
    }
}
