//! The ehrchain contract: patients, records, consents, access decisions,
//! the access log and the orgs' PRE keys (see `chaincode/README.md` for
//! every function's JSON).
//!
//! Arguments are `[function, json]` exactly as
//! `peer chaincode invoke -c '{"Args":["GrantConsent","{...}"]}'` sends
//! them; results are JSON. Every call is deterministic: time is the
//! proposal's timestamp, new ids derive from the tx id, all JSON is written
//! from structs and ordered maps. A rejected call writes nothing (all input
//! is validated before the first write) and answers a status >= 400 with
//! `{"code","message"}` JSON in `Response.message`.

mod access;
pub mod audit;
mod consents;
pub mod decision;
pub mod error;
pub mod model;
mod orgkeys;
pub mod page;
mod patients;
mod records;
pub mod store;
pub mod time;
pub mod validate;

use serde::de::DeserializeOwned;

pub use error::ContractError;

use crate::identity::{self, Identity};
use crate::stub::Stub;
use crate::{Chaincode, Response};
use time::Time;

/// The largest JSON argument accepted.
pub const MAX_ARG_BYTES: usize = 256 * 1024;

/// Every function the contract serves.
pub const FUNCTIONS: [&str; 19] = [
    "RegisterPatient",
    "GetPatient",
    "AddRecord",
    "GetRecord",
    "ListRecords",
    "EraseRecord",
    "GrantConsent",
    "RevokeConsent",
    "GetConsent",
    "ListConsents",
    "RequestAccess",
    "GetAccessEvent",
    "QueryAccessLog",
    "ReviewBreakGlass",
    "GetPreGrant",
    "RegisterOrgKeys",
    "GetOrgKeys",
    "ListOrgKeys",
    "Ping",
];

/// The ehrchain contract. Stateless: everything lives on the ledger.
#[derive(Debug, Clone, Copy, Default)]
pub struct EhrContract;

impl EhrContract {
    /// The contract.
    pub fn new() -> Self {
        Self
    }
}

/// One invocation: the host, the caller, the transaction's time and id.
pub(crate) struct Ctx<'s> {
    pub stub: &'s mut dyn Stub,
    pub caller: Identity,
    pub now: Time,
    pub tx_id: String,
}

impl Ctx<'_> {
    /// An id derived from the tx id: `prefix` + its first 24 characters.
    pub fn derived_id(&self, prefix: &str) -> String {
        let head: String = self.tx_id.chars().take(24).collect();
        format!("{prefix}{head}")
    }
}

impl Chaincode for EhrContract {
    fn init(&self, _stub: &mut dyn Stub, _args: &[Vec<u8>]) -> Response {
        // Nothing to set up: state is created by the functions themselves.
        Response::ok(Vec::new())
    }

    fn invoke(&self, stub: &mut dyn Stub, args: &[Vec<u8>]) -> Response {
        let function = args
            .first()
            .and_then(|f| std::str::from_utf8(f).ok())
            .unwrap_or("")
            .to_owned();
        match dispatch(stub, args) {
            Ok(payload) => {
                tracing::debug!(function = %function, "ok");
                Response::ok(payload)
            }
            Err(e) => {
                // The code only: messages may echo input.
                tracing::debug!(function = %function, code = e.code(), "rejected");
                e.to_response()
            }
        }
    }
}

fn dispatch(stub: &mut dyn Stub, args: &[Vec<u8>]) -> Result<Vec<u8>, ContractError> {
    let Some(function) = args.first() else {
        return Err(ContractError::invalid("no function name (args[0]) given"));
    };
    let function = std::str::from_utf8(function)
        .map_err(|_| ContractError::invalid("function name is not UTF-8"))?;
    if !FUNCTIONS.contains(&function) {
        return Err(ContractError::invalid(format!(
            "unknown function {function:?}; known: {}",
            FUNCTIONS.join(", ")
        )));
    }
    if args.len() > 2 {
        return Err(ContractError::invalid(
            "expected at most two arguments: the function name and one JSON object",
        ));
    }
    let arg: &[u8] = args.get(1).map_or(b"{}", Vec::as_slice);
    if arg.len() > MAX_ARG_BYTES {
        return Err(ContractError::invalid(format!(
            "argument is larger than {MAX_ARG_BYTES} bytes"
        )));
    }

    let caller = identity::from_creator(stub.creator())?;
    let now = Time::from_tx(stub.tx_timestamp())
        .ok_or_else(|| ContractError::internal("transaction timestamp is out of range"))?;
    let tx_id = stub.tx_id().to_owned();
    if !validate::is_id(&tx_id) {
        return Err(ContractError::internal("transaction id is malformed"));
    }
    let mut ctx = Ctx {
        stub,
        caller,
        now,
        tx_id,
    };
    match function {
        "RegisterPatient" => patients::register(&mut ctx, parse(arg)?),
        "GetPatient" => patients::get(&mut ctx, parse(arg)?),
        "AddRecord" => records::add(&mut ctx, parse(arg)?),
        "GetRecord" => records::get(&mut ctx, parse(arg)?),
        "ListRecords" => records::list(&mut ctx, parse(arg)?),
        "EraseRecord" => records::erase(&mut ctx, parse(arg)?),
        "GrantConsent" => consents::grant(&mut ctx, parse(arg)?),
        "RevokeConsent" => consents::revoke(&mut ctx, parse(arg)?),
        "GetConsent" => consents::get(&mut ctx, parse(arg)?),
        "ListConsents" => consents::list(&mut ctx, parse(arg)?),
        "RequestAccess" => access::request(&mut ctx, parse(arg)?),
        "GetAccessEvent" => access::get_event(&mut ctx, parse(arg)?),
        "QueryAccessLog" => audit::query(&mut ctx, parse(arg)?),
        "ReviewBreakGlass" => audit::review(&mut ctx, parse(arg)?),
        "GetPreGrant" => access::get_pre_grant(&mut ctx, parse(arg)?),
        "RegisterOrgKeys" => orgkeys::register(&mut ctx, parse(arg)?),
        "GetOrgKeys" => orgkeys::get(&mut ctx, parse(arg)?),
        "ListOrgKeys" => orgkeys::list(&mut ctx, parse(arg)?),
        "Ping" => ping(&ctx),
        _ => Err(ContractError::internal("function table out of sync")),
    }
}

/// Parses the JSON argument into a function's argument struct.
fn parse<T: DeserializeOwned>(arg: &[u8]) -> Result<T, ContractError> {
    if arg.trim_ascii_start().first() != Some(&b'{') {
        return Err(ContractError::invalid("the argument must be a JSON object"));
    }
    serde_json::from_slice(arg)
        .map_err(|e| ContractError::invalid(format!("bad argument JSON: {e}")))
}

/// `Ping`: who the contract thinks the caller is (no state read).
fn ping(ctx: &Ctx<'_>) -> Result<Vec<u8>, ContractError> {
    #[derive(serde::Serialize)]
    struct Pong<'a> {
        user_id: &'a str,
        org: &'a str,
        role: identity::Role,
        #[serde(skip_serializing_if = "Option::is_none")]
        patient_id: Option<&'a str>,
        time: Time,
        tx_id: &'a str,
    }
    store::to_json(&Pong {
        user_id: &ctx.caller.user_id,
        org: &ctx.caller.msp_id,
        role: ctx.caller.role,
        patient_id: ctx.caller.patient_id.as_deref(),
        time: ctx.now,
        tx_id: &ctx.tx_id,
    })
}
