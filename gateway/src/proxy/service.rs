//! The `ehr.proxy.v1.KeyProxy` gRPC service every gateway serves (on its
//! REST port): it keeps delivered kfrags, re-encrypts capsules for allowed
//! and current decisions, and, for the patients it is home to, releases
//! keys for decisions that have no threshold grant.
//!
//! What passes through here: sealed kfrags in, capsules (read from the blob
//! store), verified kfrags, cfrags out. Never a DEK, never plaintext: the
//! functions below take no DEK ciphertext and the capsule is cut out of the
//! sealed key blob without decoding the rest ([`capsule_of_blob`]).

use ehr_proto::ehr::proxy::v1::key_proxy_server::{KeyProxy, KeyProxyServer};
use ehr_proto::ehr::proxy::v1::{
    CfragResponse, DeliverKfragRequest, DeliverKfragResponse, ReencryptRequest, ReleaseRequest,
    SignedRequest,
};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};

use super::{MAX_EVENT_AGE_SECS, PreGrantView, to_status, wire};
use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::check_id;
use crate::api::handlers::parse_json;
use crate::chain::ChainError;
use crate::crypto::sealer::{MAX_SEALED_KEY_BYTES, SealedKey, UMBRAL_SCHEME};
use crate::crypto::threshold::{
    self, SealedKfrag, ThresholdError, capsule_of_blob, custodial_cfrag, open_kfrag,
};
use crate::db::proxy::{HeldKfrag, KeyPurpose};

/// Largest request a gateway accepts from another (sealed kfrags are < 1 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The service over a gateway's state.
pub struct KeyProxyService {
    app: AppState,
}

/// The gRPC routes (`/ehr.proxy.v1.KeyProxy/*`), to merge into the
/// gateway's HTTP router (which keeps its own fallback).
pub fn routes(app: AppState) -> axum::Router {
    use tonic::server::NamedService;
    let svc = KeyProxyServer::new(KeyProxyService { app })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    axum::Router::new().route_service(
        &format!("/{}/{{*rest}}", KeyProxyServer::<KeyProxyService>::NAME),
        tower::ServiceExt::map_request(svc, |req: axum::http::Request<axum::body::Body>| {
            req.map(tonic::body::Body::new)
        }),
    )
}

fn log_refusal(method: &str, e: &ApiError) {
    tracing::warn!(method, status = e.status.as_u16(), reason = %e.message, "key proxy request refused");
}

#[tonic::async_trait]
impl KeyProxy for KeyProxyService {
    async fn deliver_kfrag(
        &self,
        request: Request<SignedRequest>,
    ) -> Result<Response<DeliverKfragResponse>, Status> {
        deliver(&self.app, request.get_ref())
            .await
            .inspect_err(|e| log_refusal("DeliverKfrag", e))
            .map(Response::new)
            .map_err(to_status)
    }

    async fn reencrypt(
        &self,
        request: Request<SignedRequest>,
    ) -> Result<Response<CfragResponse>, Status> {
        reencrypt(&self.app, request.get_ref())
            .await
            .inspect_err(|e| log_refusal("Reencrypt", e))
            .map(Response::new)
            .map_err(to_status)
    }

    async fn release(
        &self,
        request: Request<SignedRequest>,
    ) -> Result<Response<CfragResponse>, Status> {
        release(&self.app, request.get_ref())
            .await
            .inspect_err(|e| log_refusal("Release", e))
            .map(Response::new)
            .map_err(to_status)
    }
}

fn threshold_error(e: ThresholdError) -> ApiError {
    match e {
        ThresholdError::NotForThisProxy { .. }
        | ThresholdError::CommitmentMismatch { .. }
        | ThresholdError::BadKfrag { .. }
        | ThresholdError::BadEncoding(_) => ApiError::bad_request(e.to_string()),
        other => ApiError::internal(other),
    }
}

/// This org's place among a grant's proxies: the on-chain commitment of
/// the kfrag it holds.
fn own_commitment<'a>(pre: &'a threshold::PreGrant, own: &str) -> ApiResult<&'a str> {
    let index = pre
        .proxies
        .iter()
        .position(|p| p == own)
        .ok_or_else(|| ApiError::forbidden("this organisation is not a proxy of that grant"))?;
    pre.kfrag_commitments
        .get(index)
        .map(String::as_str)
        .ok_or_else(|| ApiError::bad_gateway("grant without a commitment for this proxy"))
}

/// Keeps one delivered kfrag after checking it against the on-chain grant.
pub async fn deliver(app: &AppState, req: &SignedRequest) -> ApiResult<DeliverKfragResponse> {
    let own = app.cfg.org.as_str();
    let (m, from_org) =
        wire::open::<DeliverKfragRequest>(&app.proxy.msp, own, "DeliverKfrag", req, |m| {
            m.header.as_ref()
        })?;
    check_id("consent", &m.consent_id)?;
    // The grant as the ledger has it (readable by the proxies it names).
    let consent: Value = parse_json(
        &app.chain
            .evaluate(
                &app.service,
                "GetConsent",
                &json!({"consent_id": m.consent_id}),
            )
            .await?,
    )?;
    let pre: threshold::PreGrant = serde_json::from_value(consent["pre"].clone())
        .map_err(|_| ApiError::conflict("the consent has no threshold grant"))?;
    if consent["status"] != "active" {
        return Err(ApiError::conflict("the consent is not active"));
    }
    if consent["granted_by_org"] != from_org.as_str() {
        return Err(ApiError::forbidden(
            "only the organisation that recorded the grant delivers its key fragments",
        ));
    }
    let commitment = own_commitment(&pre, own)?;
    let patient_id = consent["patient_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let patient = super::patient_on_chain(app, &patient_id).await?;
    let keys =
        super::GrantPublicKeys::of(&pre, patient["pre_public_key"].as_str().unwrap_or_default())?;
    let sealed = SealedKfrag {
        org: own.to_owned(),
        ciphertext: SealedKey {
            scheme: UMBRAL_SCHEME.to_owned(),
            capsule: m.capsule,
            ciphertext: m.ciphertext,
        },
    };
    let proxy_sk = app
        .proxy
        .keys
        .proxy
        .secret_key()
        .map_err(ApiError::internal)?;
    open_kfrag(&proxy_sk, &sealed, keys.as_grant_keys(), commitment).map_err(threshold_error)?;
    let scope = &consent["scope"];
    let has_categories = scope["categories"]
        .as_array()
        .is_some_and(|c| !c.is_empty());
    let scope_records = if has_categories {
        None
    } else {
        Some(
            scope["records"]
                .as_array()
                .map(|rs| {
                    rs.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        )
    };
    app.db
        .put_held_kfrag(&HeldKfrag {
            consent_id: m.consent_id.clone(),
            patient_id,
            proxy_public_key: hex::encode(&app.proxy.keys.proxy.public),
            sealed: serde_json::to_string(&sealed.ciphertext).map_err(ApiError::internal)?,
            scope_records,
        })
        .await?;
    app.metrics.proxy_requests("DeliverKfrag", "ok");
    tracing::info!(consent_id = %m.consent_id, from = %from_org, "key fragment accepted");
    Ok(DeliverKfragResponse {
        consent_id: m.consent_id,
        org: own.to_owned(),
    })
}

/// The reader's org, the record and the decision's age, checked against a
/// decision read from the ledger.
fn check_decision(
    decision: &str,
    current: bool,
    record_id: &str,
    actor_org: &str,
    time_unix: i64,
    want_record: &str,
    from_org: &str,
) -> ApiResult<()> {
    if decision != "allow" {
        return Err(ApiError::forbidden("the access event is a denial"));
    }
    if record_id != want_record {
        return Err(ApiError::forbidden(
            "the access event is for another record",
        ));
    }
    if actor_org != from_org {
        return Err(ApiError::forbidden(
            "the access event belongs to another organisation",
        ));
    }
    if !current {
        return Err(ApiError::forbidden(
            "the access decision no longer stands (consent revoked or expired, or record erased)",
        ));
    }
    if (chrono::Utc::now().timestamp() - time_unix).abs() > MAX_EVENT_AGE_SECS {
        return Err(ApiError::forbidden(
            "the access decision is too old; request access again",
        ));
    }
    Ok(())
}

/// The record's capsule, cut out of its sealed key blob.
async fn capsule(app: &AppState, capsule_ref: &str) -> ApiResult<Vec<u8>> {
    let cid: ehr_ipfs::Cid = capsule_ref
        .parse()
        .map_err(|_| ApiError::bad_gateway("bad capsule reference on-chain"))?;
    let blob = crate::pipeline::get_small(app.blobs.as_ref(), &cid, MAX_SEALED_KEY_BYTES)
        .await
        .map_err(|_| ApiError::conflict("the record's sealed key is gone (erased or missing)"))?;
    capsule_of_blob(&blob).map_err(|_| ApiError::bad_gateway("malformed sealed key blob"))
}

/// Re-encrypts a record's capsule for an allowed, current decision of the
/// calling org.
pub async fn reencrypt(app: &AppState, req: &SignedRequest) -> ApiResult<CfragResponse> {
    let own = app.cfg.org.as_str();
    let (m, from_org) =
        wire::open::<ReencryptRequest>(&app.proxy.msp, own, "Reencrypt", req, |m| {
            m.header.as_ref()
        })?;
    check_id("event", &m.event_id)?;
    check_id("record", &m.record_id)?;
    let g = PreGrantView::load(app.chain.as_ref(), &app.service, &m.event_id)
        .await
        .map_err(|e| match e {
            ChainError::Rejected { status: 409, .. } => {
                ApiError::forbidden("the access event has no threshold grant")
            }
            other => other.into(),
        })?;
    let commitment = own_commitment(&g.pre, own)?;
    if let Err(e) = check_decision(
        &g.decision,
        g.current,
        &g.record_id,
        &g.actor_org,
        g.time_unix,
        &m.record_id,
        &from_org,
    ) {
        if matches!(g.consent_status.as_str(), "revoked" | "expired")
            && app.db.delete_held_kfrag(&g.consent_id).await?
        {
            tracing::info!(consent_id = %g.consent_id, status = %g.consent_status, "key fragment deleted: consent ended");
        }
        app.metrics.proxy_requests("Reencrypt", "refused");
        return Err(e);
    }
    let held = app.db.held_kfrag(&g.consent_id).await?.ok_or_else(|| {
        ApiError::conflict("this proxy holds no key fragment for that grant (not delivered yet?)")
    })?;
    let proxy_sk = super::keys::secret_for(app, KeyPurpose::Proxy, &held.proxy_public_key)
        .await?
        .ok_or_else(|| ApiError::internal("held kfrag sealed to an unknown proxy key"))?;
    let sealed = SealedKfrag {
        org: own.to_owned(),
        ciphertext: serde_json::from_str(&held.sealed).map_err(ApiError::internal)?,
    };
    let keys = g.public_keys()?;
    let kfrag = open_kfrag(&proxy_sk, &sealed, keys.as_grant_keys(), commitment)
        .map_err(threshold_error)?;
    let capsule = capsule(app, &g.capsule_ref).await?;
    let cfrag = threshold::reencrypt(&capsule, &kfrag).map_err(threshold_error)?;
    app.metrics.proxy_requests("Reencrypt", "ok");
    tracing::info!(event_id = %m.event_id, requester = %from_org, "capsule re-encrypted");
    Ok(CfragResponse {
        cfrag,
        org: own.to_owned(),
        verifying_key: Vec::new(),
    })
}

/// The custodian's release for an allowed, current decision with no
/// threshold grant (break-glass): only the patient's home gateway can.
pub async fn release(app: &AppState, req: &SignedRequest) -> ApiResult<CfragResponse> {
    let own = app.cfg.org.as_str();
    let (m, from_org) =
        wire::open::<ReleaseRequest>(&app.proxy.msp, own, "Release", req, |m| m.header.as_ref())?;
    check_id("event", &m.event_id)?;
    check_id("record", &m.record_id)?;
    let record: Value = parse_json(
        &app.chain
            .evaluate(
                &app.service,
                "GetRecord",
                &json!({"record_id": m.record_id}),
            )
            .await?,
    )?;
    let patient_id = record["patient_id"].as_str().unwrap_or_default();
    let prow = app.db.patient_identity(patient_id).await?.ok_or_else(|| {
        ApiError::not_found("the record's patient is not registered at this gateway")
    })?;
    let psigner = crate::identity::signer(&prow, &app.kek).map_err(ApiError::internal)?;
    // The decision, read as the patient (who may always read their own log).
    let ev: Value = parse_json(
        &app.chain
            .evaluate(&psigner, "GetAccessEvent", &json!({"event_id": m.event_id}))
            .await?,
    )?;
    let e = &ev["event"];
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
    check_decision(
        &s("decision"),
        ev["current"].as_bool().unwrap_or(false),
        &s("record_id"),
        &s("actor_org"),
        e["time_unix"].as_i64().unwrap_or(0),
        &m.record_id,
        &from_org,
    )
    .inspect_err(|_| app.metrics.proxy_requests("Release", "refused"))?;
    if let Some(cid) = e["consent_id"].as_str() {
        let consent: Value = parse_json(
            &app.chain
                .evaluate(&psigner, "GetConsent", &json!({"consent_id": cid}))
                .await?,
        )?;
        if !consent["pre"].is_null() {
            app.metrics.proxy_requests("Release", "refused");
            return Err(ApiError::forbidden(
                "that consent has a threshold grant: its proxies re-encrypt, not the custodian",
            ));
        }
    }
    // The reader org's registered reader key (never a key from the request).
    let reg: super::keys::RegisteredKeys = parse_json(
        &app.chain
            .evaluate(&app.service, "GetOrgKeys", &json!({"org": from_org}))
            .await?,
    )?;
    let receiving = super::chain_public_key("reader key", &reg.reader_public_key)?;
    let capsule = capsule(app, record["capsule_ref"].as_str().unwrap_or_default()).await?;
    let pkeys = crate::identity::umbral_keys(&prow, &app.kek).map_err(ApiError::internal)?;
    let cfrag = custodial_cfrag(&pkeys, &receiving, &capsule).map_err(threshold_error)?;
    app.metrics.proxy_requests("Release", "ok");
    tracing::info!(event_id = %m.event_id, requester = %from_org, "key released by the custodian");
    Ok(CfragResponse {
        cfrag,
        org: own.to_owned(),
        verifying_key: pkeys.verifying_key().map_err(ApiError::internal)?,
    })
}
