//! `QueryAccessLog` and `ReviewBreakGlass`.
//!
//! Who sees which log entries:
//! - a patient: entries about themselves only (`patient_id` defaults to
//!   theirs; naming another patient is 403);
//! - a clinician: their own actions only (`actor` defaults to them; naming
//!   another actor or org is 403);
//! - an admin: entries whose actor is in their org or whose patient's home
//!   org is theirs;
//! - an auditor (any org): everything.
//!
//! The query runs over the most selective index its filters allow
//! (patient, actor, org, break-glass, else time), bounded by `from`
//! (inclusive) and `to` (exclusive), and filters the rest.

use serde::{Deserialize, Serialize};

use super::Ctx;
use super::access::{load_event, load_review};
use super::error::ContractError;
use super::model::{AccessEvent, BreakGlassReview, Purpose, ReviewOutcome, Verdict};
use super::page;
use super::store::{
    self, LOG_BREAK_GLASS, LOG_BY_ACTOR, LOG_BY_ORG, LOG_BY_PATIENT, LOG_BY_TIME, REVIEW,
};
use super::time::Time;
use super::validate::{check_id, normalize_text};
use crate::identity::{Identity, Role};
use crate::stub::MAX_UNICODE_RUNE;

/// `QueryAccessLog` argument.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryArgs {
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
    /// Inclusive.
    #[serde(default)]
    pub from: Option<Time>,
    /// Exclusive.
    #[serde(default)]
    pub to: Option<Time>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub bookmark: Option<String>,
}

/// `ReviewBreakGlass` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewArgs {
    pub event_id: String,
    pub outcome: ReviewOutcome,
    /// No PHI; at most 512 characters.
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Serialize)]
struct EventPage {
    events: Vec<AccessEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bookmark: Option<String>,
}

#[derive(Serialize)]
struct ReviewEvent<'a> {
    event_id: &'a str,
    outcome: ReviewOutcome,
    reviewer: &'a str,
    reviewer_org: &'a str,
    tx_id: &'a str,
}

/// Whether the caller may see a log entry at all.
pub fn visible(caller: &Identity, e: &AccessEvent) -> bool {
    match caller.role {
        Role::Auditor => true,
        Role::Patient => {
            e.patient_id.is_some()
                && e.patient_id == caller.patient_id
                && e.patient_org.as_deref() == Some(caller.msp_id.as_str())
        }
        Role::Clinician => e.actor == caller.user_id && e.actor_org == caller.msp_id,
        Role::Admin => {
            e.actor_org == caller.msp_id || e.patient_org.as_deref() == Some(caller.msp_id.as_str())
        }
    }
}

/// Whether an entry passes the query's filters.
fn matches(q: &QueryArgs, e: &AccessEvent) -> bool {
    q.patient_id
        .as_ref()
        .is_none_or(|p| e.patient_id.as_ref() == Some(p))
        && q.actor.as_ref().is_none_or(|a| *a == e.actor)
        && q.org.as_ref().is_none_or(|o| *o == e.actor_org)
        && q.decision.is_none_or(|d| d == e.decision)
        && q.purpose.is_none_or(|p| p == e.purpose)
        && q.break_glass.is_none_or(|b| b == e.break_glass)
        && q.from.is_none_or(|f| e.time >= f)
        && q.to.is_none_or(|t| e.time < t)
}

/// What a caller may ask, by role (see the module docs): a patient only
/// about themselves and a clinician only about their own actions (the
/// filters default to them; naming anyone else is 403); admins and
/// auditors as asked (their rows are narrowed by [`visible`]).
pub fn scope_query(caller: &Identity, q: &mut QueryArgs) -> Result<(), ContractError> {
    match caller.role {
        Role::Patient => {
            if q.patient_id
                .as_ref()
                .is_some_and(|p| Some(p) != caller.patient_id.as_ref())
            {
                return Err(ContractError::forbidden(
                    "a patient may only query their own access log",
                ));
            }
            q.patient_id = caller.patient_id.clone();
        }
        Role::Clinician => {
            if q.actor.as_ref().is_some_and(|a| *a != caller.user_id)
                || q.org.as_ref().is_some_and(|o| *o != caller.msp_id)
            {
                return Err(ContractError::forbidden(
                    "a clinician may only query their own actions",
                ));
            }
            q.actor = Some(caller.user_id.clone());
            q.org = Some(caller.msp_id.clone());
        }
        Role::Admin | Role::Auditor => {}
    }
    Ok(())
}

/// The checks a query passes before it is scoped, in the contract's
/// order (ids, limit, time window); returns the page size.
pub fn check_query(q: &QueryArgs) -> Result<usize, ContractError> {
    for (field, v) in [
        ("patient_id", &q.patient_id),
        ("actor", &q.actor),
        ("org", &q.org),
    ] {
        if let Some(v) = v {
            check_id(field, v)?;
        }
    }
    let limit = page::limit(q.limit)?;
    if let (Some(f), Some(t)) = (q.from, q.to)
        && f >= t
    {
        return Err(ContractError::invalid("from must be before to"));
    }
    Ok(limit)
}

/// The keys a scoped query scans: the index (object type and prefix
/// attributes), its key prefix, and the range `[start, end)` within it
/// that `from` (inclusive) and `to` (exclusive) bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub object_type: &'static str,
    pub attrs: Vec<String>,
    pub prefix: String,
    pub start: String,
    pub end: String,
}

/// The [`KeyRange`] of a scoped query.
pub fn key_range(q: &QueryArgs) -> Result<KeyRange, ContractError> {
    let (object_type, attrs) = log_index(q);
    let refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
    let prefix = store::key(object_type, &refs)?;
    let start = match q.from {
        Some(f) => format!("{prefix}{}", f.sort_key()),
        None => prefix.clone(),
    };
    let end = match q.to {
        Some(t) => format!("{prefix}{}", t.sort_key()),
        None => format!("{prefix}{MAX_UNICODE_RUNE}"),
    };
    Ok(KeyRange {
        object_type,
        attrs,
        prefix,
        start,
        end,
    })
}

/// The most selective index a (scoped) query can scan, with its key
/// prefix attributes: patient, actor, org, break-glass, else time.
fn log_index(q: &QueryArgs) -> (&'static str, Vec<String>) {
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

/// Queries the access log (see the module docs).
pub(crate) fn query(ctx: &mut Ctx<'_>, mut q: QueryArgs) -> Result<Vec<u8>, ContractError> {
    let limit = check_query(&q)?;
    let caller = ctx.caller.clone();
    scope_query(&caller, &mut q)?;
    let KeyRange { start, end, .. } = key_range(&q)?;
    let (events, bookmark) =
        page::scan(ctx.stub, &start, &end, q.bookmark.as_deref(), limit, |kv| {
            let e: AccessEvent = store::decode(&kv.key, &kv.value)?;
            Ok((visible(&caller, &e) && matches(&q, &e)).then_some(e))
        })?;
    store::to_json(&EventPage { events, bookmark })
}

/// Records an auditor's review of a break-glass access (once per event).
pub(crate) fn review(ctx: &mut Ctx<'_>, args: ReviewArgs) -> Result<Vec<u8>, ContractError> {
    check_id("event_id", &args.event_id)?;
    let note = normalize_text("note", args.note.as_deref())?;
    if ctx.caller.role != Role::Auditor {
        return Err(ContractError::forbidden(
            "only auditors review break-glass accesses",
        ));
    }
    let event = load_event(ctx, &args.event_id)?;
    if !event.break_glass {
        return Err(ContractError::invalid(format!(
            "access event {:?} is not a break-glass access",
            event.event_id
        )));
    }
    if load_review(ctx, &event.event_id)?.is_some() {
        return Err(ContractError::conflict(format!(
            "access event {:?} has already been reviewed",
            event.event_id
        )));
    }
    let review = BreakGlassReview {
        event_id: event.event_id,
        outcome: args.outcome,
        note,
        reviewer: ctx.caller.user_id.clone(),
        reviewer_org: ctx.caller.msp_id.clone(),
        reviewed_at: ctx.now,
        tx_id: ctx.tx_id.clone(),
    };
    store::put_json(ctx.stub, &store::key(REVIEW, &[&review.event_id])?, &review)?;
    store::emit(
        ctx.stub,
        "BreakGlassReviewed",
        &ReviewEvent {
            event_id: &review.event_id,
            outcome: review.outcome,
            reviewer: &review.reviewer,
            reviewer_org: &review.reviewer_org,
            tx_id: &ctx.tx_id,
        },
    )?;
    store::to_json(&review)
}
