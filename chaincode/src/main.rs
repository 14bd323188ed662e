//! `ehr-chaincode`: the ehrchain contract served as a Fabric chaincode
//! (chaincode-as-a-service). A Fabric 2.4+ peer, configured with the CCaaS
//! external builder and a `connection.json` naming this address, dials it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ehr_chaincode::contract::EhrContract;
use ehr_chaincode::shim::{self, ChaincodeService, ShimConfig, TlsFiles};
use tracing_subscriber::EnvFilter;

/// Serve the ehrchain chaincode for a Fabric peer (chaincode-as-a-service).
///
/// Every option can also be given by the environment variable named in
/// brackets, as Fabric's CCaaS images are configured. Logs go to stderr;
/// set RUST_LOG (e.g. `info`, `ehr_chaincode=debug`) to change the level.
#[derive(Debug, Parser)]
#[command(name = "ehr-chaincode", version)]
struct Args {
    /// Address to listen on, `host:port` (e.g. `0.0.0.0:9999` in a
    /// container, `127.0.0.1:9999` locally). The peer's connection.json
    /// `address` must reach it.
    #[arg(long, env = "CHAINCODE_SERVER_ADDRESS")]
    address: String,

    /// The chaincode package id the peer installed (`label:sha256-hex`, as
    /// printed by `peer lifecycle chaincode install` / `calculatepackageid`).
    /// Sent to the peer when it connects; must match exactly.
    #[arg(long = "chaincode-id", env = "CHAINCODE_ID")]
    chaincode_id: String,

    /// PEM private key of the server's TLS certificate. With
    /// --tls-cert-file enables TLS (connection.json `tls_required: true`).
    #[arg(long, env = "CHAINCODE_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,

    /// PEM TLS certificate (chain) of the server; its CA goes in
    /// connection.json `root_cert`.
    #[arg(long, env = "CHAINCODE_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,

    /// PEM CA certificate(s) that the peer's client certificate must chain
    /// to. Turns on mutual TLS (connection.json `client_auth_required: true`).
    /// Needs --tls-key-file and --tls-cert-file.
    #[arg(long, env = "CHAINCODE_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    tls_client_ca_file: Option<PathBuf>,

    /// Seconds a transaction waits for the peer's answer to one state request.
    #[arg(long, env = "CHAINCODE_REQUEST_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    request_timeout_secs: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();

    let mut config = ShimConfig::new(args.chaincode_id.clone())?;
    config.request_timeout = Duration::from_secs(args.request_timeout_secs);

    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(
            TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca_file.clone(),
            }
            .load()
            .context("loading TLS files")?,
        ),
        _ => None,
    };

    let listener = tokio::net::TcpListener::bind(&args.address)
        .await
        .with_context(|| format!("binding {}", args.address))?;
    let local = listener.local_addr().context("reading the bound address")?;
    tracing::info!(
        address = %local,
        chaincode_id = %args.chaincode_id,
        tls = tls.is_some(),
        mutual_tls = args.tls_client_ca_file.is_some(),
        "ehr-chaincode listening"
    );

    let service = ChaincodeService::new(EhrContract::new(), config);
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown_signal().await;
        let _ = signalled.send(());
    };
    let server = shim::serve(listener, service, tls, shutdown);
    // Streams are ended on shutdown; should a connection still linger, do
    // not wait for it forever.
    let deadline = async move {
        match on_signal.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections did not close in time"),
    }
    tracing::info!("ehr-chaincode stopped");
    Ok(())
}

/// How long shutdown waits for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
