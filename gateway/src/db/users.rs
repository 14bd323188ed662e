//! Users, their password credentials and their enrolled identities.

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, DbError, now_secs};

/// A gateway user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub attributes: Map<String, Value>,
    pub patient_id: Option<String>,
}

/// An enrolled identity: X.509 certificate, the sealed ECDSA key and the
/// user's Umbral key pair (secret sealed). Sealed blobs are opened with the
/// KEK by the caller.
#[derive(Debug, Clone)]
pub struct IdentityRow {
    pub user_id: String,
    pub msp_id: String,
    pub cert_pem: String,
    pub key_sealed: Vec<u8>,
    pub umbral_pk: Vec<u8>,
    pub umbral_sk_sealed: Vec<u8>,
}

fn user_from_row(r: &AnyRow) -> Result<User, DbError> {
    let attrs: String = r.try_get("attributes")?;
    let attributes = match serde_json::from_str::<Value>(&attrs) {
        Ok(Value::Object(m)) => m,
        _ => return Err(DbError::Corrupt("users.attributes".into())),
    };
    Ok(User {
        user_id: r.try_get("user_id")?,
        username: r.try_get("username")?,
        role: r.try_get("role")?,
        attributes,
        patient_id: r.try_get("patient_id")?,
    })
}

const USER_COLS: &str = "user_id, username, role, attributes, patient_id";

impl Db {
    /// Creates a user with a password hash and (optionally) an identity in
    /// one transaction. A taken username is a conflict.
    pub async fn create_user(
        &self,
        user: &User,
        password_hash: &str,
        identity: Option<&IdentityRow>,
    ) -> Result<(), DbError> {
        let now = now_secs();
        let mut tx = self.pool().begin().await?;
        let res = sqlx::query(
            "INSERT INTO users (user_id, username, role, attributes, patient_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&user.user_id)
        .bind(&user.username)
        .bind(&user.role)
        .bind(Value::Object(user.attributes.clone()).to_string())
        .bind(user.patient_id.clone())
        .bind(now)
        .execute(&mut *tx)
        .await;
        if let Err(e) = res {
            let e = DbError::from(e);
            return Err(if e.is_unique_violation() {
                DbError::Conflict(format!("username {:?} is taken", user.username))
            } else {
                e
            });
        }
        sqlx::query(
            "INSERT INTO credentials (user_id, password_hash, updated_at) VALUES ($1, $2, $3)",
        )
        .bind(&user.user_id)
        .bind(password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(id) = identity {
            insert_identity(&mut tx, id, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores an identity not tied to a login (e.g. the gateway's own).
    pub async fn put_identity(&self, id: &IdentityRow) -> Result<(), DbError> {
        let mut tx = self.pool().begin().await?;
        insert_identity(&mut tx, id, now_secs()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A user by login name.
    pub async fn user_by_username(&self, username: &str) -> Result<Option<User>, DbError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users WHERE username = $1"
        )))
        .bind(username)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// A user by id.
    pub async fn user(&self, user_id: &str) -> Result<Option<User>, DbError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users WHERE user_id = $1"
        )))
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The user registered for a patient id, if that patient is local.
    pub async fn user_by_patient(&self, patient_id: &str) -> Result<Option<User>, DbError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLS} FROM users WHERE patient_id = $1"
        )))
        .bind(patient_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// The enrolled identity of the patient registered here as
    /// `patient_id` (`None`: not a patient of this gateway).
    pub async fn patient_identity(&self, patient_id: &str) -> Result<Option<IdentityRow>, DbError> {
        let Some(user) = self.user_by_patient(patient_id).await? else {
            return Ok(None);
        };
        match self.identity(&user.user_id).await? {
            Some(row) => Ok(Some(row)),
            None => Err(DbError::Corrupt(format!(
                "patient user {} has no identity",
                user.user_id
            ))),
        }
    }

    /// Number of users.
    pub async fn user_count(&self) -> Result<i64, DbError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get("n")?)
    }

    /// The password hash of a user.
    pub async fn password_hash(&self, user_id: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT password_hash FROM credentials WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.try_get("password_hash")).transpose()?)
    }

    /// The identity enrolled for a user (or the gateway).
    pub async fn identity(&self, user_id: &str) -> Result<Option<IdentityRow>, DbError> {
        let row = sqlx::query(
            "SELECT user_id, msp_id, cert_pem, key_sealed, umbral_pk, umbral_sk_sealed
             FROM identities WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| {
            Ok(IdentityRow {
                user_id: r.try_get("user_id")?,
                msp_id: r.try_get("msp_id")?,
                cert_pem: r.try_get("cert_pem")?,
                key_sealed: r.try_get("key_sealed")?,
                umbral_pk: r.try_get("umbral_pk")?,
                umbral_sk_sealed: r.try_get("umbral_sk_sealed")?,
            })
        })
        .transpose()
    }
}

async fn insert_identity(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &IdentityRow,
    now: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO identities (user_id, msp_id, cert_pem, key_sealed, umbral_pk, umbral_sk_sealed, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id.user_id)
    .bind(&id.msp_id)
    .bind(&id.cert_pem)
    .bind(id.key_sealed.clone())
    .bind(id.umbral_pk.clone())
    .bind(id.umbral_sk_sealed.clone())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testdb;

    fn user(name: &str) -> User {
        let mut attributes = Map::new();
        attributes.insert("department".into(), Value::String("cardiology".into()));
        User {
            user_id: format!("u-{name}"),
            username: name.into(),
            role: "clinician".into(),
            attributes,
            patient_id: None,
        }
    }

    #[tokio::test]
    async fn create_and_read_back() {
        let (db, _d) = testdb::sqlite().await;
        let id = IdentityRow {
            user_id: "u-alice".into(),
            msp_id: "hospital-a".into(),
            cert_pem: "PEM".into(),
            key_sealed: vec![1, 2, 3],
            umbral_pk: vec![4; 33],
            umbral_sk_sealed: vec![5; 60],
        };
        db.create_user(&user("alice"), "$argon2id$x", Some(&id))
            .await
            .unwrap();
        let u = db.user_by_username("alice").await.unwrap().unwrap();
        assert_eq!(u, user("alice"));
        assert_eq!(db.user("u-alice").await.unwrap().unwrap().username, "alice");
        assert_eq!(
            db.password_hash("u-alice").await.unwrap().unwrap(),
            "$argon2id$x"
        );
        let got = db.identity("u-alice").await.unwrap().unwrap();
        assert_eq!(got.key_sealed, vec![1, 2, 3]);
        assert_eq!(got.umbral_pk, vec![4; 33]);
        assert!(db.user_by_username("bob").await.unwrap().is_none());
        assert_eq!(db.user_count().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn duplicate_username_is_a_conflict_and_writes_nothing() {
        let (db, _d) = testdb::sqlite().await;
        db.create_user(&user("alice"), "h", None).await.unwrap();
        let mut again = user("alice");
        again.user_id = "u-other".into();
        let err = db.create_user(&again, "h", None).await.unwrap_err();
        assert!(err.is_unique_violation(), "{err}");
        assert!(db.user("u-other").await.unwrap().is_none());
        assert!(db.password_hash("u-other").await.unwrap().is_none());
    }
}
