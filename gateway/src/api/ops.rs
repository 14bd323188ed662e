//! Operations endpoints: liveness, readiness, metrics.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness of each backing service.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub ledger: bool,
    pub blob_store: bool,
    pub database: bool,
}

/// Ready when the ledger, the blob store and the database answer.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    let (ledger, blobs, db) = tokio::join!(app.chain.check(), app.blobs.check(), app.db.ping());
    let r = Readiness {
        ready: ledger.is_ok() && blobs.is_ok() && db.is_ok(),
        ledger: ledger.is_ok(),
        blob_store: blobs.is_ok(),
        database: db.is_ok(),
    };
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
