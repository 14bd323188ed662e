//! The `/api/v1` handlers.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{ApiJson, Caller, check_id};
use crate::auth::password;
use crate::crypto::sealer::{KeySealer, SealedKey, UmbralSealer};
use crate::crypto::stream::Dek;
use crate::db::uploads::UploadState;
use crate::db::users::User;
use crate::pipeline::{self, PipelineError};

/// A chaincode answer as JSON (anything else is the ledger's fault: 502).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_gateway(format!("unexpected ledger answer: {e}")))
}

/// The patient's Umbral public key from a `GetPatient` answer (`0x` + hex).
fn patient_public_key(patient: &Value) -> ApiResult<Vec<u8>> {
    crate::proxy::key_bytes(
        "patient key",
        patient
            .get("pre_public_key")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )
}

/// `prefix` + 24 random hex digits: new user, patient, record and consent ids.
pub(crate) fn random_id(prefix: &str) -> String {
    let b: [u8; 12] = rand::random();
    format!("{prefix}{}", hex::encode(b))
}

fn check_len(field: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.len() > max {
        return Err(ApiError::bad_request(format!(
            "{field} longer than {max} bytes"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------- identity

/// `POST /auth/token` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub username: String,
    pub password: String,
}

/// An access token.
#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

/// Exchange a username and password for a bearer token (built-in issuer).
#[utoipa::path(post, path = "/api/v1/auth/token", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody), (status = 400, body = ErrorBody)))]
pub async fn token(
    State(app): State<AppState>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let issuer = app
        .issuer
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("tokens come from the external identity provider"))?;
    check_len("username", &req.username, 128)?;
    check_len("password", &req.password, 1024)?;
    let user = app.db.user_by_username(&req.username).await?;
    let ok = password_matches(
        &app,
        user.as_ref().map(|u| u.user_id.as_str()),
        req.password,
    )
    .await?;
    let user = match (ok, user) {
        (true, Some(u)) => u,
        _ => {
            app.metrics.auth_failures.inc();
            return Err(ApiError::unauthorized("wrong username or password"));
        }
    };
    let (access_token, expires_in) = issuer
        .issue(&user.user_id, &user.username)
        .map_err(ApiError::internal)?;
    Ok(Json(TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in,
    }))
}

/// Whether `password` is the password of `user_id` (Argon2id, off the async
/// threads). Unknown users (`None`) cost the same as known ones.
pub(crate) async fn password_matches(
    app: &AppState,
    user_id: Option<&str>,
    password: String,
) -> ApiResult<bool> {
    let hash = match user_id {
        Some(u) => app.db.password_hash(u).await?,
        None => None,
    };
    tokio::task::spawn_blocking(move || {
        let h = hash.as_deref().unwrap_or(password::dummy_hash());
        password::verify_password(&password, h) && hash.is_some()
    })
    .await
    .map_err(ApiError::internal)
}

/// The caller.
#[derive(Serialize, ToSchema)]
pub struct MeResponse {
    pub user_id: String,
    pub username: String,
    pub org: String,
    pub role: String,
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
}

/// Who am I.
#[utoipa::path(get, path = "/api/v1/me", security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = ErrorBody)))]
pub async fn me(State(app): State<AppState>, c: Caller) -> Json<MeResponse> {
    Json(MeResponse {
        user_id: c.user.user_id,
        username: c.user.username,
        org: app.cfg.org.clone(),
        role: c.user.role,
        attributes: c.user.attributes,
        patient_id: c.user.patient_id,
    })
}

/// `POST /users` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    /// patient | clinician | auditor | admin
    pub role: String,
    /// e.g. department, specialty (strings).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub attributes: Map<String, Value>,
}

/// The created user.
#[derive(Serialize, ToSchema)]
pub struct CreatedUser {
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<String>,
}

const ROLES: [&str; 4] = ["patient", "clinician", "auditor", "admin"];

/// Validates a new user's fields; returns the attributes as strings.
pub fn validate_new_user(u: &CreateUser) -> ApiResult<Map<String, Value>> {
    let name_ok = (1..=64).contains(&u.username.len())
        && u.username
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !name_ok {
        return Err(ApiError::bad_request(
            "username: 1-64 characters of a-z 0-9 . _ -",
        ));
    }
    if !(8..=1024).contains(&u.password.len()) {
        return Err(ApiError::bad_request("password: 8-1024 bytes"));
    }
    if !ROLES.contains(&u.role.as_str()) {
        return Err(ApiError::unprocessable(
            "role must be patient, clinician, auditor or admin",
        ));
    }
    if u.attributes.len() > 32 {
        return Err(ApiError::bad_request("at most 32 attributes"));
    }
    let mut out = Map::new();
    for (k, v) in &u.attributes {
        let key_ok = (1..=64).contains(&k.len())
            && !k.starts_with("ehr.")
            && !k.starts_with("hf.")
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !key_ok {
            return Err(ApiError::bad_request(format!(
                "attribute name {k:?}: 1-64 of A-Z a-z 0-9 . _ -, not ehr.* or hf.*"
            )));
        }
        match v {
            Value::String(s) if s.len() <= 256 => {
                out.insert(k.clone(), v.clone());
            }
            Value::String(_) => {
                return Err(ApiError::bad_request(format!(
                    "attribute {k}: longer than 256 bytes"
                )));
            }
            _ => {
                return Err(ApiError::unprocessable(format!(
                    "attribute {k}: must be a string"
                )));
            }
        }
    }
    Ok(out)
}

/// Create a user (org admin): enrols a Fabric identity and, for a patient,
/// registers the patient on-chain with their Umbral public key.
#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUser, security(("bearer" = [])),
    responses((status = 201, body = CreatedUser), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_user(
    State(app): State<AppState>,
    c: Caller,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<CreatedUser>)> {
    if c.user.role != "admin" {
        return Err(ApiError::forbidden("only an org admin creates users"));
    }
    let attributes = validate_new_user(&req)?;
    let (created, _) = create_user_as(
        &app,
        &c.signer,
        req.username,
        req.password,
        req.role,
        attributes,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Creates a user signed by `admin` (used by the API and the demo seeder).
pub async fn create_user_as(
    app: &AppState,
    admin: &crate::chain::SigningIdentity,
    username: String,
    password: String,
    role: String,
    attributes: Map<String, Value>,
) -> ApiResult<(CreatedUser, User)> {
    if app.db.user_by_username(&username).await?.is_some() {
        return Err(ApiError::conflict(format!(
            "username {username:?} is taken"
        )));
    }
    let user = User {
        user_id: random_id("u-"),
        username,
        patient_id: (role == "patient").then(|| random_id("p-")),
        role,
        attributes,
    };
    let row = crate::identity::enroll(&app.ca, &app.kek, &user).map_err(ApiError::internal)?;
    let hash = tokio::task::spawn_blocking(move || password::hash_password(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let mut tx_id = None;
    if let Some(pid) = &user.patient_id {
        let committed = app
            .chain
            .submit(
                admin,
                "RegisterPatient",
                &json!({"patient_id": pid, "pre_public_key": format!("0x{}", hex::encode(&row.umbral_pk))}),
            )
            .await?;
        tx_id = Some(committed.tx_id);
    }
    app.db.create_user(&user, &hash, Some(&row)).await?;
    tracing::info!(user_id = %user.user_id, role = %user.role, "user created");
    Ok((
        CreatedUser {
            user_id: user.user_id.clone(),
            patient_id: user.patient_id.clone(),
            tx_id,
        },
        user,
    ))
}

// ---------------------------------------------------------------- records

/// Upload parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    /// lab | imaging | note | prescription | fhir | other
    pub category: String,
    /// Media type of the file; defaults to the request's Content-Type.
    pub content_type: Option<String>,
    /// Optional title, at most 256 bytes. It may be PHI: it never goes
    /// on-chain; the patient's home gateway keeps it encrypted and returns it
    /// with the record's metadata (other gateways refuse it: 422).
    pub title: Option<String>,
}

/// The stored record.
#[derive(Serialize, ToSchema)]
pub struct UploadResponse {
    pub record_id: String,
    pub cid: String,
    /// SHA-256 of the ciphertext (hex), as recorded on-chain.
    pub sha256: String,
    /// Plaintext size in bytes.
    pub size: u64,
    pub tx_id: String,
    pub block: u64,
}

const CATEGORIES: [&str; 6] = ["lab", "imaging", "note", "prescription", "fhir", "other"];

fn valid_media_type(s: &str) -> bool {
    let mut parts = s.splitn(2, '/');
    let tok = |t: &str| {
        !t.is_empty()
            && t.len() <= 64
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
    };
    matches!((parts.next(), parts.next()), (Some(a), Some(b)) if tok(a) && tok(b))
}

/// Upload an EHR file: streamed, encrypted (AES-256-GCM, fresh DEK), stored
/// in IPFS, the DEK sealed to the patient's key, the record put on-chain.
#[utoipa::path(post, path = "/api/v1/patients/{patient_id}/records", params(("patient_id" = String, Path), UploadParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"), security(("bearer" = [])),
    responses((status = 201, body = UploadResponse), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn upload_record(
    State(app): State<AppState>,
    c: Caller,
    Path(patient_id): Path<String>,
    Query(p): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<UploadResponse>)> {
    check_id("patient", &patient_id)?;
    if !CATEGORIES.contains(&p.category.as_str()) {
        return Err(ApiError::bad_request(format!(
            "category must be one of {}",
            CATEGORIES.join(", ")
        )));
    }
    let content_type = p
        .content_type
        .clone()
        .or_else(|| {
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or("").trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "application/octet-stream".into());
    if !valid_media_type(&content_type) {
        return Err(ApiError::bad_request(
            "content_type must be a media type like text/plain",
        ));
    }
    if let Some(t) = &p.title {
        check_len("title", t, 256)?;
    }
    let limit = app.cfg.max_upload_bytes;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::too_large(format!(
            "file larger than {limit} bytes"
        )));
    }
    // The patient's public key (404 for an unknown patient).
    let patient: Value = parse_json(
        &app.chain
            .evaluate(&c.signer, "GetPatient", &json!({"patient_id": patient_id}))
            .await?,
    )?;
    let pk_hex = patient_public_key(&patient)?;
    if p.title.is_some() && app.db.user_by_patient(&patient_id).await?.is_none() {
        return Err(ApiError::unprocessable(
            "a title is kept by the patient's home gateway: upload there, or omit the title",
        ));
    }

    let record_id = random_id("r-");
    app.db
        .upload_started(&record_id, &patient_id, &c.user.user_id)
        .await?;
    let dek = Dek::generate();
    // Seal first: a bad patient key fails before anything is stored.
    let sealed = UmbralSealer
        .seal(&pk_hex, &dek)
        .map_err(|e| ApiError::bad_gateway(format!("sealing the key: {e}")))?;
    let sealed_json = serde_json::to_vec(&sealed).map_err(ApiError::internal)?;
    let stream = body.into_data_stream().map_err(|e| e.to_string());
    // The file and the sealed key are stored side by side.
    let (stored, capsule) = tokio::join!(
        pipeline::encrypt_into_store(app.blobs.as_ref(), stream, &dek, app.cfg.chunk_size, limit),
        pipeline::put_small(app.blobs.as_ref(), sealed_json),
    );
    let (stored, capsule_cid) = match (stored, capsule) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), other) => {
            if let Ok(c) = other {
                unpin_quietly(&app, &[c]).await;
            }
            let _ = app
                .db
                .upload_cleaned(&record_id, UploadState::Started, &e.to_string())
                .await;
            return Err(pipeline_error(e));
        }
        (Ok(s), Err(e)) => {
            unpin_quietly(&app, &[s.cid]).await;
            let _ = app
                .db
                .upload_cleaned(&record_id, UploadState::Started, &e.to_string())
                .await;
            return Err(pipeline_error(e));
        }
    };
    if let Err(e) = app
        .db
        .upload_blob_stored(
            &record_id,
            &stored.cid.to_string(),
            &capsule_cid.to_string(),
            &stored.sha256,
            stored.plaintext_size as i64,
        )
        .await
    {
        // Without bookkeeping, reconciliation could not find these blobs.
        unpin_quietly(&app, &[stored.cid, capsule_cid]).await;
        return Err(e.into());
    }
    if let Some(title) = &p.title {
        let sealed = app.kek.seal(&title_context(&record_id), title.as_bytes());
        if let Err(e) = app.db.put_title(&record_id, &sealed).await {
            unpin_quietly(&app, &[stored.cid, capsule_cid]).await;
            let _ = app
                .db
                .upload_cleaned(&record_id, UploadState::BlobStored, &e.to_string())
                .await;
            return Err(e.into());
        }
    }
    let args = json!({
        "record_id": record_id,
        "patient_id": patient_id,
        "category": p.category,
        "cid": stored.cid.to_string(),
        "sha256": stored.sha256,
        "size": stored.plaintext_size,
        "content_type": content_type,
        "capsule_ref": capsule_cid.to_string(),
    });
    match app.chain.submit(&c.signer, "AddRecord", &args).await {
        Ok(committed) => {
            app.db
                .upload_submitted(&record_id, &committed.tx_id)
                .await?;
            app.metrics.upload_bytes.inc_by(stored.plaintext_size);
            tracing::info!(record_id = %record_id, size = stored.plaintext_size, tx_id = %committed.tx_id, "record stored");
            Ok((
                StatusCode::CREATED,
                Json(UploadResponse {
                    record_id,
                    cid: stored.cid.to_string(),
                    sha256: stored.sha256,
                    size: stored.plaintext_size,
                    tx_id: committed.tx_id,
                    block: committed.block,
                }),
            ))
        }
        Err(e) => {
            // Nothing on-chain points at the blobs: unpin them.
            unpin_quietly(&app, &[stored.cid, capsule_cid]).await;
            let _ = app
                .db
                .upload_cleaned(&record_id, UploadState::BlobStored, &e.to_string())
                .await;
            Err(e.into())
        }
    }
}

async fn unpin_quietly(app: &AppState, cids: &[ehr_ipfs::Cid]) {
    for cid in cids {
        if let Err(e) = app.blobs.unpin(cid).await {
            tracing::warn!(%cid, error = %e, "unpin after failed upload failed; reconciliation will retry");
        }
    }
}

fn pipeline_error(e: PipelineError) -> ApiError {
    match e {
        PipelineError::TooLarge { limit } => {
            ApiError::too_large(format!("file larger than {limit} bytes"))
        }
        PipelineError::Body(m) => ApiError::bad_request(format!("reading the body failed: {m}")),
        PipelineError::Integrity => {
            ApiError::bad_gateway("stored blob does not match the on-chain hash")
        }
        PipelineError::Crypto(e) => {
            ApiError::bad_gateway(format!("stored blob failed decryption: {e}"))
        }
        PipelineError::Store(ehr_ipfs::BlobError::NotFound(_)) => {
            ApiError::bad_gateway("blob missing from the store")
        }
        PipelineError::Store(
            ehr_ipfs::BlobError::Corrupt { .. } | ehr_ipfs::BlobError::MalformedDag { .. },
        ) => ApiError::bad_gateway("stored blob failed CID verification"),
        PipelineError::Store(e) => {
            tracing::warn!(error = %e, "blob store failure");
            ApiError::unavailable("blob store unavailable")
        }
        PipelineError::Spool(e) => ApiError::internal(e),
    }
}

/// Paging parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    pub limit: Option<u32>,
    pub bookmark: Option<String>,
}

fn page_args(mut base: Value, p: &PageParams) -> ApiResult<Value> {
    if let Some(l) = p.limit {
        base["limit"] = l.into();
    }
    if let Some(b) = &p.bookmark {
        check_len("bookmark", b, 2048)?;
        base["bookmark"] = b.clone().into();
    }
    Ok(base)
}

/// The KEK context of a record's title: a sealed title opens only as the
/// title of that record.
fn title_context(record_id: &str) -> String {
    format!("record-title:{record_id}")
}

/// Adds `title` to each record's metadata for which this gateway keeps one
/// (the patient's home gateway, for uploads made there): one query.
async fn add_titles(app: &AppState, records: &mut [Value]) -> ApiResult<()> {
    let id_of = |r: &Value| {
        r.get("record_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let ids: Vec<String> = records.iter().filter_map(id_of).collect();
    let sealed = app.db.titles(&ids).await?;
    for r in records.iter_mut() {
        let Some(record_id) = id_of(r) else {
            continue;
        };
        let Some(s) = sealed.get(&record_id) else {
            continue;
        };
        match app.kek.open(&title_context(&record_id), s) {
            Ok(plain) => {
                if let (Ok(t), Some(obj)) = (std::str::from_utf8(&plain), r.as_object_mut()) {
                    obj.insert("title".into(), t.into());
                }
            }
            Err(e) => {
                tracing::warn!(%record_id, error = %e, "stored title does not open; left out")
            }
        }
    }
    Ok(())
}

/// Records of a patient that the caller may see (metadata only; `title`
/// when this is the patient's home gateway and the upload had one).
#[utoipa::path(get, path = "/api/v1/patients/{patient_id}/records", params(("patient_id" = String, Path), PageParams), security(("bearer" = [])),
    responses((status = 200, description = "page of records"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_records(
    State(app): State<AppState>,
    c: Caller,
    Path(patient_id): Path<String>,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<Value>> {
    check_id("patient", &patient_id)?;
    let args = page_args(json!({"patient_id": patient_id}), &p)?;
    let mut page: Value = parse_json(&app.chain.evaluate(&c.signer, "ListRecords", &args).await?)?;
    if let Some(records) = page.get_mut("records").and_then(Value::as_array_mut) {
        add_titles(&app, records).await?;
    }
    Ok(Json(page))
}

/// A record's metadata (`title` when this is the patient's home gateway and
/// the upload had one).
#[utoipa::path(get, path = "/api/v1/records/{record_id}", params(("record_id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "record metadata"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_record(
    State(app): State<AppState>,
    c: Caller,
    Path(record_id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_id("record", &record_id)?;
    let mut record: Value = parse_json(
        &app.chain
            .evaluate(&c.signer, "GetRecord", &json!({"record_id": record_id}))
            .await?,
    )?;
    add_titles(&app, std::slice::from_mut(&mut record)).await?;
    Ok(Json(record))
}

/// Read parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ContentParams {
    /// TREAT (default), HPAYMT, HOPERAT, HRESCH or ETREAT (break-glass).
    pub purpose: Option<String>,
    /// Required with ETREAT.
    pub justification: Option<String>,
}

const PURPOSES: [&str; 5] = ["TREAT", "HPAYMT", "HOPERAT", "HRESCH", "ETREAT"];

/// The decrypted file, after an allowed and logged access decision.
#[utoipa::path(get, path = "/api/v1/records/{record_id}/content", params(("record_id" = String, Path), ContentParams), security(("bearer" = [])),
    responses((status = 200, description = "the plaintext bytes", content_type = "application/octet-stream"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn record_content(
    State(app): State<AppState>,
    c: Caller,
    Path(record_id): Path<String>,
    Query(p): Query<ContentParams>,
) -> ApiResult<Response> {
    check_id("record", &record_id)?;
    let purpose = p.purpose.unwrap_or_else(|| "TREAT".into());
    if !PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::bad_request(format!(
            "purpose must be one of {}",
            PURPOSES.join(", ")
        )));
    }
    if let Some(j) = &p.justification {
        check_len("justification", j, 512)?;
    }
    let mut args = json!({"record_id": record_id, "action": "read", "purpose": purpose});
    if let Some(j) = p.justification {
        args["justification"] = j.into();
    }
    // 0. An unknown record is a plain 404 (nothing written); a record the
    //    caller may not even see still goes to a logged decision.
    let t0 = std::time::Instant::now();
    let visible = match app
        .chain
        .evaluate(&c.signer, "GetRecord", &json!({"record_id": record_id}))
        .await
    {
        Err(crate::chain::ChainError::Rejected {
            status: 404,
            message,
            ..
        }) => return Err(ApiError::not_found(message)),
        Err(e @ crate::chain::ChainError::Unavailable(_)) => return Err(e.into()),
        Err(_) => None,
        Ok(bytes) => Some(bytes),
    };
    // 1. The decision, on-chain and logged, allowed or denied.
    let t_meta = t0.elapsed();
    let committed = app.chain.submit(&c.signer, "RequestAccess", &args).await?;
    let t_decision = t0.elapsed();
    let decision: Value = parse_json(&committed.payload)?;
    let allowed = decision
        .get("allowed")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let reason = decision
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("denied")
        .to_owned();
    let event_id = decision
        .get("event_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !allowed {
        app.metrics.access_denied.inc();
        if reason == "record_erased" {
            return Err(ApiError::gone(format!(
                "the record's content was erased (event {event_id})"
            )));
        }
        return Err(ApiError::forbidden(format!(
            "access denied: {reason} (event {event_id})"
        )));
    }
    app.metrics.access_allowed.inc();
    // 2. Fetch, verify, decrypt.
    // Metadata is immutable but for erasure, which an allowed decision
    // excludes; reuse what step 0 read when the caller could see it.
    // An allowed decision carries the metadata too (a break-glass reader
    // could not read it otherwise).
    let record: Value = match visible {
        Some(b) => parse_json(&b)?,
        None => decision
            .get("record")
            .cloned()
            .ok_or_else(|| ApiError::bad_gateway("allowed decision without record metadata"))?,
    };
    let field = |k: &str| record.get(k).and_then(Value::as_str).map(str::to_owned);
    let (Some(cid), Some(sha), Some(capsule_ref)) =
        (field("cid"), field("sha256"), field("capsule_ref"))
    else {
        return Err(ApiError::bad_gateway("record metadata incomplete"));
    };
    if record.get("erased").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::conflict("record content was erased"));
    }
    let patient_id = field("patient_id").unwrap_or_default();
    let content_type = field("content_type").unwrap_or_else(|| "application/octet-stream".into());
    let size = record.get("size").and_then(Value::as_u64);
    let cid: ehr_ipfs::Cid = cid
        .parse()
        .map_err(|_| ApiError::bad_gateway("bad CID on-chain"))?;
    let capsule_cid: ehr_ipfs::Cid = capsule_ref
        .parse()
        .map_err(|_| ApiError::bad_gateway("bad capsule reference on-chain"))?;
    let dek = dek_for(&app, &patient_id, &record_id, &event_id, &capsule_cid).await?;
    let t_dek = t0.elapsed();
    let spool = app.cfg.data_dir.join("spool");
    let file = pipeline::fetch_verified(app.blobs.as_ref(), &cid, &sha, &spool)
        .await
        .map_err(pipeline_error)?;
    let stream = pipeline::decrypt_file(file, &dek)
        .await
        .map_err(pipeline_error)?;
    tracing::debug!(
        metadata_ms = t_meta.as_secs_f64() * 1e3,
        decision_ms = (t_decision - t_meta).as_secs_f64() * 1e3,
        key_ms = (t_dek - t_decision).as_secs_f64() * 1e3,
        fetch_ms = (t0.elapsed() - t_dek).as_secs_f64() * 1e3,
        "read phases"
    );
    if let Some(s) = size {
        app.metrics.download_bytes.inc_by(s);
    }
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header("x-access-event", event_id);
    if let Some(s) = size {
        resp = resp.header(header::CONTENT_LENGTH, s);
    }
    resp.body(Body::from_stream(stream))
        .map_err(ApiError::internal)
}

/// Loads a record's sealed key blob (capsule + encrypted DEK).
async fn load_sealed(app: &AppState, capsule_cid: &ehr_ipfs::Cid) -> ApiResult<SealedKey> {
    let bytes = pipeline::get_small(
        app.blobs.as_ref(),
        capsule_cid,
        crate::crypto::sealer::MAX_SEALED_KEY_BYTES,
    )
    .await
    .map_err(|_| ApiError::bad_gateway("sealed key blob missing or corrupt"))?;
    serde_json::from_slice(&bytes).map_err(|_| ApiError::bad_gateway("malformed sealed key"))
}

/// Opens the record's DEK: directly when the patient is registered here
/// (this gateway holds their key), else by proxy re-encryption to this
/// org's reader key ([`crate::proxy::reader`]).
async fn dek_for(
    app: &AppState,
    patient_id: &str,
    record_id: &str,
    event_id: &str,
    capsule_cid: &ehr_ipfs::Cid,
) -> ApiResult<Dek> {
    let sealed = load_sealed(app, capsule_cid).await?;
    if let Some(row) = app.db.patient_identity(patient_id).await? {
        let keys = crate::identity::umbral_keys(&row, &app.kek).map_err(ApiError::internal)?;
        return UmbralSealer
            .open(&keys.secret, &sealed)
            .map_err(|e| ApiError::bad_gateway(format!("opening the record key: {e}")));
    }
    crate::proxy::reader::dek(app, event_id, record_id, patient_id, &sealed).await
}

/// Erase a record's content (crypto-shredding, GDPR Art. 17): the erasure
/// is recorded on-chain (`EraseRecord`: the metadata and access log stay),
/// then the sealed key — the only copy of the DEK — and the ciphertext are
/// unpinned and garbage-collected from the blob store; proxies drop the
/// kfrags of grants scoped only to erased records. Repeating the call
/// after a failed blob step finishes it.
#[utoipa::path(delete, path = "/api/v1/records/{record_id}/content", params(("record_id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "{record_id, tx_id?, block?, destroyed}"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn erase_record(
    State(app): State<AppState>,
    c: Caller,
    Path(record_id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_id("record", &record_id)?;
    let record: Value = parse_json(
        &app.chain
            .evaluate(&c.signer, "GetRecord", &json!({"record_id": record_id}))
            .await?,
    )?;
    // On-chain first: from that block no decision allows a read and no
    // proxy re-encrypts.
    let committed = match app
        .chain
        .submit(&c.signer, "EraseRecord", &json!({"record_id": record_id}))
        .await
    {
        Ok(c) => Some(c),
        // Already erased on-chain (a repeated call): finish the blob step.
        Err(crate::chain::ChainError::Rejected { status: 409, .. })
            if record.get("erased").and_then(Value::as_bool) == Some(true) =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    let mut destroyed = Vec::new();
    for field in ["capsule_ref", "cid"] {
        let Some(cid) = record
            .get(field)
            .and_then(Value::as_str)
            .and_then(|c| c.parse::<ehr_ipfs::Cid>().ok())
        else {
            continue;
        };
        app.blobs.unpin(&cid).await.map_err(|e| {
            tracing::warn!(error = %e, %record_id, "unpinning an erased record's blob failed");
            ApiError::unavailable(
                "erased on-chain, but the blob store is unavailable: repeat the call to destroy the content",
            )
        })?;
        destroyed.push(cid.to_string());
    }
    let gc = app.blobs.gc().await.map_err(|e| {
        tracing::warn!(error = %e, %record_id, "garbage collection after erasure failed");
        ApiError::unavailable(
            "erased on-chain, but the blob store's garbage collection failed: repeat the call",
        )
    })?;
    tracing::info!(%record_id, removed_blocks = gc.removed_blocks, "record content erased");
    let mut out = json!({"record_id": record_id, "destroyed": destroyed});
    if let Some(c) = committed {
        out["tx_id"] = c.tx_id.into();
        out["block"] = c.block.into();
    }
    Ok(Json(out))
}

// ---------------------------------------------------------------- consents

/// Grant a consent (the patient, or a home-org admin as delegate). The body
/// is the contract's consent: grantee, scope, actions, purposes,
/// not_before?, not_after?, conditions?; plus `key_grant` (optional):
/// `{threshold?, shares?, proxies?}` to tune how the record key is shared,
/// or `false` for none. A grant to another org's users, role or whole org
/// shares the key by threshold proxy re-encryption (t of n proxy orgs,
/// default 2 of 3): the answer's `key_grant` names the proxies and which
/// ones already hold their key fragment (the rest are retried).
#[utoipa::path(post, path = "/api/v1/patients/{patient_id}/consents", params(("patient_id" = String, Path)),
    request_body(content = Object), security(("bearer" = [])),
    responses((status = 201, description = "{consent_id, tx_id, block, key_grant?}"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn grant_consent(
    State(app): State<AppState>,
    c: Caller,
    Path(patient_id): Path<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_id("patient", &patient_id)?;
    if body.contains_key("patient_id") || body.contains_key("consent_id") {
        return Err(ApiError::bad_request(
            "patient_id comes from the path; consent_id is assigned",
        ));
    }
    if body.contains_key("pre") {
        return Err(ApiError::bad_request(
            "pre is made by the gateway; use key_grant to tune it",
        ));
    }
    let mut args = body;
    let key_grant = match args.remove("key_grant") {
        None | Some(Value::Null) => Some(crate::proxy::grantor::KeyGrantOptions::default()),
        Some(Value::Bool(false)) => None,
        Some(v @ Value::Object(_)) => Some(
            serde_json::from_value(v)
                .map_err(|e| ApiError::bad_request(format!("key_grant: {e}")))?,
        ),
        Some(_) => {
            return Err(ApiError::bad_request(
                "key_grant must be an object {threshold?, shares?, proxies?} or false",
            ));
        }
    };
    // The org the consent's grantee belongs to, when it names one.
    let grantee_org = args
        .get("grantee")
        .and_then(|g| g.get("org"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    args.insert("patient_id".into(), patient_id.clone().into());
    let cross_org = grantee_org
        .as_deref()
        .filter(|o| *o != app.cfg.org && key_grant.is_some());
    let prepared = match (cross_org, &key_grant) {
        (Some(org), Some(opts)) => {
            check_id("grantee.org", org)?;
            let p = crate::proxy::grantor::prepare(&app, &patient_id, org, opts).await?;
            args.insert("consent_id".into(), p.consent_id.clone().into());
            args.insert(
                "pre".into(),
                serde_json::to_value(&p.pre).map_err(ApiError::internal)?,
            );
            Some(p)
        }
        _ => None,
    };
    let committed = match app
        .chain
        .submit(&c.signer, "GrantConsent", &Value::Object(args))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            if let Some(p) = &prepared {
                crate::proxy::grantor::abandon(&app, &p.consent_id).await;
            }
            return Err(e.into());
        }
    };
    let out: Value = parse_json(&committed.payload)?;
    let consent_id = out.get("consent_id").cloned().unwrap_or(Value::Null);
    let mut answer =
        json!({"consent_id": consent_id, "tx_id": committed.tx_id, "block": committed.block});
    if let Some(p) = prepared {
        let (delivered, pending) = crate::proxy::grantor::deliver_all(&app, &p.consent_id).await?;
        answer["key_grant"] = serde_json::to_value(crate::proxy::grantor::KeyGrantOutcome {
            threshold: p.pre.threshold,
            shares: p.pre.shares,
            proxies: p.pre.proxies.clone(),
            delivered,
            pending,
        })
        .map_err(ApiError::internal)?;
    }
    Ok((StatusCode::CREATED, Json(answer)))
}

/// A patient's consents with their status.
#[utoipa::path(get, path = "/api/v1/patients/{patient_id}/consents", params(("patient_id" = String, Path), PageParams), security(("bearer" = [])),
    responses((status = 200, description = "page of consents"), (status = 403, body = ErrorBody)))]
pub async fn list_consents(
    State(app): State<AppState>,
    c: Caller,
    Path(patient_id): Path<String>,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<Value>> {
    check_id("patient", &patient_id)?;
    let args = page_args(json!({"patient_id": patient_id}), &p)?;
    Ok(Json(parse_json(
        &app.chain.evaluate(&c.signer, "ListConsents", &args).await?,
    )?))
}

/// Revoke a consent; effective from the next block.
#[utoipa::path(delete, path = "/api/v1/consents/{consent_id}", params(("consent_id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "{tx_id, block}"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke_consent(
    State(app): State<AppState>,
    c: Caller,
    Path(consent_id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_id("consent", &consent_id)?;
    let committed = app
        .chain
        .submit(
            &c.signer,
            "RevokeConsent",
            &json!({"consent_id": consent_id}),
        )
        .await?;
    Ok(Json(
        json!({"tx_id": committed.tx_id, "block": committed.block}),
    ))
}

// ---------------------------------------------------------------- audit

/// Where access-log answers come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The gateway's projection of ledger events once it has caught up with
    /// the ledger's height at request time (waiting up to 2 s), else the
    /// chaincode.
    #[default]
    Auto,
    /// The chaincode's `QueryAccessLog`, always.
    Ledger,
}

/// Paging parameters of the access log and disclosures.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LogPageParams {
    pub limit: Option<u32>,
    pub bookmark: Option<String>,
    /// `ledger` forces the chaincode query; default `auto` (the projection
    /// when it has caught up with the ledger, else the chaincode). The
    /// answer's `x-audit-source` header says which one answered.
    #[param(inline)]
    pub source: Option<LogSource>,
}

/// The header naming the source of an access-log answer.
pub const AUDIT_SOURCE_HEADER: &str = "x-audit-source";

/// A `QueryAccessLog` page for `args` (the chaincode's argument JSON), from
/// the projection when it can answer exactly, else from the chaincode.
async fn access_log_page(
    app: &AppState,
    c: &Caller,
    args: &Value,
    source: LogSource,
) -> ApiResult<(Value, &'static str)> {
    if source == LogSource::Auto
        && let Some(page) = from_projection(app, c, args).await?
    {
        return Ok((page, "projection"));
    }
    let mut page: Value = parse_json(
        &app.chain
            .evaluate(&c.signer, "QueryAccessLog", args)
            .await?,
    )?;
    // The chaincode does not know blocks: take them from the projection.
    let ids: Vec<String> = page
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("tx_id").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let blocks = app.db.blocks_of(&ids).await?;
    put_blocks(&mut page, |_, tx| blocks.get(tx).copied());
    Ok((page, "ledger"))
}

/// Adds each event's `block` (API.md): `block_of(index, tx_id)`; an event
/// whose block is unknown (a ledger answer ahead of the projection) goes
/// without.
fn put_blocks(page: &mut Value, block_of: impl Fn(usize, &str) -> Option<i64>) {
    let Some(events) = page.get_mut("events").and_then(Value::as_array_mut) else {
        return;
    };
    for (i, e) in events.iter_mut().enumerate() {
        let tx = e.get("tx_id").and_then(Value::as_str).unwrap_or_default();
        if let (Some(b), Some(obj)) = (block_of(i, tx), e.as_object_mut()) {
            obj.insert("block".into(), b.into());
        }
    }
}

/// The projection's answer; `None` (logged) when it cannot answer exactly
/// now, so the caller asks the chaincode. Invalid or forbidden queries fail
/// as the chaincode fails them.
async fn from_projection(app: &AppState, c: &Caller, args: &Value) -> ApiResult<Option<Value>> {
    use crate::audit::{self, AuditError};
    let to_api = |e: AuditError| match e {
        AuditError::BadRequest(m) => Ok(ApiError::bad_request(m)),
        AuditError::Forbidden(m) => Ok(ApiError::forbidden(m)),
        other => Err(other),
    };
    let q = match audit::parse_log_args(args) {
        Ok(q) => q,
        Err(e) => return Err(to_api(e).unwrap_or_else(ApiError::internal)),
    };
    let caller = match ehr_chaincode::identity::from_creator(c.signer.serialized()) {
        Ok(i) => i,
        Err(e) => {
            tracing::info!(error = %e, "audit query answered by the ledger: caller identity unreadable");
            return Ok(None);
        }
    };
    let started = std::time::Instant::now();
    if let Err(why) =
        audit::projection_ready(&app.db, app.chain.as_ref(), audit::FRESHNESS_WAIT).await
    {
        tracing::info!(reason = %why, "audit query answered by the ledger: projection not caught up");
        return Ok(None);
    }
    match audit::query(&app.db, &caller, q).await {
        Ok(page) => {
            tracing::debug!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "audit query answered by the projection"
            );
            let mut v = serde_json::to_value(&page).map_err(ApiError::internal)?;
            put_blocks(&mut v, |i, _| page.blocks.get(i).copied());
            Ok(Some(v))
        }
        Err(e) => match to_api(e) {
            Ok(api) => Err(api),
            Err(e) => {
                tracing::warn!(error = %e, "audit query answered by the ledger: projection query failed");
                Ok(None)
            }
        },
    }
}

fn with_source(
    page: Value,
    source: &'static str,
) -> ([(&'static str, &'static str); 1], Json<Value>) {
    ([(AUDIT_SOURCE_HEADER, source)], Json(page))
}

fn log_page_args(base: Value, p: &LogPageParams) -> ApiResult<Value> {
    page_args(
        base,
        &PageParams {
            limit: p.limit,
            bookmark: p.bookmark.clone(),
        },
    )
}

/// Every access decision about a patient's data.
#[utoipa::path(get, path = "/api/v1/patients/{patient_id}/access-log", params(("patient_id" = String, Path), LogPageParams), security(("bearer" = [])),
    responses((status = 200, description = "{events, bookmark?}; header x-audit-source: projection | ledger"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn access_log(
    State(app): State<AppState>,
    c: Caller,
    Path(patient_id): Path<String>,
    Query(p): Query<LogPageParams>,
) -> ApiResult<impl axum::response::IntoResponse> {
    check_id("patient", &patient_id)?;
    let args = log_page_args(json!({"patient_id": patient_id}), &p)?;
    let (page, source) = access_log_page(&app, &c, &args, p.source.unwrap_or_default()).await?;
    Ok(with_source(page, source))
}

/// Audit query parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    pub patient: Option<String>,
    pub actor: Option<String>,
    pub org: Option<String>,
    /// allow | deny
    pub decision: Option<String>,
    pub purpose: Option<String>,
    pub break_glass: Option<bool>,
    /// RFC 3339.
    pub from: Option<String>,
    /// RFC 3339.
    pub to: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// `ledger` forces the chaincode query; default `auto` (the projection
    /// when it has caught up with the ledger, else the chaincode). The
    /// answer's `x-audit-source` header says which one answered.
    #[param(inline)]
    pub source: Option<LogSource>,
}

/// Access events for auditors, filtered and paged.
#[utoipa::path(get, path = "/api/v1/audit/events", params(AuditParams), security(("bearer" = [])),
    responses((status = 200, description = "{events, bookmark?}; header x-audit-source: projection | ledger"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn audit_events(
    State(app): State<AppState>,
    c: Caller,
    Query(p): Query<AuditParams>,
) -> ApiResult<impl axum::response::IntoResponse> {
    let (page, source) = audit_events_page(&app, &c, p).await?;
    Ok(with_source(page, source))
}

/// The page `/audit/events` answers, and its source.
async fn audit_events_page(
    app: &AppState,
    c: &Caller,
    p: AuditParams,
) -> ApiResult<(Value, &'static str)> {
    let mut args = Map::new();
    for (k, v, name) in [
        ("patient_id", &p.patient, "patient"),
        ("actor", &p.actor, "actor"),
        ("org", &p.org, "org"),
    ] {
        if let Some(v) = v {
            check_id(name, v)?;
            args.insert(k.into(), v.clone().into());
        }
    }
    if let Some(d) = &p.decision {
        if d != "allow" && d != "deny" {
            return Err(ApiError::bad_request("decision must be allow or deny"));
        }
        args.insert("decision".into(), d.clone().into());
    }
    if let Some(pu) = &p.purpose {
        if !PURPOSES.contains(&pu.as_str()) {
            return Err(ApiError::bad_request(format!(
                "purpose must be one of {}",
                PURPOSES.join(", ")
            )));
        }
        args.insert("purpose".into(), pu.clone().into());
    }
    if let Some(b) = p.break_glass {
        args.insert("break_glass".into(), b.into());
    }
    for (k, v) in [("from", &p.from), ("to", &p.to)] {
        if let Some(v) = v {
            chrono::DateTime::parse_from_rfc3339(v)
                .map_err(|_| ApiError::bad_request(format!("{k} must be RFC 3339")))?;
            args.insert(k.into(), v.clone().into());
        }
    }
    let args = page_args(
        Value::Object(args),
        &PageParams {
            limit: p.limit,
            bookmark: p.cursor,
        },
    )?;
    access_log_page(app, c, &args, p.source.unwrap_or_default()).await
}

/// Verifies the ledger's hash chain.
#[utoipa::path(get, path = "/api/v1/ledger/verify", security(("bearer" = [])),
    responses((status = 200, description = "{height, verified, first_bad_block?}"), (status = 501, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn ledger_verify(State(app): State<AppState>, _c: Caller) -> ApiResult<Json<Value>> {
    let v = app.chain.verify_chain().await?;
    Ok(Json(
        json!({"height": v.height, "verified": v.verified, "first_bad_block": v.first_bad_block}),
    ))
}

/// Where an access event's transaction sits in the ledger's hash chain.
#[utoipa::path(get, path = "/api/v1/audit/events/{event_id}/proof", params(("event_id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, description = "{tx_id, block, block_hash, verified}"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 501, body = ErrorBody)))]
pub async fn event_proof(
    State(app): State<AppState>,
    c: Caller,
    Path(event_id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_id("event", &event_id)?;
    // The caller must be allowed to see the event (403/404 otherwise).
    let ev: Value = parse_json(
        &app.chain
            .evaluate(&c.signer, "GetAccessEvent", &json!({"event_id": event_id}))
            .await?,
    )?;
    let tx_id = ev
        .get("tx_id")
        .or_else(|| ev.get("event").and_then(|e| e.get("tx_id")))
        .and_then(Value::as_str)
        .unwrap_or(&event_id)
        .to_owned();
    let p = app
        .chain
        .tx_proof(&tx_id)
        .await?
        .ok_or_else(|| ApiError::not_found("transaction not found in the ledger"))?;
    Ok(Json(
        json!({"event_id": event_id, "tx_id": p.tx_id, "block": p.block, "block_hash": p.block_hash, "verified": p.verified}),
    ))
}

/// Accounting of disclosures (HIPAA 164.528 style): allowed reads of the
/// patient's records by anyone but the patient.
#[utoipa::path(get, path = "/api/v1/patients/{patient_id}/disclosures", params(("patient_id" = String, Path), LogPageParams), security(("bearer" = [])),
    responses((status = 200, description = "{disclosures, bookmark?}; header x-audit-source: projection | ledger"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn disclosures(
    State(app): State<AppState>,
    c: Caller,
    Path(patient_id): Path<String>,
    Query(p): Query<LogPageParams>,
) -> ApiResult<impl axum::response::IntoResponse> {
    check_id("patient", &patient_id)?;
    let args = log_page_args(json!({"patient_id": patient_id, "decision": "allow"}), &p)?;
    let (page, source) = access_log_page(&app, &c, &args, p.source.unwrap_or_default()).await?;
    let list: Vec<Value> = page["events"]
        .as_array()
        .map(|evs| {
            evs.iter()
                .filter(|e| e["actor_role"] != "patient")
                .map(|e| {
                    json!({
                        "event_id": e["event_id"], "time": e["time"], "recipient": e["actor"],
                        "recipient_org": e["actor_org"], "recipient_role": e["actor_role"],
                        "record_id": e["record_id"], "purpose": e["purpose"],
                        "break_glass": e["break_glass"], "consent_id": e["consent_id"],
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(with_source(
        json!({"disclosures": list, "bookmark": page.get("bookmark").cloned().unwrap_or(Value::Null)}),
        source,
    ))
}

/// Export parameters: the filters of `/audit/events` plus `format`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// fhir (R4 Bundle of AuditEvent) or csv.
    pub format: String,
    pub patient: Option<String>,
    pub actor: Option<String>,
    pub org: Option<String>,
    pub decision: Option<String>,
    pub purpose: Option<String>,
    pub break_glass: Option<bool>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// As for `/audit/events`.
    #[param(inline)]
    pub source: Option<LogSource>,
}

fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // Neutralise spreadsheet formulas; quote always.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Audit events as FHIR R4 `Bundle` of `AuditEvent`, or CSV.
#[utoipa::path(get, path = "/api/v1/audit/export", params(ExportParams), security(("bearer" = [])),
    responses((status = 200, description = "FHIR Bundle (application/fhir+json) or CSV (text/csv)"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn audit_export(
    State(app): State<AppState>,
    c: Caller,
    Query(p): Query<ExportParams>,
) -> ApiResult<Response> {
    if p.format != "fhir" && p.format != "csv" {
        return Err(ApiError::bad_request("format must be fhir or csv"));
    }
    let q = AuditParams {
        patient: p.patient,
        actor: p.actor,
        org: p.org,
        decision: p.decision,
        purpose: p.purpose,
        break_glass: p.break_glass,
        from: p.from,
        to: p.to,
        limit: p.limit,
        cursor: p.cursor,
        source: p.source,
    };
    let (page, source) = audit_events_page(&app, &c, q).await?;
    let events = page["events"].as_array().cloned().unwrap_or_default();
    let (ctype, body) = if p.format == "csv" {
        let cols = [
            "event_id",
            "tx_id",
            "time",
            "actor",
            "actor_org",
            "actor_role",
            "patient_id",
            "record_id",
            "action",
            "purpose",
            "decision",
            "reason",
            "break_glass",
        ];
        let mut out = cols.join(",");
        out.push('\n');
        for e in &events {
            let row: Vec<String> = cols.iter().map(|k| csv_field(&e[*k])).collect();
            out.push_str(&row.join(","));
            out.push('\n');
        }
        ("text/csv; charset=utf-8", out)
    } else {
        let entries: Vec<Value> = events
            .iter()
            .map(|e| {
                let allowed = e["decision"] == "allow";
                json!({"resource": {
                    "resourceType": "AuditEvent",
                    "id": e["event_id"],
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
                    "action": "R",
                    "recorded": e["time"],
                    "outcome": if allowed { "0" } else { "4" },
                    "outcomeDesc": e["reason"],
                    "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": e["purpose"]}]}],
                    "agent": [{"who": {"identifier": {"value": e["actor"]}}, "requestor": true,
                               "role": [{"text": e["actor_role"]}], "network": {"address": e["actor_org"]}}],
                    "source": {"observer": {"display": "ehrchain ledger"}},
                    "entity": [{"what": {"identifier": {"value": e["record_id"]}}},
                               {"what": {"identifier": {"value": e["patient_id"]}}, "role": {"code": "1", "display": "Patient"}}],
                }})
            })
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "total": entries.len(), "entry": entries});
        ("application/fhir+json", bundle.to_string())
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, ctype)
        .header(AUDIT_SOURCE_HEADER, source)
        .body(Body::from(body))
        .map_err(ApiError::internal)
}
