//! Key endpoints: a patient exports their Umbral key (to hold it
//! themselves and sign grants with their own client, `ehr key grant`), and
//! anyone signed in reads the consortium's registered org keys (what such a
//! client seals kfrags to).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiJson, Caller};
use crate::proxy::chain_key;

/// Re-authentication for a key export.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The patient's password (again): a stolen token alone exports nothing.
    pub password: String,
}

/// A patient's Umbral key pair. Keep it secret: it opens every record.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ExportedKey {
    pub patient_id: String,
    pub org: String,
    /// `0x`-hex of the public key registered on-chain (records are sealed to it).
    pub public_key: String,
    /// `0x`-hex of the key that signs the patient's kfrags.
    pub verifying_key: String,
    /// Hex of the 32-byte secret seed both keys derive from.
    pub secret_seed: String,
}

/// Export the caller's (a patient's) Umbral key, after re-entering the
/// password. The home gateway keeps its copy (custodial); the patient can
/// now make grants with their own client. Logged, without the key.
#[utoipa::path(post, path = "/api/v1/me/key/export", request_body = ExportRequest, security(("bearer" = [])),
    responses((status = 200, body = ExportedKey), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn export_key(
    State(app): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<ExportRequest>,
) -> ApiResult<impl IntoResponse> {
    let Some(patient_id) = c
        .user
        .patient_id
        .clone()
        .filter(|_| c.user.role == "patient")
    else {
        return Err(ApiError::forbidden("only a patient exports their own key"));
    };
    if app.issuer.is_none() {
        return Err(ApiError::forbidden(
            "key export needs password re-authentication, which an external identity provider does not offer here",
        ));
    }
    if req.password.len() > 1024 {
        return Err(ApiError::bad_request("password is longer than 1024 bytes"));
    }
    if !super::handlers::password_matches(&app, Some(&c.user.user_id), req.password).await? {
        app.metrics.auth_failures.inc();
        return Err(ApiError::unauthorized("wrong password"));
    }
    let row = app
        .db
        .identity(&c.user.user_id)
        .await?
        .ok_or_else(|| ApiError::internal("patient without identity"))?;
    let keys = crate::identity::umbral_keys(&row, &app.kek).map_err(ApiError::internal)?;
    let out = ExportedKey {
        patient_id,
        org: app.cfg.org.clone(),
        public_key: chain_key(&keys.public),
        verifying_key: chain_key(&keys.verifying_key().map_err(ApiError::internal)?),
        secret_seed: hex::encode(keys.secret.as_slice()),
    };
    tracing::warn!(user_id = %c.user.user_id, "patient exported their Umbral key");
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(out)))
}

/// One org's registered keys.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct OrgKeysView {
    pub org: String,
    pub reader_public_key: String,
    pub proxy_public_key: String,
}

/// Every org's reader and proxy keys, as registered on-chain.
#[utoipa::path(get, path = "/api/v1/orgs/keys", security(("bearer" = [])),
    responses((status = 200, description = "{orgs: [{org, reader_public_key, proxy_public_key}]}"), (status = 401, body = ErrorBody)))]
pub async fn org_keys(
    State(app): State<AppState>,
    c: Caller,
) -> ApiResult<Json<serde_json::Value>> {
    let all = crate::proxy::keys::consortium(app.chain.as_ref(), &c.signer).await?;
    let orgs: Vec<OrgKeysView> = all
        .into_values()
        .map(|k| OrgKeysView {
            org: k.org,
            reader_public_key: k.reader_public_key,
            proxy_public_key: k.proxy_public_key,
        })
        .collect();
    Ok(Json(serde_json::json!({ "orgs": orgs })))
}
