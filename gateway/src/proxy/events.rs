//! Ledger events that end key fragments: a revoked consent's kfrag is
//! deleted at every proxy (and dropped from the grantor's outbox); an erased
//! record leaves the scope of the kfrags that named it, and a kfrag whose
//! every scoped record is erased is deleted. Driven by the event projector,
//! so a replay after a restart applies them again (idempotent).

use serde_json::Value;

use crate::db::{Db, DbError};

/// Applies one chaincode event.
pub async fn on_event(db: &Db, name: &str, payload: &[u8]) -> Result<(), DbError> {
    let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    match name {
        "ConsentRevoked" => {
            let consent_id = s("consent_id");
            if consent_id.is_empty() {
                return Ok(());
            }
            if db.delete_held_kfrag(consent_id).await? {
                tracing::info!(%consent_id, "key fragment deleted: consent revoked");
            }
            db.outbox_drop(consent_id).await?;
        }
        "RecordErased" => {
            let (patient_id, record_id) = (s("patient_id"), s("record_id"));
            if patient_id.is_empty() || record_id.is_empty() {
                return Ok(());
            }
            for consent_id in db.held_kfrags_record_erased(patient_id, record_id).await? {
                tracing::info!(%consent_id, %record_id, "key fragment deleted: every scoped record erased");
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::proxy::HeldKfrag;
    use crate::db::testdb;

    #[tokio::test]
    async fn revocation_and_erasure_delete_kfrags() {
        let (db, _d) = testdb::sqlite().await;
        for (c, scope) in [("c-1", None), ("c-2", Some(vec!["r-9".to_owned()]))] {
            db.put_held_kfrag(&HeldKfrag {
                consent_id: c.into(),
                patient_id: "p-1".into(),
                proxy_public_key: "02".into(),
                sealed: "{}".into(),
                scope_records: scope,
            })
            .await
            .unwrap();
        }
        db.outbox_put("c-1", &[("org-x".into(), "{}".into())])
            .await
            .unwrap();
        on_event(&db, "ConsentRevoked", br#"{"consent_id":"c-1"}"#)
            .await
            .unwrap();
        assert!(db.held_kfrag("c-1").await.unwrap().is_none());
        assert!(db.outbox_for("c-1").await.unwrap().is_empty());
        // Another patient's record of the same id changes nothing.
        on_event(
            &db,
            "RecordErased",
            br#"{"patient_id":"p-2","record_id":"r-9"}"#,
        )
        .await
        .unwrap();
        assert!(db.held_kfrag("c-2").await.unwrap().is_some());
        on_event(
            &db,
            "RecordErased",
            br#"{"patient_id":"p-1","record_id":"r-9"}"#,
        )
        .await
        .unwrap();
        assert!(db.held_kfrag("c-2").await.unwrap().is_none());
        // Other events and junk payloads are ignored.
        on_event(&db, "AccessDecision", b"not json").await.unwrap();
        on_event(&db, "ConsentRevoked", b"{}").await.unwrap();
    }
}
