//! Access-log queries (`/audit/events`, `/patients/{id}/access-log`,
//! disclosures, exports) from the event projection, answered exactly as the
//! chaincode's `QueryAccessLog` answers them: same validation, same role
//! rules ([`scope`]), same order, same page JSON, same bookmarks (a
//! bookmark from one source pages on in the other).
//!
//! The ledger stays the source of truth: [`projection_ready`] serves from
//! the projection only once it holds every block the ledger had committed
//! when the request came in; otherwise the caller falls back to the
//! chaincode.
//!
//! One difference: the chaincode examines at most 10,000 entries per call
//! and may return a short page with a bookmark; the projection always
//! returns full pages. Following bookmarks yields the same events.

use std::time::Duration;

use ehr_chaincode::contract::model::{AccessEvent, Purpose, Verdict};
use ehr_chaincode::contract::store::{
    LOG_BREAK_GLASS, LOG_BY_ACTOR, LOG_BY_ORG, LOG_BY_PATIENT, LOG_BY_TIME,
};
use ehr_chaincode::contract::time::Time;
use ehr_chaincode::contract::{ContractError, page, validate};
use ehr_chaincode::identity::{Identity, Role};
use ehr_chaincode::stub::{MAX_UNICODE_RUNE, create_composite_key};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::chain::{Chain, EventScan};
use crate::db::log::{LogQuery, Start, Visibility};
use crate::db::{Db, DbError};
use crate::projector::CHECKPOINT;

/// How long a request waits for the projection to catch up.
pub const FRESHNESS_WAIT: Duration = Duration::from_secs(2);

/// Why a projection query failed.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The query is invalid (the chaincode answers 400).
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not ask this (the chaincode answers 403).
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Db(#[from] DbError),
    /// A projected row is not what the chaincode logged.
    #[error("corrupt projection row: {0}")]
    Corrupt(String),
}

impl From<ContractError> for AuditError {
    fn from(e: ContractError) -> Self {
        match e {
            ContractError::Forbidden(m) => Self::Forbidden(m),
            other => Self::BadRequest(other.to_string()),
        }
    }
}

/// `QueryAccessLog`'s argument, typed as the chaincode types it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogArgs {
    #[serde(default)]
    pub patient_id: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    /// The actor's organisation.
    #[serde(default)]
    pub org: Option<String>,
    #[serde(default)]
    pub decision: Option<Verdict>,
    #[serde(default)]
    pub purpose: Option<Purpose>,
    #[serde(default)]
    pub break_glass: Option<bool>,
    #[serde(default)]
    pub from: Option<Time>,
    #[serde(default)]
    pub to: Option<Time>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub bookmark: Option<String>,
}

impl LogArgs {
    /// Parses the JSON the gateway would send to `QueryAccessLog` (a bad
    /// value is a 400, as the chaincode's own parsing makes it).
    pub fn from_chaincode_args(args: &Value) -> Result<Self, AuditError> {
        serde_json::from_value(args.clone())
            .map_err(|e| AuditError::BadRequest(format!("invalid argument: {e}")))
    }
}

/// The chaincode's visibility rules for access-log queries, in one place:
/// checks what the caller may ask, fills the filters a role implies, and
/// says which entries the caller may see.
///
/// - a patient: entries about themselves at their home org (`patient_id`
///   defaults to theirs; another patient → 403);
/// - a clinician: their own actions (`actor`/`org` default to theirs;
///   another → 403);
/// - an admin: entries whose actor's org or patient's home org is theirs;
/// - an auditor (any org): everything.
pub fn scope(caller: &Identity, q: &mut LogArgs) -> Result<Visibility, AuditError> {
    match caller.role {
        Role::Patient => {
            if q.patient_id
                .as_ref()
                .is_some_and(|p| Some(p) != caller.patient_id.as_ref())
            {
                return Err(AuditError::Forbidden(
                    "a patient may only query their own access log".into(),
                ));
            }
            q.patient_id = caller.patient_id.clone();
            Ok(match &caller.patient_id {
                Some(p) => Visibility::Patient {
                    patient_id: p.clone(),
                    org: caller.msp_id.clone(),
                },
                // The chaincode never issues such an identity; it would see nothing.
                None => Visibility::Patient {
                    patient_id: String::new(),
                    org: String::new(),
                },
            })
        }
        Role::Clinician => {
            if q.actor.as_ref().is_some_and(|a| *a != caller.user_id)
                || q.org.as_ref().is_some_and(|o| *o != caller.msp_id)
            {
                return Err(AuditError::Forbidden(
                    "a clinician may only query their own actions".into(),
                ));
            }
            q.actor = Some(caller.user_id.clone());
            q.org = Some(caller.msp_id.clone());
            Ok(Visibility::Actor {
                actor: caller.user_id.clone(),
                org: caller.msp_id.clone(),
            })
        }
        Role::Admin => Ok(Visibility::Org(caller.msp_id.clone())),
        Role::Auditor => Ok(Visibility::All),
    }
}

/// Whether `v` lets its caller see `e` (the row-level half of [`scope`]).
pub fn sees(v: &Visibility, e: &AccessEvent) -> bool {
    match v {
        Visibility::All => true,
        Visibility::Patient { patient_id, org } => {
            !patient_id.is_empty()
                && e.patient_id.as_deref() == Some(patient_id.as_str())
                && e.patient_org.as_deref() == Some(org.as_str())
        }
        Visibility::Actor { actor, org } => e.actor == *actor && e.actor_org == *org,
        Visibility::Org(org) => e.actor_org == *org || e.patient_org.as_deref() == Some(org),
    }
}

/// A page as `QueryAccessLog` answers it.
#[derive(Debug, Serialize)]
pub struct EventPage {
    pub events: Vec<AccessEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bookmark: Option<String>,
}

/// Which index the chaincode scans for `q`, with its key prefix attributes.
fn index(q: &LogArgs) -> (&'static str, Vec<String>) {
    if let Some(p) = &q.patient_id {
        (LOG_BY_PATIENT, vec![p.clone()])
    } else if let Some(a) = &q.actor {
        (LOG_BY_ACTOR, vec![a.clone()])
    } else if let Some(o) = &q.org {
        (LOG_BY_ORG, vec![o.clone()])
    } else if q.break_glass == Some(true) {
        (LOG_BREAK_GLASS, vec![])
    } else {
        (LOG_BY_TIME, vec![])
    }
}

fn key(object_type: &str, attrs: &[&str]) -> Result<String, AuditError> {
    create_composite_key(object_type, attrs)
        .map_err(|e| AuditError::BadRequest(format!("invalid argument: {e}")))
}

/// Where a resume key (inside the query's key range, after the prefix)
/// starts, in (time key, event id) order. Exact for any key: an entry's
/// key suffix is `time_key \0 event_id \0`.
fn start_of(rest: &str) -> Start {
    match rest.split_once('\u{0}') {
        None => Start::Time(rest.to_owned()),
        Some((t, rest2)) => match rest2.split_once('\u{0}') {
            None => Start::At {
                time_key: t.to_owned(),
                event_id: rest2.to_owned(),
                inclusive: true,
            },
            Some((id, tail)) => Start::At {
                time_key: t.to_owned(),
                event_id: id.to_owned(),
                inclusive: tail.is_empty(),
            },
        },
    }
}

/// Answers `QueryAccessLog` for `caller` from the projection.
pub async fn query(db: &Db, caller: &Identity, mut q: LogArgs) -> Result<EventPage, AuditError> {
    // The chaincode's order of checks, so the same input fails the same way.
    for (field, v) in [
        ("patient_id", &q.patient_id),
        ("actor", &q.actor),
        ("org", &q.org),
    ] {
        if let Some(v) = v {
            validate::check_id(field, v)?;
        }
    }
    let limit = page::limit(q.limit)?;
    if let (Some(f), Some(t)) = (q.from, q.to)
        && f >= t
    {
        return Err(AuditError::BadRequest("from must be before to".into()));
    }
    let visibility = scope(caller, &mut q)?;
    let (object_type, attrs) = index(&q);
    let attrs: Vec<&str> = attrs.iter().map(String::as_str).collect();
    let prefix = key(object_type, &attrs)?;
    let start = match q.from {
        Some(f) => format!("{prefix}{}", f.sort_key()),
        None => prefix.clone(),
    };
    let end = match q.to {
        Some(t) => format!("{prefix}{}", t.sort_key()),
        None => format!("{prefix}{MAX_UNICODE_RUNE}"),
    };
    let resume = match q.bookmark.as_deref() {
        Some(b) => {
            let k = page::decode_bookmark(b, &start, &end)?;
            Some(start_of(k.get(prefix.len()..).unwrap_or_default()))
        }
        None => None,
    };
    let lq = LogQuery {
        visibility: visibility.clone(),
        patient_id: q.patient_id.clone(),
        actor: q.actor.clone(),
        actor_org: q.org.clone(),
        decision: q.decision.as_ref().map(enum_text),
        purpose: q.purpose.as_ref().map(enum_text),
        break_glass: q.break_glass,
        from_key: q.from.map(Time::sort_key),
        to_key: q.to.map(Time::sort_key),
        start: resume,
        limit: i64::try_from(limit).unwrap_or(1000) + 1,
    };
    let mut rows = db.query_log(&lq).await?;
    let next = if rows.len() > limit {
        rows.truncate(limit + 1);
        rows.pop()
    } else {
        None
    };
    let mut events = Vec::with_capacity(rows.len());
    for r in rows {
        let e: AccessEvent = serde_json::from_str(&r.payload)
            .map_err(|e| AuditError::Corrupt(format!("event {}: {e}", r.event_id)))?;
        if e.event_id != r.event_id || e.time.sort_key() != r.time_key || !sees(&visibility, &e) {
            return Err(AuditError::Corrupt(format!(
                "event {} does not match its columns",
                r.event_id
            )));
        }
        events.push(e);
    }
    let bookmark = match next {
        Some(n) => {
            let mut full = attrs.clone();
            full.push(&n.time_key);
            full.push(&n.event_id);
            Some(page::encode_bookmark(&key(object_type, &full)?))
        }
        None => None,
    };
    Ok(EventPage { events, bookmark })
}

/// The JSON string a unit enum serializes to (`allow`, `TREAT`).
pub(crate) fn enum_text<T: Serialize>(x: &T) -> String {
    serde_json::to_value(x)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Why the projection cannot answer now (the caller then asks the chaincode).
#[derive(Debug, Error)]
pub enum NotReady {
    #[error("ledger height unknown: {0}")]
    Height(String),
    #[error("projection at block {at:?}, ledger at {target} after {waited:?}")]
    Behind {
        at: Option<i64>,
        target: u64,
        waited: Duration,
    },
    #[error("projection holds events from before the chaincode emitted full entries")]
    Partial,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Waits (up to `wait`) until the projection holds every chaincode event
/// of the blocks the ledger had committed when this was called.
pub async fn projection_ready(db: &Db, chain: &dyn Chain, wait: Duration) -> Result<(), NotReady> {
    let height = chain
        .height()
        .await
        .map_err(|e| NotReady::Height(e.to_string()))?;
    if let Some(tip) = height.checked_sub(1) {
        let done = db
            .checkpoint(CHECKPOINT)
            .await?
            .and_then(|b| u64::try_from(b).ok());
        if done.is_none_or(|d| d < tip) {
            // Blocks without events of the chaincode (genesis, config, only
            // invalid transactions) never move the checkpoint: the block to
            // wait for is the last one that has events.
            let first = done.map_or(0, |d| d + 1);
            let need = match chain.last_event_block(first, tip).await {
                Ok(EventScan::NoEvents) => None,
                Ok(EventScan::At(n)) => Some(n),
                Ok(EventScan::Unknown) | Err(_) => Some(tip),
            };
            if let Some(n) = need {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                if !db.wait_checkpoint(CHECKPOINT, n, wait).await? {
                    return Err(NotReady::Behind {
                        at: db.checkpoint(CHECKPOINT).await?,
                        target: u64::try_from(n).unwrap_or(u64::MAX),
                        waited: wait,
                    });
                }
            }
        }
    }
    if db.has_partial_log_rows().await? {
        return Err(NotReady::Partial);
    }
    Ok(())
}
