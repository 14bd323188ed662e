//! A tampered or missing blob is a clear 502 with the error shape — never
//! wrong bytes. The attack is simulated on the embedded store's files.

use anyhow::{Context, Result};
use ehr_tests::{Net, Services, error_code};
use serde_json::Value;

fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampered_and_missing_blobs_are_502_never_wrong_bytes() -> Result<()> {
    let net = Net::start(Services::Embedded, 1 << 20)
        .await?
        .expect("embedded");
    let token = net.token("hospital-a", "patient-a").await?;
    let pid = net.patient_id("patient-a").unwrap();
    let api = net.api("hospital-a");
    let data = vec![42u8; 100_000];
    let r = net
        .http
        .post(format!("{api}/patients/{pid}/records?category=lab"))
        .bearer_auth(&token)
        .body(data.clone())
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let rid = serde_json::from_str::<Value>(&r.text().await?)?["record_id"]
        .as_str()
        .context("record_id")?
        .to_owned();
    let read = || async {
        net.http
            .get(format!("{api}/records/{rid}/content"))
            .bearer_auth(&token)
            .send()
            .await
    };
    assert_eq!(read().await?.bytes().await?.as_ref(), data.as_slice());

    // The ciphertext is the largest block in the store (one raw block here).
    let blocks = net.c.gateways[0]
        .state
        .cfg
        .data_dir
        .join("../../blobs/blocks");
    let mut all = Vec::new();
    files(&blocks, &mut all)?;
    let victim = all
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .context("no blocks")?
        .clone();
    let original = std::fs::read(&victim)?;

    // Tampered: one bit flipped.
    let mut bad = original.clone();
    bad[5000] ^= 1;
    std::fs::write(&victim, &bad)?;
    let (status, code) = error_code(read().await?).await?;
    assert_eq!((status, code.as_str()), (502, "bad_gateway"));

    // Missing.
    std::fs::remove_file(&victim)?;
    let (status, _) = error_code(read().await?).await?;
    assert_eq!(status, 502);

    // Restored: readable again (the failures wrote no wrong state).
    std::fs::write(&victim, &original)?;
    assert_eq!(read().await?.bytes().await?.as_ref(), data.as_slice());
    net.stop().await
}
