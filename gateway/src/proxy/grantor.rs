//! Grantor side: a consent to another org becomes a threshold grant — kfrags
//! made from the patient's key (held here, custodial) to the grantee org's
//! registered reader key, sealed one per proxy org, queued in the outbox
//! *before* the grant is submitted (nothing is lost on a crash), recorded
//! on-chain with their commitments, then delivered to each proxy; the
//! outbox worker retries what did not arrive.

use std::time::Duration;

use ehr_proto::ehr::proxy::v1::DeliverKfragRequest;
use ehr_proto::ehr::proxy::v1::key_proxy_client::KeyProxyClient;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::keys::{self, RegisteredKeys};
use super::wire;
use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::chain::{ChainError, SigningIdentity};
use crate::crypto::sealer::SealedKey;
use crate::crypto::threshold::{MAX_SHARES, PreGrant, ProxyKey, ThresholdGrant, secret_key_of};

/// A grant that never reached the ledger is forgotten after this long.
pub const ORPHAN_AFTER_SECS: i64 = 120;
/// How often the outbox is retried.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// One kfrag sealed to its proxy, as a patient's own client sends it
/// (base64 of the Umbral capsule and DEM ciphertext).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientSealedKfrag {
    pub org: String,
    pub capsule: String,
    pub ciphertext: String,
}

/// `key_grant` in a consent request: how to share the key (all optional).
/// With `pre` and `sealed_kfrags` the patient's own client made the kfrags
/// (patient-held key: `ehr key grant`); the gateway checks and relays them.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyGrantOptions {
    /// Client-made grant metadata (with `sealed_kfrags`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub pre: Option<PreGrant>,
    /// Client-made sealed kfrags, one per `pre.proxies`, in that order.
    #[serde(default)]
    pub sealed_kfrags: Option<Vec<ClientSealedKfrag>>,
    /// t: proxies needed to open the key (default: the gateway's setting).
    #[serde(default)]
    pub threshold: Option<u32>,
    /// n: proxies holding a key fragment (default: the gateway's setting,
    /// or the number of `proxies` given).
    #[serde(default)]
    pub shares: Option<u32>,
    /// Which orgs act as proxies (default: chosen from the orgs registered
    /// on-chain, the grantee org last).
    #[serde(default)]
    pub proxies: Option<Vec<String>>,
}

/// The key part of a grant's answer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyGrantOutcome {
    pub threshold: u32,
    pub shares: u32,
    pub proxies: Vec<String>,
    /// Proxies that accepted their kfrag.
    pub delivered: Vec<String>,
    /// Proxies still to be delivered to (retried in the background).
    pub pending: Vec<String>,
}

/// Picks `n` proxy orgs: the named ones (checked), else registered orgs in
/// order with the grantee org last (so t-of-n needs other orgs too).
pub fn choose_proxies(
    registered: &std::collections::BTreeMap<String, RegisteredKeys>,
    grantee_org: &str,
    named: Option<&[String]>,
    n: usize,
) -> ApiResult<Vec<String>> {
    if let Some(named) = named {
        let mut seen = std::collections::BTreeSet::new();
        for p in named {
            if !seen.insert(p) {
                return Err(ApiError::bad_request(format!(
                    "key_grant.proxies lists {p:?} twice"
                )));
            }
            if !registered.contains_key(p) {
                return Err(ApiError::unprocessable(format!(
                    "proxy {p:?} has not registered its keys on-chain"
                )));
            }
        }
        if named.len() != n {
            return Err(ApiError::bad_request(format!(
                "key_grant.proxies lists {} orgs but shares is {n}",
                named.len()
            )));
        }
        return Ok(named.to_vec());
    }
    let mut orgs: Vec<String> = registered
        .keys()
        .filter(|o| o.as_str() != grantee_org)
        .cloned()
        .collect();
    if registered.contains_key(grantee_org) {
        orgs.push(grantee_org.to_owned());
    }
    if orgs.len() < n {
        return Err(ApiError::unprocessable(format!(
            "a {n}-proxy grant needs {n} organisations with registered keys; the consortium has {}",
            orgs.len()
        )));
    }
    orgs.truncate(n);
    Ok(orgs)
}

/// A prepared grant: the `pre` metadata for `GrantConsent` and the sealed
/// kfrags, already queued in the outbox under `consent_id`.
pub struct Prepared {
    pub consent_id: String,
    pub pre: PreGrant,
}

/// Makes the kfrags of a grant of `patient_id`'s key to `grantee_org` and
/// queues them. The caller submits `GrantConsent` with `consent_id` and
/// `pre`, then calls [`deliver_all`] (or [`abandon`] if the submit failed).
pub async fn prepare(
    app: &AppState,
    patient_id: &str,
    grantee_org: &str,
    opts: &KeyGrantOptions,
) -> ApiResult<Prepared> {
    if opts.pre.is_some() || opts.sealed_kfrags.is_some() {
        return accept_client_grant(app, grantee_org, opts).await;
    }
    let settings = app.proxy.settings;
    let shares = opts
        .shares
        .or(opts.proxies.as_ref().map(|p| p.len() as u32))
        .unwrap_or(settings.shares);
    let threshold = opts.threshold.unwrap_or(settings.threshold.min(shares));
    super::ProxySettings {
        threshold,
        shares,
        ..settings
    }
    .validate()
    .map_err(|m| ApiError::bad_request(format!("key_grant: {m}")))?;
    let row = app.db.patient_identity(patient_id).await?.ok_or_else(|| {
        ApiError::conflict(
            "this gateway does not hold the patient's key: grants are made at the patient's home gateway",
        )
    })?;
    let pair = crate::identity::umbral_keys(&row, &app.kek).map_err(ApiError::internal)?;
    let registered = keys::consortium(app.chain.as_ref(), &app.service).await?;
    let grantee_pk = super::chain_public_key(
        "reader key",
        &grantee_keys(&registered, grantee_org)?.reader_public_key,
    )?;
    let proxies = choose_proxies(
        &registered,
        grantee_org,
        opts.proxies.as_deref(),
        shares as usize,
    )?;
    let mut proxy_keys = Vec::with_capacity(proxies.len());
    for org in &proxies {
        let k = &registered[org];
        proxy_keys.push(ProxyKey {
            org: org.clone(),
            public_key: super::chain_public_key("proxy key", &k.proxy_public_key)?,
        });
    }
    let sk = secret_key_of(&pair).map_err(ApiError::internal)?;
    let signer = pair.signer().map_err(ApiError::internal)?;
    let grant =
        ThresholdGrant::generate(&sk, &signer, &grantee_pk, &proxy_keys, threshold as usize)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    queue(
        app,
        grant.metadata,
        grant.sealed_kfrags.iter().map(|s| (&s.org, &s.ciphertext)),
    )
    .await
}

/// `org`'s registered keys (422 when it registered none).
fn grantee_keys<'a>(
    registered: &'a std::collections::BTreeMap<String, RegisteredKeys>,
    org: &str,
) -> ApiResult<&'a RegisteredKeys> {
    registered.get(org).ok_or_else(|| {
        ApiError::unprocessable(format!(
            "organisation {org:?} has not registered its keys on-chain"
        ))
    })
}

/// Queues a grant's sealed kfrags (one per proxy org) in the outbox under a
/// new consent id, before the grant is submitted.
async fn queue<'a>(
    app: &AppState,
    pre: PreGrant,
    sealed: impl Iterator<Item = (&'a String, &'a SealedKey)>,
) -> ApiResult<Prepared> {
    let mut items = Vec::new();
    for (org, key) in sealed {
        items.push((
            org.clone(),
            serde_json::to_string(key).map_err(ApiError::internal)?,
        ));
    }
    let consent_id = crate::api::handlers::random_id("c-");
    app.db.outbox_put(&consent_id, &items).await?;
    Ok(Prepared { consent_id, pre })
}

/// A grant whose kfrags the patient's own client made: checks that it is
/// a grant to `grantee_org`'s registered reader key over registered proxy
/// orgs, one sealed kfrag per proxy in order, and queues the kfrags. The
/// proxies check each kfrag against its commitment and the verifying key.
async fn accept_client_grant(
    app: &AppState,
    grantee_org: &str,
    opts: &KeyGrantOptions,
) -> ApiResult<Prepared> {
    use base64::Engine;
    let (Some(pre), Some(sealed)) = (&opts.pre, &opts.sealed_kfrags) else {
        return Err(ApiError::bad_request(
            "key_grant.pre and key_grant.sealed_kfrags go together",
        ));
    };
    if opts.threshold.is_some() || opts.shares.is_some() || opts.proxies.is_some() {
        return Err(ApiError::bad_request(
            "with key_grant.pre, threshold/shares/proxies come from pre",
        ));
    }
    let n = pre.proxies.len();
    if !(1 <= pre.threshold
        && pre.threshold <= pre.shares
        && pre.shares as usize == n
        && n <= MAX_SHARES
        && pre.kfrag_commitments.len() == n)
    {
        return Err(ApiError::bad_request(
            "key_grant.pre needs 1 <= threshold <= shares = |proxies| = |kfrag_commitments| <= 16",
        ));
    }
    if sealed.len() != n || sealed.iter().zip(&pre.proxies).any(|(s, p)| &s.org != p) {
        return Err(ApiError::bad_request(
            "key_grant.sealed_kfrags must hold one kfrag per pre.proxies, in the same order",
        ));
    }
    if pre.verifying_key.is_none() {
        return Err(ApiError::bad_request(
            "key_grant.pre.verifying_key is required",
        ));
    }
    let registered = keys::consortium(app.chain.as_ref(), &app.service).await?;
    let want = super::key_bytes(
        "reader key",
        &grantee_keys(&registered, grantee_org)?.reader_public_key,
    )?;
    let got = pre
        .grantee_public_key
        .strip_prefix("0x")
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| ApiError::bad_request("key_grant.pre.grantee_public_key must be 0x-hex"))?;
    if got != want {
        return Err(ApiError::unprocessable(format!(
            "key_grant.pre.grantee_public_key is not {grantee_org}'s registered reader key"
        )));
    }
    for p in &pre.proxies {
        if !registered.contains_key(p) {
            return Err(ApiError::unprocessable(format!(
                "proxy {p:?} has not registered its keys on-chain"
            )));
        }
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut keys = Vec::with_capacity(n);
    for s in sealed {
        let bad = || ApiError::bad_request(format!("sealed kfrag for {:?} is not base64", s.org));
        let key = SealedKey {
            scheme: crate::crypto::sealer::UMBRAL_SCHEME.to_owned(),
            capsule: b64.decode(&s.capsule).map_err(|_| bad())?,
            ciphertext: b64.decode(&s.ciphertext).map_err(|_| bad())?,
        };
        if key.capsule.len() > 4096 || key.ciphertext.len() > 4096 {
            return Err(ApiError::bad_request("sealed kfrags are at most 4 KiB"));
        }
        keys.push((&s.org, key));
    }
    queue(app, pre.clone(), keys.iter().map(|(o, k)| (*o, k))).await
}

/// The grant was not recorded: forget its kfrags.
pub async fn abandon(app: &AppState, consent_id: &str) {
    if let Err(e) = app.db.outbox_drop(consent_id).await {
        tracing::warn!(error = %e, %consent_id, "dropping an abandoned grant's kfrags failed");
    }
}

/// What one delivery attempt came to.
enum Delivery {
    Accepted,
    /// The proxy will never take it (consent ended, not a proxy, bad kfrag).
    Refused(String),
    /// Try again later.
    Failed(String),
}

async fn deliver_one(app: &AppState, consent_id: &str, org: &str, sealed_json: &str) -> Delivery {
    let Some(url) = app.cfg.peers.get(org) else {
        return Delivery::Failed("no gateway address configured".into());
    };
    let sealed: SealedKey = match serde_json::from_str(sealed_json) {
        Ok(s) => s,
        Err(_) => return Delivery::Refused("corrupt outbox entry".into()),
    };
    let channel = match app.proxy.channel(url) {
        Ok(c) => c,
        Err(e) => return Delivery::Failed(e.message),
    };
    let m = DeliverKfragRequest {
        header: Some(wire::header("DeliverKfrag", org)),
        consent_id: consent_id.to_owned(),
        capsule: sealed.capsule,
        ciphertext: sealed.ciphertext,
    };
    let req = wire::sign(&app.service, "DeliverKfrag", &m);
    let mut client = KeyProxyClient::new(channel);
    match tokio::time::timeout(app.proxy.settings.timeout, client.deliver_kfrag(req)).await {
        Err(_) => Delivery::Failed("timed out".into()),
        Ok(Ok(_)) => Delivery::Accepted,
        Ok(Err(s)) => {
            use tonic::Code;
            let why = format!("{:?}: {}", s.code(), s.message());
            match s.code() {
                // NotFound: the proxy's peer may not have the grant's block yet.
                Code::PermissionDenied | Code::InvalidArgument | Code::FailedPrecondition => {
                    Delivery::Refused(why)
                }
                _ => Delivery::Failed(why),
            }
        }
    }
}

/// Delivers every queued kfrag of `consent_id` at once; returns
/// (delivered, pending).
pub async fn deliver_all(
    app: &AppState,
    consent_id: &str,
) -> ApiResult<(Vec<String>, Vec<String>)> {
    let entries = app.db.outbox_for(consent_id).await?;
    let results = futures::future::join_all(
        entries
            .iter()
            .map(|e| async move { (e, deliver_one(app, &e.consent_id, &e.org, &e.sealed).await) }),
    )
    .await;
    let (mut delivered, mut pending) = (Vec::new(), Vec::new());
    for (e, r) in results {
        match r {
            Delivery::Accepted => {
                app.db.outbox_done(&e.consent_id, &e.org).await?;
                delivered.push(e.org.clone());
            }
            Delivery::Refused(why) => {
                tracing::warn!(consent_id = %e.consent_id, proxy = %e.org, %why, "proxy refused its key fragment; dropped");
                app.db.outbox_done(&e.consent_id, &e.org).await?;
            }
            Delivery::Failed(why) => {
                tracing::warn!(consent_id = %e.consent_id, proxy = %e.org, %why, "key fragment delivery failed; will retry");
                app.db.outbox_failed(&e.consent_id, &e.org, &why).await?;
                pending.push(e.org.clone());
            }
        }
    }
    delivered.sort();
    pending.sort();
    Ok((delivered, pending))
}

/// The grant's status on-chain: `Some(active?)`, or `None` when it is not
/// (yet) on the ledger.
async fn consent_active(
    app: &AppState,
    as_who: &SigningIdentity,
    consent_id: &str,
) -> ApiResult<Option<bool>> {
    match app
        .chain
        .evaluate(as_who, "GetConsent", &json!({"consent_id": consent_id}))
        .await
    {
        Ok(b) => {
            let v: Value = crate::api::handlers::parse_json(&b)?;
            Ok(Some(v["status"] == "active"))
        }
        Err(ChainError::Rejected { status: 404, .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// One pass over the outbox: drops deliveries whose grant ended or never
/// reached the ledger, retries the rest.
pub async fn retry_outbox(app: &AppState) -> ApiResult<()> {
    let now = crate::db::now_secs();
    let entries = app.db.outbox_all().await?;
    let mut consents: Vec<String> = entries.iter().map(|e| e.consent_id.clone()).collect();
    consents.dedup();
    for consent_id in consents {
        let mine: Vec<_> = entries
            .iter()
            .filter(|e| e.consent_id == consent_id)
            .collect();
        let oldest = mine.iter().map(|e| e.created_at).min().unwrap_or(now);
        match consent_active(app, &app.service, &consent_id).await? {
            None if now - oldest > ORPHAN_AFTER_SECS => {
                tracing::info!(%consent_id, "dropping key fragments of a grant that never reached the ledger");
                app.db.outbox_drop(&consent_id).await?;
            }
            None => {}
            Some(false) => {
                tracing::info!(%consent_id, "dropping key fragments of an ended grant");
                app.db.outbox_drop(&consent_id).await?;
            }
            Some(true) => {
                let (delivered, pending) = deliver_all(app, &consent_id).await?;
                if !delivered.is_empty() {
                    tracing::info!(%consent_id, ?delivered, ?pending, "key fragments delivered on retry");
                }
            }
        }
    }
    Ok(())
}

/// Retries the outbox every [`RETRY_EVERY`] until `stop`.
pub async fn run_outbox(app: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if let Err(e) = retry_outbox(&app).await {
            tracing::debug!(error = %e.message, "outbox pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(orgs: &[&str]) -> std::collections::BTreeMap<String, RegisteredKeys> {
        orgs.iter()
            .map(|o| {
                (
                    (*o).to_owned(),
                    RegisteredKeys {
                        org: (*o).to_owned(),
                        reader_public_key: String::new(),
                        proxy_public_key: String::new(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn proxies_prefer_orgs_other_than_the_grantee() {
        let r = reg(&["a", "b", "c", "d"]);
        assert_eq!(choose_proxies(&r, "b", None, 3).unwrap(), ["a", "c", "d"]);
        assert_eq!(
            choose_proxies(&r, "b", None, 4).unwrap(),
            ["a", "c", "d", "b"]
        );
        let e = choose_proxies(&r, "b", None, 5).unwrap_err();
        assert_eq!(e.status.as_u16(), 422);
        let named = vec!["c".to_owned(), "a".to_owned()];
        assert_eq!(
            choose_proxies(&r, "b", Some(&named), 2).unwrap(),
            ["c", "a"]
        );
        assert_eq!(
            choose_proxies(&r, "b", Some(&named), 3)
                .unwrap_err()
                .status
                .as_u16(),
            400
        );
        let twice = vec!["a".to_owned(), "a".to_owned()];
        assert_eq!(
            choose_proxies(&r, "b", Some(&twice), 2)
                .unwrap_err()
                .status
                .as_u16(),
            400
        );
        let unknown = vec!["a".to_owned(), "z".to_owned()];
        assert_eq!(
            choose_proxies(&r, "b", Some(&unknown), 2)
                .unwrap_err()
                .status
                .as_u16(),
            422
        );
    }
}
