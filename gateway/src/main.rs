//! The `ehr` command line.

use anyhow::Context;
use clap::Parser;
use ehr_gateway::cli::{Cli, Command, GatewayArgs, LogFormat};
use ehr_gateway::config::{FileConfig, OidcConfig, defaults};
use ehr_gateway::serve::{self, ServeConfig};
use ehr_gateway::up::{self, UpConfig};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// Settings every gateway shares, resolved flag/env > file > default.
struct Common {
    database_url: Option<String>,
    ipfs_api_url: Option<String>,
    max_upload_bytes: u64,
    chunk_size: u32,
    token_ttl_secs: u64,
    token_leeway_secs: u64,
    oidc: Option<OidcConfig>,
    proxy: ehr_gateway::proxy::ProxySettings,
}

impl Common {
    fn resolve(g: &GatewayArgs, file: &FileConfig) -> anyhow::Result<Self> {
        let d = ehr_gateway::proxy::DEFAULT_SETTINGS;
        let proxy = ehr_gateway::proxy::ProxySettings {
            threshold: g
                .pre_threshold
                .or(file.pre_threshold)
                .unwrap_or(d.threshold),
            shares: g.pre_shares.or(file.pre_shares).unwrap_or(d.shares),
            timeout: g
                .proxy_timeout_ms
                .or(file.proxy_timeout_ms)
                .map(std::time::Duration::from_millis)
                .unwrap_or(d.timeout),
        };
        proxy.validate().map_err(anyhow::Error::msg)?;
        let oidc = match (&g.oidc_issuer, &g.oidc_audience, &g.oidc_jwks_url) {
            (Some(issuer), Some(audience), Some(jwks_url)) => Some(OidcConfig {
                issuer: issuer.clone(),
                audience: audience.clone(),
                jwks_url: jwks_url.clone(),
            }),
            _ => file.oidc.clone(),
        };
        Ok(Self {
            proxy,
            database_url: g.database_url.clone().or_else(|| file.database_url.clone()),
            ipfs_api_url: g.ipfs_api_url.clone().or_else(|| file.ipfs_api_url.clone()),
            max_upload_bytes: g
                .max_upload_bytes
                .or(file.max_upload_bytes)
                .unwrap_or(defaults::MAX_UPLOAD_BYTES),
            chunk_size: g
                .chunk_size
                .or(file.chunk_size)
                .unwrap_or(ehr_gateway::crypto::stream::DEFAULT_CHUNK_SIZE),
            token_ttl_secs: g
                .token_ttl_secs
                .or(file.token_ttl_secs)
                .unwrap_or(defaults::TOKEN_TTL_SECS),
            token_leeway_secs: g
                .token_leeway_secs
                .or(file.token_leeway_secs)
                .unwrap_or(defaults::TOKEN_LEEWAY_SECS),
            oidc,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let log_format = cli.log_format.unwrap_or(match file.log_format.as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    });
    init_tracing(log_format);
    match cli.command {
        Command::Blob { cmd } => {
            let mut out = std::io::stdout();
            ehr_ipfs::cli::run(cmd, &mut out).await?;
        }
        Command::Key { cmd } => match cmd {
            ehr_gateway::cli::KeyCommand::Export {
                gateway,
                username,
                password,
                out,
            } => {
                anyhow::ensure!(!out.exists(), "{} exists; not overwriting", out.display());
                let k = ehr_gateway::client::export_key(&gateway, &username, &password).await?;
                ehr_gateway::fsutil::write_private(
                    &out,
                    serde_json::to_string_pretty(&k)?.as_bytes(),
                )?;
                println!(
                    "key of {} written to {} (keep it secret)",
                    k.patient_id,
                    out.display()
                );
            }
            ehr_gateway::cli::KeyCommand::Grant {
                gateway,
                token,
                key,
                consent,
                threshold,
                shares,
            } => {
                let k: ehr_gateway::api::keys::ExportedKey = serde_json::from_slice(
                    &std::fs::read(&key).with_context(|| format!("reading {}", key.display()))?,
                )
                .with_context(|| format!("{} is not a key file", key.display()))?;
                let body: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(&consent)
                        .with_context(|| format!("reading {}", consent.display()))?,
                )
                .with_context(|| format!("{} is not JSON", consent.display()))?;
                let out = ehr_gateway::client::grant_with_own_key(
                    &gateway, &token, &k, body, threshold, shares,
                )
                .await?;
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
        },
        Command::Erase(args) => {
            let out =
                ehr_gateway::client::erase(&args.gateway, &args.token, &args.record_id).await?;
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Command::Serve(args) => {
            let g = args.gateway;
            let common = Common::resolve(&g, &file)?;
            let cfg = ServeConfig {
                org: args.org.clone(),
                data_dir: g.data_dir.or(file.data_dir).unwrap_or_else(|| {
                    std::path::Path::new(defaults::DATA_DIR)
                        .join("orgs")
                        .join(&args.org)
                }),
                listen: args.listen.unwrap_or_else(|| {
                    std::net::SocketAddr::new(ehr_gateway::config::LOCALHOST, defaults::BASE_PORT)
                }),
                ledger_url: args.ledger_url,
                ledger_ca_file: args.ledger_ca_file,
                ledger_tls_domain: args.ledger_tls_domain,
                database_url: common.database_url,
                ipfs_api_url: common.ipfs_api_url,
                max_upload_bytes: common.max_upload_bytes,
                chunk_size: common.chunk_size,
                token_ttl_secs: common.token_ttl_secs,
                token_leeway_secs: common.token_leeway_secs,
                oidc: common.oidc,
                peers: args.peers,
                org_cas: args.org_cas,
                kek_hex: std::env::var("EHR_KEK").ok(),
                proxy: common.proxy,
            };
            let (g, stop) = serve::start(cfg).await.context("starting the gateway")?;
            println!(
                "{} gateway: {}/api/v1 (OpenAPI: {}/openapi.json)",
                g.org, g.url, g.url
            );
            if let Some(pw) = &g.admin_password {
                println!(
                    "admin password: {pw} (also in {}/admin-password)",
                    g.state.cfg.data_dir.display()
                );
            }
            println!("Ctrl-C to stop.");
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            let _ = stop.send(true);
            g.join().await;
        }
        Command::Up(args) => {
            let g = args.gateway;
            let common = Common::resolve(&g, &file)?;
            let cfg = UpConfig {
                data_dir: g
                    .data_dir
                    .or(file.data_dir)
                    .unwrap_or_else(|| defaults::DATA_DIR.into()),
                bind: args
                    .bind
                    .or(file.bind)
                    .unwrap_or(ehr_gateway::config::LOCALHOST),
                base_port: args
                    .base_port
                    .or(file.base_port)
                    .unwrap_or(defaults::BASE_PORT),
                ledger_port: args
                    .ledger_port
                    .or(file.ledger_port)
                    .unwrap_or(defaults::LEDGER_PORT),
                orgs: if args.orgs.is_empty() {
                    file.orgs
                        .unwrap_or_else(|| defaults::ORGS.iter().map(|s| (*s).to_owned()).collect())
                } else {
                    args.orgs
                },
                database_url: common.database_url,
                database_schema_prefix: "ehr".into(),
                ipfs_api_url: common.ipfs_api_url,
                max_upload_bytes: common.max_upload_bytes,
                chunk_size: common.chunk_size,
                token_ttl_secs: common.token_ttl_secs,
                token_leeway_secs: common.token_leeway_secs,
                oidc: common.oidc,
                demo: args.demo,
                kek_hex: std::env::var("EHR_KEK").ok(),
                proxy: common.proxy,
                advertise: ehr_gateway::serve::split_pairs("--advertise", &args.advertise)?,
            };
            let c = up::start(cfg.clone())
                .await
                .context("starting the consortium")?;
            println!("ehrchain is up (data in {})", cfg.data_dir.display());
            println!("  ledger (Fabric Gateway gRPC): {}", c.ledger_url);
            for g in &c.gateways {
                println!(
                    "  {:<12} {}/api/v1   (OpenAPI: {}/openapi.json)",
                    g.org, g.url, g.url
                );
                if let Some(pw) = &g.admin_password {
                    println!(
                        "               admin password: {pw} (also in {}/admin-password)",
                        g.state.cfg.data_dir.display()
                    );
                }
            }
            if let Some(first) = c.gateways.first() {
                println!("\nFirst token:");
                println!(
                    "  curl -s -X POST {}/api/v1/auth/token -H 'content-type: application/json' \\\n       -d '{{\"username\":\"admin\",\"password\":\"<password>\"}}'",
                    first.url
                );
                println!(
                    "  (the admin password of each org is in <data-dir>/orgs/<org>/admin-password)"
                );
            }
            if !c.demo_users.is_empty() {
                println!("\nDemo accounts (password: {}):", up::DEMO_PASSWORD);
                for u in &c.demo_users {
                    let extra = u
                        .patient_id
                        .as_deref()
                        .map(|p| format!(" patient_id={p}"))
                        .unwrap_or_default();
                    println!("  {:<12} {:<14} {}{}", u.org, u.username, u.role, extra);
                }
            }
            println!("\nCtrl-C to stop.");
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            println!("stopping…");
            c.shutdown().await;
        }
    }
    Ok(())
}
