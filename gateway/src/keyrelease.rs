//! Key release across organisations by proxy re-encryption (Umbral, one
//! proxy for now: the patient's home gateway).
//!
//! A reader's gateway, after an *allowed* on-chain decision, asks the
//! patient's home gateway for a capsule fragment re-encrypted to the reader
//! gateway's Umbral key. The request is signed by the reader gateway's
//! enrolled service identity (checked against the org CAs of the
//! consortium) and names the access event; the home gateway checks on the
//! ledger that the event allows this record to that org and is still
//! current. The DEK itself never crosses organisations.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ehr_ledger::msp::{Msp, OrgMsp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::crypto::sealer::{SealedKey, UmbralKeyPair, UmbralSealer};
use crate::crypto::stream::Dek;

/// The user id of each gateway's own service identity.
pub const SERVICE_USER: &str = "gateway";
/// How old an access decision may be when its key is released.
pub const MAX_EVENT_AGE_SECS: i64 = 600;

/// The request a reader gateway sends to the home gateway.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyReleaseRequest {
    pub event_id: String,
    pub record_id: String,
    /// Hex of the receiving Umbral public key (the reader gateway's).
    pub receiving_pk: String,
    /// Hex of the requesting service identity (`msp.SerializedIdentity`).
    pub identity: String,
    /// Hex DER ECDSA signature over [`signed_message`].
    pub signature: String,
}

/// The answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyReleaseResponse {
    /// Base64 capsule fragment.
    pub cfrag: String,
    /// Hex of the patient's public key (the delegating key).
    pub delegating_pk: String,
    /// Hex of the home gateway's Umbral key that signed the key fragment.
    pub verifying_pk: String,
}

/// What the requester signs.
pub fn signed_message(event_id: &str, record_id: &str, receiving_pk: &str) -> Vec<u8> {
    format!("ehr-key-release/v1\n{event_id}\n{record_id}\n{receiving_pk}").into_bytes()
}

fn consortium_msp(cas: &BTreeMap<String, String>) -> ApiResult<Msp> {
    let mut orgs = Vec::new();
    for (org, pem) in cas {
        orgs.push(OrgMsp::new(org, pem).map_err(ApiError::internal)?);
    }
    Ok(Msp::new(orgs))
}

fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.get(k).or_else(|| v.get("event").and_then(|e| e.get(k)))
}

/// Home side: checks the request and returns a capsule fragment.
pub async fn release(app: &AppState, req: KeyReleaseRequest) -> ApiResult<KeyReleaseResponse> {
    crate::api::extract::check_id("event", &req.event_id)?;
    crate::api::extract::check_id("record", &req.record_id)?;
    let identity =
        hex::decode(&req.identity).map_err(|_| ApiError::bad_request("identity must be hex"))?;
    let signature =
        hex::decode(&req.signature).map_err(|_| ApiError::bad_request("signature must be hex"))?;
    let receiving_pk = hex::decode(&req.receiving_pk)
        .map_err(|_| ApiError::bad_request("receiving_pk must be hex"))?;
    let msp = consortium_msp(&app.cfg.org_cas)?;
    let who = msp
        .deserialize(&identity)
        .map_err(|_| ApiError::unauthorized("identity is not a member of the consortium"))?;
    who.verify(
        &signed_message(&req.event_id, &req.record_id, &req.receiving_pk),
        &signature,
    )
    .map_err(|_| ApiError::unauthorized("bad signature"))?;
    if !who.has_role("admin")
        || who
            .attrs
            .get(crate::identity::attrs::USER_ID)
            .map(String::as_str)
            != Some(SERVICE_USER)
    {
        return Err(ApiError::forbidden(
            "only a gateway service identity may request key release",
        ));
    }
    // The record and its patient, who must be ours.
    let record: Value = serde_json::from_slice(
        &app.chain
            .evaluate(
                &app.service,
                "GetRecord",
                &json!({"record_id": req.record_id}),
            )
            .await?,
    )
    .map_err(|_| ApiError::bad_gateway("unexpected ledger answer"))?;
    let patient_id = record
        .get("patient_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let patient = app.db.user_by_patient(&patient_id).await?.ok_or_else(|| {
        ApiError::not_found("the record's patient is not registered at this gateway")
    })?;
    let prow = app
        .db
        .identity(&patient.user_id)
        .await?
        .ok_or_else(|| ApiError::internal("patient without identity"))?;
    let psigner = crate::identity::signer(&prow, &app.kek).map_err(ApiError::internal)?;
    // The decision, read as the patient (who may always read their own log).
    let ev: Value = serde_json::from_slice(
        &app.chain
            .evaluate(
                &psigner,
                "GetAccessEvent",
                &json!({"event_id": req.event_id}),
            )
            .await?,
    )
    .map_err(|_| ApiError::bad_gateway("unexpected ledger answer"))?;
    let s = |k: &str| {
        field(&ev, k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let fresh = field(&ev, "time_unix")
        .and_then(Value::as_i64)
        .is_some_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= MAX_EVENT_AGE_SECS);
    let current = field(&ev, "current")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if s("decision") != "allow"
        || s("record_id") != req.record_id
        || s("actor_org") != who.msp_id
        || !current
        || !fresh
    {
        tracing::warn!(event_id = %req.event_id, requester = %who.msp_id, "key release refused");
        return Err(ApiError::forbidden(
            "the access event does not allow this key release",
        ));
    }
    let capsule_cid: ehr_ipfs::Cid = record
        .get("capsule_ref")
        .and_then(Value::as_str)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ApiError::bad_gateway("bad capsule reference on-chain"))?;
    let sealed = load_sealed(app, &capsule_cid).await?;
    let pkeys = crate::identity::umbral_keys(&prow, &app.kek).map_err(ApiError::internal)?;
    let skeys = service_umbral_keys(app).await?;
    let u = UmbralSealer;
    let kfrag = u
        .delegate(&pkeys.secret, &receiving_pk, &skeys.secret)
        .map_err(|_| ApiError::bad_request("receiving_pk is not an Umbral public key"))?;
    let cfrag = u
        .reencrypt(&sealed, &kfrag, &skeys.public, &pkeys.public, &receiving_pk)
        .map_err(|e| ApiError::bad_gateway(format!("re-encryption failed: {e}")))?;
    tracing::info!(event_id = %req.event_id, requester = %who.msp_id, "key released by re-encryption");
    Ok(KeyReleaseResponse {
        cfrag: B64.encode(cfrag),
        delegating_pk: hex::encode(&pkeys.public),
        verifying_pk: hex::encode(&skeys.public),
    })
}

/// This gateway's own Umbral key pair (its enrolled service identity's).
async fn service_umbral_keys(app: &AppState) -> ApiResult<UmbralKeyPair> {
    let row = app
        .db
        .identity(SERVICE_USER)
        .await?
        .ok_or_else(|| ApiError::internal("no service identity"))?;
    crate::identity::umbral_keys(&row, &app.kek).map_err(ApiError::internal)
}

/// Loads a sealed key blob.
pub async fn load_sealed(app: &AppState, capsule_cid: &ehr_ipfs::Cid) -> ApiResult<SealedKey> {
    let bytes = crate::pipeline::get_small(app.blobs.as_ref(), capsule_cid, 64 * 1024)
        .await
        .map_err(|_| ApiError::bad_gateway("sealed key blob missing or corrupt"))?;
    serde_json::from_slice(&bytes).map_err(|_| ApiError::bad_gateway("malformed sealed key"))
}

/// Reader side: asks the patient's home gateway for the record key.
pub async fn request(
    app: &AppState,
    home_org: &str,
    event_id: &str,
    record_id: &str,
    patient_pk: &[u8],
    sealed: &SealedKey,
) -> ApiResult<Dek> {
    let url = app.cfg.peers.get(home_org).ok_or_else(|| {
        ApiError::unavailable(format!("no gateway known for organisation {home_org}"))
    })?;
    let skeys = service_umbral_keys(app).await?;
    let receiving_pk = hex::encode(&skeys.public);
    let body = KeyReleaseRequest {
        event_id: event_id.to_owned(),
        record_id: record_id.to_owned(),
        signature: hex::encode(app.service.sign(&signed_message(
            event_id,
            record_id,
            &receiving_pk,
        ))),
        identity: hex::encode(app.service.serialized()),
        receiving_pk,
    };
    let resp = app
        .http
        .post(format!(
            "{}/api/v1/internal/key-release",
            url.trim_end_matches('/')
        ))
        .json(&body)
        .send()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, org = home_org, "home gateway unreachable");
            ApiError::unavailable(format!("the gateway of {home_org} is unreachable"))
        })?;
    if !resp.status().is_success() {
        let status = resp.status();
        tracing::warn!(%status, org = home_org, "key release refused");
        return Err(if status.as_u16() == 403 {
            ApiError::forbidden("the patient's home organisation refused key release")
        } else {
            ApiError::bad_gateway(format!("key release failed at {home_org} ({status})"))
        });
    }
    let r: KeyReleaseResponse = resp
        .json()
        .await
        .map_err(|_| ApiError::bad_gateway("malformed key release answer"))?;
    let delegating = hex::decode(&r.delegating_pk)
        .map_err(|_| ApiError::bad_gateway("malformed key release answer"))?;
    if delegating != patient_pk {
        return Err(ApiError::bad_gateway(
            "key release used a key other than the patient's on-chain key",
        ));
    }
    let verifying = hex::decode(&r.verifying_pk)
        .map_err(|_| ApiError::bad_gateway("malformed key release answer"))?;
    let cfrag = B64
        .decode(&r.cfrag)
        .map_err(|_| ApiError::bad_gateway("malformed key release answer"))?;
    UmbralSealer
        .open_reencrypted(&skeys.secret, &delegating, &verifying, sealed, &cfrag)
        .map_err(|e| ApiError::bad_gateway(format!("opening the re-encrypted key: {e}")))
}
