//! Record titles, kept only by the patient's home gateway: a title may be
//! PHI, so it never goes on-chain and is stored sealed (the caller seals it
//! with the KEK, bound to the record id).

use sqlx::Row;

use super::{Db, DbError, now_secs};

impl Db {
    /// Stores a record's sealed title (once; a second one is a conflict).
    pub async fn put_title(&self, record_id: &str, sealed: &[u8]) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO record_titles (record_id, title_sealed, created_at) VALUES ($1, $2, $3)",
        )
        .bind(record_id)
        .bind(sealed.to_vec())
        .bind(now_secs())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A record's sealed title.
    pub async fn title(&self, record_id: &str) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self
            .titles(&[record_id.to_owned()])
            .await?
            .remove(record_id))
    }

    /// The sealed titles of those of `record_ids` that have one.
    pub async fn titles(
        &self,
        record_ids: &[String],
    ) -> Result<std::collections::HashMap<String, Vec<u8>>, DbError> {
        let mut out = std::collections::HashMap::new();
        for chunk in record_ids.chunks(super::IN_BATCH) {
            let sql = format!(
                "SELECT record_id, title_sealed FROM record_titles WHERE record_id IN ({})",
                super::placeholders(chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for r in q.fetch_all(self.pool()).await? {
                out.insert(r.try_get("record_id")?, r.try_get("title_sealed")?);
            }
        }
        Ok(out)
    }

    /// Forgets a record's title (its upload failed).
    pub async fn delete_title(&self, record_id: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM record_titles WHERE record_id = $1")
            .bind(record_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::db::testdb;

    #[tokio::test]
    async fn put_get_delete() {
        let (db, _d) = testdb::sqlite().await;
        assert_eq!(db.title("r1").await.unwrap(), None);
        db.put_title("r1", b"\x01sealed").await.unwrap();
        assert_eq!(
            db.title("r1").await.unwrap().as_deref(),
            Some(&b"\x01sealed"[..])
        );
        assert!(
            db.put_title("r1", b"again")
                .await
                .unwrap_err()
                .is_unique_violation()
        );
        db.delete_title("r1").await.unwrap();
        assert_eq!(db.title("r1").await.unwrap(), None);
    }
}
