//! A backing service that is down is a 503 with the error shape (and
//! `/readyz` says which one), never a 500 — and nothing is written.

use anyhow::Result;
use ehr_tests::{Net, error_code};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ipfs_node_down_is_503_and_readyz_names_it() -> Result<()> {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", closed.local_addr()?);
    drop(closed);
    let net = Net::start_with_ipfs(&url).await?;
    let base = net.c.url("hospital-a").unwrap().to_owned();

    let r = net.http.get(format!("{base}/readyz")).send().await?;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await?;
    assert_eq!(v["blob_store"], false);
    assert_eq!(v["ledger"], true);
    assert_eq!(v["database"], true);

    let token = net.token("hospital-a", "patient-a").await?;
    let pid = net.patient_id("patient-a").unwrap();
    let r = net
        .http
        .post(format!(
            "{}/patients/{pid}/records?category=lab",
            net.api("hospital-a")
        ))
        .bearer_auth(&token)
        .body(vec![1u8; 10_000])
        .send()
        .await?;
    assert_eq!(error_code(r).await?, (503, "unavailable".to_owned()));
    // Nothing on-chain: the patient has no records.
    let v: Value = net
        .http
        .get(format!("{}/patients/{pid}/records", net.api("hospital-a")))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["records"].as_array().map(Vec::len), Some(0), "{v}");
    net.stop().await
}
