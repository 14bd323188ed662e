//! `put`/`get` throughput of both backends on a 100 MiB file, next to raw SHA-256 of the same
//! bytes measured in the same run.
//!
//! ```sh
//! export IPFS_API_URL=$(scripts/ipfs-node.sh start)   # optional: without it, Kubo is skipped
//! cargo bench -p ehr-ipfs --bench throughput           # EHR_BENCH_MIB / EHR_BENCH_RUNS to vary
//! ```
//!
//! Each measurement runs `EHR_BENCH_RUNS` times (default 3) on fresh pseudo-random data (so no
//! block is deduplicated) and prints the median and the best. The input is generated before the
//! clock starts and streamed in 256 KiB pieces; `get` streams and counts, keeping nothing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ehr_ipfs::{
    BlobStore, ByteStream, EmbeddedOptions, EmbeddedStore, ImportParams, KuboStore, PutOptions,
    cid_of_stream,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};

const PIECE: usize = 256 * 1024;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic pseudo-random bytes (SplitMix64).
fn generate(seed: u64, len: usize) -> Bytes {
    let mut state = seed;
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
    Bytes::from(out)
}

fn stream_of(data: &Bytes) -> ByteStream {
    let data = data.clone();
    let n = data.len().div_ceil(PIECE);
    Box::pin(futures::stream::iter((0..n).map(move |i| {
        let end = ((i + 1) * PIECE).min(data.len());
        Ok(data.slice(i * PIECE..end))
    })))
}

struct Stats {
    label: String,
    mib_s: Vec<f64>,
}

impl Stats {
    fn new(label: &str) -> Self {
        Stats {
            label: label.to_owned(),
            mib_s: Vec::new(),
        }
    }
    fn add(&mut self, bytes: usize, took: Duration) {
        self.mib_s
            .push(bytes as f64 / (1024.0 * 1024.0) / took.as_secs_f64());
    }
    fn print(&mut self) {
        self.mib_s.sort_by(|a, b| a.total_cmp(b));
        let median = self.mib_s[self.mib_s.len() / 2];
        let best = self.mib_s[self.mib_s.len() - 1];
        println!("| {:<44} | {:>9.1} | {:>9.1} |", self.label, median, best);
    }
}

async fn bench_store(
    label: &str,
    store: &dyn BlobStore,
    data: &Bytes,
    put: &mut Stats,
    get: &mut Stats,
) {
    let t = Instant::now();
    let blob = store
        .put(stream_of(data), PutOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{label} put: {e}"));
    put.add(data.len(), t.elapsed());
    let t = Instant::now();
    let mut s = store
        .get(&blob.cid)
        .await
        .unwrap_or_else(|e| panic!("{label} get: {e}"));
    let mut n = 0usize;
    while let Some(chunk) = s.next().await {
        n += chunk.unwrap_or_else(|e| panic!("{label} get: {e}")).len();
    }
    get.add(n, t.elapsed());
    assert_eq!(n, data.len());
    // Leave no pin behind (the node is shared with the tests).
    store.unpin(&blob.cid).await.ok();
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mib = env_u64("EHR_BENCH_MIB", 100) as usize;
    let runs = env_u64("EHR_BENCH_RUNS", 3).max(1);
    let len = mib * 1024 * 1024;
    let node = std::env::var("IPFS_API_URL").ok().filter(|u| !u.is_empty());

    let mut sha = Stats::new("SHA-256 (sha2 crate), same bytes");
    let mut cid = Stats::new("CID only (import, no storage)");
    let mut e_put = Stats::new("embedded put (fsync per block)");
    let mut e_get = Stats::new("embedded get (verified)");
    let mut n_put = Stats::new("embedded put (durable = false)");
    let mut k_put = Stats::new("Kubo RPC put (js-ipfs node, CID checked)");
    let mut k_get = Stats::new("Kubo RPC get (block/get, verified)");

    for run in 0..runs {
        let data = generate(0xEB_0000 + run, len);

        let t = Instant::now();
        let digest = Sha256::digest(&data);
        sha.add(len, t.elapsed());
        std::hint::black_box(digest);

        let t = Instant::now();
        let blob = cid_of_stream(stream_of(&data), ImportParams::default())
            .await
            .expect("import");
        cid.add(len, t.elapsed());
        std::hint::black_box(blob);

        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path().join("durable"))
            .await
            .expect("open store");
        bench_store("embedded", &store, &data, &mut e_put, &mut e_get).await;

        let fast = EmbeddedStore::open_with(
            dir.path().join("fast"),
            EmbeddedOptions {
                durable: false,
                ..EmbeddedOptions::default()
            },
        )
        .await
        .expect("open store");
        let t = Instant::now();
        fast.put(stream_of(&data), PutOptions::default())
            .await
            .expect("put");
        n_put.add(len, t.elapsed());

        if let Some(url) = &node {
            let kubo = KuboStore::connect(url).expect("node URL");
            bench_store("kubo", &kubo, &data, &mut k_put, &mut k_get).await;
        }
    }

    println!(
        "\n{mib} MiB, {runs} runs, {} cores; MiB/s (higher is better)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| {:<44} | {:>9} | {:>9} |", "operation", "median", "best");
    println!("|{:-<46}|{:->11}|{:->11}|", "", "", "");
    for s in [&mut sha, &mut cid, &mut e_put, &mut n_put, &mut e_get] {
        s.print();
    }
    if node.is_some() {
        k_put.print();
        k_get.print();
    } else {
        println!("\nSKIPPED Kubo RPC rows: IPFS_API_URL not set");
    }
}
