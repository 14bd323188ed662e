//! The REST API (`/api/v1`, per `shared/design/API.md`), operations endpoints
//! and the OpenAPI 3.1 document generated from the handlers.

pub mod error;
pub mod extract;
pub mod handlers;
pub mod keys;
mod ops;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use ehr_ipfs::BlobStore;
use ehr_ledger::msp::ca::OrgCa;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::jwt::{Issuer, Verifier};
use crate::chain::{Chain, SigningIdentity};
use crate::config::GatewayConfig;
use crate::crypto::kek::Kek;
use crate::db::Db;
use crate::metrics::{Metrics, RequestLabels};

/// Everything a handler needs.
pub struct Gateway {
    pub cfg: GatewayConfig,
    pub db: Db,
    pub kek: Kek,
    pub blobs: Arc<dyn BlobStore>,
    pub chain: Arc<dyn Chain>,
    pub ca: OrgCa,
    /// The built-in issuer (absent in OIDC mode).
    pub issuer: Option<Issuer>,
    pub verifier: Verifier,
    pub metrics: Metrics,
    /// The gateway's own identity (org admin), for service calls.
    pub service: SigningIdentity,
    /// HTTP client (JWKS, …).
    pub http: reqwest::Client,
    /// Threshold proxy re-encryption: org keys, settings, peer channels.
    pub proxy: crate::proxy::ProxyState,
}

/// Largest JSON request body.
pub const MAX_JSON_BODY: usize = 1024 * 1024;

/// Shared state of the router.
pub type AppState = Arc<Gateway>;

#[derive(OpenApi)]
#[openapi(
    info(title = "ehrchain gateway", description = "Hospital gateway: JWT auth, encrypted EHR files in IPFS, consent and access log on a Fabric ledger."),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API router and its OpenAPI document.
pub fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(handlers::token))
        .routes(routes!(handlers::me))
        .routes(routes!(keys::export_key))
        .routes(routes!(keys::org_keys))
        .routes(routes!(handlers::create_user))
        .routes(routes!(handlers::upload_record, handlers::list_records))
        .routes(routes!(handlers::get_record))
        .routes(routes!(handlers::record_content, handlers::erase_record))
        .routes(routes!(handlers::grant_consent, handlers::list_consents))
        .routes(routes!(handlers::revoke_consent))
        .routes(routes!(handlers::access_log))
        .routes(routes!(handlers::audit_events))
        .routes(routes!(handlers::ledger_verify))
        .routes(routes!(handlers::event_proof))
        .routes(routes!(handlers::disclosures))
        .routes(routes!(handlers::audit_export))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
}

/// The complete HTTP service.
pub fn router(state: AppState) -> Router {
    let (api, doc) = openapi_router().split_for_parts();
    let doc = Arc::new(doc);

    api.route(
        "/openapi.json",
        axum::routing::get(move || {
            let doc = doc.clone();
            async move { axum::Json((*doc).clone()) }
        }),
    )
    .fallback(|| async { error::ApiError::not_found("no such endpoint") })
    // JSON bodies are small; the upload route streams and enforces its own limit.
    .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
    .layer(axum::middleware::map_response(error_shape))
    .layer(axum::middleware::from_fn_with_state(state.clone(), track))
    .layer(PropagateRequestIdLayer::x_request_id())
    .layer(
        TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            // The path only (never the query string: it may carry a justification).
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }),
    )
    .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
    .with_state(state.clone())
    // gRPC (gateway to gateway, `ehr.proxy.v1.KeyProxy`) on the same port,
    // outside the REST layers: it has its own framing, errors and limits.
    .merge(crate::proxy::service::routes(state))
}

/// Gives every error the API's JSON shape, including the plain-text
/// rejections of axum's own extractors (path, query, 405, body limits).
async fn error_shape(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (_, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message: String = String::from_utf8_lossy(&text).chars().take(300).collect();
    let message = if message.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        message
    };
    let code = match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        410 => "gone",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        501 => "not_implemented",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "bad_request",
    };
    let mut e = error::ApiError::bad_request(message);
    e.status = status;
    e.code = code;
    axum::response::IntoResponse::into_response(e)
}

async fn track(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    state.metrics.latency.observe(start.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
