//! By-hand check of the Fabric Gateway client against a real Fabric 2.4+
//! peer (TLS), with a user whose MSP directory Fabric's tools produced:
//!
//! ```sh
//! cargo run -p ehr-ledger --example fabric_peer_check -- \
//!     https://127.0.0.1:7051 $PEER_CA Org1MSP users/patient1/msp ehr ehr p-001
//! ```
//!
//! It checks, against the real peer: the user's certificate through our MSP
//! (chain to the CA in `msp/cacerts`, Fabric CA attributes), 20 evaluations
//! (each a freshly signed proposal — a high-S signature would be refused by
//! the peer), submits with commit status, a chaincode error's status code,
//! and chaincode events replayed from a start block.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use ehr_ledger::client::{Checkpoint, GatewayClient};
use ehr_ledger::msp::{Msp, OrgMsp, SigningIdentity};
use ehr_proto::protos::TxValidationCode;
use futures::StreamExt;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

fn first_file(dir: &str) -> Result<String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {dir}"))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.path());
    let e = entries.first().with_context(|| format!("{dir} is empty"))?;
    Ok(std::fs::read_to_string(e.path())?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let [
        _,
        url,
        peer_ca,
        msp_id,
        msp_dir,
        channel,
        chaincode,
        patient,
    ] = a.as_slice()
    else {
        bail!(
            "usage: fabric_peer_check URL PEER_TLS_CA MSP_ID USER_MSP_DIR CHANNEL CHAINCODE PATIENT_ID"
        );
    };
    let cert = first_file(&format!("{msp_dir}/signcerts"))?;
    let key = first_file(&format!("{msp_dir}/keystore"))?;
    let ca = first_file(&format!("{msp_dir}/cacerts"))?;
    let me = SigningIdentity::from_pem(msp_id, &cert, &key)?;

    let msp = Msp::new([OrgMsp::new(msp_id, &ca)?]);
    let id = msp.deserialize(me.serialized())?;
    println!(
        "MSP: {} CN={} OU={:?} attrs={:?}",
        id.msp_id, id.common_name, id.ous, id.attrs
    );

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read_to_string(peer_ca)?))
        .domain_name("127.0.0.1");
    let ch = Endpoint::from_shared(url.clone())?
        .tls_config(tls)?
        .connect()
        .await
        .context("connecting to the peer")?;
    let c = GatewayClient::from_channel(ch, me);

    for i in 0..20 {
        let p = c.evaluate(channel, chaincode, "Ping", &[]).await?;
        if i == 0 {
            println!("evaluate Ping: {}", String::from_utf8_lossy(&p));
        }
    }
    println!("evaluate Ping x20: ok (every proposal signature accepted)");

    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut start = None;
    let mut ids = Vec::new();
    for i in 0..3 {
        let grant = serde_json::json!({
            "consent_id": format!("c-check-{run}-{i}"), "patient_id": patient,
            "grantee": {"type":"org","org": msp_id},
            "scope": {"categories":["lab"]}, "actions":["read"], "purposes":["TREAT"],
        })
        .to_string();
        let s = c
            .submit(channel, chaincode, "GrantConsent", &[grant.as_bytes()])
            .await?;
        println!(
            "submit GrantConsent: block {} {:?} tx {}",
            s.block, s.code, s.tx_id
        );
        if s.code != TxValidationCode::Valid {
            bail!("not valid");
        }
        start.get_or_insert(s.block);
        ids.push(s.tx_id);
    }
    match c
        .submit(
            channel,
            chaincode,
            "GetConsent",
            &[br#"{"consent_id":"no-such"}"#],
        )
        .await
    {
        Ok(s) => bail!("an error was expected, got {:?}", s.code),
        Err(e) => {
            println!("chaincode error: status {:?}: {e}", e.code());
            // Fabric's Endorse puts the chaincode's answer only in ErrorDetail.
            let Some((status, message)) = e.chaincode_failure() else {
                bail!("no chaincode response in the error details: {e}");
            };
            println!("  chaincode response from details: {status} {message}");
        }
    }
    let mut events = c
        .chaincode_events(
            channel,
            chaincode,
            Some(Checkpoint {
                block: start.unwrap_or_default(),
                after_tx_id: None,
            }),
        )
        .await?;
    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Ok(e))) => {
                println!(
                    "event block {} {} tx {}",
                    e.block, e.event.event_name, e.event.tx_id
                );
                if ids.contains(&e.event.tx_id) {
                    seen.push(e.event.tx_id);
                }
            }
            other => bail!("events: {other:?}"),
        }
    }
    println!("all checks passed");
    Ok(())
}
