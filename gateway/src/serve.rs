//! `ehr serve`: one org's gateway against an existing ledger.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::config::{GatewayConfig, OidcConfig};
use crate::crypto::kek::Kek;
use crate::up::{GatewayParts, RunningGateway, start_gateway};

/// Resolved settings of `ehr serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub org: String,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub ledger_url: String,
    /// PEM file of the CA of the peer's TLS certificate (https ledger URLs).
    pub ledger_ca_file: Option<PathBuf>,
    /// TLS name to check the peer's certificate for, when not the URL's host.
    pub ledger_tls_domain: Option<String>,
    pub database_url: Option<String>,
    pub ipfs_api_url: Option<String>,
    pub max_upload_bytes: u64,
    pub chunk_size: u32,
    pub token_ttl_secs: u64,
    pub token_leeway_secs: u64,
    pub oidc: Option<OidcConfig>,
    /// `ORG=URL` entries.
    pub peers: Vec<String>,
    /// `ORG=PEM_FILE` entries.
    pub org_cas: Vec<String>,
    pub kek_hex: Option<String>,
    pub proxy: crate::proxy::ProxySettings,
}

/// Parses `ORG=VALUE` entries.
pub fn split_pairs(what: &str, items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for it in items {
        let Some((k, v)) = it.split_once('=') else {
            bail!("{what}: expected ORG=VALUE, got {it:?}");
        };
        if !crate::config::valid_org(k) || v.is_empty() {
            bail!("{what}: invalid entry {it:?}");
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Starts the gateway; stop it with the returned sender.
pub async fn start(
    cfg: ServeConfig,
) -> anyhow::Result<(RunningGateway, tokio::sync::watch::Sender<bool>)> {
    anyhow::ensure!(
        crate::config::valid_org(&cfg.org),
        "invalid org name {:?}",
        cfg.org
    );
    crate::config::validate_limits(cfg.max_upload_bytes, cfg.chunk_size)?;
    std::fs::create_dir_all(&cfg.data_dir)?;
    let kek = Kek::load_or_create(cfg.kek_hex.as_deref(), &cfg.data_dir)?;
    let fresh_ca = !cfg.data_dir.join("ca").join("ca-cert.pem").exists();
    let ca = crate::identity::load_or_create_ca(&cfg.data_dir, &cfg.org, &kek)?;
    if fresh_ca {
        tracing::warn!(
            path = %cfg.data_dir.join("ca/ca-cert.pem").display(),
            "created a new org CA: add this certificate to the channel's MSP for {}",
            cfg.org
        );
    }
    let mut org_cas = BTreeMap::new();
    for (org, path) in split_pairs("--org-ca", &cfg.org_cas)? {
        let pem = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        org_cas.insert(org, pem);
    }
    org_cas.insert(cfg.org.clone(), ca.cert_pem().to_owned());
    let mut peers = split_pairs("--peer", &cfg.peers)?;
    let blobs = crate::up::open_blob_store(cfg.ipfs_api_url.as_deref(), &cfg.data_dir).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let url = format!("http://{}", listener.local_addr()?);
    // This gateway can be a proxy of its own org's grants.
    peers.entry(cfg.org.clone()).or_insert_with(|| url.clone());
    let (database_url, database_schema) = match &cfg.database_url {
        Some(u) => (
            u.clone(),
            Some(format!("ehr_{}", cfg.org.replace('-', "_"))),
        ),
        None => (crate::db::sqlite_url(&cfg.data_dir), None),
    };
    let gcfg = GatewayConfig {
        org: cfg.org.clone(),
        listen: listener.local_addr()?,
        data_dir: cfg.data_dir.clone(),
        database_url,
        database_schema,
        max_upload_bytes: cfg.max_upload_bytes,
        chunk_size: cfg.chunk_size,
        token_ttl_secs: cfg.token_ttl_secs,
        token_leeway_secs: cfg.token_leeway_secs,
        oidc: cfg.oidc.clone(),
        public_url: url,
        peers,
        org_cas,
        proxy: cfg.proxy,
    };
    let ledger_tls = match &cfg.ledger_ca_file {
        Some(p) => Some(crate::fabric::LedgerTls {
            ca_pem: std::fs::read_to_string(p)
                .with_context(|| format!("reading the ledger TLS CA {}", p.display()))?,
            domain: cfg.ledger_tls_domain.clone(),
        }),
        None => None,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let g = start_gateway(GatewayParts {
        cfg: gcfg,
        kek,
        ca,
        listener,
        ledger_url: cfg.ledger_url.clone(),
        ledger_tls,
        devnet: None,
        blobs,
        http,
        stop: rx,
        demo: false,
    })
    .await?;
    Ok((g, tx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs() {
        let m = split_pairs("--peer", &["hospital-b=http://x".into()]).unwrap();
        assert_eq!(m["hospital-b"], "http://x");
        assert!(split_pairs("--peer", &["nope".into()]).is_err());
        assert!(split_pairs("--peer", &["Bad Org=x".into()]).is_err());
    }
}
