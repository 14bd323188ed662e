//! The embedded backend against the real filesystem: round trips, corruption, pins, GC,
//! verification, cancellation.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use ehr_ipfs::{
    BlobError, BlobStore, Block, Chunker, CidVersion, EmbeddedStore, ImportParams, Importer,
    PutOptions, cid_of_stream,
};
use futures::StreamExt;

fn params_v0() -> ImportParams {
    ImportParams::kubo_default()
}

/// All blocks `ipfs add` would produce for this input, in write order (root last).
fn dag_blocks(data: &[u8], params: ImportParams) -> Vec<Block> {
    let mut out = Vec::new();
    let mut imp = Importer::new(params);
    let mut sink = |b: Block| {
        out.push(b);
        Ok::<(), BlobError>(())
    };
    imp.push(data, &mut sink).unwrap();
    imp.finish(&mut sink).unwrap();
    out
}

async fn open(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path().join("store")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_every_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    for (i, (name, len)) in SIZES.iter().enumerate() {
        let seed = 1000 + i as u64;
        let expected = cid_of_stream(data_stream(seed, *len, 65_536), ImportParams::default())
            .await
            .unwrap();
        let blob = store
            .put(data_stream(seed, *len, 65_536), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(blob, expected, "{name}");
        assert_eq!(blob.size, *len, "{name}");
        assert!(store.has(&blob.cid).await.unwrap(), "{name}");
        let stat = store.stat(&blob.cid).await.unwrap();
        assert_eq!((stat.size, stat.pinned), (*len, true), "{name}");
        assert_stream_matches(store.get(&blob.cid).await.unwrap(), seed, *len).await;
    }
    // CIDv0 with dag-pb leaves, up to 10 MiB.
    for (i, (name, len)) in SIZES
        .iter()
        .enumerate()
        .filter(|(_, (_, l))| *l <= 10 * MIB)
    {
        let seed = 2000 + i as u64;
        let opts = PutOptions {
            params: params_v0(),
            pin: true,
        };
        let blob = store
            .put(data_stream(seed, *len, 8192), opts)
            .await
            .unwrap();
        assert_eq!(blob.cid.version(), cid::Version::V0, "{name}");
        assert_stream_matches(store.get(&blob.cid).await.unwrap(), seed, *len).await;
    }
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// Every block of a three-level DAG, corrupted in turn (bit flip, truncation, another valid
/// block substituted), makes `get` fail with an error naming that block, and no wrong byte is
/// ever yielded before the error.
#[tokio::test]
async fn corruption_of_any_block_is_detected_on_get() {
    let data = data_vec(7, 200_000);
    for params in [
        ImportParams::default().with_chunker(Chunker::size(1000).unwrap()),
        params_v0().with_chunker(Chunker::size(1000).unwrap()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let blob = store
            .put(
                Box::pin(futures::stream::iter([Ok(Bytes::from(data.clone()))])),
                PutOptions { params, pin: true },
            )
            .await
            .unwrap();
        let blocks = dag_blocks(&data, params);
        assert_eq!(blocks.last().unwrap().cid, blob.cid);
        // 200 leaves: two parents and a root.
        assert_eq!(blocks.len(), 203);
        let other = blocks[0].data.clone();
        for block in &blocks {
            let path = store.block_path(&block.cid);
            let good = std::fs::read(&path).unwrap();
            let mut flipped = good.clone();
            let mid = flipped.len() / 2;
            flipped[mid] ^= 0x01;
            let truncated = good[..good.len() - 1].to_vec();
            for bad in [flipped, truncated, other.to_vec()] {
                if bad == good {
                    continue;
                }
                std::fs::write(&path, &bad).unwrap();
                let got = match store.get(&blob.cid).await {
                    Err(e) => Err(e),
                    Ok(mut s) => {
                        let mut prefix = Vec::new();
                        let mut err = None;
                        while let Some(item) = s.next().await {
                            match item {
                                Ok(c) => prefix.extend_from_slice(&c),
                                Err(e) => {
                                    err = Some(e);
                                    break;
                                }
                            }
                        }
                        assert_eq!(&prefix[..], &data[..prefix.len()], "wrong bytes yielded");
                        err.map_or(Ok(prefix), Err)
                    }
                };
                match got {
                    Err(BlobError::Corrupt { cid }) => assert_eq!(cid, block.cid),
                    other => panic!("block {} corrupted, get gave {other:?}", block.cid),
                }
            }
            std::fs::write(&path, &good).unwrap();
            std::fs::remove_file(&path).unwrap();
            let missing = match store.get(&blob.cid).await {
                Err(e) => Err(e),
                Ok(s) => collect(s).await,
            };
            assert!(
                matches!(missing, Err(BlobError::NotFound(c)) if c == block.cid),
                "{missing:?}"
            );
            std::fs::write(&path, &good).unwrap();
        }
        assert_eq!(
            collect(store.get(&blob.cid).await.unwrap()).await.unwrap(),
            data
        );
    }
}

#[tokio::test]
async fn verify_finds_corrupt_and_missing_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let params = ImportParams::default().with_chunker(Chunker::size(4096).unwrap());
    let opts = PutOptions { params, pin: true };
    let blob = store
        .put(data_stream(3, 100_000, 4096), opts)
        .await
        .unwrap();
    let clean = store.verify().await.unwrap();
    assert!(clean.is_ok());
    assert_eq!(clean.blocks, 26); // 25 leaves + root
    let blocks = dag_blocks(&data_vec(3, 100_000), params);
    let victim = store.block_path(&blocks[3].cid);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[0] ^= 0x80;
    std::fs::write(&victim, &bytes).unwrap();
    let gone = store.block_path(&blocks[5].cid);
    std::fs::remove_file(&gone).unwrap();
    let report = store.verify().await.unwrap();
    assert_eq!(report.corrupt, vec![victim]);
    assert_eq!(report.missing, vec![(blob.cid, blocks[5].cid)]);
    assert!(!report.is_ok());
}

#[tokio::test]
async fn pins_persist_and_gc_removes_only_unpinned_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let pinned = store
        .put(data_stream(11, MIB + 5, 65_536), PutOptions::default())
        .await
        .unwrap();
    let loose = store
        .put(
            data_stream(12, MIB, 65_536),
            PutOptions {
                pin: false,
                ..PutOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(!store.stat(&loose.cid).await.unwrap().pinned);
    drop(store);

    let store = open(&dir).await;
    assert_eq!(store.pins().await, vec![pinned.cid]);
    let report = store.gc().await.unwrap();
    assert_eq!(report.removed_blocks, 5); // 4 leaves + root of the unpinned MiB
    assert!(!store.has(&loose.cid).await.unwrap());
    assert!(store.get(&loose.cid).await.is_err());
    assert_stream_matches(store.get(&pinned.cid).await.unwrap(), 11, MIB + 5).await;

    // Pinning needs every block; pinning twice is harmless; unpin says whether it was pinned.
    assert!(matches!(
        store.pin(&loose.cid).await,
        Err(BlobError::NotFound(_))
    ));
    store.pin(&pinned.cid).await.unwrap();
    assert!(store.unpin(&pinned.cid).await.unwrap());
    assert!(!store.unpin(&pinned.cid).await.unwrap());
    drop(store);
    let store = open(&dir).await;
    assert!(store.pins().await.is_empty());
    assert_eq!(store.gc().await.unwrap().removed_blocks, 6);
    assert_eq!(store.verify().await.unwrap().blocks, 0);
}

/// A put dropped half-way (or failing on its input) pins nothing; GC then removes what it
/// wrote, and the store stays consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_or_failed_puts_leave_no_pin() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let stalls = data_stream(21, 3 * MIB, 65_536).chain(futures::stream::pending());
    let put = store.put(Box::pin(stalls), PutOptions::default());
    assert!(
        tokio::time::timeout(Duration::from_secs(2), put)
            .await
            .is_err()
    );
    assert!(store.pins().await.is_empty());
    assert!(store.verify().await.unwrap().blocks >= 1);

    let fails = data_stream(22, MIB, 65_536).chain(futures::stream::iter([Err(
        std::io::Error::other("disk unplugged"),
    )]));
    let err = store
        .put(Box::pin(fails), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Input(_)), "{err:?}");
    assert!(err.to_string().contains("disk unplugged"));
    assert!(store.pins().await.is_empty());

    store.gc().await.unwrap();
    let after = store.verify().await.unwrap();
    assert_eq!((after.blocks, after.is_ok()), (0, true));
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_the_same_bytes_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let a = store.put(data_stream(31, 3 * MIB, 65_536), PutOptions::default());
    let b = store.put(data_stream(31, 3 * MIB, 131_072), PutOptions::default());
    let (a, b) = tokio::join!(a, b);
    assert_eq!(a.unwrap(), b.unwrap());
    assert!(store.verify().await.unwrap().is_ok());
}

#[tokio::test]
async fn unsupported_cids_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    // dag-cbor codec: not a UnixFS file.
    let cbor: cid::Cid = "bafyreigks6arfsq3xxfpvqrrwonchxcnu6do76auprhhfomao6c273sixm"
        .parse()
        .unwrap();
    assert!(matches!(
        store.get(&cbor).await,
        Err(BlobError::InvalidInput(_))
    ));
    assert!(matches!(
        store.has(&cbor).await,
        Err(BlobError::InvalidInput(_))
    ));
    assert!(matches!(
        store.pin(&cbor).await,
        Err(BlobError::InvalidInput(_))
    ));
    // A CIDv0 and a CIDv1 of the same dag-pb node read the same file.
    let blob = store
        .put(
            data_stream(41, 600_000, 65_536),
            PutOptions {
                params: ImportParams::for_version(CidVersion::V0),
                pin: true,
            },
        )
        .await
        .unwrap();
    let v1 = cid::Cid::new_v1(0x70, *blob.cid.hash());
    assert_stream_matches(store.get(&v1).await.unwrap(), 41, 600_000).await;
}

/// Two handles on one directory (as `ehr up` and an operator's `ehr blob gc` would be): pins
/// made through either survive, and GC waits for a put in progress through the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_shared_between_handles_stay_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir).await;
    let b = open(&dir).await;
    let x = a
        .put(data_stream(51, 300_000, 65_536), PutOptions::default())
        .await
        .unwrap();
    let y = b
        .put(data_stream(52, 300_000, 65_536), PutOptions::default())
        .await
        .unwrap();
    // b never saw x's pin in memory; its GC must still keep x.
    assert_eq!(b.gc().await.unwrap().removed_blocks, 0);
    assert_stream_matches(b.get(&x.cid).await.unwrap(), 51, 300_000).await;
    let mut both = open(&dir).await.pins().await;
    both.sort();
    let mut want = vec![x.cid, y.cid];
    want.sort();
    assert_eq!(both, want);

    // A put stalled half-way through `a` holds off `b`'s GC until it is dropped.
    let stalls = data_stream(53, 2 * MIB, 65_536).chain(futures::stream::pending());
    let a2 = a.clone();
    let put = tokio::spawn(async move { a2.put(Box::pin(stalls), PutOptions::default()).await });
    // 2 MiB = 8 leaves of 256 KiB, all written before the input stalls.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while b.verify().await.unwrap().blocks < 6 + 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "the put wrote nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gc = tokio::spawn({
        let b = b.clone();
        async move { b.gc().await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!gc.is_finished(), "GC ran while another handle was writing");
    put.abort();
    let report = tokio::time::timeout(Duration::from_secs(10), gc)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.removed_blocks, 8);
    assert!(b.verify().await.unwrap().is_ok());
}
