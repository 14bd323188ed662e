//! `RequestAccess` (decide, log, event), `GetAccessEvent` and `GetPreGrant`.
//!
//! Every decision, allow or deny, is written to the access log in the same
//! transaction and answered with status 200 (`allowed:false` for a denial):
//! an error status would make the peer drop the log write. Only malformed
//! requests (bad JSON, a malformed id, an unknown action or purpose, an
//! over-long justification) are rejected with 400 and not logged — they are
//! not decisions. An unknown record *is* a decision: a logged denial
//! `record_not_found`.

use serde::{Deserialize, Serialize};

use super::Ctx;
use super::consents::{is_proxy_admin, load_all_for_patient};
use super::decision::{self, Request};
use super::error::ContractError;
use super::model::{
    AccessEvent, Action, BreakGlassReview, Consent, ConsentStatus, PreGrant, Purpose, Record,
    ReviewOutcome, Verdict,
};
use super::patients;
use super::records;
use super::store::{
    self, CONSENT, EVENT, LOG_BREAK_GLASS, LOG_BY_ACTOR, LOG_BY_ORG, LOG_BY_PATIENT, LOG_BY_TIME,
    REVIEW,
};
use super::time::Time;
use super::validate::{check_id, normalize_text};
use crate::identity::Role;

/// `RequestAccess` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestArgs {
    pub record_id: String,
    pub action: Action,
    pub purpose: Purpose,
    /// Required for break-glass (`ETREAT`). No PHI; at most 512 characters.
    #[serde(default)]
    pub justification: Option<String>,
}

/// `GetAccessEvent` / `GetPreGrant` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIdArgs {
    pub event_id: String,
}

/// The answer to `RequestAccess` (its fields are also in the `AccessDecision` event).
#[derive(Debug, Serialize)]
pub struct DecisionResult<'a> {
    pub event_id: &'a str,
    pub allowed: bool,
    pub reason: &'a str,
    pub break_glass: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent_id: Option<&'a str>,
    pub record_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<&'a str>,
}

/// What `RequestAccess` answers: the decision and, when allowed, the
/// record's metadata (CID, SHA-256, capsule reference… never PHI).
#[derive(Serialize)]
struct DecisionAnswer<'a> {
    #[serde(flatten)]
    result: &'a DecisionResult<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a super::model::Record>,
}

/// The `AccessDecision` event: the full log entry plus `allowed`, so an
/// off-chain projection can answer access-log queries exactly as
/// `QueryAccessLog` does (a superset of the result's fields).
#[derive(Serialize)]
struct DecisionEvent<'a> {
    #[serde(flatten)]
    entry: &'a AccessEvent,
    allowed: bool,
}

#[derive(Serialize)]
struct EventView<'a> {
    event: &'a AccessEvent,
    #[serde(skip_serializing_if = "Option::is_none")]
    review: Option<&'a BreakGlassReview>,
    /// Whether an allowed decision still stands now: the record is not
    /// erased, the consent that allowed it is still active, a break-glass
    /// access was not reviewed as unjustified.
    current: bool,
}

/// The answer to `GetPreGrant`.
#[derive(Serialize)]
struct PreGrantView<'a> {
    event_id: &'a str,
    record_id: &'a str,
    patient_id: &'a str,
    patient_org: &'a str,
    actor: &'a str,
    actor_org: &'a str,
    time_unix: i64,
    decision: Verdict,
    /// As in `GetAccessEvent`.
    current: bool,
    consent_id: &'a str,
    consent_status: ConsentStatus,
    /// The record's capsule reference (whatever is stored, even if erased).
    capsule_ref: &'a str,
    /// The patient's Umbral public key (the delegating key).
    patient_public_key: &'a str,
    pre: &'a PreGrant,
}

/// Decides a request, logs it, and answers the decision.
pub fn request(ctx: &mut Ctx<'_>, args: RequestArgs) -> Result<Vec<u8>, ContractError> {
    check_id("record_id", &args.record_id)?;
    let justification = normalize_text("justification", args.justification.as_deref())?;

    let record = records::load(ctx, &args.record_id)?;
    let (patient, consents) = match &record {
        Some(r) => {
            let p = patients::load(ctx, &r.patient_id).map_err(|e| match e {
                ContractError::NotFound(_) => {
                    ContractError::internal("record of an unregistered patient")
                }
                other => other,
            })?;
            // Rules 2-4 (erased, auditor, the patient) never consult consents;
            // skipping the range scan then keeps it out of the read set, so
            // a consent granted in the same block cannot invalidate the
            // transaction (phantom read). `decide` applies the rules either way.
            let consents_matter = !r.erased
                && ctx.caller.role != Role::Auditor
                && !ctx.caller.is_patient(&r.patient_id, &p.home_org);
            let cs = if consents_matter {
                load_all_for_patient(ctx, &r.patient_id)?
            } else {
                Vec::new()
            };
            (Some(p), cs)
        }
        None => (None, Vec::new()),
    };
    let target = record.as_ref().zip(patient.as_ref());
    let d = decision::decide(
        &ctx.caller,
        target,
        &consents,
        Request {
            action: args.action,
            purpose: args.purpose,
            justification: justification.as_deref(),
        },
        ctx.now,
    );

    let event_key = store::key(EVENT, &[&ctx.tx_id])?;
    if store::exists(ctx.stub, &event_key)? {
        return Err(ContractError::conflict(
            "an access event already exists for this transaction id",
        ));
    }
    let entry = AccessEvent {
        event_id: ctx.tx_id.clone(),
        tx_id: ctx.tx_id.clone(),
        time: ctx.now,
        time_unix: ctx.now.unix_secs(),
        actor: ctx.caller.user_id.clone(),
        actor_org: ctx.caller.msp_id.clone(),
        actor_role: ctx.caller.role,
        patient_id: record.as_ref().map(|r| r.patient_id.clone()),
        patient_org: patient.as_ref().map(|p| p.home_org.clone()),
        record_id: args.record_id,
        action: args.action,
        purpose: args.purpose,
        decision: if d.allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        reason: d.reason.to_string(),
        break_glass: d.break_glass,
        justification,
        consent_id: d.consent.map(|c| c.consent_id.clone()),
        delegate: d.consent.and_then(|c| c.delegate.then_some(true)),
    };
    write_log(ctx, &entry)?;

    let result = DecisionResult {
        event_id: &entry.event_id,
        allowed: d.allowed,
        reason: &entry.reason,
        break_glass: entry.break_glass,
        consent_id: entry.consent_id.as_deref(),
        record_id: &entry.record_id,
        patient_id: entry.patient_id.as_deref(),
    };
    store::emit(
        ctx.stub,
        "AccessDecision",
        &DecisionEvent {
            entry: &entry,
            allowed: d.allowed,
        },
    )?;
    // An allowed reader gets the record's metadata with the decision (a
    // break-glass reader may not see it otherwise); the event does not.
    store::to_json(&DecisionAnswer {
        result: &result,
        record: if d.allowed { record.as_ref() } else { None },
    })
}

/// Writes an access event under its id and every index.
fn write_log(ctx: &mut Ctx<'_>, e: &AccessEvent) -> Result<(), ContractError> {
    let bytes = store::to_json(e)?;
    let tk = e.time.sort_key();
    let id = e.event_id.as_str();
    let mut keys = vec![
        store::key(EVENT, &[id])?,
        store::key(LOG_BY_ACTOR, &[&e.actor, &tk, id])?,
        store::key(LOG_BY_ORG, &[&e.actor_org, &tk, id])?,
        store::key(LOG_BY_TIME, &[&tk, id])?,
    ];
    if let Some(p) = &e.patient_id {
        keys.push(store::key(LOG_BY_PATIENT, &[p, &tk, id])?);
    }
    if e.break_glass {
        keys.push(store::key(LOG_BREAK_GLASS, &[&tk, id])?);
    }
    for k in keys {
        ctx.stub.put_state(&k, &bytes)?;
    }
    Ok(())
}

/// Loads an access event or fails with 404.
pub(crate) fn load_event(ctx: &mut Ctx<'_>, event_id: &str) -> Result<AccessEvent, ContractError> {
    let key = store::key(EVENT, &[event_id])?;
    store::get_json(ctx.stub, &key)?.ok_or_else(|| {
        ContractError::not_found(format!("access event {event_id:?} does not exist"))
    })
}

/// Loads the review of a break-glass event, if any.
pub(crate) fn load_review(
    ctx: &mut Ctx<'_>,
    event_id: &str,
) -> Result<Option<BreakGlassReview>, ContractError> {
    let key = store::key(REVIEW, &[event_id])?;
    store::get_json(ctx.stub, &key)
}

/// The consent an event names, if it names one and it is stored.
fn event_consent(ctx: &mut Ctx<'_>, event: &AccessEvent) -> Result<Option<Consent>, ContractError> {
    match (&event.consent_id, &event.patient_id) {
        (Some(cid), Some(pid)) => store::get_json(ctx.stub, &store::key(CONSENT, &[pid, cid])?),
        _ => Ok(None),
    }
}

/// Whether an allowed decision still stands at `now`: it was an allow, its
/// record (`record`, loaded by the event's `record_id`) exists and is not
/// erased, the consent that allowed it (if one did; `consent`) is active,
/// and a break-glass access was not reviewed as unjustified. The `current`
/// of both `GetAccessEvent` and `GetPreGrant`.
fn is_current(
    event: &AccessEvent,
    record: Option<&Record>,
    consent: Option<&Consent>,
    review: Option<&BreakGlassReview>,
    now: Time,
) -> bool {
    event.decision == Verdict::Allow
        && record.is_some_and(|r| !r.erased)
        && match &event.consent_id {
            Some(_) => consent.is_some_and(|k| k.status_at(now) == ConsentStatus::Active),
            None => true,
        }
        && !review.is_some_and(|r| r.outcome == ReviewOutcome::Unjustified)
}

/// Returns an access event, its review, and whether it is still current.
///
/// Readable by the actor, the patient, auditors, and admins of the actor's
/// org, of the patient's home org, or of an org listed as a PRE proxy on
/// the consent that allowed it.
pub fn get_event(ctx: &mut Ctx<'_>, args: EventIdArgs) -> Result<Vec<u8>, ContractError> {
    check_id("event_id", &args.event_id)?;
    let event = load_event(ctx, &args.event_id)?;
    let consent = event_consent(ctx, &event)?;
    let c = &ctx.caller;
    let is_actor = c.user_id == event.actor && c.msp_id == event.actor_org;
    let is_patient = match (&event.patient_id, &event.patient_org) {
        (Some(p), Some(o)) => c.is_patient(p, o),
        _ => false,
    };
    let admin_ok = (c.role == Role::Admin
        && (c.msp_id == event.actor_org
            || event.patient_org.as_deref() == Some(c.msp_id.as_str())))
        || consent.as_ref().is_some_and(|k| is_proxy_admin(ctx, k));
    if !(is_actor || is_patient || c.role == Role::Auditor || admin_ok) {
        return Err(ContractError::forbidden(
            "only the actor, the patient, an auditor or an admin of a concerned org may read this event",
        ));
    }
    let review = load_review(ctx, &event.event_id)?;
    let record = records::load(ctx, &event.record_id)?;
    let current = is_current(
        &event,
        record.as_ref(),
        consent.as_ref(),
        review.as_ref(),
        ctx.now,
    );
    store::to_json(&EventView {
        event: &event,
        review: review.as_ref(),
        current,
    })
}

/// Returns what a proxy (or the reader's gateway) needs before
/// re-encrypting for an access event: the event's decision and currency,
/// the consent's status and PRE grant, the record's capsule reference and
/// the patient's public key.
///
/// Readable by admins of the actor's org (the reader's gateway) and of the
/// orgs listed as proxies in the consent's PRE grant. 409 when no consent
/// decided the event or the consent has no PRE grant.
pub fn get_pre_grant(ctx: &mut Ctx<'_>, args: EventIdArgs) -> Result<Vec<u8>, ContractError> {
    check_id("event_id", &args.event_id)?;
    let event = load_event(ctx, &args.event_id)?;
    let consent = event_consent(ctx, &event)?;
    if !(ctx.caller.has_role_in(Role::Admin, &event.actor_org)
        || consent.as_ref().is_some_and(|k| is_proxy_admin(ctx, k)))
    {
        return Err(ContractError::forbidden(
            "only an admin of the actor's org or of a PRE proxy of the consent may read the PRE grant of an access event",
        ));
    }
    let Some(consent_id) = event.consent_id.as_deref() else {
        return Err(ContractError::conflict(format!(
            "access event {:?} was not decided by a consent, so it has no PRE grant",
            event.event_id
        )));
    };
    let consent = consent.ok_or_else(|| {
        ContractError::internal(format!("access event names missing consent {consent_id:?}"))
    })?;
    let Some(pre) = consent.pre.as_ref() else {
        return Err(ContractError::conflict(format!(
            "consent {consent_id:?} has no PRE grant"
        )));
    };
    let patient = patients::load(ctx, &consent.patient_id).map_err(|e| match e {
        ContractError::NotFound(_) => ContractError::internal("consent of an unregistered patient"),
        other => other,
    })?;
    let record = records::load(ctx, &event.record_id)?.ok_or_else(|| {
        ContractError::internal(format!(
            "access event names missing record {:?}",
            event.record_id
        ))
    })?;
    let review = load_review(ctx, &event.event_id)?;
    let current = is_current(
        &event,
        Some(&record),
        Some(&consent),
        review.as_ref(),
        ctx.now,
    );
    store::to_json(&PreGrantView {
        event_id: &event.event_id,
        record_id: &event.record_id,
        patient_id: &patient.patient_id,
        patient_org: &patient.home_org,
        actor: &event.actor,
        actor_org: &event.actor_org,
        time_unix: event.time_unix,
        decision: event.decision,
        current,
        consent_id,
        consent_status: consent.status_at(ctx.now),
        capsule_ref: &record.capsule_ref,
        patient_public_key: &patient.pre_public_key,
        pre,
    })
}
