//! `ehr serve`: one org's gateway against an existing ledger (here the
//! devnet of a running consortium), reached over Fabric Gateway gRPC only.

use anyhow::Result;
use ehr_gateway::serve::{self, ServeConfig};
use ehr_tests::{Net, Services};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_separate_gateway_serves_an_org_against_the_ledger() -> Result<()> {
    let net = Net::start(Services::Embedded, 1 << 20)
        .await?
        .expect("embedded");
    let org_dir = net.c.gateways[0].state.cfg.data_dir.clone();
    let (g, stop) = serve::start(ServeConfig {
        org: "hospital-a".into(),
        data_dir: org_dir.clone(),
        listen: "127.0.0.1:0".parse()?,
        ledger_url: net.c.ledger_url.clone(),
        ledger_ca_file: None,
        ledger_tls_domain: None,
        database_url: None,
        ipfs_api_url: None,
        max_upload_bytes: 1 << 20,
        chunk_size: 65536,
        token_ttl_secs: 600,
        token_leeway_secs: 30,
        oidc: None,
        peers: vec![format!("hospital-b={}", net.c.url("hospital-b").unwrap())],
        org_cas: vec![format!(
            "hospital-b={}",
            net.c.gateways[1]
                .state
                .cfg
                .data_dir
                .join("ca/ca-cert.pem")
                .display()
        )],
        kek_hex: None,
        proxy: ehr_gateway::proxy::DEFAULT_SETTINGS,
    })
    .await?;
    assert!(g.admin_password.is_none(), "the org's admin already exists");
    let r = net.http.get(format!("{}/readyz", g.url)).send().await?;
    assert_eq!(r.status(), 200, "{}", r.text().await?);
    // Same org state: the demo patient logs in here and reads the ledger.
    let r = net
        .http
        .post(format!("{}/api/v1/auth/token", g.url))
        .json(&serde_json::json!({"username": "patient-a", "password": "demo-password"}))
        .send()
        .await?;
    let token = r.json::<Value>().await?["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let pid = net.patient_id("patient-a").unwrap();
    let r = net
        .http
        .get(format!("{}/api/v1/patients/{pid}/consents", g.url))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    // The access log comes from the projection here too: the ledger's height
    // is read over gRPC (qscc GetChainInfo), as from a real Fabric peer.
    let r = net
        .http
        .get(format!("{}/api/v1/patients/{pid}/access-log", g.url))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("x-audit-source")
            .and_then(|v| v.to_str().ok()),
        Some("projection")
    );
    // Without the embedded ledger, hash-chain verification is not offered (501), not wrong.
    let r = net
        .http
        .get(format!("{}/api/v1/ledger/verify", g.url))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status(), 501);
    let _ = stop.send(true);
    g.join().await;
    net.stop().await
}
