//! Access-log queries over the event projection (`AccessDecision` rows),
//! in the chaincode's order: (time key, event id) within one index. The
//! caller's visibility and the filters come from [`crate::audit`]; this
//! module only turns them into SQL over the 0002 indexes.

use sqlx::Row;

use super::{Db, DbError};

/// Which entries a caller may see (the chaincode's rules, see
/// [`crate::audit::scope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    /// An auditor: everything.
    All,
    /// A patient: entries about them, at their home org.
    Patient { patient_id: String, org: String },
    /// A clinician: their own actions.
    Actor { actor: String, org: String },
    /// An admin: the actor's org or the patient's home org is theirs.
    Org(String),
}

/// Where a page starts in (time key, event id) order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// `time_key >= t`.
    Time(String),
    /// `(time_key, event_id) >= (t, id)`, or `>` when not inclusive.
    At {
        time_key: String,
        event_id: String,
        inclusive: bool,
    },
}

/// One access-log query.
#[derive(Debug, Clone)]
pub struct LogQuery {
    pub visibility: Visibility,
    pub patient_id: Option<String>,
    pub actor: Option<String>,
    pub actor_org: Option<String>,
    /// allow | deny
    pub decision: Option<String>,
    pub purpose: Option<String>,
    pub break_glass: Option<bool>,
    /// Inclusive lower bound on the time key.
    pub from_key: Option<String>,
    /// Exclusive upper bound on the time key.
    pub to_key: Option<String>,
    pub start: Option<Start>,
    /// Rows to return at most.
    pub limit: i64,
}

/// One access-log row: its ordering position, block and the entry JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub time_key: String,
    pub event_id: String,
    pub block: i64,
    /// The event payload (the full entry plus `allowed`).
    pub payload: String,
}

/// The condition every access-log query starts with: literal, so the
/// partial indexes of migration 0002 apply. (A row without a time key, from
/// an older chaincode, fails to decode: the query errs, it is not skipped.)
const IS_DECISION: &str = "event_name = 'AccessDecision'";

impl Db {
    /// Access-log rows matching `q`, in (time key, event id) order.
    pub async fn query_log(&self, q: &LogQuery) -> Result<Vec<LogRow>, DbError> {
        let (sql, args) = log_sql(q, self.backend());
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in args {
            query = match a {
                Arg::Text(s) => query.bind(s),
                Arg::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                Ok(LogRow {
                    time_key: r.try_get("time_key")?,
                    event_id: r.try_get("event_id")?,
                    block: r.try_get("block")?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }

    /// Whether some `AccessDecision` row lacks the full entry (an event from
    /// before the chaincode emitted it); such a projection cannot answer.
    pub async fn has_partial_log_rows(&self) -> Result<bool, DbError> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM ledger_events
             WHERE event_name = 'AccessDecision' AND time_key IS NULL LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// The query plan of `q` (SQLite's `EXPLAIN QUERY PLAN` details or
    /// PostgreSQL's `EXPLAIN` lines), for tests and diagnosis.
    pub async fn explain_log(&self, q: &LogQuery) -> Result<Vec<String>, DbError> {
        let (sql, args) = log_sql(q, self.backend());
        let prefix = match self.backend() {
            super::Backend::Sqlite => "EXPLAIN QUERY PLAN ",
            super::Backend::Postgres => "EXPLAIN ",
        };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!("{prefix}{sql}")));
        for a in args {
            query = match a {
                Arg::Text(s) => query.bind(s),
                Arg::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(self.pool()).await?;
        let col = match self.backend() {
            super::Backend::Sqlite => "detail",
            super::Backend::Postgres => "QUERY PLAN",
        };
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(col)?))
            .collect()
    }
}

enum Arg {
    Text(String),
    Int(i64),
}

/// The index the chaincode scans for these filters (patient, else actor,
/// else org, else break-glass, else time), by its 0002 name.
fn access_path(q: &LogQuery) -> &'static str {
    if q.patient_id.is_some() {
        "ledger_events_log_patient"
    } else if q.actor.is_some() {
        "ledger_events_log_actor"
    } else if q.actor_org.is_some() {
        "ledger_events_log_org"
    } else if q.break_glass == Some(true) {
        "ledger_events_log_break_glass"
    } else {
        "ledger_events_log_time"
    }
}

fn log_sql(q: &LogQuery, backend: super::Backend) -> (String, Vec<Arg>) {
    // SQLite plans without statistics unless someone ran ANALYZE, and then
    // cannot tell a selective index from a broad one: name the access path
    // the chaincode uses (always usable: every condition of the partial
    // indexes is in the WHERE clause). PostgreSQL plans by its statistics.
    let hint = match backend {
        super::Backend::Sqlite => format!(" INDEXED BY {}", access_path(q)),
        super::Backend::Postgres => String::new(),
    };
    let mut sql = format!(
        "SELECT time_key, event_id, block, payload FROM ledger_events{hint} WHERE {IS_DECISION}"
    );
    let mut args: Vec<Arg> = Vec::new();
    let bind = |args: &mut Vec<Arg>, v: &str| {
        args.push(Arg::Text(v.to_owned()));
        format!("${}", args.len())
    };
    match &q.visibility {
        Visibility::All => {}
        Visibility::Patient { patient_id, org } => {
            let (p, o) = (bind(&mut args, patient_id), bind(&mut args, org));
            sql.push_str(&format!(" AND patient_id = {p} AND patient_org = {o}"));
        }
        Visibility::Actor { actor, org } => {
            let (a, o) = (bind(&mut args, actor), bind(&mut args, org));
            sql.push_str(&format!(" AND actor = {a} AND actor_org = {o}"));
        }
        Visibility::Org(org) => {
            let (a, b) = (bind(&mut args, org), bind(&mut args, org));
            sql.push_str(&format!(" AND (actor_org = {a} OR patient_org = {b})"));
        }
    }
    for (col, v) in [
        ("patient_id", &q.patient_id),
        ("actor", &q.actor),
        ("actor_org", &q.actor_org),
        ("decision", &q.decision),
        ("purpose", &q.purpose),
    ] {
        if let Some(v) = v {
            let n = bind(&mut args, v);
            sql.push_str(&format!(" AND {col} = {n}"));
        }
    }
    if let Some(b) = q.break_glass {
        // A literal: it selects the partial break-glass index.
        sql.push_str(if b {
            " AND break_glass = 1"
        } else {
            " AND break_glass = 0"
        });
    }
    if let Some(f) = &q.from_key {
        let n = bind(&mut args, f);
        sql.push_str(&format!(" AND time_key >= {n}"));
    }
    if let Some(t) = &q.to_key {
        let n = bind(&mut args, t);
        sql.push_str(&format!(" AND time_key < {n}"));
    }
    match &q.start {
        None => {}
        Some(Start::Time(t)) => {
            let n = bind(&mut args, t);
            sql.push_str(&format!(" AND time_key >= {n}"));
        }
        Some(Start::At {
            time_key,
            event_id,
            inclusive,
        }) => {
            let (t1, t2, id) = (
                bind(&mut args, time_key),
                bind(&mut args, time_key),
                bind(&mut args, event_id),
            );
            let op = if *inclusive { ">=" } else { ">" };
            sql.push_str(&format!(
                " AND time_key >= {t1} AND (time_key > {t2} OR event_id {op} {id})"
            ));
        }
    }
    args.push(Arg::Int(q.limit.clamp(1, 1001)));
    sql.push_str(&format!(
        " ORDER BY time_key, event_id LIMIT ${}",
        args.len()
    ));
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::events::ProjectedEvent;
    use crate::db::testdb;

    fn row(i: i64, patient: &str, actor: &str, org: &str, bg: bool) -> ProjectedEvent {
        let tk = format!("{:012}000000000", 1_700_000_000 + i / 2);
        let id = format!("{i:064x}");
        ProjectedEvent {
            tx_id: id.clone(),
            event_name: "AccessDecision".into(),
            block: i,
            payload: format!(r#"{{"event_id":"{id}"}}"#),
            patient_id: Some(patient.into()),
            actor: Some(actor.into()),
            actor_org: Some(org.into()),
            decision: Some(if i % 3 == 0 { "allow" } else { "deny" }.into()),
            purpose: Some("TREAT".into()),
            break_glass: Some(bg),
            time: None,
            event_id: Some(id),
            record_id: Some("r1".into()),
            patient_org: Some("hospital-a".into()),
            actor_role: Some("clinician".into()),
            action: Some("read".into()),
            reason: Some("x".into()),
            time_key: Some(tk),
        }
    }

    fn q(visibility: Visibility) -> LogQuery {
        LogQuery {
            visibility,
            patient_id: None,
            actor: None,
            actor_org: None,
            decision: None,
            purpose: None,
            break_glass: None,
            from_key: None,
            to_key: None,
            start: None,
            limit: 1000,
        }
    }

    #[tokio::test]
    async fn visibility_filters_order_and_start() {
        let (db, _d) = testdb::sqlite().await;
        let rows: Vec<_> = (0..20)
            .map(|i| {
                let org = if i % 2 == 0 {
                    "hospital-a"
                } else {
                    "hospital-b"
                };
                row(
                    i,
                    if i % 4 == 0 { "p1" } else { "p2" },
                    &format!("u{}", i % 3),
                    org,
                    i == 7,
                )
            })
            .collect();
        db.project_events("t", &rows, 20).await.unwrap();
        let all = db.query_log(&q(Visibility::All)).await.unwrap();
        assert_eq!(all.len(), 20);
        assert!(
            all.windows(2)
                .all(|w| (&w[0].time_key, &w[0].event_id) < (&w[1].time_key, &w[1].event_id))
        );
        let p1 = db
            .query_log(&q(Visibility::Patient {
                patient_id: "p1".into(),
                org: "hospital-a".into(),
            }))
            .await
            .unwrap();
        assert_eq!(p1.len(), 5);
        let wrong_home = db
            .query_log(&q(Visibility::Patient {
                patient_id: "p1".into(),
                org: "hospital-b".into(),
            }))
            .await
            .unwrap();
        assert!(wrong_home.is_empty());
        let b = db
            .query_log(&q(Visibility::Org("hospital-b".into())))
            .await
            .unwrap();
        assert_eq!(b.len(), 10, "actor org hospital-b; patient org is a");
        let a = db
            .query_log(&q(Visibility::Org("hospital-a".into())))
            .await
            .unwrap();
        assert_eq!(a.len(), 20, "every patient's home is hospital-a");
        let mut bg = q(Visibility::All);
        bg.break_glass = Some(true);
        assert_eq!(db.query_log(&bg).await.unwrap().len(), 1);
        // Start positions: inclusive and exclusive at row 5, by time only.
        let mut s = q(Visibility::All);
        s.start = Some(Start::At {
            time_key: all[5].time_key.clone(),
            event_id: all[5].event_id.clone(),
            inclusive: true,
        });
        assert_eq!(db.query_log(&s).await.unwrap()[0], all[5]);
        s.start = Some(Start::At {
            time_key: all[5].time_key.clone(),
            event_id: all[5].event_id.clone(),
            inclusive: false,
        });
        assert_eq!(db.query_log(&s).await.unwrap()[0], all[6]);
        s.start = Some(Start::Time(all[5].time_key.clone()));
        let from_time = db.query_log(&s).await.unwrap();
        assert_eq!(from_time[0].time_key, all[5].time_key);
        assert_eq!(
            from_time.len(),
            15 + usize::from(all[4].time_key == all[5].time_key)
        );
        s.start = None;
        s.limit = 3;
        assert_eq!(db.query_log(&s).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn queries_use_the_access_path_indexes() {
        let (db, _d) = testdb::sqlite().await;
        // A realistic spread: many patients, actors and events, few break-glass.
        let rows: Vec<_> = (0..2000)
            .map(|i| {
                let org = ["hospital-a", "hospital-b", "hospital-c"][i as usize % 3];
                row(
                    i,
                    &format!("p{}", i % 97),
                    &format!("u{}", i % 31),
                    org,
                    i % 500 == 0,
                )
            })
            .collect();
        db.project_events("t", &rows, 1).await.unwrap();
        let cases: Vec<(LogQuery, &str)> = vec![
            (
                LogQuery {
                    patient_id: Some("p1".into()),
                    ..q(Visibility::All)
                },
                "ledger_events_log_patient",
            ),
            (
                LogQuery {
                    actor: Some("u1".into()),
                    ..q(Visibility::All)
                },
                "ledger_events_log_actor",
            ),
            (
                LogQuery {
                    actor_org: Some("hospital-b".into()),
                    ..q(Visibility::All)
                },
                "ledger_events_log_org",
            ),
            (
                LogQuery {
                    break_glass: Some(true),
                    ..q(Visibility::All)
                },
                "ledger_events_log_break_glass",
            ),
            (q(Visibility::All), "ledger_events_log_time"),
            (
                LogQuery {
                    from_key: Some("0".into()),
                    ..q(Visibility::All)
                },
                "ledger_events_log_time",
            ),
            // A clinician's and a patient's scope (filters set as `audit::scope` sets them).
            (
                LogQuery {
                    actor: Some("u1".into()),
                    actor_org: Some("hospital-b".into()),
                    ..q(Visibility::Actor {
                        actor: "u1".into(),
                        org: "hospital-b".into(),
                    })
                },
                "ledger_events_log_actor",
            ),
            (
                LogQuery {
                    patient_id: Some("p1".into()),
                    ..q(Visibility::Patient {
                        patient_id: "p1".into(),
                        org: "hospital-a".into(),
                    })
                },
                "ledger_events_log_patient",
            ),
        ];
        for analyzed in [false, true] {
            if analyzed {
                sqlx::query("ANALYZE").execute(db.pool()).await.unwrap();
            }
            for (query, index) in &cases {
                let plan = db.explain_log(query).await.unwrap().join(" | ");
                assert!(plan.contains(index), "{query:?}: {plan}");
                assert!(!plan.contains("TEMP B-TREE"), "sorts: {plan}");
                let rows = db.query_log(query).await.unwrap();
                assert!(!rows.is_empty(), "{query:?}");
            }
        }
        // An admin's OR over two orgs walks the time index, as the chaincode does.
        let plan = db
            .explain_log(&q(Visibility::Org("hospital-a".into())))
            .await
            .unwrap()
            .join(" | ");
        assert!(plan.contains("ledger_events_log_time"), "{plan}");
    }

    /// PostgreSQL plans by statistics: after ANALYZE, the selective access
    /// paths use their index. Runs when `DATABASE_URL` names a PostgreSQL
    /// server (a fresh schema, dropped after); under `CI=true` it must.
    #[tokio::test]
    async fn postgres_uses_the_indexes_too() {
        let Some(url) = crate::db::testdb::service_url("DATABASE_URL", "postgres") else {
            return;
        };
        let schema = format!("ehr_logtest_{}", hex::encode(rand::random::<[u8; 4]>()));
        let db = Db::connect(&url, Some(&schema)).await.unwrap();
        let rows: Vec<_> = (0..5000)
            .map(|i| {
                let org = ["hospital-a", "hospital-b", "hospital-c"][i as usize % 3];
                row(
                    i,
                    &format!("p{}", i % 997),
                    &format!("u{}", i % 499),
                    org,
                    i % 1000 == 0,
                )
            })
            .collect();
        db.project_events("t", &rows, 1).await.unwrap();
        sqlx::query("ANALYZE ledger_events")
            .execute(db.pool())
            .await
            .unwrap();
        let cases: Vec<(LogQuery, &str)> = vec![
            (
                LogQuery {
                    patient_id: Some("p1".into()),
                    ..q(Visibility::All)
                },
                "ledger_events_log_patient",
            ),
            (
                LogQuery {
                    actor: Some("u1".into()),
                    actor_org: Some("hospital-b".into()),
                    ..q(Visibility::Actor {
                        actor: "u1".into(),
                        org: "hospital-b".into(),
                    })
                },
                "ledger_events_log_",
            ),
            (
                LogQuery {
                    break_glass: Some(true),
                    ..q(Visibility::All)
                },
                "ledger_events_log_break_glass",
            ),
        ];
        let mut failures = Vec::new();
        for (query, index) in &cases {
            let plan = db.explain_log(query).await.unwrap().join(" | ");
            if !plan.contains(index) {
                failures.push(format!("{query:?}: {plan}"));
            }
            assert!(!db.query_log(query).await.unwrap().is_empty());
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(db.pool())
            .await
            .unwrap();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
