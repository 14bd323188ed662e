//! Upload bookkeeping: a small state machine per record so that a failure
//! after the blob was stored is cleaned up (unpinned) or reconciled, and no
//! on-chain record points at a missing blob.
//!
//! `started` → `blob_stored` → `submitted`, or → `cleaned` when the chain
//! submission failed and the blobs were unpinned.

use sqlx::Row;

use super::{Db, DbError, now_secs};

/// States of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadState {
    Started,
    BlobStored,
    Submitted,
    Cleaned,
}

impl UploadState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::BlobStored => "blob_stored",
            Self::Submitted => "submitted",
            Self::Cleaned => "cleaned",
        }
    }
    fn parse(s: &str) -> Result<Self, DbError> {
        Ok(match s {
            "started" => Self::Started,
            "blob_stored" => Self::BlobStored,
            "submitted" => Self::Submitted,
            "cleaned" => Self::Cleaned,
            _ => return Err(DbError::Corrupt(format!("uploads.state {s:?}"))),
        })
    }
}

enum Val {
    Text(String),
    Int(i64),
}

/// One upload row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub record_id: String,
    pub patient_id: String,
    pub uploader: String,
    pub state: UploadState,
    pub cid: Option<String>,
    pub capsule_cid: Option<String>,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    pub tx_id: Option<String>,
    pub error: Option<String>,
}

impl Db {
    /// Records that an upload began.
    pub async fn upload_started(
        &self,
        record_id: &str,
        patient_id: &str,
        uploader: &str,
    ) -> Result<(), DbError> {
        let now = now_secs();
        sqlx::query(
            "INSERT INTO uploads (record_id, patient_id, uploader, state, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(record_id)
        .bind(patient_id)
        .bind(uploader)
        .bind(UploadState::Started.as_str())
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Records that the ciphertext (and capsule) blobs are stored and pinned.
    pub async fn upload_blob_stored(
        &self,
        record_id: &str,
        cid: &str,
        capsule_cid: &str,
        sha256: &str,
        size: i64,
    ) -> Result<(), DbError> {
        self.transition(
            record_id,
            UploadState::Started,
            UploadState::BlobStored,
            "cid = $4, capsule_cid = $5, sha256 = $6, size = $7",
            vec![
                Val::Text(cid.to_owned()),
                Val::Text(capsule_cid.to_owned()),
                Val::Text(sha256.to_owned()),
                Val::Int(size),
            ],
        )
        .await
    }

    /// Records the committed on-chain record.
    pub async fn upload_submitted(&self, record_id: &str, tx_id: &str) -> Result<(), DbError> {
        self.transition(
            record_id,
            UploadState::BlobStored,
            UploadState::Submitted,
            "tx_id = $4",
            vec![Val::Text(tx_id.to_owned())],
        )
        .await
    }

    /// Records that a failed upload's blobs were unpinned (and forgets its
    /// title: there is no record to name).
    pub async fn upload_cleaned(
        &self,
        record_id: &str,
        from: UploadState,
        error: &str,
    ) -> Result<(), DbError> {
        self.transition(
            record_id,
            from,
            UploadState::Cleaned,
            "error = $4",
            vec![Val::Text(error.to_owned())],
        )
        .await?;
        self.delete_title(record_id).await
    }

    async fn transition(
        &self,
        record_id: &str,
        from: UploadState,
        to: UploadState,
        set: &str,
        values: Vec<Val>,
    ) -> Result<(), DbError> {
        let sql = format!(
            "UPDATE uploads SET state = $1, updated_at = $2, {set} WHERE record_id = $3 AND state = '{}'",
            from.as_str()
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to.as_str())
            .bind(now_secs())
            .bind(record_id.to_owned());
        for v in values {
            q = match v {
                Val::Text(s) => q.bind(s),
                Val::Int(i) => q.bind(i),
            };
        }
        let res = q.execute(self.pool()).await?;
        if res.rows_affected() != 1 {
            return Err(DbError::Conflict(format!(
                "upload {record_id} is not in state {}",
                from.as_str()
            )));
        }
        Ok(())
    }

    /// One upload.
    pub async fn upload(&self, record_id: &str) -> Result<Option<Upload>, DbError> {
        let rows = self.uploads_where("record_id = $1", record_id).await?;
        Ok(rows.into_iter().next())
    }

    /// Uploads in a state (for reconciliation at start).
    pub async fn uploads_in_state(&self, state: UploadState) -> Result<Vec<Upload>, DbError> {
        self.uploads_where("state = $1", state.as_str()).await
    }

    async fn uploads_where(&self, cond: &str, arg: &str) -> Result<Vec<Upload>, DbError> {
        let sql = format!(
            "SELECT record_id, patient_id, uploader, state, cid, capsule_cid, sha256, size, tx_id, error
             FROM uploads WHERE {cond} ORDER BY created_at"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(arg.to_owned())
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Upload {
                    record_id: r.try_get("record_id")?,
                    patient_id: r.try_get("patient_id")?,
                    uploader: r.try_get("uploader")?,
                    state: UploadState::parse(&r.try_get::<String, _>("state")?)?,
                    cid: r.try_get("cid")?,
                    capsule_cid: r.try_get("capsule_cid")?,
                    sha256: r.try_get("sha256")?,
                    size: r.try_get("size")?,
                    tx_id: r.try_get("tx_id")?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testdb;

    #[tokio::test]
    async fn happy_path_and_illegal_transitions() {
        let (db, _d) = testdb::sqlite().await;
        db.upload_started("r1", "p1", "u1").await.unwrap();
        // Cannot submit before the blob is stored.
        assert!(db.upload_submitted("r1", "tx").await.is_err());
        db.upload_blob_stored("r1", "bafy", "bafc", "00ff", 42)
            .await
            .unwrap();
        assert_eq!(
            db.uploads_in_state(UploadState::BlobStored)
                .await
                .unwrap()
                .len(),
            1
        );
        db.upload_submitted("r1", "tx1").await.unwrap();
        let u = db.upload("r1").await.unwrap().unwrap();
        assert_eq!(u.state, UploadState::Submitted);
        assert_eq!(u.cid.as_deref(), Some("bafy"));
        assert_eq!(u.size, Some(42));
        assert_eq!(u.tx_id.as_deref(), Some("tx1"));
        // A submitted upload cannot be cleaned.
        assert!(
            db.upload_cleaned("r1", UploadState::BlobStored, "x")
                .await
                .is_err()
        );
        assert!(db.upload_started("r1", "p1", "u1").await.is_err());
    }

    #[tokio::test]
    async fn cleanup_path() {
        let (db, _d) = testdb::sqlite().await;
        db.upload_started("r2", "p1", "u1").await.unwrap();
        db.upload_blob_stored("r2", "bafy", "bafc", "00", 1)
            .await
            .unwrap();
        db.put_title("r2", b"sealed").await.unwrap();
        db.upload_cleaned("r2", UploadState::BlobStored, "ledger down")
            .await
            .unwrap();
        assert_eq!(
            db.title("r2").await.unwrap(),
            None,
            "no title without a record"
        );
        let u = db.upload("r2").await.unwrap().unwrap();
        assert_eq!(u.state, UploadState::Cleaned);
        assert_eq!(u.error.as_deref(), Some("ledger down"));
        assert!(db.upload("nope").await.unwrap().is_none());
    }
}
