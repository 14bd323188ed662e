//! Reconciliation of uploads interrupted by a crash: a blob stored but not
//! (known to be) recorded on-chain is either confirmed (the record exists)
//! or unpinned, so no orphan stays pinned and no record points at nothing.

use serde_json::json;

use crate::api::AppState;
use crate::db::uploads::UploadState;

/// Runs once at start; failures are logged and retried next start.
pub async fn run(app: &AppState) {
    let pending = match app.db.uploads_in_state(UploadState::BlobStored).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "reconciliation skipped");
            return;
        }
    };
    for u in pending {
        let on_chain = app
            .chain
            .evaluate(
                &app.service,
                "GetRecord",
                &json!({"record_id": u.record_id}),
            )
            .await;
        match on_chain {
            Ok(_) => {
                let _ = app.db.upload_submitted(&u.record_id, "reconciled").await;
            }
            Err(crate::chain::ChainError::Rejected { status: 404, .. }) => {
                for cid in [&u.cid, &u.capsule_cid].into_iter().flatten() {
                    if let Ok(cid) = cid.parse::<ehr_ipfs::Cid>() {
                        let _ = app.blobs.unpin(&cid).await;
                    }
                }
                let _ = app
                    .db
                    .upload_cleaned(
                        &u.record_id,
                        UploadState::BlobStored,
                        "reconciled: not on-chain",
                    )
                    .await;
                tracing::info!(record_id = %u.record_id, "orphan upload unpinned");
            }
            Err(e) => {
                tracing::warn!(record_id = %u.record_id, error = %e, "reconciliation deferred")
            }
        }
    }
    if let Ok(started) = app.db.uploads_in_state(UploadState::Started).await {
        for u in started {
            let _ = app
                .db
                .upload_cleaned(&u.record_id, UploadState::Started, "interrupted")
                .await;
        }
    }
}
