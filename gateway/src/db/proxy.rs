//! Tables of threshold proxy re-encryption: this org's Umbral key pairs
//! (`org_keys`), the kfrags it holds as a proxy (`kfrags`), and the sealed
//! kfrags it still has to deliver as a grantor (`kfrag_outbox`).
//!
//! Everything secret here is sealed: org secret keys by the KEK, kfrags by
//! Umbral to the proxy's key.

use sqlx::Row;

use super::{Db, DbError, now_secs};

/// What an org key pair is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// Grants to this org are made to this key; it opens re-encrypted DEKs.
    Reader,
    /// Kfrags are sealed to this key.
    Proxy,
}

impl KeyPurpose {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Proxy => "proxy",
        }
    }
}

/// One stored org key pair (secret still sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgKeyRow {
    /// Hex of the compressed public key.
    pub public_key: String,
    pub purpose: String,
    pub secret_sealed: Vec<u8>,
    pub active: bool,
}

/// A kfrag held by this org as a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldKfrag {
    pub consent_id: String,
    pub patient_id: String,
    /// Hex of the proxy key it is sealed to.
    pub proxy_public_key: String,
    /// JSON of the sealed kfrag (`SealedKey`).
    pub sealed: String,
    /// The scoped records not yet erased (`None`: the scope has categories).
    pub scope_records: Option<Vec<String>>,
}

/// A sealed kfrag waiting for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub consent_id: String,
    pub org: String,
    pub sealed: String,
    pub attempts: i64,
    pub created_at: i64,
}

fn held_from_row(r: &sqlx::any::AnyRow) -> Result<HeldKfrag, DbError> {
    let scope: Option<String> = r.try_get("scope_records")?;
    let scope_records = scope
        .map(|s| {
            serde_json::from_str::<Vec<String>>(&s)
                .map_err(|_| DbError::Corrupt("kfrags.scope_records".into()))
        })
        .transpose()?;
    Ok(HeldKfrag {
        consent_id: r.try_get("consent_id")?,
        patient_id: r.try_get("patient_id")?,
        proxy_public_key: r.try_get("proxy_public_key")?,
        sealed: r.try_get("sealed")?,
        scope_records,
    })
}

impl Db {
    /// Stores a new active key pair for `purpose`.
    pub async fn put_org_key(
        &self,
        purpose: KeyPurpose,
        public_key: &str,
        secret_sealed: &[u8],
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO org_keys (public_key, purpose, secret_sealed, active, created_at)
             VALUES ($1, $2, $3, 1, $4)",
        )
        .bind(public_key)
        .bind(purpose.as_str())
        .bind(secret_sealed.to_vec())
        .bind(now_secs())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The newest active key pair for `purpose`.
    pub async fn active_org_key(&self, purpose: KeyPurpose) -> Result<Option<OrgKeyRow>, DbError> {
        let row = sqlx::query(
            "SELECT public_key, purpose, secret_sealed, active FROM org_keys
             WHERE purpose = $1 AND active = 1 ORDER BY created_at DESC, public_key LIMIT 1",
        )
        .bind(purpose.as_str())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(org_key_from_row).transpose()
    }

    /// A key pair of `purpose` by its public key (active or not).
    pub async fn org_key(
        &self,
        purpose: KeyPurpose,
        public_key: &str,
    ) -> Result<Option<OrgKeyRow>, DbError> {
        let row = sqlx::query(
            "SELECT public_key, purpose, secret_sealed, active FROM org_keys
             WHERE purpose = $1 AND public_key = $2",
        )
        .bind(purpose.as_str())
        .bind(public_key)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(org_key_from_row).transpose()
    }

    /// Keeps a delivered kfrag (replacing an earlier delivery of the same
    /// grant: deliveries are retried).
    pub async fn put_held_kfrag(&self, k: &HeldKfrag) -> Result<(), DbError> {
        let scope = k
            .scope_records
            .as_ref()
            .map(|s| serde_json::Value::from(s.clone()).to_string());
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM kfrags WHERE consent_id = $1")
            .bind(&k.consent_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO kfrags (consent_id, patient_id, proxy_public_key, sealed, scope_records, received_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&k.consent_id)
        .bind(&k.patient_id)
        .bind(&k.proxy_public_key)
        .bind(&k.sealed)
        .bind(scope)
        .bind(now_secs())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The kfrag held for a grant.
    pub async fn held_kfrag(&self, consent_id: &str) -> Result<Option<HeldKfrag>, DbError> {
        let row = sqlx::query(
            "SELECT consent_id, patient_id, proxy_public_key, sealed, scope_records
             FROM kfrags WHERE consent_id = $1",
        )
        .bind(consent_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(held_from_row).transpose()
    }

    /// Deletes the kfrag of a grant; true when there was one.
    pub async fn delete_held_kfrag(&self, consent_id: &str) -> Result<bool, DbError> {
        let r = sqlx::query("DELETE FROM kfrags WHERE consent_id = $1")
            .bind(consent_id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// How many kfrags this org holds.
    pub async fn held_kfrag_count(&self) -> Result<i64, DbError> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM kfrags")
            .fetch_one(self.pool())
            .await?;
        Ok(r.try_get("n")?)
    }

    /// A record was erased: it leaves the scope of every held kfrag of its
    /// patient; kfrags whose scope was only erased records are deleted.
    /// Returns the consents whose kfrags were deleted.
    pub async fn held_kfrags_record_erased(
        &self,
        patient_id: &str,
        record_id: &str,
    ) -> Result<Vec<String>, DbError> {
        let rows = sqlx::query(
            "SELECT consent_id, patient_id, proxy_public_key, sealed, scope_records
             FROM kfrags WHERE patient_id = $1 AND scope_records IS NOT NULL",
        )
        .bind(patient_id)
        .fetch_all(self.pool())
        .await?;
        let mut deleted = Vec::new();
        for r in &rows {
            let k = held_from_row(r)?;
            let Some(mut scope) = k.scope_records else {
                continue;
            };
            if !scope.iter().any(|s| s == record_id) {
                continue;
            }
            scope.retain(|s| s != record_id);
            if scope.is_empty() {
                self.delete_held_kfrag(&k.consent_id).await?;
                deleted.push(k.consent_id);
            } else {
                sqlx::query("UPDATE kfrags SET scope_records = $2 WHERE consent_id = $1")
                    .bind(&k.consent_id)
                    .bind(serde_json::Value::from(scope).to_string())
                    .execute(self.pool())
                    .await?;
            }
        }
        Ok(deleted)
    }

    /// Queues sealed kfrags of one grant for delivery (before the grant is
    /// submitted).
    pub async fn outbox_put(
        &self,
        consent_id: &str,
        items: &[(String, String)],
    ) -> Result<(), DbError> {
        let now = now_secs();
        let mut tx = self.pool().begin().await?;
        for (org, sealed) in items {
            sqlx::query(
                "INSERT INTO kfrag_outbox (consent_id, org, sealed, attempts, created_at, updated_at)
                 VALUES ($1, $2, $3, 0, $4, $4)",
            )
            .bind(consent_id)
            .bind(org)
            .bind(sealed)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every queued delivery, oldest first.
    pub async fn outbox_all(&self) -> Result<Vec<OutboxEntry>, DbError> {
        let rows = sqlx::query(
            "SELECT consent_id, org, sealed, attempts, created_at FROM kfrag_outbox
             ORDER BY created_at, consent_id, org",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxEntry {
                    consent_id: r.try_get("consent_id")?,
                    org: r.try_get("org")?,
                    sealed: r.try_get("sealed")?,
                    attempts: r.try_get("attempts")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// The queued deliveries of one grant.
    pub async fn outbox_for(&self, consent_id: &str) -> Result<Vec<OutboxEntry>, DbError> {
        Ok(self
            .outbox_all()
            .await?
            .into_iter()
            .filter(|e| e.consent_id == consent_id)
            .collect())
    }

    /// A delivery was accepted (or is moot): forget it.
    pub async fn outbox_done(&self, consent_id: &str, org: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM kfrag_outbox WHERE consent_id = $1 AND org = $2")
            .bind(consent_id)
            .bind(org)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Forgets every queued delivery of a grant.
    pub async fn outbox_drop(&self, consent_id: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM kfrag_outbox WHERE consent_id = $1")
            .bind(consent_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// A delivery attempt failed.
    pub async fn outbox_failed(
        &self,
        consent_id: &str,
        org: &str,
        error: &str,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE kfrag_outbox SET attempts = attempts + 1, last_error = $3, updated_at = $4
             WHERE consent_id = $1 AND org = $2",
        )
        .bind(consent_id)
        .bind(org)
        .bind(error)
        .bind(now_secs())
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

fn org_key_from_row(r: &sqlx::any::AnyRow) -> Result<OrgKeyRow, DbError> {
    let active: i64 = r.try_get("active")?;
    Ok(OrgKeyRow {
        public_key: r.try_get("public_key")?,
        purpose: r.try_get("purpose")?,
        secret_sealed: r.try_get("secret_sealed")?,
        active: active != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testdb;

    fn held(consent: &str, scope: Option<Vec<&str>>) -> HeldKfrag {
        HeldKfrag {
            consent_id: consent.into(),
            patient_id: "p-1".into(),
            proxy_public_key: "02ab".into(),
            sealed: "{}".into(),
            scope_records: scope.map(|s| s.into_iter().map(str::to_owned).collect()),
        }
    }

    #[tokio::test]
    async fn org_keys_active_and_by_public_key() {
        let (db, _d) = testdb::sqlite().await;
        assert!(
            db.active_org_key(KeyPurpose::Proxy)
                .await
                .unwrap()
                .is_none()
        );
        db.put_org_key(KeyPurpose::Proxy, "02aa", b"sealed")
            .await
            .unwrap();
        db.put_org_key(KeyPurpose::Reader, "03bb", b"sealed2")
            .await
            .unwrap();
        let p = db.active_org_key(KeyPurpose::Proxy).await.unwrap().unwrap();
        assert_eq!(p.public_key, "02aa");
        assert!(p.active);
        assert!(
            db.org_key(KeyPurpose::Proxy, "03bb")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            db.org_key(KeyPurpose::Reader, "03bb")
                .await
                .unwrap()
                .unwrap()
                .secret_sealed,
            b"sealed2"
        );
        // A public key is stored once.
        assert!(
            db.put_org_key(KeyPurpose::Proxy, "02aa", b"x")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn held_kfrags_replace_delete_and_erasure() {
        let (db, _d) = testdb::sqlite().await;
        db.put_held_kfrag(&held("c-1", Some(vec!["r-1", "r-2"])))
            .await
            .unwrap();
        db.put_held_kfrag(&held("c-2", None)).await.unwrap();
        db.put_held_kfrag(&held("c-3", Some(vec!["r-1"])))
            .await
            .unwrap();
        // Redelivery replaces.
        db.put_held_kfrag(&held("c-3", Some(vec!["r-1"])))
            .await
            .unwrap();
        assert_eq!(db.held_kfrag_count().await.unwrap(), 3);
        // Erasing r-1 ends c-3 (only r-1) and narrows c-1; c-2 (categories) stays.
        let gone = db.held_kfrags_record_erased("p-1", "r-1").await.unwrap();
        assert_eq!(gone, vec!["c-3".to_owned()]);
        assert_eq!(
            db.held_kfrag("c-1").await.unwrap().unwrap().scope_records,
            Some(vec!["r-2".to_owned()])
        );
        // Idempotent (events replay).
        assert!(
            db.held_kfrags_record_erased("p-1", "r-1")
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            db.held_kfrags_record_erased("p-1", "r-2").await.unwrap(),
            vec!["c-1".to_owned()]
        );
        assert!(db.held_kfrag("c-2").await.unwrap().is_some());
        assert!(db.delete_held_kfrag("c-2").await.unwrap());
        assert!(!db.delete_held_kfrag("c-2").await.unwrap());
        assert_eq!(db.held_kfrag_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn outbox_lifecycle() {
        let (db, _d) = testdb::sqlite().await;
        db.outbox_put(
            "c-1",
            &[("org-a".into(), "s1".into()), ("org-b".into(), "s2".into())],
        )
        .await
        .unwrap();
        db.outbox_put("c-2", &[("org-a".into(), "s3".into())])
            .await
            .unwrap();
        assert_eq!(db.outbox_all().await.unwrap().len(), 3);
        db.outbox_failed("c-1", "org-b", "unreachable")
            .await
            .unwrap();
        let c1 = db.outbox_for("c-1").await.unwrap();
        assert_eq!(c1.len(), 2);
        assert_eq!(c1.iter().find(|e| e.org == "org-b").unwrap().attempts, 1);
        db.outbox_done("c-1", "org-a").await.unwrap();
        assert_eq!(db.outbox_for("c-1").await.unwrap().len(), 1);
        db.outbox_drop("c-1").await.unwrap();
        assert!(db.outbox_for("c-1").await.unwrap().is_empty());
        assert_eq!(db.outbox_all().await.unwrap().len(), 1);
    }
}
