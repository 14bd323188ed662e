//! `RegisterPatient`, `GetPatient`.

use serde::{Deserialize, Serialize};

use super::Ctx;
use super::error::ContractError;
use super::model::Patient;
use super::store::{self, PATIENT};
use super::validate::{canonical_public_key, check_id};
use crate::identity::Role;

/// `RegisterPatient` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterArgs {
    pub patient_id: String,
    /// Defaults to the caller's MSP id; must equal it.
    #[serde(default)]
    pub home_org: Option<String>,
    pub pre_public_key: String,
}

/// `GetPatient` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetArgs {
    pub patient_id: String,
}

#[derive(Serialize)]
struct RegisteredEvent<'a> {
    patient_id: &'a str,
    home_org: &'a str,
    tx_id: &'a str,
}

/// Loads a patient or fails with 404.
pub(crate) fn load(ctx: &mut Ctx<'_>, patient_id: &str) -> Result<Patient, ContractError> {
    let key = store::key(PATIENT, &[patient_id])?;
    store::get_json(ctx.stub, &key)?.ok_or_else(|| {
        ContractError::not_found(format!("patient {patient_id:?} is not registered"))
    })
}

/// Registers a patient: by an admin of the home org, or by the patient
/// (their `ehr.patient_id`, from their home org).
pub fn register(ctx: &mut Ctx<'_>, args: RegisterArgs) -> Result<Vec<u8>, ContractError> {
    check_id("patient_id", &args.patient_id)?;
    let home_org = args.home_org.unwrap_or_else(|| ctx.caller.msp_id.clone());
    check_id("home_org", &home_org)?;
    let pre_public_key = canonical_public_key("pre_public_key", &args.pre_public_key)?;
    if home_org != ctx.caller.msp_id {
        return Err(ContractError::forbidden(
            "a patient is registered from their home organisation (home_org must be the caller's MSP)",
        ));
    }
    if !(ctx.caller.has_role_in(Role::Admin, &home_org)
        || ctx.caller.is_patient(&args.patient_id, &home_org))
    {
        return Err(ContractError::forbidden(
            "only an admin of the home organisation or the patient may register a patient",
        ));
    }
    let key = store::key(PATIENT, &[&args.patient_id])?;
    if store::exists(ctx.stub, &key)? {
        return Err(ContractError::conflict(format!(
            "patient {:?} is already registered",
            args.patient_id
        )));
    }
    let patient = Patient {
        patient_id: args.patient_id,
        home_org,
        pre_public_key,
        registered_at: ctx.now,
        registered_by: ctx.caller.user_id.clone(),
    };
    store::put_json(ctx.stub, &key, &patient)?;
    store::emit(
        ctx.stub,
        "PatientRegistered",
        &RegisteredEvent {
            patient_id: &patient.patient_id,
            home_org: &patient.home_org,
            tx_id: &ctx.tx_id,
        },
    )?;
    store::to_json(&patient)
}

/// Returns a patient (any consortium member may read it: ids, org and a
/// public key, no PHI — grantors and proxies need the key and home org).
pub fn get(ctx: &mut Ctx<'_>, args: GetArgs) -> Result<Vec<u8>, ContractError> {
    check_id("patient_id", &args.patient_id)?;
    let patient = load(ctx, &args.patient_id)?;
    store::to_json(&patient)
}
