//! Harness for the end-to-end scenarios (`tests/*.rs`) and the benchmark
//! (`benches/gateway.rs`): starts a whole consortium (`ehr up` in-process)
//! on free ports and talks to it over HTTP only.
//!
//! Services: SQLite + the embedded blob store need nothing. The PostgreSQL +
//! IPFS variant takes `DATABASE_URL` and `IPFS_API_URL` from the environment
//! (`scripts/test.sh` starts them). When one is missing: under `CI=true` the
//! test fails; else, when a Docker engine answers (`DOCKER_HOST`, or
//! `/var/run/docker.sock`), the harness starts the service in a container
//! (testcontainers: `postgres` with trust auth, `ipfs/kubo` offline) for the
//! test's lifetime; else the test is skipped with a loud message.

pub mod adversary;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use ehr_gateway::up::{self, Consortium, UpConfig};
use serde_json::{Value, json};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

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
    /// Containers started for this run (stopped when the `Net` goes).
    _services: Vec<Service>,
}

/// A backing service of a test: its URL and, when the harness started it,
/// the container serving it (dropping it stops and removes the container).
pub struct Service {
    pub url: String,
    _container: Option<ContainerAsync<GenericImage>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("url", &self.url)
            .field(
                "container",
                &self._container.as_ref().map(|c| c.id().to_owned()),
            )
            .finish()
    }
}

/// What to do about a service a test needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The environment names it.
    Use(String),
    /// Start it in a container.
    Container,
    /// Skip the test (loudly).
    Skip,
    /// Fail the test: CI must have every service.
    Fail(String),
}

/// The decision, from the variable's value, `CI` and whether a Docker
/// engine answers.
pub fn plan(var: &str, value: Option<&str>, ci: bool, docker: bool) -> Plan {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => Plan::Use(v.to_owned()),
        None if ci => Plan::Fail(format!(
            "{var} is not set but CI=true: this test needs the service (scripts/services.sh starts it)"
        )),
        None if docker => Plan::Container,
        None => Plan::Skip,
    }
}

/// Where a Docker engine would answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerEndpoint {
    Unix(std::path::PathBuf),
    Tcp(String),
}

/// The engine testcontainers would use: `DOCKER_HOST` (`unix://…` or
/// `tcp://…`), else `/var/run/docker.sock`. `None` for a `DOCKER_HOST` this
/// probe cannot check (e.g. `ssh://`).
pub fn docker_endpoint(docker_host: Option<&str>) -> Option<DockerEndpoint> {
    match docker_host.map(str::trim).filter(|h| !h.is_empty()) {
        None => Some(DockerEndpoint::Unix("/var/run/docker.sock".into())),
        Some(h) => {
            if let Some(p) = h.strip_prefix("unix://") {
                Some(DockerEndpoint::Unix(p.into()))
            } else {
                h.strip_prefix("tcp://")
                    .or_else(|| h.strip_prefix("http://"))
                    .map(|a| DockerEndpoint::Tcp(a.trim_end_matches('/').to_owned()))
            }
        }
    }
}

/// Whether a Docker engine answers `GET /_ping` with `OK` at `endpoint`
/// within two seconds (a TLS-only engine does not count).
pub async fn docker_reachable(endpoint: &DockerEndpoint) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PING: &[u8] = b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n";
    async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) -> bool {
        if s.write_all(PING).await.is_err() {
            return false;
        }
        let mut buf = Vec::new();
        let _ = (&mut s).take(4096).read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf);
        text.starts_with("HTTP/1.")
            && text.lines().next().is_some_and(|l| l.contains(" 200"))
            && text.trim_end().ends_with("OK")
    }
    let probe = async {
        match endpoint {
            DockerEndpoint::Unix(p) => match tokio::net::UnixStream::connect(p).await {
                Ok(s) => ask(s).await,
                Err(_) => false,
            },
            DockerEndpoint::Tcp(a) => match tokio::net::TcpStream::connect(a.as_str()).await {
                Ok(s) => ask(s).await,
                Err(_) => false,
            },
        }
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .unwrap_or(false)
}

/// Resolves a required service: from the environment, else (outside CI,
/// with a Docker engine) a container, else `Ok(None)` = skip (printed
/// loudly); under `CI=true` a missing service is an error.
pub async fn service_url(var: &str) -> Result<Option<Service>> {
    let value = std::env::var(var).ok();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let endpoint = docker_endpoint(std::env::var("DOCKER_HOST").ok().as_deref());
    resolve_service(var, value.as_deref(), ci, endpoint.as_ref()).await
}

/// [`service_url`] with its inputs given (for tests of the decision).
pub async fn resolve_service(
    var: &str,
    value: Option<&str>,
    ci: bool,
    docker: Option<&DockerEndpoint>,
) -> Result<Option<Service>> {
    // Probe the engine only when the answer matters.
    let needs_probe = value.is_none_or(|v| v.trim().is_empty()) && !ci;
    let docker_up = match docker {
        Some(e) if needs_probe => docker_reachable(e).await,
        _ => false,
    };
    match plan(var, value, ci, docker_up) {
        Plan::Use(url) => Ok(Some(Service {
            url,
            _container: None,
        })),
        Plan::Fail(msg) => bail!(msg),
        Plan::Skip => {
            eprintln!(
                "\n!!!!! SKIPPED: {var} is not set and no Docker engine answers; this test needs that service. Run ./scripts/test.sh or set {var}. !!!!!\n"
            );
            Ok(None)
        }
        Plan::Container => {
            let s = start_container(var)
                .await
                .with_context(|| format!("{var} is not set; starting it in a container"))?;
            eprintln!("{var} is not set: using a container at {}", s.url);
            Ok(Some(s))
        }
    }
}

/// Services of a stopped [`Net`] waiting for its restart, by schema prefix
/// (containers keep running meanwhile).
static PARKED: std::sync::Mutex<Vec<(String, (Service, Service))>> =
    std::sync::Mutex::new(Vec::new());

fn park(prefix: &str, services: (Service, Service)) {
    if let Ok(mut p) = PARKED.lock() {
        p.push((prefix.to_owned(), services));
    }
}

fn unpark(prefix: &str) -> Option<(Service, Service)> {
    let mut p = PARKED.lock().ok()?;
    let i = p.iter().position(|(k, _)| k == prefix)?;
    Some(p.swap_remove(i).1)
}

/// Starts the service `var` names in a container and waits until it answers.
async fn start_container(var: &str) -> Result<Service> {
    match var {
        "DATABASE_URL" => {
            let c = GenericImage::new("postgres", "16-alpine")
                .with_exposed_port(5432.tcp())
                // The init server logs readiness on stdout, the real one on stderr.
                .with_wait_for(WaitFor::message_on_stdout(
                    "database system is ready to accept connections",
                ))
                .with_wait_for(WaitFor::message_on_stderr(
                    "database system is ready to accept connections",
                ))
                .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
                .start()
                .await?;
            let host = c.get_host().await?;
            let port = c.get_host_port_ipv4(5432.tcp()).await?;
            let url = format!("postgres://postgres@{host}:{port}/postgres");
            sqlx::any::install_default_drivers();
            let mut last = None;
            for _ in 0..60 {
                match sqlx::AnyPool::connect(&url).await {
                    Ok(p) => {
                        p.close().await;
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if let Some(e) = last {
                bail!("PostgreSQL container does not answer: {e}");
            }
            Ok(Service {
                url,
                _container: Some(c),
            })
        }
        "IPFS_API_URL" => {
            let c = GenericImage::new("ipfs/kubo", "v0.32.1")
                .with_exposed_port(5001.tcp())
                .with_wait_for(WaitFor::message_on_stdout("Daemon is ready"))
                // Offline: no swarm, no bootstrap peers, nothing leaves the container.
                .with_cmd(["daemon", "--offline", "--migrate=true"])
                .start()
                .await?;
            let host = c.get_host().await?;
            let port = c.get_host_port_ipv4(5001.tcp()).await?;
            Ok(Service {
                url: format!("http://{host}:{port}"),
                _container: Some(c),
            })
        }
        other => bail!("no container known for {other}"),
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
        let mut held = Vec::new();
        let (database_url, ipfs_api_url) = match services {
            Services::Embedded => (None, None),
            Services::PostgresIpfs => {
                // A restart ([`Net::stop_keep`]) gets the services it had.
                let parked = schema_prefix.as_deref().and_then(unpark);
                let (db, ipfs) = match parked {
                    Some(pair) => pair,
                    None => {
                        let Some(db) = service_url("DATABASE_URL").await? else {
                            return Ok(None);
                        };
                        let Some(ipfs) = service_url("IPFS_API_URL").await? else {
                            return Ok(None);
                        };
                        (db, ipfs)
                    }
                };
                let urls = (Some(db.url.clone()), Some(ipfs.url.clone()));
                held.push(db);
                held.push(ipfs);
                urls
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
            _services: held,
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
        let mut services = self._services.into_iter();
        if let (Some(db), Some(ipfs)) = (services.next(), services.next()) {
            park(&self.schema_prefix, (db, ipfs));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan() {
        assert_eq!(plan("X", Some("u"), true, true), Plan::Use("u".into()));
        assert_eq!(plan("X", Some("u"), false, false), Plan::Use("u".into()));
        assert!(
            matches!(plan("X", None, true, true), Plan::Fail(_)),
            "CI never falls back"
        );
        assert!(matches!(plan("X", Some("  "), true, false), Plan::Fail(_)));
        assert_eq!(plan("X", None, false, true), Plan::Container);
        assert_eq!(plan("X", Some(""), false, true), Plan::Container);
        assert_eq!(plan("X", None, false, false), Plan::Skip);
    }

    #[test]
    fn where_the_engine_is() {
        assert_eq!(
            docker_endpoint(None),
            Some(DockerEndpoint::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            docker_endpoint(Some("unix:///run/user/1000/docker.sock")),
            Some(DockerEndpoint::Unix("/run/user/1000/docker.sock".into()))
        );
        assert_eq!(
            docker_endpoint(Some("tcp://127.0.0.1:2375/")),
            Some(DockerEndpoint::Tcp("127.0.0.1:2375".into()))
        );
        assert_eq!(docker_endpoint(Some("ssh://me@host")), None);
    }

    /// A fake engine on a Unix socket that answers every connection with `reply`.
    fn fake_engine(dir: &std::path::Path, reply: &'static str) -> DockerEndpoint {
        let path = dir.join(format!("docker-{}.sock", reply.len()));
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        DockerEndpoint::Unix(path)
    }

    #[tokio::test]
    async fn detects_an_engine_only_when_it_answers() {
        let dir = tempfile::tempdir().unwrap();
        let missing = DockerEndpoint::Unix(dir.path().join("none.sock"));
        assert!(!docker_reachable(&missing).await);
        let ok = fake_engine(
            dir.path(),
            "HTTP/1.1 200 OK\r\nApi-Version: 1.47\r\nContent-Length: 2\r\n\r\nOK",
        );
        assert!(docker_reachable(&ok).await);
        let not_docker = fake_engine(dir.path(), "HTTP/1.1 404 Not Found\r\n\r\nno");
        assert!(!docker_reachable(&not_docker).await);
        // A closed TCP port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!docker_reachable(&DockerEndpoint::Tcp(format!("127.0.0.1:{port}"))).await);
    }

    /// Without a Docker engine the resolution falls through exactly as
    /// before: skip outside CI, fail under CI. (No engine runs on the
    /// project's machine, so the container branch itself is not run here.)
    #[tokio::test]
    async fn without_docker_it_skips_or_fails() {
        let dir = tempfile::tempdir().unwrap();
        let absent = DockerEndpoint::Unix(dir.path().join("docker.sock"));
        let r = resolve_service("DATABASE_URL", None, false, Some(&absent)).await;
        assert!(matches!(r, Ok(None)), "skip: {r:?}");
        let r = resolve_service("DATABASE_URL", None, false, None).await;
        assert!(
            matches!(r, Ok(None)),
            "skip without a probe-able engine: {r:?}"
        );
        let r = resolve_service("IPFS_API_URL", None, true, Some(&absent)).await;
        assert!(r.is_err(), "CI fails");
        let r = resolve_service(
            "IPFS_API_URL",
            Some("http://127.0.0.1:5201"),
            false,
            Some(&absent),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r.url, "http://127.0.0.1:5201");
        // And the real environment of this machine: DOCKER_HOST unset and
        // no /var/run/docker.sock means no engine.
        if std::env::var_os("DOCKER_HOST").is_none()
            && !std::path::Path::new("/var/run/docker.sock").exists()
        {
            let e = docker_endpoint(None).unwrap();
            assert!(!docker_reachable(&e).await);
        }
    }
}
