//! `GrantConsent`, `RevokeConsent`, `GetConsent`, `ListConsents`.
//!
//! Only the patient (their certificate, from their home org) grants and
//! revokes; an admin of the patient's home organisation may act as their
//! delegate, which is recorded on the consent (`delegate`,
//! `revoked_by_delegate`) and in the event. Patients, home-org admins and
//! auditors (any org) may read a patient's consents; an admin of an org
//! named as a proxy in a consent's `pre` grant may read that consent (its
//! proxies check the kfrag commitments against it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Ctx;
use super::error::ContractError;
use super::model::{
    Action, Category, ConditionValue, Consent, ConsentView, Grantee, GranteeType, Patient,
    PreGrant, Purpose, Scope,
};
use super::page;
use super::page::PatientPageArgs;
use super::patients;
use super::records;
use super::store::{self, CONSENT, CONSENT_BY_ID};
use super::time::Time;
use super::validate::{canonical_public_key, check_hex, check_id, check_unique, is_id};
use crate::identity::Role;

/// The most records one consent may list.
pub const MAX_SCOPE_RECORDS: usize = 100;
/// The most ABAC conditions on one consent.
pub const MAX_CONDITIONS: usize = 16;
/// The most accepted values of one condition.
pub const MAX_CONDITION_VALUES: usize = 16;
/// The longest condition value.
pub const MAX_CONDITION_VALUE_LEN: usize = 256;
/// The most proxies (n) of a PRE grant.
pub const MAX_PRE_SHARES: u32 = 16;

/// `GrantConsent` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantArgs {
    /// Defaults to `c-` + the first 24 characters of the tx id.
    #[serde(default)]
    pub consent_id: Option<String>,
    pub patient_id: String,
    pub grantee: Grantee,
    pub scope: Scope,
    pub actions: Vec<Action>,
    pub purposes: Vec<Purpose>,
    #[serde(default)]
    pub not_before: Option<Time>,
    #[serde(default)]
    pub not_after: Option<Time>,
    #[serde(default)]
    pub conditions: Option<BTreeMap<String, ConditionValue>>,
    #[serde(default)]
    pub pre: Option<PreGrant>,
}

/// `RevokeConsent` / `GetConsent` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentIdArgs {
    pub consent_id: String,
}

#[derive(Serialize)]
struct ConsentPage {
    consents: Vec<ConsentView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bookmark: Option<String>,
}

#[derive(Serialize)]
struct ConsentEvent<'a> {
    consent_id: &'a str,
    patient_id: &'a str,
    grantee: &'a Grantee,
    delegate: bool,
    by: &'a str,
    by_org: &'a str,
    tx_id: &'a str,
}

/// Every consent of a patient, in consent-id order.
pub(crate) fn load_all_for_patient(
    ctx: &mut Ctx<'_>,
    patient_id: &str,
) -> Result<Vec<Consent>, ContractError> {
    let (start, end) = store::prefix_range(CONSENT, &[patient_id])?;
    let mut out = Vec::new();
    let mut bookmark = None;
    loop {
        let (items, next) = page::scan(
            ctx.stub,
            &start,
            &end,
            bookmark.as_deref(),
            page::MAX_LIMIT as usize,
            |kv| store::decode::<Consent>(&kv.key, &kv.value).map(Some),
        )?;
        out.extend(items);
        match next {
            Some(b) => bookmark = Some(b),
            None => return Ok(out),
        }
    }
}

/// Loads a consent by id or fails with 404.
fn load(ctx: &mut Ctx<'_>, consent_id: &str) -> Result<Consent, ContractError> {
    let ptr = store::key(CONSENT_BY_ID, &[consent_id])?;
    let not_found = || ContractError::not_found(format!("consent {consent_id:?} does not exist"));
    let patient_id = ctx.stub.get_state(&ptr)?.ok_or_else(not_found)?;
    let patient_id = String::from_utf8(patient_id)
        .map_err(|_| ContractError::internal("corrupt consent pointer"))?;
    let key = store::key(CONSENT, &[&patient_id, consent_id])?;
    store::get_json(ctx.stub, &key)?
        .ok_or_else(|| ContractError::internal(format!("dangling consent pointer {consent_id:?}")))
}

/// Who may change a patient's consents: `Some(false)` the patient,
/// `Some(true)` a home-org admin as delegate, `None` nobody else.
fn grantor_kind(ctx: &Ctx<'_>, patient: &Patient) -> Option<bool> {
    if ctx
        .caller
        .is_patient(&patient.patient_id, &patient.home_org)
    {
        Some(false)
    } else if ctx.caller.has_role_in(Role::Admin, &patient.home_org) {
        Some(true)
    } else {
        None
    }
}

/// Whether the caller may read a patient's consents.
fn may_read(ctx: &Ctx<'_>, patient: &Patient) -> bool {
    grantor_kind(ctx, patient).is_some() || ctx.caller.role == Role::Auditor
}

/// Whether the caller is an admin of an org listed as a PRE proxy of this
/// consent (which lets it read this one consent).
pub(crate) fn is_proxy_admin(ctx: &Ctx<'_>, consent: &Consent) -> bool {
    ctx.caller.role == Role::Admin
        && consent
            .pre
            .as_ref()
            .is_some_and(|pre| pre.proxies.contains(&ctx.caller.msp_id))
}

fn validate_grantee(g: &Grantee) -> Result<(), ContractError> {
    let need_id = |field: &str, v: &Option<String>| match v {
        Some(v) => check_id(field, v),
        None => Err(ContractError::invalid(format!(
            "a {:?} grantee needs {field}",
            g.kind
        ))),
    };
    let forbid = |field: &str, present: bool| {
        if present {
            Err(ContractError::invalid(format!(
                "a {:?} grantee takes no {field}",
                g.kind
            )))
        } else {
            Ok(())
        }
    };
    match g.kind {
        GranteeType::User => {
            need_id("grantee.id", &g.id)?;
            need_id("grantee.org", &g.org)?;
            forbid("grantee.role", g.role.is_some())
        }
        GranteeType::Org => {
            need_id("grantee.org", &g.org)?;
            forbid("grantee.id", g.id.is_some())?;
            forbid("grantee.role", g.role.is_some())
        }
        GranteeType::Role => {
            if g.role.is_none() {
                return Err(ContractError::invalid("a role grantee needs grantee.role"));
            }
            forbid("grantee.id", g.id.is_some())?;
            if let Some(o) = &g.org {
                check_id("grantee.org", o)?;
            }
            Ok(())
        }
    }
}

fn validate_scope(scope: &Scope) -> Result<(), ContractError> {
    if scope.categories.is_empty() && scope.records.is_empty() {
        return Err(ContractError::invalid(
            "scope needs at least one category or record",
        ));
    }
    check_unique::<Category>("scope.categories", &scope.categories)?;
    check_unique("scope.records", &scope.records)?;
    if scope.records.len() > MAX_SCOPE_RECORDS {
        return Err(ContractError::invalid(format!(
            "scope.records lists more than {MAX_SCOPE_RECORDS} records"
        )));
    }
    for r in &scope.records {
        check_id("scope.records[]", r)?;
    }
    Ok(())
}

fn validate_condition_value(attr: &str, v: &str) -> Result<(), ContractError> {
    if v.is_empty()
        || v.chars().count() > MAX_CONDITION_VALUE_LEN
        || v.chars().any(char::is_control)
    {
        return Err(ContractError::invalid(format!(
            "condition {attr:?} values must be 1-{MAX_CONDITION_VALUE_LEN} characters without control characters"
        )));
    }
    Ok(())
}

fn validate_conditions(c: &BTreeMap<String, ConditionValue>) -> Result<(), ContractError> {
    if c.len() > MAX_CONDITIONS {
        return Err(ContractError::invalid(format!(
            "at most {MAX_CONDITIONS} conditions"
        )));
    }
    for (attr, value) in c {
        if !is_id(attr) {
            return Err(ContractError::invalid(format!(
                "condition attribute {attr:?} must be 1-64 characters of [A-Za-z0-9._:-]"
            )));
        }
        match value {
            ConditionValue::One(v) => validate_condition_value(attr, v)?,
            ConditionValue::AnyOf(vs) => {
                if vs.is_empty() || vs.len() > MAX_CONDITION_VALUES {
                    return Err(ContractError::invalid(format!(
                        "condition {attr:?} needs 1-{MAX_CONDITION_VALUES} values"
                    )));
                }
                check_unique(&format!("condition {attr:?}"), vs)?;
                for v in vs {
                    validate_condition_value(attr, v)?;
                }
            }
        }
    }
    Ok(())
}

/// Validates a PRE grant and returns it with its keys in canonical form
/// (`verifying_key`, the key that signed the kfrags, is required).
fn validate_pre(pre: PreGrant) -> Result<PreGrant, ContractError> {
    let grantee_public_key =
        canonical_public_key("pre.grantee_public_key", &pre.grantee_public_key)?;
    let verifying_key = match &pre.verifying_key {
        Some(k) => canonical_public_key("pre.verifying_key", k)?,
        None => return Err(ContractError::invalid("pre.verifying_key is required")),
    };
    let (t, n) = (pre.threshold, pre.shares);
    if !(1 <= t && t <= n && n <= MAX_PRE_SHARES) {
        return Err(ContractError::invalid(format!(
            "pre needs 1 <= threshold <= shares <= {MAX_PRE_SHARES} (got {t} of {n})"
        )));
    }
    if pre.proxies.len() != n as usize {
        return Err(ContractError::invalid(
            "pre.proxies must list exactly `shares` proxies",
        ));
    }
    for p in &pre.proxies {
        check_id("pre.proxies[]", p)?;
    }
    check_unique("pre.proxies", &pre.proxies)?;
    if pre.kfrag_commitments.len() != n as usize {
        return Err(ContractError::invalid(
            "pre.kfrag_commitments must hold one commitment per proxy",
        ));
    }
    for c in &pre.kfrag_commitments {
        check_hex("pre.kfrag_commitments[]", c)?;
    }
    Ok(PreGrant {
        grantee_public_key,
        verifying_key: Some(verifying_key),
        ..pre
    })
}

/// Grants a consent (see the module docs for who may).
pub fn grant(ctx: &mut Ctx<'_>, args: GrantArgs) -> Result<Vec<u8>, ContractError> {
    check_id("patient_id", &args.patient_id)?;
    let consent_id = args.consent_id.unwrap_or_else(|| ctx.derived_id("c-"));
    check_id("consent_id", &consent_id)?;
    validate_grantee(&args.grantee)?;
    validate_scope(&args.scope)?;
    if !args.actions.contains(&Action::Read) {
        return Err(ContractError::invalid("actions must include \"read\""));
    }
    check_unique("actions", &args.actions)?;
    if args.purposes.is_empty() {
        return Err(ContractError::invalid("purposes must not be empty"));
    }
    check_unique("purposes", &args.purposes)?;
    if let (Some(nb), Some(na)) = (args.not_before, args.not_after)
        && nb >= na
    {
        return Err(ContractError::invalid(
            "not_before must be before not_after",
        ));
    }
    if args.not_after.is_some_and(|na| na <= ctx.now) {
        return Err(ContractError::invalid("not_after is already in the past"));
    }
    let conditions = args.conditions.unwrap_or_default();
    validate_conditions(&conditions)?;
    let pre = args.pre.map(validate_pre).transpose()?;

    let patient = patients::load(ctx, &args.patient_id)?;
    let delegate = grantor_kind(ctx, &patient).ok_or_else(|| {
        ContractError::forbidden(
            "only the patient or an admin of the patient's home organisation (as delegate) may grant consent",
        )
    })?;
    for r in &args.scope.records {
        let rec = records::load(ctx, r)?.ok_or_else(|| {
            ContractError::not_found(format!("scoped record {r:?} does not exist"))
        })?;
        if rec.patient_id != patient.patient_id {
            return Err(ContractError::invalid(format!(
                "scoped record {r:?} is not a record of this patient"
            )));
        }
    }
    let ptr = store::key(CONSENT_BY_ID, &[&consent_id])?;
    if store::exists(ctx.stub, &ptr)? {
        return Err(ContractError::conflict(format!(
            "consent {consent_id:?} already exists"
        )));
    }

    let consent = Consent {
        consent_id,
        patient_id: patient.patient_id,
        grantee: args.grantee,
        scope: args.scope,
        actions: args.actions,
        purposes: args.purposes,
        not_before: args.not_before,
        not_after: args.not_after,
        conditions,
        granted_by: ctx.caller.user_id.clone(),
        granted_by_org: ctx.caller.msp_id.clone(),
        granted_at: ctx.now,
        tx_id: ctx.tx_id.clone(),
        delegate,
        revoked_at: None,
        revoked_by: None,
        revoked_by_delegate: None,
        pre,
    };
    let key = store::key(CONSENT, &[&consent.patient_id, &consent.consent_id])?;
    store::put_json(ctx.stub, &key, &consent)?;
    ctx.stub.put_state(&ptr, consent.patient_id.as_bytes())?;
    emit(ctx, "ConsentGranted", &consent, delegate)?;
    view(ctx, consent)
}

fn emit(ctx: &mut Ctx<'_>, name: &str, c: &Consent, delegate: bool) -> Result<(), ContractError> {
    store::emit(
        ctx.stub,
        name,
        &ConsentEvent {
            consent_id: &c.consent_id,
            patient_id: &c.patient_id,
            grantee: &c.grantee,
            delegate,
            by: &ctx.caller.user_id,
            by_org: &ctx.caller.msp_id,
            tx_id: &ctx.tx_id,
        },
    )
}

fn view(ctx: &Ctx<'_>, consent: Consent) -> Result<Vec<u8>, ContractError> {
    store::to_json(&ConsentView {
        status: consent.status_at(ctx.now),
        consent,
    })
}

/// Revokes a consent; effective for every decision from this transaction on.
pub fn revoke(ctx: &mut Ctx<'_>, args: ConsentIdArgs) -> Result<Vec<u8>, ContractError> {
    check_id("consent_id", &args.consent_id)?;
    let mut consent = load(ctx, &args.consent_id)?;
    let patient = patients::load(ctx, &consent.patient_id)?;
    let delegate = grantor_kind(ctx, &patient).ok_or_else(|| {
        ContractError::forbidden(
            "only the patient or an admin of the patient's home organisation (as delegate) may revoke consent",
        )
    })?;
    if consent.revoked_at.is_some() {
        return Err(ContractError::conflict(format!(
            "consent {:?} is already revoked",
            consent.consent_id
        )));
    }
    consent.revoked_at = Some(ctx.now);
    consent.revoked_by = Some(ctx.caller.user_id.clone());
    consent.revoked_by_delegate = Some(delegate);
    let key = store::key(CONSENT, &[&consent.patient_id, &consent.consent_id])?;
    store::put_json(ctx.stub, &key, &consent)?;
    emit(ctx, "ConsentRevoked", &consent, delegate)?;
    view(ctx, consent)
}

/// Returns one consent with its status.
pub fn get(ctx: &mut Ctx<'_>, args: ConsentIdArgs) -> Result<Vec<u8>, ContractError> {
    check_id("consent_id", &args.consent_id)?;
    let consent = load(ctx, &args.consent_id)?;
    let patient = patients::load(ctx, &consent.patient_id)?;
    if !(may_read(ctx, &patient) || is_proxy_admin(ctx, &consent)) {
        return Err(ContractError::forbidden(
            "only the patient, a home-org admin, an auditor or an admin of one of its PRE proxies may read a consent",
        ));
    }
    view(ctx, consent)
}

/// Lists a patient's consents with their status, in consent-id order.
pub fn list(ctx: &mut Ctx<'_>, args: PatientPageArgs) -> Result<Vec<u8>, ContractError> {
    check_id("patient_id", &args.patient_id)?;
    let limit = page::limit(args.limit)?;
    let patient = patients::load(ctx, &args.patient_id)?;
    if !may_read(ctx, &patient) {
        return Err(ContractError::forbidden(
            "only the patient, a home-org admin or an auditor may list consents",
        ));
    }
    let (start, end) = store::prefix_range(CONSENT, &[&patient.patient_id])?;
    let now = ctx.now;
    let (consents, bookmark) = page::scan(
        ctx.stub,
        &start,
        &end,
        args.bookmark.as_deref(),
        limit,
        |kv| {
            let consent: Consent = store::decode(&kv.key, &kv.value)?;
            Ok(Some(ConsentView {
                status: consent.status_at(now),
                consent,
            }))
        },
    )?;
    store::to_json(&ConsentPage { consents, bookmark })
}
