//! Compiles `fabric/**/*.proto` and `ehr/**/*.proto` with protox (pure Rust, no
//! system `protoc`) and generates prost messages + tonic clients/servers.
use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "proto") {
            out.push(p);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    for dir in ["fabric", "ehr"] {
        let d = root.join(dir);
        if d.is_dir() {
            collect(&d, &mut files)?;
        }
    }
    println!("cargo:rerun-if-changed=fabric");
    println!("cargo:rerun-if-changed=ehr");
    let includes = [root.join("fabric"), root.join("ehr")];
    let includes: Vec<&Path> = includes
        .iter()
        .map(|p| p.as_path())
        .filter(|p| p.is_dir())
        .collect();
    let fds = protox::compile(&files, &includes)?;
    // No `XClient::connect(addr)` constructors: Fabric's `Chaincode` service has
    // an rpc named `Connect`, whose client method would clash with it. Make
    // clients with `XClient::new(channel)` instead.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        // Maps (ChaincodeInput.decorations, TransientMap) as BTreeMap so that
        // encoding is deterministic: same message, same bytes.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
