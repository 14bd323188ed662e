//! The ledger layout: every key is a Fabric composite key, every value JSON.
//!
//! | object type | attributes | value |
//! |---|---|---|
//! | `ehr.patient` | patient_id | [`Patient`](super::model::Patient) |
//! | `ehr.record` | patient_id, record_id | [`Record`](super::model::Record) |
//! | `ehr.record~id` | record_id | patient_id (pointer) |
//! | `ehr.consent` | patient_id, consent_id | [`Consent`](super::model::Consent) |
//! | `ehr.consent~id` | consent_id | patient_id (pointer) |
//! | `ehr.event` | event_id | [`AccessEvent`](super::model::AccessEvent) |
//! | `ehr.log~patient` | patient_id, time key, event_id | the same event |
//! | `ehr.log~actor` | actor, time key, event_id | the same event |
//! | `ehr.log~org` | actor_org, time key, event_id | the same event |
//! | `ehr.log~breakglass` | time key, event_id | the same event |
//! | `ehr.log~time` | time key, event_id | the same event |
//! | `ehr.review` | event_id | [`BreakGlassReview`](super::model::BreakGlassReview) |
//! | `ehr.orgkeys` | msp_id | [`OrgKeys`](super::model::OrgKeys) |
//!
//! Records and consents are keyed by patient so one range scan returns a
//! patient's records or consents; the `~id` pointers find them by id.
//! Access events are immutable, so each index holds a full copy: every log
//! query is one range scan with no follow-up reads. The time key is
//! [`Time::sort_key`](super::time::Time::sort_key), fixed width, so key
//! order is time order.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ContractError;
use crate::stub::{MAX_UNICODE_RUNE, Stub, create_composite_key};

pub const PATIENT: &str = "ehr.patient";
pub const RECORD: &str = "ehr.record";
pub const RECORD_BY_ID: &str = "ehr.record~id";
pub const CONSENT: &str = "ehr.consent";
pub const CONSENT_BY_ID: &str = "ehr.consent~id";
pub const EVENT: &str = "ehr.event";
pub const LOG_BY_PATIENT: &str = "ehr.log~patient";
pub const LOG_BY_ACTOR: &str = "ehr.log~actor";
pub const LOG_BY_ORG: &str = "ehr.log~org";
pub const LOG_BREAK_GLASS: &str = "ehr.log~breakglass";
pub const LOG_BY_TIME: &str = "ehr.log~time";
pub const REVIEW: &str = "ehr.review";
pub const ORG_KEYS: &str = "ehr.orgkeys";

/// A composite key (ids are validated before they get here, so this only
/// fails on a contract bug).
pub fn key(object_type: &str, attrs: &[&str]) -> Result<String, ContractError> {
    Ok(create_composite_key(object_type, attrs)?)
}

/// The `[start, end)` range of every key under `object_type` + `attrs`.
pub fn prefix_range(object_type: &str, attrs: &[&str]) -> Result<(String, String), ContractError> {
    let start = key(object_type, attrs)?;
    let mut end = start.clone();
    end.push(MAX_UNICODE_RUNE);
    Ok((start, end))
}

/// Reads and decodes a JSON value.
pub fn get_json<T: DeserializeOwned>(
    stub: &mut dyn Stub,
    key: &str,
) -> Result<Option<T>, ContractError> {
    match stub.get_state(key)? {
        None => Ok(None),
        Some(bytes) => decode(key, &bytes).map(Some),
    }
}

/// Decodes a stored JSON value; corrupt state is an internal error.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ContractError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ContractError::internal(format!(
            "corrupt state under {:?}: {e}",
            key.replace('\u{0}', "/")
        ))
    })
}

/// Encodes a value as JSON bytes.
pub fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ContractError> {
    serde_json::to_vec(value).map_err(|e| ContractError::internal(format!("encoding JSON: {e}")))
}

/// Writes a value as JSON.
pub fn put_json<T: Serialize>(
    stub: &mut dyn Stub,
    key: &str,
    value: &T,
) -> Result<(), ContractError> {
    let bytes = to_json(value)?;
    stub.put_state(key, &bytes)?;
    Ok(())
}

/// Whether a key exists.
pub fn exists(stub: &mut dyn Stub, key: &str) -> Result<bool, ContractError> {
    Ok(stub.get_state(key)?.is_some())
}

/// Sets the transaction's chaincode event.
pub fn emit<T: Serialize>(
    stub: &mut dyn Stub,
    name: &str,
    payload: &T,
) -> Result<(), ContractError> {
    let bytes = to_json(payload)?;
    stub.set_event(name, &bytes)?;
    Ok(())
}
