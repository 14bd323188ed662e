//! Harness for the end-to-end scenarios (`tests/*.rs`) and the benchmark
//! (`benches/gateway.rs`): starts a whole consortium (`ehr up` in-process)
//! on free ports and talks to it over HTTP only.
//!
//! Services: SQLite + the embedded blob store need nothing. The PostgreSQL +
//! IPFS variant takes `DATABASE_URL` and `IPFS_API_URL` from the environment
//! (`scripts/test.sh` starts them); when one is missing the test is skipped
//! with a loud message, except under `CI=true`, where it fails.

pub mod adversary;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use ehr_gateway::up::{self, Consortium, UpConfig};
use serde_json::{Value, json};

/// Which backing services a consortium uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Services {
    /// SQLite files + the embedded blob store.
    Embedded,
    /// PostgreSQL (`DATABASE_URL`, a fresh schema per run) + a real IPFS node (`IPFS_API_URL`).
    PostgresIpfs,
}

/// A running consortium and an HTTP client.
pub struct Net {
    pub c: Consortium,
    pub http: reqwest::Client,
    database_url: Option<String>,
    schema_prefix: String,
    _dir: tempfile::TempDir,
}

/// Reads a required service URL. `Ok(None)` means "skip": the variable is
/// unset and we are not under CI (the skip is printed loudly).
pub fn service_url(var: &str) -> Result<Option<String>> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(Some(v)),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            bail!(
                "{var} is not set but CI=true: this test needs the service (scripts/services.sh starts it)"
            )
        }
        _ => {
            eprintln!(
                "\n!!!!! SKIPPED: {var} is not set; this test needs that service. Run ./scripts/test.sh or set {var}. !!!!!\n"
            );
            Ok(None)
        }
    }
}

impl Net {
    /// Starts a consortium with `--demo` accounts. `None` when the services
    /// are missing outside CI (skip).
    pub async fn start(services: Services, max_upload_bytes: u64) -> Result<Option<Net>> {
        Self::start_in(
            services,
            max_upload_bytes,
            tempfile::tempdir()?,
            None,
            |_| {},
        )
        .await
    }

    /// A consortium whose blob store is the IPFS node at `ipfs_api_url`
    /// (e.g. one that is down), with SQLite.
    pub async fn start_with_ipfs(ipfs_api_url: &str) -> Result<Net> {
        let url = ipfs_api_url.to_owned();
        Self::start_in(
            Services::Embedded,
            1 << 20,
            tempfile::tempdir()?,
            None,
            |c| c.ipfs_api_url = Some(url),
        )
        .await?
        .context("embedded services are always there")
    }

    /// Like [`Net::start`] with an external OIDC provider instead of the
    /// built-in issuer.
    pub async fn start_oidc(oidc: ehr_gateway::config::OidcConfig) -> Result<Net> {
        Self::start_in(
            Services::Embedded,
            1 << 20,
            tempfile::tempdir()?,
            None,
            |c| c.oidc = Some(oidc),
        )
        .await?
        .context("embedded services are always there")
    }

    /// Like [`Net::start`], in a given data dir (kept by the returned `Net`)
    /// and, for PostgreSQL, with a given schema prefix: starting twice on the
    /// same pair is a restart. `customize` may change any setting last.
    pub async fn start_in(
        services: Services,
        max_upload_bytes: u64,
        dir: tempfile::TempDir,
        schema_prefix: Option<String>,
        customize: impl FnOnce(&mut UpConfig),
    ) -> Result<Option<Net>> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let (database_url, ipfs_api_url) = match services {
            Services::Embedded => (None, None),
            Services::PostgresIpfs => {
                let (Some(db), Some(ipfs)) =
                    (service_url("DATABASE_URL")?, service_url("IPFS_API_URL")?)
                else {
                    return Ok(None);
                };
                (Some(db), Some(ipfs))
            }
        };
        let schema_prefix = schema_prefix
            .unwrap_or_else(|| format!("ehr_t{}", hex::encode(rand::random::<[u8; 6]>())));
        let mut cfg = UpConfig {
            data_dir: dir.path().to_path_buf(),
            bind: ehr_gateway::config::LOCALHOST,
            base_port: 0,
            ledger_port: 0,
            orgs: ehr_gateway::config::defaults::ORGS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            database_url: database_url.clone(),
            database_schema_prefix: schema_prefix.clone(),
            ipfs_api_url,
            max_upload_bytes,
            chunk_size: ehr_gateway::crypto::stream::DEFAULT_CHUNK_SIZE,
            token_ttl_secs: 3600,
            token_leeway_secs: 30,
            oidc: None,
            demo: true,
            kek_hex: None,
            proxy: ehr_gateway::proxy::DEFAULT_SETTINGS,
            advertise: Default::default(),
        };
        customize(&mut cfg);
        let c = up::start(cfg).await.context("starting the consortium")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()?;
        Ok(Some(Net {
            c,
            http,
            database_url,
            schema_prefix,
            _dir: dir,
        }))
    }

    /// `http://…/api/v1` of an org.
    pub fn api(&self, org: &str) -> String {
        format!("{}/api/v1", self.c.url(org).unwrap_or("http://invalid"))
    }

    /// The patient id of a demo user.
    pub fn patient_id(&self, username: &str) -> Option<String> {
        self.c
            .demo_users
            .iter()
            .find(|u| u.username == username)
            .and_then(|u| u.patient_id.clone())
    }

    /// Logs a demo user in.
    pub async fn token(&self, org: &str, username: &str) -> Result<String> {
        let r = self
            .http
            .post(format!("{}/auth/token", self.api(org)))
            .json(&json!({"username": username, "password": up::DEMO_PASSWORD}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("login of {username} at {org}: {}", r.status());
        }
        let v: Value = r.json().await?;
        Ok(v["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned())
    }

    /// Stops everything but keeps the state; returns the data dir and schema
    /// prefix for [`Net::start_in`].
    pub async fn stop_keep(self) -> (tempfile::TempDir, String) {
        self.c.shutdown().await;
        (self._dir, self.schema_prefix)
    }

    /// Stops everything and drops the PostgreSQL schemas of this run.
    pub async fn stop(self) -> Result<()> {
        let orgs: Vec<String> = self.c.gateways.iter().map(|g| g.org.clone()).collect();
        self.c.shutdown().await;
        if let Some(url) = &self.database_url {
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(url).await?;
            for org in orgs {
                let schema = format!("{}_{}", self.schema_prefix, org.replace('-', "_"));
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&pool)
                .await?;
            }
            pool.close().await;
        }
        Ok(())
    }
}

/// Asserts a response is an error with the API's shape and returns its code.
pub async fn error_code(r: reqwest::Response) -> Result<(u16, String)> {
    let status = r.status().as_u16();
    let text = r.text().await?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("error body of a {status} is not JSON: {text:?}"))?;
    let code = v["error"]["code"]
        .as_str()
        .context("no error.code")?
        .to_owned();
    v["error"]["message"].as_str().context("no error.message")?;
    Ok((status, code))
}
