//! `ehr up`: a whole consortium on one machine — the devnet ledger with the
//! chaincode in-process, one blob store, and one gateway per org on its own
//! port. State lives in the data dir and survives restarts.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ehr_chaincode::contract::EhrContract;
use ehr_ipfs::BlobStore;
use ehr_ledger::{Devnet, DevnetConfig, OrgConfig};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, Gateway};
use crate::auth::jwks::JwksCache;
use crate::auth::jwt::{Issuer, KeySource, Verifier};
use crate::config::{GatewayConfig, OidcConfig};
use crate::crypto::kek::Kek;
use crate::db::Db;
use crate::db::users::User;
use crate::fabric::FabricChain;
use crate::metrics::Metrics;
use crate::proxy::SERVICE_USER;

/// The channel the devnet serves.
pub const CHANNEL: &str = "ehr";
/// The chaincode name.
pub const CHAINCODE: &str = "ehr";

/// Resolved settings of `ehr up`.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub data_dir: PathBuf,
    pub bind: IpAddr,
    pub base_port: u16,
    pub ledger_port: u16,
    pub orgs: Vec<String>,
    pub database_url: Option<String>,
    /// Prefix of PostgreSQL schemas (`<prefix>_<org>`); lets test runs share a database.
    pub database_schema_prefix: String,
    pub ipfs_api_url: Option<String>,
    pub max_upload_bytes: u64,
    pub chunk_size: u32,
    pub token_ttl_secs: u64,
    pub token_leeway_secs: u64,
    pub oidc: Option<OidcConfig>,
    pub demo: bool,
    /// `EHR_KEK`: the KEK as hex (all orgs); else one `kek.key` per org dir.
    pub kek_hex: Option<String>,
    /// Threshold proxy re-encryption settings of every gateway.
    pub proxy: crate::proxy::ProxySettings,
    /// URLs other gateways use to reach an org's gateway, when not its bound address.
    pub advertise: BTreeMap<String, String>,
}

/// One running gateway.
pub struct RunningGateway {
    pub org: String,
    pub url: String,
    pub state: AppState,
    /// The bootstrap admin's password when it was created by this start.
    pub admin_password: Option<String>,
    handle: JoinHandle<()>,
    /// The event projector, the kfrag outbox, key registration.
    workers: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// Waits for the server and the background workers to finish (after
    /// the stop signal) and closes the database.
    pub async fn join(self) {
        let _ = self.handle.await;
        for w in self.workers {
            let _ = w.await;
        }
        self.state.db.close().await;
    }
}

/// Demo accounts created by `--demo`.
#[derive(Debug, Clone)]
pub struct DemoUser {
    pub org: String,
    pub username: String,
    pub password: String,
    pub role: String,
    pub patient_id: Option<String>,
}

/// A running consortium.
pub struct Consortium {
    pub devnet: Arc<Devnet>,
    pub ledger_url: String,
    pub gateways: Vec<RunningGateway>,
    pub demo_users: Vec<DemoUser>,
    shutdown: tokio::sync::watch::Sender<bool>,
    ledger: Option<ehr_ledger::service::ServeHandle>,
}

impl Consortium {
    /// The gateway URL of `org`.
    pub fn url(&self, org: &str) -> Option<&str> {
        self.gateways
            .iter()
            .find(|g| g.org == org)
            .map(|g| g.url.as_str())
    }

    /// Graceful shutdown: stop accepting, drain in-flight requests, stop the ledger.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for g in self.gateways.drain(..) {
            g.join().await;
        }
        if let Some(l) = self.ledger.take() {
            let _ = l.shutdown().await;
        }
    }
}

fn schema_name(prefix: &str, org: &str) -> String {
    format!("{prefix}_{}", org.replace('-', "_"))
}

/// Starts everything.
pub async fn start(cfg: UpConfig) -> anyhow::Result<Consortium> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    crate::config::validate_limits(cfg.max_upload_bytes, cfg.chunk_size)?;
    cfg.proxy.validate().map_err(anyhow::Error::msg)?;
    for org in cfg.advertise.keys() {
        anyhow::ensure!(
            cfg.orgs.contains(org),
            "--advertise names {org:?}, which is not an org of this consortium"
        );
    }
    // Org CAs and KEKs.
    let mut orgs = Vec::new();
    for org in &cfg.orgs {
        anyhow::ensure!(crate::config::valid_org(org), "invalid org name {org:?}");
        let dir = cfg.data_dir.join("orgs").join(org);
        std::fs::create_dir_all(&dir)?;
        let kek = Kek::load_or_create(cfg.kek_hex.as_deref(), &dir)?;
        let ca = crate::identity::load_or_create_ca(&dir, org, &kek)?;
        orgs.push((org.clone(), dir, kek, ca));
    }
    let org_cas: BTreeMap<String, String> = orgs
        .iter()
        .map(|(o, _, _, ca)| (o.clone(), ca.cert_pem().to_owned()))
        .collect();

    // The ledger.
    let mut org_cfgs = Vec::new();
    for (_, _, _, ca) in &orgs {
        org_cfgs.push(OrgConfig::from_ca(ca)?);
    }
    let dcfg = DevnetConfig::new(cfg.data_dir.join("ledger"), CHANNEL, org_cfgs)
        .with_chaincode(CHAINCODE, Arc::new(EhrContract::new()));
    let devnet = Arc::new(Devnet::open(dcfg).context("opening the devnet ledger")?);
    let ledger_addr = SocketAddr::new(cfg.bind, cfg.ledger_port);
    let ledger = devnet.serve(ledger_addr).await.with_context(|| {
        format!(
            "serving the ledger's Fabric Gateway on {ledger_addr} (is a Fabric peer or another \
             `ehr up` using it? choose another with --ledger-port)"
        )
    })?;
    let ledger_url = format!("http://{}", ledger.local_addr);

    // The blob store.
    let blobs = open_blob_store(cfg.ipfs_api_url.as_deref(), &cfg.data_dir).await?;

    // Bind every listener first so peers know each other's URLs.
    let mut listeners = Vec::new();
    for (i, (org, ..)) in orgs.iter().enumerate() {
        let port = if cfg.base_port == 0 {
            0
        } else {
            cfg.base_port + i as u16
        };
        let l = TcpListener::bind(SocketAddr::new(cfg.bind, port))
            .await
            .with_context(|| {
                format!(
                    "binding the gateway of {org} to port {port} (choose others with --base-port)"
                )
            })?;
        let url = format!("http://{}", l.local_addr()?);
        listeners.push((l, url));
    }
    // What other gateways dial: the advertised URL, else the bound one.
    let peers: BTreeMap<String, String> = orgs
        .iter()
        .zip(&listeners)
        .map(|((o, ..), (_, u))| (o.clone(), cfg.advertise.get(o).unwrap_or(u).clone()))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let (tx, rx) = tokio::sync::watch::channel(false);

    let mut gateways = Vec::new();
    for ((org, dir, kek, ca), (listener, url)) in orgs.into_iter().zip(listeners) {
        let (database_url, database_schema) = match &cfg.database_url {
            Some(u) => (
                u.clone(),
                Some(schema_name(&cfg.database_schema_prefix, &org)),
            ),
            None => (crate::db::sqlite_url(&dir), None),
        };
        let gcfg = GatewayConfig {
            org: org.clone(),
            listen: listener.local_addr()?,
            data_dir: dir.clone(),
            database_url,
            database_schema,
            max_upload_bytes: cfg.max_upload_bytes,
            chunk_size: cfg.chunk_size,
            token_ttl_secs: cfg.token_ttl_secs,
            token_leeway_secs: cfg.token_leeway_secs,
            oidc: cfg.oidc.clone(),
            public_url: url,
            peers: peers.clone(),
            org_cas: org_cas.clone(),
            proxy: cfg.proxy,
        };
        gateways.push(
            start_gateway(GatewayParts {
                cfg: gcfg,
                kek,
                ca,
                listener,
                ledger_url: ledger_url.clone(),
                ledger_tls: None,
                devnet: Some(devnet.clone()),
                blobs: blobs.clone(),
                http: http.clone(),
                stop: rx.clone(),
                demo: cfg.demo,
            })
            .await?,
        );
    }
    let mut c = Consortium {
        devnet,
        ledger_url,
        gateways,
        demo_users: Vec::new(),
        shutdown: tx,
        ledger: Some(ledger),
    };
    if cfg.demo {
        c.demo_users = seed_demo(&c).await?;
    }
    Ok(c)
}

/// The IPFS node at `ipfs_api_url`, else the embedded store in `dir/blobs`.
pub async fn open_blob_store(
    ipfs_api_url: Option<&str>,
    dir: &std::path::Path,
) -> anyhow::Result<Arc<dyn BlobStore>> {
    Ok(match ipfs_api_url {
        Some(url) => Arc::new(ehr_ipfs::KuboStore::new(ehr_ipfs::KuboConfig::new(url))?),
        None => Arc::new(ehr_ipfs::EmbeddedStore::open(dir.join("blobs")).await?),
    })
}

/// What one org's gateway needs to start.
pub struct GatewayParts {
    pub cfg: GatewayConfig,
    pub kek: Kek,
    pub ca: ehr_ledger::msp::ca::OrgCa,
    pub listener: TcpListener,
    pub ledger_url: String,
    /// TLS to the ledger (a real Fabric peer); `None` for plaintext.
    pub ledger_tls: Option<crate::fabric::LedgerTls>,
    /// The in-process ledger, when there is one.
    pub devnet: Option<Arc<Devnet>>,
    pub blobs: Arc<dyn BlobStore>,
    pub http: reqwest::Client,
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub demo: bool,
}

/// Starts one org's gateway: database and migrations, service identity,
/// token issuer or OIDC verifier, ledger client, event projection,
/// reconciliation, the first admin, and the HTTP server.
pub async fn start_gateway(p: GatewayParts) -> anyhow::Result<RunningGateway> {
    let GatewayParts {
        cfg: gcfg,
        kek,
        ca,
        listener,
        ledger_url,
        ledger_tls,
        devnet,
        blobs,
        http,
        stop: rx,
        demo,
    } = p;
    let org = gcfg.org.clone();
    let dir = gcfg.data_dir.clone();
    let url = gcfg.public_url.clone();
    let db = Db::connect(&gcfg.database_url, gcfg.database_schema.as_deref())
        .await
        .with_context(|| format!("database of {org}"))?;
    // The gateway's own service identity (an org admin).
    let service_row = match db.identity(SERVICE_USER).await? {
        Some(r) => r,
        None => {
            let u = User {
                user_id: SERVICE_USER.into(),
                username: SERVICE_USER.into(),
                role: "admin".into(),
                attributes: Map::new(),
                patient_id: None,
            };
            let row = crate::identity::enroll(&ca, &kek, &u)?;
            db.put_identity(&row).await?;
            row
        }
    };
    let service = crate::identity::signer(&service_row, &kek)?;
    let (issuer, verifier) = match &gcfg.oidc {
        Some(o) => {
            let cache = JwksCache::new(
                &o.jwks_url,
                http.clone(),
                std::time::Duration::from_secs(300),
                std::time::Duration::from_secs(10),
            );
            (
                None,
                Verifier::new(
                    &o.issuer,
                    &o.audience,
                    gcfg.token_leeway_secs,
                    KeySource::Jwks(Arc::new(cache)),
                ),
            )
        }
        None => {
            // Stable across restarts and port changes.
            let i = Issuer::load_or_create(
                &dir,
                &format!("urn:ehrchain:issuer:{org}"),
                &format!("urn:ehrchain:gateway:{org}"),
                gcfg.token_ttl_secs,
            )?;
            let v = i.verifier(gcfg.token_leeway_secs);
            (Some(i), v)
        }
    };
    let chain = Arc::new(FabricChain::with_tls(
        &ledger_url,
        ledger_tls.as_ref(),
        CHANNEL,
        CHAINCODE,
        service.clone(),
        devnet,
    )?);
    let mut workers = vec![tokio::spawn(crate::projector::run(
        chain.clone(),
        db.clone(),
        rx.clone(),
    ))];
    // This org's reader and proxy keys, registered on-chain for grantors.
    let org_keys = crate::proxy::OrgKeys::load_or_create(&db, &kek)
        .await
        .with_context(|| format!("org keys of {org}"))?;
    let msp = crate::proxy::wire::consortium_msp(&gcfg.org_cas)
        .map_err(|e| anyhow::anyhow!("consortium CAs: {e}"))?;
    if let Err(e) = crate::proxy::keys::register(chain.as_ref(), &service, &org_keys).await {
        tracing::warn!(error = %e, %org, "could not register the org keys yet; retrying in the background");
        workers.push(tokio::spawn(crate::proxy::keys::register_until_done(
            chain.clone(),
            service.clone(),
            org_keys.reader.public.clone(),
            org_keys.proxy.public.clone(),
            rx.clone(),
        )));
    }
    let proxy = crate::proxy::ProxyState::new(gcfg.proxy, org_keys, msp);
    let state: AppState = Arc::new(Gateway {
        cfg: gcfg,
        db,
        kek,
        blobs: blobs.clone(),
        chain,
        ca,
        issuer,
        verifier,
        metrics: Metrics::new(),
        service,
        http: http.clone(),
        proxy,
    });
    workers.push(tokio::spawn(crate::proxy::grantor::run_outbox(
        state.clone(),
        rx.clone(),
    )));
    crate::reconcile::run(&state).await;
    let admin_password = bootstrap_admin(&state, demo).await?;
    let app = api::router(state.clone());
    let mut stop = rx.clone();
    let handle = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // No Nagle: small responses (and gRPC frames) must not wait for
        // the peer's delayed ACK (40 ms stalls otherwise).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
        });
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "gateway server failed");
        }
    });
    tracing::info!(%org, %url, "gateway listening");
    Ok(RunningGateway {
        org,
        url,
        state,
        admin_password,
        handle,
        workers,
    })
}

/// Username, role and attributes of a demo account.
type DemoAccount = (String, &'static str, Vec<(&'static str, &'static str)>);

/// The demo password of every seeded account (demo only!).
pub const DEMO_PASSWORD: &str = "demo-password";

/// Creates the org's first admin when the org has no login yet; returns its
/// password (random, or the demo password with `--demo`), also written to
/// `admin-password` (0600) in the org dir.
async fn bootstrap_admin(state: &AppState, demo: bool) -> anyhow::Result<Option<String>> {
    if state.db.user_by_username("admin").await?.is_some() {
        return Ok(None);
    }
    let password = if demo {
        DEMO_PASSWORD.to_owned()
    } else {
        hex::encode(rand::random::<[u8; 12]>())
    };
    crate::api::handlers::create_user_as(
        state,
        &state.service,
        "admin".into(),
        password.clone(),
        "admin".into(),
        Map::new(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating the admin: {e}"))?;
    let path = state.cfg.data_dir.join("admin-password");
    if !path.exists() {
        crate::fsutil::write_private(&path, password.as_bytes())?;
    }
    Ok(Some(password))
}

/// The demo accounts: per org a patient, a clinician and an auditor; at
/// hospital-b (or the second org) a cardiology and a dermatology clinician.
/// Idempotent: existing usernames are kept.
async fn seed_demo(c: &Consortium) -> anyhow::Result<Vec<DemoUser>> {
    let mut out = Vec::new();
    for (i, g) in c.gateways.iter().enumerate() {
        let suffix = g.org.rsplit('-').next().unwrap_or(&g.org).to_owned();
        let mut accounts: Vec<DemoAccount> = vec![
            (format!("patient-{suffix}"), "patient", vec![]),
            (format!("auditor-{suffix}"), "auditor", vec![]),
        ];
        if i == 1 {
            accounts.push((
                format!("cardio-{suffix}"),
                "clinician",
                vec![("department", "cardiology"), ("specialty", "cardiology")],
            ));
            accounts.push((
                format!("derm-{suffix}"),
                "clinician",
                vec![("department", "dermatology"), ("specialty", "dermatology")],
            ));
        } else {
            accounts.push((
                format!("doctor-{suffix}"),
                "clinician",
                vec![("department", "general")],
            ));
        }
        out.push(DemoUser {
            org: g.org.clone(),
            username: "admin".into(),
            password: DEMO_PASSWORD.into(),
            role: "admin".into(),
            patient_id: None,
        });
        for (username, role, attrs) in accounts {
            let existing = g.state.db.user_by_username(&username).await?;
            let patient_id = match existing {
                Some(u) => u.patient_id,
                None => {
                    let attributes: Map<String, Value> = attrs
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                        .collect();
                    let (created, _) = crate::api::handlers::create_user_as(
                        &g.state,
                        &g.state.service,
                        username.clone(),
                        DEMO_PASSWORD.into(),
                        role.into(),
                        attributes,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("seeding {username}: {e}"))?;
                    created.patient_id
                }
            };
            out.push(DemoUser {
                org: g.org.clone(),
                username,
                password: DEMO_PASSWORD.into(),
                role: role.into(),
                patient_id,
            });
        }
    }
    Ok(out)
}
