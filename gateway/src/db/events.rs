//! The projection of chaincode events (filled from the ledger's event stream
//! with a resumable block checkpoint) for fast list and audit queries. The
//! ledger stays the source of truth.

use sqlx::Row;

use super::{Db, DbError, now_secs};

/// One projected chaincode event.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectedEvent {
    pub tx_id: String,
    pub event_name: String,
    pub block: i64,
    /// The event payload (JSON text as the chaincode emitted it).
    pub payload: String,
    pub patient_id: Option<String>,
    pub actor: Option<String>,
    pub actor_org: Option<String>,
    pub decision: Option<String>,
    pub purpose: Option<String>,
    pub break_glass: Option<bool>,
    /// RFC 3339 time of the transaction.
    pub time: Option<String>,
    /// Access-log fields (`AccessDecision` events).
    pub event_id: Option<String>,
    pub record_id: Option<String>,
    pub patient_org: Option<String>,
    pub actor_role: Option<String>,
    pub action: Option<String>,
    pub reason: Option<String>,
    /// The chaincode's time key (`Time::sort_key`), set when the payload is
    /// a full access-log entry.
    pub time_key: Option<String>,
}

/// Filters of an audit query; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_name: Option<String>,
    pub patient_id: Option<String>,
    pub actor: Option<String>,
    pub actor_org: Option<String>,
    pub decision: Option<String>,
    pub purpose: Option<String>,
    pub break_glass: Option<bool>,
    /// Inclusive lower bound on `time` (RFC 3339, compared as text).
    pub from: Option<String>,
    /// Exclusive upper bound on `time`.
    pub to: Option<String>,
    /// Resume after this (block, tx_id) position.
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

impl Db {
    /// Upserts a batch of events and moves the checkpoint to `block`, in one
    /// transaction (so a crash never skips events).
    pub async fn project_events(
        &self,
        checkpoint: &str,
        events: &[ProjectedEvent],
        block: i64,
    ) -> Result<(), DbError> {
        let mut tx = self.pool().begin().await?;
        for e in events {
            sqlx::query(
                "INSERT INTO ledger_events
                   (tx_id, event_name, block, payload, patient_id, actor, actor_org, decision, purpose, break_glass, time,
                    event_id, record_id, patient_org, actor_role, action, reason, time_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
                 ON CONFLICT (tx_id, event_name) DO NOTHING",
            )
            .bind(&e.tx_id)
            .bind(&e.event_name)
            .bind(e.block)
            .bind(&e.payload)
            .bind(e.patient_id.clone())
            .bind(e.actor.clone())
            .bind(e.actor_org.clone())
            .bind(e.decision.clone())
            .bind(e.purpose.clone())
            .bind(e.break_glass.map(i64::from))
            .bind(e.time.clone())
            .bind(e.event_id.clone())
            .bind(e.record_id.clone())
            .bind(e.patient_org.clone())
            .bind(e.actor_role.clone())
            .bind(e.action.clone())
            .bind(e.reason.clone())
            .bind(e.time_key.clone())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO checkpoints (name, block, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET block = excluded.block, updated_at = excluded.updated_at",
        )
        .bind(checkpoint)
        .bind(block)
        .bind(now_secs())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.progress.notify_waiters();
        Ok(())
    }

    /// Waits until checkpoint `name` reaches `block` (woken by
    /// [`Db::project_events`] in this process, polling for other writers);
    /// false when `timeout` passed first.
    pub async fn wait_checkpoint(
        &self,
        name: &str,
        block: i64,
        timeout: std::time::Duration,
    ) -> Result<bool, DbError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.checkpoint(name).await?.is_some_and(|c| c >= block) {
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let poll = (deadline - now).min(std::time::Duration::from_millis(50));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// The last fully projected block of a checkpoint.
    pub async fn checkpoint(&self, name: &str) -> Result<Option<i64>, DbError> {
        let row = sqlx::query("SELECT block FROM checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.try_get("block")).transpose()?)
    }

    /// The block of each projected transaction among `tx_ids` (those not
    /// projected yet are absent).
    pub async fn blocks_of(
        &self,
        tx_ids: &[String],
    ) -> Result<std::collections::HashMap<String, i64>, DbError> {
        use sqlx::Row;
        let mut out = std::collections::HashMap::new();
        for chunk in tx_ids.chunks(super::IN_BATCH) {
            let sql = format!(
                "SELECT DISTINCT tx_id, block FROM ledger_events WHERE tx_id IN ({})",
                super::placeholders(chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.as_str());
            }
            for r in q.fetch_all(self.pool()).await? {
                out.insert(r.try_get("tx_id")?, r.try_get("block")?);
            }
        }
        Ok(out)
    }

    /// Projected events matching `f`, ordered by (block, tx_id).
    pub async fn query_events(&self, f: &EventFilter) -> Result<Vec<ProjectedEvent>, DbError> {
        let mut sql = String::from(
            "SELECT tx_id, event_name, block, payload, patient_id, actor, actor_org, decision, purpose, break_glass, time,
                    event_id, record_id, patient_org, actor_role, action, reason, time_key
             FROM ledger_events WHERE 1 = 1",
        );
        let mut args: Vec<Arg> = Vec::new();
        let mut push = |sql: &mut String, cond: &str, a: Arg| {
            args.push(a);
            sql.push_str(&format!(" AND {cond} ${}", args.len()));
        };
        let text = [
            ("event_name =", &f.event_name),
            ("patient_id =", &f.patient_id),
            ("actor =", &f.actor),
            ("actor_org =", &f.actor_org),
            ("decision =", &f.decision),
            ("purpose =", &f.purpose),
            ("time >=", &f.from),
            ("time <", &f.to),
        ];
        for (cond, v) in text {
            if let Some(v) = v {
                push(&mut sql, cond, Arg::Text(v.clone()));
            }
        }
        if let Some(b) = f.break_glass {
            push(&mut sql, "break_glass =", Arg::Int(i64::from(b)));
        }
        if let Some((block, tx)) = &f.after {
            args.push(Arg::Int(*block));
            args.push(Arg::Int(*block));
            args.push(Arg::Text(tx.clone()));
            let n = args.len();
            sql.push_str(&format!(
                " AND (block > ${} OR (block = ${} AND tx_id > ${}))",
                n - 2,
                n - 1,
                n
            ));
        }
        args.push(Arg::Int(f.limit.clamp(1, 1000)));
        sql.push_str(&format!(" ORDER BY block, tx_id LIMIT ${}", args.len()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in args {
            q = match a {
                Arg::Text(s) => q.bind(s),
                Arg::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter().map(row_event).collect()
    }
}

fn row_event(r: &sqlx::any::AnyRow) -> Result<ProjectedEvent, DbError> {
    Ok(ProjectedEvent {
        tx_id: r.try_get("tx_id")?,
        event_name: r.try_get("event_name")?,
        block: r.try_get("block")?,
        payload: r.try_get("payload")?,
        patient_id: r.try_get("patient_id")?,
        actor: r.try_get("actor")?,
        actor_org: r.try_get("actor_org")?,
        decision: r.try_get("decision")?,
        purpose: r.try_get("purpose")?,
        break_glass: r.try_get::<Option<i64>, _>("break_glass")?.map(|b| b != 0),
        time: r.try_get("time")?,
        event_id: r.try_get("event_id")?,
        record_id: r.try_get("record_id")?,
        patient_org: r.try_get("patient_org")?,
        actor_role: r.try_get("actor_role")?,
        action: r.try_get("action")?,
        reason: r.try_get("reason")?,
        time_key: r.try_get("time_key")?,
    })
}

enum Arg {
    Text(String),
    Int(i64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testdb;

    fn ev(tx: &str, block: i64, decision: &str, actor: &str) -> ProjectedEvent {
        ProjectedEvent {
            tx_id: tx.into(),
            event_name: "AccessDecision".into(),
            block,
            payload: "{}".into(),
            patient_id: Some("p1".into()),
            actor: Some(actor.into()),
            actor_org: Some("hospital-b".into()),
            decision: Some(decision.into()),
            purpose: Some("TREAT".into()),
            break_glass: Some(false),
            time: Some(format!("2026-01-01T00:00:{block:02}Z")),
            event_id: Some(tx.into()),
            record_id: Some("r1".into()),
            patient_org: Some("hospital-a".into()),
            actor_role: Some("clinician".into()),
            action: Some("read".into()),
            reason: Some("no_consent".into()),
            time_key: Some(format!("{block:012}000000000")),
        }
    }

    #[tokio::test]
    async fn project_filter_page_and_checkpoint() {
        let (db, _d) = testdb::sqlite().await;
        assert_eq!(db.checkpoint("events").await.unwrap(), None);
        db.project_events(
            "events",
            &[ev("a", 1, "deny", "x"), ev("b", 2, "allow", "y")],
            2,
        )
        .await
        .unwrap();
        // Replaying the same block is idempotent.
        db.project_events("events", &[ev("b", 2, "allow", "y")], 2)
            .await
            .unwrap();
        db.project_events("events", &[ev("c", 3, "deny", "y")], 3)
            .await
            .unwrap();
        assert_eq!(db.checkpoint("events").await.unwrap(), Some(3));

        let all = db
            .query_events(&EventFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|e| e.tx_id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let denies = db
            .query_events(&EventFilter {
                decision: Some("deny".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(denies.len(), 2);
        let y_deny = db
            .query_events(&EventFilter {
                decision: Some("deny".into()),
                actor: Some("y".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(y_deny.len(), 1);
        assert_eq!(y_deny[0].break_glass, Some(false));
        // Paging.
        let page1 = db
            .query_events(&EventFilter {
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page1.len(), 2);
        let last = page1.last().unwrap();
        let page2 = db
            .query_events(&EventFilter {
                after: Some((last.block, last.tx_id.clone())),
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            page2.iter().map(|e| e.tx_id.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        let ranged = db
            .query_events(&EventFilter {
                from: Some("2026-01-01T00:00:02Z".into()),
                to: Some("2026-01-01T00:00:03Z".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(ranged.len(), 1);
    }
}
