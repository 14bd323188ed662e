//! Cross-organisation key sharing by threshold proxy re-encryption
//! (Umbral, `umbral-pre`; the cryptography is [`crate::crypto::threshold`]).
//!
//! No proxy, gateway or hospital other than the reader ever holds a record's
//! DEK in the clear:
//!
//! * **Keys** ([`keys`]): every gateway org has two Umbral key pairs, a
//!   *reader* key (grants to the org are made to it; its clinicians read
//!   through it) and a *proxy* key (kfrags are sealed to it). Both public
//!   keys are registered on-chain (`RegisterOrgKeys`), which is where
//!   grantors find them.
//! * **Grant** ([`grantor`]): when a patient grants consent to another org,
//!   the patient's home gateway (the custodian of the patient's Umbral
//!   secret) makes t-of-n kfrags to the grantee org's reader key, seals each
//!   to one proxy org's proxy key, queues them in its outbox, records the
//!   grant on-chain (grantee key, t, n, proxies, one SHA-256 commitment per
//!   kfrag, the verifying key) and delivers each sealed kfrag to its proxy
//!   over the [`service`] (retried until accepted).
//! * **Read** ([`reader`]): after an allowed `RequestAccess`, the reader's
//!   gateway asks all n proxies at once; each proxy checks on the ledger
//!   (`GetPreGrant`) that the decision is an allowed, current one of the
//!   requesting org before re-encrypting the record's capsule into a cfrag.
//!   The reader verifies every cfrag, names bad proxies, keeps the first t
//!   good ones and opens the DEK with its reader key.
//! * **End** ([`events`]): revocation or expiry makes proxies refuse from
//!   the next block (they check the ledger on every request); revocation
//!   and erasure of the scoped records also delete the held kfrags.
//!
//! Gateways talk gRPC to each other (`ehr.proxy.v1.KeyProxy`, see
//! `proto/ehr/proxy/proxy.proto`) on the same port as the REST API; every
//! request is signed by the caller's enrolled service identity ([`wire`]).

pub mod events;
pub mod grantor;
pub mod keys;
pub mod reader;
pub mod service;
pub mod wire;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::api::error::{ApiError, ApiResult};
pub use keys::OrgKeys;

/// The user id of each gateway's own service identity (an org admin).
pub const SERVICE_USER: &str = "gateway";
/// How old an access decision may be when a proxy re-encrypts for it.
pub const MAX_EVENT_AGE_SECS: i64 = 600;

/// Threshold settings of new grants and the proxy client's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySettings {
    /// t: cfrags needed to open a DEK.
    pub threshold: u32,
    /// n: proxies (kfrags) per grant.
    pub shares: u32,
    /// Deadline of one call to another gateway.
    pub timeout: Duration,
}

/// Defaults: 2 of 3 proxies, 5 s per call.
pub const DEFAULT_SETTINGS: ProxySettings = ProxySettings {
    threshold: 2,
    shares: 3,
    timeout: Duration::from_secs(5),
};

impl ProxySettings {
    /// Checks `1 <= t <= n <= 16` and a non-zero timeout.
    pub fn validate(&self) -> Result<(), String> {
        let max = crate::crypto::threshold::MAX_SHARES as u32;
        if !(1 <= self.threshold && self.threshold <= self.shares && self.shares <= max) {
            return Err(format!(
                "proxy re-encryption needs 1 <= threshold <= shares <= {max} (got {} of {})",
                self.threshold, self.shares
            ));
        }
        if self.timeout.is_zero() {
            return Err("the proxy timeout must be > 0".into());
        }
        Ok(())
    }
}

/// The proxy state of one gateway: its org keys, settings and gRPC channels
/// to the other gateways.
pub struct ProxyState {
    pub settings: ProxySettings,
    pub keys: OrgKeys,
    /// The consortium's org CAs, to authenticate calling gateways.
    pub msp: ehr_ledger::msp::Msp,
    channels: Mutex<HashMap<String, Channel>>,
}

impl ProxyState {
    /// State over loaded org keys.
    pub fn new(settings: ProxySettings, keys: OrgKeys, msp: ehr_ledger::msp::Msp) -> Self {
        Self {
            settings,
            keys,
            msp,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A (lazily connecting, cached) channel to the gateway at `url`.
    pub fn channel(&self, url: &str) -> ApiResult<Channel> {
        let mut map = self
            .channels
            .lock()
            .map_err(|_| ApiError::internal("proxy channel cache poisoned"))?;
        if let Some(c) = map.get(url) {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(url.to_owned())
            .map_err(|_| ApiError::internal(format!("invalid peer gateway URL {url:?}")))?
            .connect_timeout(self.settings.timeout)
            .timeout(self.settings.timeout)
            .tcp_nodelay(true);
        let c = ep.connect_lazy();
        map.insert(url.to_owned(), c.clone());
        Ok(c)
    }
}

/// Maps an API error to the gRPC status a proxy answers with.
pub fn to_status(e: ApiError) -> tonic::Status {
    use tonic::Code;
    let code = match e.status.as_u16() {
        400 | 413 | 422 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::FailedPrecondition,
        503 => Code::Unavailable,
        502 => Code::Aborted,
        _ => Code::Internal,
    };
    tonic::Status::new(code, e.message)
}

/// A patient as registered on-chain (`GetPatient`, read as this gateway).
pub async fn patient_on_chain(
    app: &crate::api::AppState,
    patient_id: &str,
) -> ApiResult<serde_json::Value> {
    crate::api::handlers::parse_json(
        &app.chain
            .evaluate(
                &app.service,
                "GetPatient",
                &serde_json::json!({"patient_id": patient_id}),
            )
            .await?,
    )
}

/// Hex of a compressed public key with the chain's `0x` prefix.
pub fn chain_key(pk: &[u8]) -> String {
    format!("0x{}", hex::encode(pk))
}

/// The bytes of a `0x`-hex public key from the chain.
pub fn key_bytes(what: &str, s: &str) -> ApiResult<Vec<u8>> {
    s.strip_prefix("0x")
        .and_then(|h| hex::decode(h).ok())
        .filter(|b| b.len() == 33)
        .ok_or_else(|| ApiError::bad_gateway(format!("malformed {what} on-chain")))
}

/// An Umbral public key from its `0x`-hex on-chain form.
pub fn chain_public_key(what: &str, s: &str) -> ApiResult<umbral_pre::PublicKey> {
    crate::crypto::threshold::public_key_from_bytes(&key_bytes(what, s)?)
        .map_err(|_| ApiError::bad_gateway(format!("malformed {what} on-chain")))
}

/// The chain's answer to `GetPreGrant`: what a proxy (or the reader's
/// gateway) needs about an access decision and its threshold grant.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PreGrantView {
    pub event_id: String,
    pub record_id: String,
    pub patient_id: String,
    pub actor_org: String,
    pub time_unix: i64,
    /// `allow` or `deny`.
    pub decision: String,
    /// The decision still stands (consent active, record not erased, …).
    pub current: bool,
    pub consent_id: String,
    pub consent_status: String,
    /// CID of the record's sealed key blob (capsule + encrypted DEK).
    pub capsule_ref: String,
    /// `0x`-hex of the patient's Umbral key (the delegating key).
    pub patient_public_key: String,
    pub pre: crate::crypto::threshold::PreGrant,
}

/// The public keys a grant's fragments verify against.
pub struct GrantPublicKeys {
    pub verifying: umbral_pre::PublicKey,
    pub delegating: umbral_pre::PublicKey,
    pub receiving: umbral_pre::PublicKey,
}

impl GrantPublicKeys {
    /// As [`crate::crypto::threshold::GrantKeys`].
    pub fn as_grant_keys(&self) -> crate::crypto::threshold::GrantKeys<'_> {
        crate::crypto::threshold::GrantKeys {
            verifying: &self.verifying,
            delegating: &self.delegating,
            receiving: &self.receiving,
        }
    }
}

impl PreGrantView {
    /// Reads the view of `event_id` as `who` (the gateway's service identity).
    pub async fn load(
        chain: &dyn crate::chain::Chain,
        who: &crate::chain::SigningIdentity,
        event_id: &str,
    ) -> Result<Self, crate::chain::ChainError> {
        let bytes = chain
            .evaluate(
                who,
                "GetPreGrant",
                &serde_json::json!({"event_id": event_id}),
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            crate::chain::ChainError::Other(format!("unexpected GetPreGrant answer: {e}"))
        })
    }

    /// The grant's verifying, delegating and receiving keys.
    pub fn public_keys(&self) -> ApiResult<GrantPublicKeys> {
        GrantPublicKeys::of(&self.pre, &self.patient_public_key)
    }
}

impl GrantPublicKeys {
    /// The keys of an on-chain grant of the patient key `patient_public_key`
    /// (`0x`-hex).
    pub fn of(
        pre: &crate::crypto::threshold::PreGrant,
        patient_public_key: &str,
    ) -> ApiResult<Self> {
        let verifying = pre
            .verifying_key
            .as_deref()
            .ok_or_else(|| ApiError::bad_gateway("the grant has no verifying key on-chain"))?;
        Ok(Self {
            verifying: chain_public_key("verifying key", verifying)?,
            delegating: chain_public_key("patient key", patient_public_key)?,
            receiving: chain_public_key("grantee key", &pre.grantee_public_key)?,
        })
    }
}
