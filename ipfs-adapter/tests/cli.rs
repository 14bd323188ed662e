//! `ehr blob …` through `ehr_ipfs::cli::run`, with arguments parsed by clap as the `ehr`
//! binary parses them; `cid` output compared with the real node's `add --only-hash`.

mod common;

use std::path::{Path, PathBuf};

use clap::Parser;
use common::*;
use ehr_ipfs::cli::{BlobCommand, CliError, run};
use ehr_ipfs::{BlobError, KuboStore};
use tokio_util::io::ReaderStream;

/// `ehr blob cid` flags and the `/api/v0/add` query that means the same.
type Flags = &'static [&'static str];
type Query = &'static [(&'static str, &'static str)];

#[derive(Parser)]
struct Ehr {
    #[command(subcommand)]
    cmd: BlobCommand,
}

fn parse(args: &[&str]) -> Result<BlobCommand, clap::Error> {
    Ehr::try_parse_from(std::iter::once("blob").chain(args.iter().copied())).map(|e| e.cmd)
}

async fn run_args(args: &[&str]) -> Result<Vec<u8>, CliError> {
    let mut out = Vec::new();
    run(parse(args).expect("arguments parse"), &mut out).await?;
    Ok(out)
}

async fn run_ok(args: &[&str]) -> String {
    let out = run_args(args)
        .await
        .unwrap_or_else(|e| panic!("ehr blob {args:?}: {e}"));
    String::from_utf8(out).unwrap()
}

fn write_file(dir: &Path, name: &str, seed: u64, len: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let mut rng = Prng::new(seed);
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    path
}

#[tokio::test]
async fn cid_prints_known_kubo_cids() {
    let dir = tempfile::tempdir().unwrap();
    let hello = dir.path().join("hello");
    std::fs::write(&hello, b"hello world\n").unwrap();
    let h = hello.to_str().unwrap();
    assert_eq!(
        run_ok(&["cid", h]).await,
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4\n"
    );
    assert_eq!(
        run_ok(&["cid", h, "--cid-version", "0"]).await,
        "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o\n"
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(
        run_ok(&["cid", empty.to_str().unwrap(), "--cid-version=0"]).await,
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH\n"
    );
}

/// `ehr blob cid` prints what the node's `add --only-hash` returns for the same flags, in
/// Kubo's spelling (base58btc `Qm…` for v0, base32 for v1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cid_equals_the_real_nodes_only_hash() {
    let Some(url) = node_url("cid_equals_the_real_nodes_only_hash") else {
        return;
    };
    let node = KuboStore::connect(&url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag_sets: &[(Flags, Query)] = &[
        (&[], &[("cid-version", "1")]),
        (&["--cid-version", "0"], &[]),
        (
            &["--cid-version=1", "--raw-leaves=false"],
            &[("cid-version", "1"), ("raw-leaves", "false")],
        ),
        (
            &["--chunker", "size-1048576"],
            &[("cid-version", "1"), ("chunker", "size-1048576")],
        ),
        (
            &["--cid-version", "0", "--raw-leaves"],
            &[("cid-version", "0"), ("raw-leaves", "true")],
        ),
        (
            &["--cid-version", "0", "--chunker=size-1000"],
            &[("chunker", "size-1000")],
        ),
    ];
    for (i, (name, len)) in SIZES.iter().enumerate() {
        let path = write_file(dir.path(), &format!("f{i}"), 700 + i as u64, *len);
        let p = path.to_str().unwrap();
        for (flags, query) in flag_sets {
            if *len > 10 * MIB && query.iter().any(|(_, v)| *v == "size-1000") {
                continue; // 100k tiny blocks: slow on the node, covered by kubo.rs
            }
            let mut args = vec!["cid", p];
            args.extend_from_slice(flags);
            let printed = run_ok(&args).await;
            let file = tokio::fs::File::open(&path).await.unwrap();
            let query: Vec<(&str, String)> =
                query.iter().map(|(k, v)| (*k, v.to_string())).collect();
            let theirs = node
                .only_hash(Box::pin(ReaderStream::new(file)), &query)
                .await
                .unwrap();
            assert_eq!(printed, format!("{theirs}\n"), "{name} {flags:?}");
            let prefix = if theirs.version() == cid::Version::V0 {
                "Qm"
            } else {
                "b"
            };
            assert!(printed.starts_with(prefix), "{printed}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("blobs");
    let s = store.to_str().unwrap();
    let input = write_file(dir.path(), "in", 800, 3 * MIB + 11);
    let i = input.to_str().unwrap();

    let cid = run_ok(&["put", i, "--store", s]).await;
    assert_eq!(cid, run_ok(&["cid", i]).await);
    let cid = cid.trim();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    assert_eq!(run_ok(&["get", cid, "-o", o, "--store", s]).await, "");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&input).unwrap());
    // To standard output (here: the writer given to `run`).
    let small = write_file(dir.path(), "small", 801, 5000);
    let small_cid = run_ok(&["put", small.to_str().unwrap(), "--store", s, "--no-pin"]).await;
    let bytes = run_args(&["get", small_cid.trim(), "--store", s])
        .await
        .unwrap();
    assert_eq!(bytes, std::fs::read(&small).unwrap());

    let stat: serde_json::Value =
        serde_json::from_str(&run_ok(&["stat", cid, "--store", s]).await).unwrap();
    assert_eq!(stat["size"], 3 * MIB + 11);
    assert_eq!(stat["pinned"], true);
    assert!(
        run_ok(&["verify", "--store", s])
            .await
            .starts_with("ok: 15 blocks")
    );
    assert!(
        run_ok(&["verify", cid, "--store", s])
            .await
            .contains("ok, 3145739 bytes")
    );

    // The unpinned small blob goes at GC; the pinned one stays until unpinned.
    assert_eq!(
        run_ok(&["gc", "--store", s]).await,
        "removed 1 blocks, 5000 bytes freed\n"
    );
    assert_eq!(
        run_ok(&["unpin", cid, "--store", s]).await,
        format!("unpinned {cid}\n")
    );
    assert_eq!(
        run_ok(&["unpin", cid, "--store", s]).await,
        format!("{cid} was not pinned\n")
    );
    assert_eq!(
        run_ok(&["pin", cid, "--store", s]).await,
        format!("pinned {cid}\n")
    );

    // Corrupt one block: verify and get fail, and get -o leaves no file behind.
    let st = ehr_ipfs::EmbeddedStore::open(&store).await.unwrap();
    let root: cid::Cid = cid.parse().unwrap();
    let mut links = Vec::new();
    ipld_dagpb::links(&std::fs::read(st.block_path(&root)).unwrap(), &mut links).unwrap();
    let victim = st.block_path(&links[2]);
    let mut data = std::fs::read(&victim).unwrap();
    data[100] ^= 0xff;
    std::fs::write(&victim, data).unwrap();
    let err = run_args(&["verify", "--store", s]).await.unwrap_err();
    assert!(matches!(err, CliError::VerifyFailed(_)), "{err}");
    let out2 = dir.path().join("out2");
    let err = run_args(&["get", cid, "-o", out2.to_str().unwrap(), "--store", s])
        .await
        .unwrap_err();
    assert!(
        matches!(err, CliError::Blob(BlobError::Corrupt { cid }) if cid == links[2]),
        "{err}"
    );
    assert!(!out2.exists());
    assert!(!dir.path().join("out2.part").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_through_the_node() {
    let Some(url) = node_url("put_and_get_through_the_node") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "in", 900, 2 * MIB + 1);
    let i = input.to_str().unwrap();
    let cid = run_ok(&["put", i, "--api", &url, "--cid-version", "0"]).await;
    assert!(cid.starts_with("Qm"));
    assert_eq!(cid, run_ok(&["cid", i, "--cid-version", "0"]).await);
    let out = dir.path().join("out");
    run_ok(&[
        "get",
        cid.trim(),
        "-o",
        out.to_str().unwrap(),
        "--api",
        &url,
    ])
    .await;
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&input).unwrap());
    assert!(
        run_ok(&["verify", cid.trim(), "--api", &url])
            .await
            .contains("ok, 2097153 bytes verified")
    );
    let err = run_args(&["verify", "--api", &url]).await.unwrap_err();
    assert!(
        matches!(err, CliError::Blob(BlobError::InvalidInput(_))),
        "{err}"
    );
}

#[tokio::test]
async fn bad_input_is_rejected_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let f = f.to_str().unwrap();
    // Rejected by the argument parser.
    for args in [
        &["cid", f, "--cid-version", "2"][..],
        &["cid", f, "--raw-leaves", "false"],
        &["cid", f, "--raw-leaves=maybe"],
        &["cid"],
        &["put", f, "--timeout-secs", "0"],
    ] {
        assert!(parse(args).is_err(), "{args:?} accepted");
    }
    // Rejected when run, before any side effect.
    for chunker in ["size-0", "size-1048577", "rabin", "size-abc"] {
        let err = run_args(&["cid", f, "--chunker", chunker])
            .await
            .unwrap_err();
        assert!(
            matches!(err, CliError::Blob(BlobError::InvalidInput(_))),
            "{err}"
        );
        assert!(err.to_string().contains("chunk"), "{err}");
    }
    let store = dir.path().join("never");
    let err = run_args(&[
        "put",
        f,
        "--chunker",
        "rabin",
        "--store",
        store.to_str().unwrap(),
    ])
    .await
    .unwrap_err();
    assert!(
        matches!(err, CliError::Blob(BlobError::InvalidInput(_))),
        "{err}"
    );
    assert!(!store.exists(), "a rejected put created the store");
    let missing = dir.path().join("missing");
    let err = run_args(&["cid", missing.to_str().unwrap()])
        .await
        .unwrap_err();
    assert!(matches!(err, CliError::File { op: "open", .. }), "{err}");
    let err = run_args(&["cid", dir.path().to_str().unwrap()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let err = run_args(&["get", "Qmnope", "--store", store.to_str().unwrap()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, CliError::Blob(BlobError::InvalidInput(_))),
        "{err}"
    );
    let err = run_args(&[
        "stat",
        "bafkreifjjcie6lypi6ny7amxnfftagclbuxndqonfipmb64f2km2devei4",
        "--api",
        "localhost:1",
    ])
    .await
    .unwrap_err();
    assert!(err.to_string().contains("bad IPFS API URL"), "{err}");
}
