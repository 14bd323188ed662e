//! `AddRecord`, `GetRecord`, `ListRecords`, `EraseRecord`.
//!
//! Who may add: the patient, or a clinician or admin of the patient's home
//! organisation (the custodian that produced the data). Consents do not
//! grant uploads.
//!
//! Who may see metadata (reading metadata is not logged; reading content is,
//! through `RequestAccess`): the patient; clinicians and admins of the home
//! organisation; auditors (any organisation, for compliance review); anyone
//! else only for records covered by an active consent that matches them for
//! `read` (grantee, ABAC conditions and scope; any purpose).

use serde::{Deserialize, Serialize};

use super::Ctx;
use super::consents::load_all_for_patient;
use super::decision::match_consent;
use super::error::ContractError;
use super::model::{Action, Category, Consent, Patient, Record};
use super::page;
use super::page::PatientPageArgs;
use super::patients;
use super::store::{self, RECORD, RECORD_BY_ID};
use super::time::Time;
use super::validate::{
    MAX_RECORD_SIZE, check_capsule_ref, check_cid, check_content_type, check_id, check_sha256,
};
use crate::identity::{Identity, Role};

/// `AddRecord` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddArgs {
    /// Defaults to `r-` + the first 24 characters of the tx id.
    #[serde(default)]
    pub record_id: Option<String>,
    pub patient_id: String,
    pub category: Category,
    pub cid: String,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub capsule_ref: String,
    #[serde(default)]
    pub supersedes: Option<String>,
}

/// `GetRecord` / `EraseRecord` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIdArgs {
    pub record_id: String,
}

#[derive(Serialize)]
struct RecordPage {
    records: Vec<Record>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bookmark: Option<String>,
}

#[derive(Serialize)]
struct RecordEvent<'a> {
    record_id: &'a str,
    patient_id: &'a str,
    category: Category,
    cid: &'a str,
    org: &'a str,
    tx_id: &'a str,
}

/// Loads a record by id (via its pointer), `None` if unknown.
pub(crate) fn load(ctx: &mut Ctx<'_>, record_id: &str) -> Result<Option<Record>, ContractError> {
    let ptr_key = store::key(RECORD_BY_ID, &[record_id])?;
    let Some(patient_id) = ctx.stub.get_state(&ptr_key)? else {
        return Ok(None);
    };
    let patient_id = String::from_utf8(patient_id)
        .map_err(|_| ContractError::internal("corrupt record pointer"))?;
    let key = store::key(RECORD, &[&patient_id, record_id])?;
    let record: Record = store::get_json(ctx.stub, &key)?
        .ok_or_else(|| ContractError::internal(format!("dangling record pointer {record_id:?}")))?;
    Ok(Some(record))
}

/// Loads a record or fails with 404.
fn load_required(ctx: &mut Ctx<'_>, record_id: &str) -> Result<Record, ContractError> {
    load(ctx, record_id)?
        .ok_or_else(|| ContractError::not_found(format!("record {record_id:?} does not exist")))
}

/// Whether the caller sees every record's metadata of this patient.
fn sees_all_metadata(caller: &Identity, patient: &Patient) -> bool {
    caller.is_patient(&patient.patient_id, &patient.home_org)
        || caller.has_role_in(Role::Clinician, &patient.home_org)
        || caller.has_role_in(Role::Admin, &patient.home_org)
        || caller.role == Role::Auditor
}

/// Whether an active consent lets the caller read this record.
fn consent_covers(caller: &Identity, now: Time, consents: &[Consent], record: &Record) -> bool {
    consents
        .iter()
        .any(|c| match_consent(c, caller, record, Action::Read, None, now).is_ok())
}

/// Adds a record's metadata (see the module docs for who may).
pub fn add(ctx: &mut Ctx<'_>, args: AddArgs) -> Result<Vec<u8>, ContractError> {
    let record_id = args.record_id.unwrap_or_else(|| ctx.derived_id("r-"));
    check_id("record_id", &record_id)?;
    check_id("patient_id", &args.patient_id)?;
    check_cid("cid", &args.cid)?;
    check_sha256("sha256", &args.sha256)?;
    if args.size > MAX_RECORD_SIZE {
        return Err(ContractError::invalid(format!(
            "size must be at most {MAX_RECORD_SIZE} bytes"
        )));
    }
    check_content_type("content_type", &args.content_type)?;
    check_capsule_ref("capsule_ref", &args.capsule_ref)?;
    if let Some(s) = &args.supersedes {
        check_id("supersedes", s)?;
    }

    let patient = patients::load(ctx, &args.patient_id)?;
    let home = patient.home_org.as_str();
    if !(ctx.caller.is_patient(&patient.patient_id, home)
        || ctx.caller.has_role_in(Role::Clinician, home)
        || ctx.caller.has_role_in(Role::Admin, home))
    {
        return Err(ContractError::forbidden(
            "only the patient or a clinician/admin of the patient's home organisation may add records",
        ));
    }
    if let Some(old_id) = &args.supersedes {
        let old = load(ctx, old_id)?.ok_or_else(|| {
            ContractError::not_found(format!("superseded record {old_id:?} does not exist"))
        })?;
        if old.patient_id != patient.patient_id {
            return Err(ContractError::invalid(
                "supersedes must name a record of the same patient",
            ));
        }
    }
    let ptr_key = store::key(RECORD_BY_ID, &[&record_id])?;
    if store::exists(ctx.stub, &ptr_key)? {
        return Err(ContractError::conflict(format!(
            "record {record_id:?} already exists"
        )));
    }

    let record = Record {
        record_id,
        patient_id: patient.patient_id,
        category: args.category,
        cid: args.cid,
        sha256: args.sha256,
        size: args.size,
        content_type: args.content_type,
        capsule_ref: args.capsule_ref,
        uploader: ctx.caller.user_id.clone(),
        uploader_org: ctx.caller.msp_id.clone(),
        created_at: ctx.now,
        tx_id: ctx.tx_id.clone(),
        supersedes: args.supersedes,
        erased: false,
        erased_at: None,
        erased_by: None,
    };
    let key = store::key(RECORD, &[&record.patient_id, &record.record_id])?;
    store::put_json(ctx.stub, &key, &record)?;
    ctx.stub.put_state(&ptr_key, record.patient_id.as_bytes())?;
    emit(ctx, "RecordAdded", &record)?;
    store::to_json(&record)
}

fn emit(ctx: &mut Ctx<'_>, name: &str, record: &Record) -> Result<(), ContractError> {
    store::emit(
        ctx.stub,
        name,
        &RecordEvent {
            record_id: &record.record_id,
            patient_id: &record.patient_id,
            category: record.category,
            cid: &record.cid,
            org: &ctx.caller.msp_id,
            tx_id: &ctx.tx_id,
        },
    )
}

/// Returns a record's metadata if the caller may see it (403 otherwise).
pub fn get(ctx: &mut Ctx<'_>, args: RecordIdArgs) -> Result<Vec<u8>, ContractError> {
    check_id("record_id", &args.record_id)?;
    let record = load_required(ctx, &args.record_id)?;
    let patient = patients::load(ctx, &record.patient_id)?;
    if !sees_all_metadata(&ctx.caller, &patient) {
        let consents = load_all_for_patient(ctx, &patient.patient_id)?;
        if !consent_covers(&ctx.caller, ctx.now, &consents, &record) {
            return Err(ContractError::forbidden(
                "no active consent lets the caller see this record",
            ));
        }
    }
    store::to_json(&record)
}

/// Lists a patient's records the caller may see, in record-id order.
pub fn list(ctx: &mut Ctx<'_>, args: PatientPageArgs) -> Result<Vec<u8>, ContractError> {
    check_id("patient_id", &args.patient_id)?;
    let limit = page::limit(args.limit)?;
    let patient = patients::load(ctx, &args.patient_id)?;
    let consents = if sees_all_metadata(&ctx.caller, &patient) {
        None
    } else {
        Some(load_all_for_patient(ctx, &patient.patient_id)?)
    };
    let (start, end) = store::prefix_range(RECORD, &[&patient.patient_id])?;
    let (caller, now) = (&ctx.caller, ctx.now);
    let (records, bookmark) = page::scan(
        ctx.stub,
        &start,
        &end,
        args.bookmark.as_deref(),
        limit,
        |kv| {
            let record: Record = store::decode(&kv.key, &kv.value)?;
            let visible = match &consents {
                None => true,
                Some(cs) => consent_covers(caller, now, cs, &record),
            };
            Ok(visible.then_some(record))
        },
    )?;
    store::to_json(&RecordPage { records, bookmark })
}

/// Marks a record erased (its content is crypto-shredded off-chain; the
/// metadata stays for the audit trail). By the patient or a home-org admin.
pub fn erase(ctx: &mut Ctx<'_>, args: RecordIdArgs) -> Result<Vec<u8>, ContractError> {
    check_id("record_id", &args.record_id)?;
    let mut record = load_required(ctx, &args.record_id)?;
    let patient = patients::load(ctx, &record.patient_id)?;
    if !(ctx
        .caller
        .is_patient(&patient.patient_id, &patient.home_org)
        || ctx.caller.has_role_in(Role::Admin, &patient.home_org))
    {
        return Err(ContractError::forbidden(
            "only the patient or an admin of the patient's home organisation may erase a record",
        ));
    }
    if record.erased {
        return Err(ContractError::conflict(format!(
            "record {:?} is already erased",
            record.record_id
        )));
    }
    record.erased = true;
    record.erased_at = Some(ctx.now);
    record.erased_by = Some(ctx.caller.user_id.clone());
    let key = store::key(RECORD, &[&record.patient_id, &record.record_id])?;
    store::put_json(ctx.stub, &key, &record)?;
    emit(ctx, "RecordErased", &record)?;
    store::to_json(&record)
}
