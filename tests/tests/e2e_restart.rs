//! Data survives a restart: users, identities, keys, the ledger and the
//! blobs are all in the data dir (or PostgreSQL); after `ehr up` starts again
//! on the same state, old tokens still verify (same signing key), and a
//! record uploaded before the restart reads back byte for byte.

use anyhow::Result;
use ehr_tests::{Net, Services};
use serde_json::Value;

async fn restart(services: Services) -> Result<()> {
    let Some(net) = Net::start(services, 1 << 20).await? else {
        return Ok(());
    };
    let token = net.token("hospital-a", "patient-a").await?;
    let pid = net.patient_id("patient-a").unwrap();
    let data: Vec<u8> = (0..70_000u32).map(|i| (i % 249) as u8).collect();
    let r = net
        .http
        .post(format!(
            "{}/patients/{pid}/records?category=note",
            net.api("hospital-a")
        ))
        .bearer_auth(&token)
        .body(data.clone())
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await?;
    let rid = v["record_id"].as_str().unwrap().to_owned();
    let height = net.c.devnet.height();
    let (dir, prefix) = net.stop_keep().await;

    let net = Net::start_in(services, 1 << 20, dir, Some(prefix), |_| {})
        .await?
        .expect("services still there");
    // A plain restart writes nothing: org keys, admins and demo users are
    // already on the ledger.
    assert_eq!(net.c.devnet.height(), height, "a restart added blocks");
    assert_eq!(
        net.patient_id("patient-a").as_deref(),
        Some(pid.as_str()),
        "same demo patient"
    );
    // The old token is still valid: the signing key persisted.
    let r = net
        .http
        .get(format!("{}/records/{rid}/content", net.api("hospital-a")))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await?.as_ref(), data.as_slice());
    let r = net
        .http
        .get(format!("{}/ledger/verify", net.api("hospital-a")))
        .bearer_auth(&token)
        .send()
        .await?;
    let v: Value = r.json().await?;
    assert_eq!(v["verified"], true);
    net.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_survives_restart_on_sqlite_and_embedded_store() -> Result<()> {
    restart(Services::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_survives_restart_on_postgres_and_ipfs_node() -> Result<()> {
    restart(Services::PostgresIpfs).await
}
