//! Persistence with sqlx: SQLite by default (a file in the data dir, WAL),
//! PostgreSQL when the URL is `postgres://…`. One code path through sqlx's
//! `Any` driver with runtime-checked queries (`$1` placeholders work on
//! both); migrations per backend run at start.

pub mod events;
pub mod log;
pub mod proxy;
pub mod titles;
pub mod uploads;
pub mod users;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use thiserror::Error;

/// Errors of the database layer.
#[derive(Debug, Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL (use sqlite:// or postgres://)")]
    Url,
    #[error("invalid schema name {0:?}")]
    Schema(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl DbError {
    /// True when the error is a unique-constraint violation.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            DbError::Sqlx(sqlx::Error::Database(e)) => {
                e.is_unique_violation()
                    || e.message().contains("UNIQUE constraint")
                    || e.code().as_deref() == Some("23505")
            }
            DbError::Conflict(_) => true,
            _ => false,
        }
    }
}

/// Which backend a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The gateway database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// Woken whenever a projection checkpoint moves.
    progress: std::sync::Arc<tokio::sync::Notify>,
}

/// The default SQLite URL for a data directory.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("gateway.db").display())
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
}

impl Db {
    /// Connects and runs the migrations. With PostgreSQL, `schema` (if any)
    /// is created and used as the search path, so several gateways (or test
    /// runs) can share one database.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(DbError::Url);
        };
        let opts: AnyConnectOptions = url.parse()?;
        let mut pool_opts = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10));
        match backend {
            Backend::Sqlite => {
                pool_opts = pool_opts.after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;")
                            .await?;
                        Ok(())
                    })
                });
            }
            Backend::Postgres => {
                if let Some(schema) = schema {
                    if !valid_schema(schema) {
                        return Err(DbError::Schema(schema.to_owned()));
                    }
                    let setup = AnyPoolOptions::new()
                        .max_connections(1)
                        .connect_with(opts.clone())
                        .await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "CREATE SCHEMA IF NOT EXISTS {schema}"
                    )))
                    .execute(&setup)
                    .await?;
                    setup.close().await;
                    let set_path = format!("SET search_path TO {schema}");
                    pool_opts = pool_opts.after_connect(move |conn, _| {
                        let set_path = set_path.clone();
                        Box::pin(async move {
                            sqlx::query(sqlx::AssertSqlSafe(set_path))
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    });
                }
            }
        }
        let pool = pool_opts.connect_with(opts).await?;
        if backend == Backend::Sqlite {
            // WAL is a property of the database file; it persists.
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        let db = Self {
            pool,
            backend,
            progress: Default::default(),
        };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&self.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A cheap round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `$1, $2, …, $n`: the placeholders of an `IN (…)` list of `n` values.
pub(crate) fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many values one `IN (…)` query binds at most.
pub(crate) const IN_BATCH: usize = 200;

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
pub(crate) mod testdb {
    use super::*;

    /// A service URL for a unit test from `var`; `None` (said loudly) when it
    /// is unset or does not start with `scheme`, a panic under `CI=true`:
    /// there a missing service is a failure, never a skip.
    pub fn service_url(var: &str, scheme: &str) -> Option<String> {
        match std::env::var(var) {
            Ok(u) if u.starts_with(scheme) => Some(u),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("{var} does not name a {scheme} service but CI=true: this test needs it")
            }
            _ => {
                eprintln!("SKIPPED: {var} does not name a {scheme} service");
                None
            }
        }
    }

    /// A fresh SQLite database in a temp dir (kept alive by the returned guard).
    pub async fn sqlite() -> (Db, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&sqlite_url(dir.path()), None).await.unwrap();
        (db, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_connects_migrates_and_is_wal() {
        let (db, dir) = testdb::sqlite().await;
        db.ping().await.unwrap();
        let mode: (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(mode.0.to_lowercase(), "wal");
        db.close().await;
        // Reopening runs migrations idempotently.
        let db = Db::connect(&sqlite_url(dir.path()), None).await.unwrap();
        db.ping().await.unwrap();
    }

    #[tokio::test]
    async fn bad_urls_and_schemas_are_rejected() {
        assert!(matches!(
            Db::connect("mysql://x", None).await,
            Err(DbError::Url)
        ));
        assert!(!valid_schema("a;drop"));
        assert!(!valid_schema("1abc"));
        assert!(valid_schema("ehr_test_1"));
    }
}
