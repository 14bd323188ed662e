//! The Kubo RPC backend against a real IPFS node (`IPFS_API_URL`; scripts/ipfs-node.sh starts
//! js-ipfs), and the embedded importer's CIDs against that node's.

mod common;

use std::time::Duration;

use common::*;
use ehr_ipfs::{
    BlobError, BlobStore, Chunker, CidVersion, ImportParams, KuboConfig, KuboStore, PutOptions,
    cid_of_stream,
};

/// Tests in this binary share one node; garbage collection runs alone (js-ipfs' GC takes the
/// repository's write lock, and a test must not depend on the interleaving).
static NODE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn store(url: &str) -> KuboStore {
    KuboStore::connect(url).unwrap()
}

fn q(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The node's `add --only-hash` CID and the embedded importer's CID for the same bytes and
/// flags must be identical.
async fn assert_same_cid(
    node: &KuboStore,
    seed: u64,
    len: u64,
    query: &[(&'static str, String)],
    params: ImportParams,
) {
    let theirs = node
        .only_hash(data_stream(seed, len, 65_536), query)
        .await
        .unwrap();
    let ours = cid_of_stream(data_stream(seed, len, 65_536), params)
        .await
        .unwrap();
    assert_eq!(ours.cid, theirs, "len {len}, query {query:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_cids_equal_the_real_nodes() {
    let Some(url) = node_url("embedded_cids_equal_the_real_nodes") else {
        return;
    };
    let _shared = NODE.read().await;
    let node = store(&url);
    let mib_chunks = Chunker::size(1_048_576).unwrap();
    let cases: Vec<(Vec<(&'static str, String)>, ImportParams)> = vec![
        (vec![], ImportParams::kubo_default()),
        (q(&[("cid-version", "1")]), ImportParams::default()),
        (
            q(&[("cid-version", "1"), ("chunker", "size-1048576")]),
            ImportParams::default().with_chunker(mib_chunks),
        ),
    ];
    for (i, (_, len)) in SIZES.iter().enumerate() {
        for (query, params) in &cases {
            assert_same_cid(&node, 100 + i as u64, *len, query, *params).await;
        }
    }
    // Other flag combinations, on sizes that give one leaf, one level and two levels.
    let more: Vec<(Vec<(&'static str, String)>, ImportParams)> = vec![
        (
            q(&[("cid-version", "1"), ("raw-leaves", "false")]),
            ImportParams::default().with_raw_leaves(false),
        ),
        (
            q(&[("cid-version", "0"), ("raw-leaves", "true")]),
            ImportParams::kubo_default().with_raw_leaves(true),
        ),
        (
            q(&[("cid-version", "1"), ("chunker", "size-1000")]),
            ImportParams::default().with_chunker(Chunker::size(1000).unwrap()),
        ),
    ];
    for len in [0, 1, 1000, 1001, 174_000, 174_001, 3 * MIB + 17] {
        for (query, params) in &more {
            assert_same_cid(&node, 200 + len, len, query, *params).await;
        }
    }
}

/// A three-level balanced tree (more than 174 * 174 leaves) is laid out like the node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_level_dags_match_the_real_node() {
    let Some(url) = node_url("three_level_dags_match_the_real_node") else {
        return;
    };
    let _shared = NODE.read().await;
    let node = store(&url);
    // 174 * 174 = 30276 leaves fill two levels; 16 MiB / 512 = 32768 leaves need three.
    let len = 16 * MIB;
    let params = ImportParams::default().with_chunker(Chunker::size(512).unwrap());
    let query = q(&[("cid-version", "1"), ("chunker", "size-512")]);
    assert_same_cid(&node, 300, len, &query, params).await;
    let v0 = ImportParams::kubo_default().with_chunker(Chunker::size(512).unwrap());
    assert_same_cid(
        &node,
        301,
        174 * 174 * 512,
        &q(&[("chunker", "size-512")]),
        v0,
    )
    .await;
    assert_same_cid(
        &node,
        302,
        174 * 174 * 512 + 1,
        &q(&[("chunker", "size-512")]),
        v0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_every_size_on_the_node() {
    let Some(url) = node_url("round_trips_every_size_on_the_node") else {
        return;
    };
    let _shared = NODE.read().await;
    let node = store(&url);
    assert!(!node.version().await.unwrap().version.is_empty());
    node.check().await.unwrap();
    for (i, (name, len)) in SIZES.iter().enumerate() {
        let seed = 400 + i as u64;
        for params in [ImportParams::default(), ImportParams::kubo_default()] {
            if params.cid_version == CidVersion::V0 && *len > 10 * MIB {
                continue;
            }
            let blob = node
                .put(
                    data_stream(seed, *len, 65_536),
                    PutOptions { params, pin: true },
                )
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(blob.size, *len, "{name}");
            let expected = cid_of_stream(data_stream(seed, *len, 65_536), params)
                .await
                .unwrap();
            assert_eq!(blob.cid, expected.cid, "{name}");
            assert_stream_matches(node.get(&blob.cid).await.unwrap(), seed, *len).await;
            let stat = node.stat(&blob.cid).await.unwrap();
            assert_eq!((stat.size, stat.pinned), (*len, true), "{name}");
            assert!(node.has(&blob.cid).await.unwrap(), "{name}");
            if *len <= MIB {
                // What the node itself serves is the same file.
                assert_stream_matches(node.cat_unverified(&blob.cid).await.unwrap(), seed, *len)
                    .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_and_gc_on_the_node() {
    let Some(url) = node_url("pins_and_gc_on_the_node") else {
        return;
    };
    let _alone = NODE.write().await;
    let node = store(&url);
    let loose = node
        .put(
            data_stream(500, MIB + 3, 65_536),
            PutOptions {
                pin: false,
                ..PutOptions::default()
            },
        )
        .await
        .unwrap();
    assert!(!node.stat(&loose.cid).await.unwrap().pinned);
    node.pin(&loose.cid).await.unwrap();
    assert!(node.stat(&loose.cid).await.unwrap().pinned);
    assert!(node.unpin(&loose.cid).await.unwrap());
    assert!(!node.unpin(&loose.cid).await.unwrap());
    let report = node.gc().await.unwrap();
    assert!(report.removed_blocks >= 6, "{report:?}"); // 5 leaves + root at least
    let mut cfg = KuboConfig::new(url.clone());
    cfg.timeout = Duration::from_secs(2);
    cfg.retries = 0;
    let quick = KuboStore::new(cfg).unwrap();
    assert!(!quick.has(&loose.cid).await.unwrap());
}

/// A block the node does not have makes it wait forever: the call must end with a clear
/// timeout error instead.
#[tokio::test]
async fn missing_blocks_time_out_clearly() {
    let Some(url) = node_url("missing_blocks_time_out_clearly") else {
        return;
    };
    let _shared = NODE.read().await;
    let mut cfg = KuboConfig::new(url);
    cfg.timeout = Duration::from_secs(1);
    cfg.retries = 1;
    cfg.backoff = Duration::from_millis(50);
    let node = KuboStore::new(cfg).unwrap();
    let absent = cid_of_stream(data_stream(600, 12_345, 8), ImportParams::default())
        .await
        .unwrap()
        .cid;
    let started = std::time::Instant::now();
    let err = match node.get(&absent).await {
        Err(e) => e,
        Ok(_) => panic!("got a stream for a block the node does not have"),
    };
    assert!(matches!(err, BlobError::Timeout { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("/api/v0/block/get") && msg.contains("timed out"),
        "{msg}"
    );
    // Timeouts are not retried: one attempt (1 s, plus 1 s of grace for the node's own answer),
    // not forever; slack for a busy machine.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// No node listening: a clear "unreachable" error, quickly, for every kind of call.
#[tokio::test]
async fn node_down_is_a_clear_error() {
    // A port that was just free: bind, note, release.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let mut cfg = KuboConfig::new(url.clone());
    cfg.retries = 2;
    cfg.backoff = Duration::from_millis(20);
    let node = KuboStore::new(cfg).unwrap();
    let started = std::time::Instant::now();
    let err = node.version().await.unwrap_err();
    assert!(matches!(err, BlobError::NodeDown { .. }), "{err:?}");
    // Connection failures are retried: two retries after 20 ms and 40 ms of backoff.
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert!(err.to_string().contains(&url), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    let put = node
        .put(data_stream(1, 1000, 8), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(put, BlobError::NodeDown { .. }), "{put:?}");
    let cid = cid_of_stream(data_stream(1, 1000, 8), ImportParams::default())
        .await
        .unwrap()
        .cid;
    assert!(matches!(
        node.get(&cid).await,
        Err(BlobError::NodeDown { .. })
    ));
    assert!(matches!(
        node.pin(&cid).await,
        Err(BlobError::NodeDown { .. })
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
}
