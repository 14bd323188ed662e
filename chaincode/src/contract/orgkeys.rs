//! `RegisterOrgKeys`, `GetOrgKeys`, `ListOrgKeys`: each organisation's
//! Umbral public keys for threshold proxy re-encryption.
//!
//! An org's gateway has two keys: the **reader** key (re-encrypted capsules
//! for the org's users are opened with it) and the **proxy** key (kfrags for
//! the org as a proxy are sealed to it). Only an admin of the org registers
//! them, for its own org. Registering the keys already on the ledger writes
//! nothing (gateways register at every start); other keys replace the entry
//! (a rotation: the earlier entries stay in the key's history). Anyone in
//! the consortium may read them: grantors need them to make a grant.

use serde::{Deserialize, Serialize};

use super::Ctx;
use super::error::ContractError;
use super::model::OrgKeys;
use super::page;
use super::store::{self, ORG_KEYS};
use super::validate::{canonical_public_key, check_id};
use crate::identity::Role;

/// `RegisterOrgKeys` argument (the org is the caller's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterArgs {
    pub reader_public_key: String,
    pub proxy_public_key: String,
}

/// `GetOrgKeys` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetArgs {
    pub org: String,
}

/// `ListOrgKeys` argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListArgs {
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub bookmark: Option<String>,
}

#[derive(Serialize)]
struct OrgKeysPage {
    orgs: Vec<OrgKeys>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bookmark: Option<String>,
}

#[derive(Serialize)]
struct RegisteredEvent<'a> {
    org: &'a str,
    reader_public_key: &'a str,
    proxy_public_key: &'a str,
    tx_id: &'a str,
}

/// Registers (or rotates) the caller's org keys; a no-op when the same
/// keys are already registered.
pub fn register(ctx: &mut Ctx<'_>, args: RegisterArgs) -> Result<Vec<u8>, ContractError> {
    let reader_public_key = canonical_public_key("reader_public_key", &args.reader_public_key)?;
    let proxy_public_key = canonical_public_key("proxy_public_key", &args.proxy_public_key)?;
    if reader_public_key == proxy_public_key {
        return Err(ContractError::invalid(
            "reader_public_key and proxy_public_key must be different keys",
        ));
    }
    let org = ctx.caller.msp_id.clone();
    if !ctx.caller.has_role_in(Role::Admin, &org) {
        return Err(ContractError::forbidden(
            "only an admin of the organisation may register its keys",
        ));
    }
    let key = store::key(ORG_KEYS, &[&org])?;
    if let Some(existing) = store::get_json::<OrgKeys>(ctx.stub, &key)?
        && existing.reader_public_key == reader_public_key
        && existing.proxy_public_key == proxy_public_key
    {
        return store::to_json(&existing);
    }
    let entry = OrgKeys {
        org,
        reader_public_key,
        proxy_public_key,
        registered_by: ctx.caller.user_id.clone(),
        registered_at: ctx.now,
        tx_id: ctx.tx_id.clone(),
    };
    store::put_json(ctx.stub, &key, &entry)?;
    store::emit(
        ctx.stub,
        "OrgKeysRegistered",
        &RegisteredEvent {
            org: &entry.org,
            reader_public_key: &entry.reader_public_key,
            proxy_public_key: &entry.proxy_public_key,
            tx_id: &ctx.tx_id,
        },
    )?;
    store::to_json(&entry)
}

/// Loads an org's keys or fails with 404.
fn load(ctx: &mut Ctx<'_>, org: &str) -> Result<OrgKeys, ContractError> {
    let key = store::key(ORG_KEYS, &[org])?;
    store::get_json(ctx.stub, &key)?
        .ok_or_else(|| ContractError::not_found(format!("org {org:?} has no registered keys")))
}

/// Returns one org's keys (any caller).
pub fn get(ctx: &mut Ctx<'_>, args: GetArgs) -> Result<Vec<u8>, ContractError> {
    check_id("org", &args.org)?;
    let entry = load(ctx, &args.org)?;
    store::to_json(&entry)
}

/// Lists every org's keys in org (MSP id) order (any caller).
pub fn list(ctx: &mut Ctx<'_>, args: ListArgs) -> Result<Vec<u8>, ContractError> {
    let limit = page::limit(args.limit)?;
    let (start, end) = store::prefix_range(ORG_KEYS, &[])?;
    let (orgs, bookmark) = page::scan(
        ctx.stub,
        &start,
        &end,
        args.bookmark.as_deref(),
        limit,
        |kv| store::decode::<OrgKeys>(&kv.key, &kv.value).map(Some),
    )?;
    store::to_json(&OrgKeysPage { orgs, bookmark })
}
