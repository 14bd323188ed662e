//! This org's Umbral key pairs (reader and proxy) and the consortium's,
//! as registered on-chain (`RegisterOrgKeys` / `ListOrgKeys`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};
use thiserror::Error;
use zeroize::Zeroizing;

use super::chain_key;
use crate::api::error::{ApiError, ApiResult};
use crate::chain::{Chain, ChainError, SigningIdentity};
use crate::crypto::kek::Kek;
use crate::crypto::sealer::UmbralKeyPair;
use crate::db::proxy::KeyPurpose;
use crate::db::{Db, DbError};

/// Errors loading or creating org keys.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("sealed org key: {0}")]
    Kek(#[from] crate::crypto::kek::KekError),
    #[error("org key: {0}")]
    Seal(#[from] crate::crypto::sealer::SealError),
    #[error("stored org key {0} does not match its secret")]
    Mismatch(String),
}

/// This org's active key pairs.
pub struct OrgKeys {
    /// Grants to this org are made to this key.
    pub reader: UmbralKeyPair,
    /// Kfrags for this org as a proxy are sealed to this key.
    pub proxy: UmbralKeyPair,
}

fn kek_ctx(purpose: KeyPurpose, public_hex: &str) -> String {
    format!("orgkey:{}:{public_hex}", purpose.as_str())
}

/// Unseals a stored pair and checks it is the pair it claims to be.
fn unseal(
    kek: &Kek,
    purpose: KeyPurpose,
    public_hex: &str,
    sealed: &[u8],
) -> Result<UmbralKeyPair, KeyError> {
    let seed: Zeroizing<Vec<u8>> = kek.open(&kek_ctx(purpose, public_hex), sealed)?;
    let pair = UmbralKeyPair::from_seed(seed)?;
    if hex::encode(&pair.public) != public_hex {
        return Err(KeyError::Mismatch(public_hex.to_owned()));
    }
    Ok(pair)
}

async fn load_or_create_one(
    db: &Db,
    kek: &Kek,
    purpose: KeyPurpose,
) -> Result<UmbralKeyPair, KeyError> {
    if let Some(row) = db.active_org_key(purpose).await? {
        return unseal(kek, purpose, &row.public_key, &row.secret_sealed);
    }
    let pair = UmbralKeyPair::generate()?;
    let public_hex = hex::encode(&pair.public);
    db.put_org_key(
        purpose,
        &public_hex,
        &kek.seal(&kek_ctx(purpose, &public_hex), &pair.secret),
    )
    .await?;
    tracing::info!(purpose = purpose.as_str(), public_key = %public_hex, "created an org Umbral key pair");
    Ok(pair)
}

impl OrgKeys {
    /// Loads this org's active pairs, creating them on first start.
    pub async fn load_or_create(db: &Db, kek: &Kek) -> Result<Self, KeyError> {
        Ok(Self {
            reader: load_or_create_one(db, kek, KeyPurpose::Reader).await?,
            proxy: load_or_create_one(db, kek, KeyPurpose::Proxy).await?,
        })
    }
}

/// The secret key of this org's `purpose` pair whose public key is
/// `public_hex` (hex, no prefix): the active pair from memory, an older one
/// (that grants may still name) from the database; `None` if there is none.
pub async fn secret_for(
    app: &crate::api::AppState,
    purpose: KeyPurpose,
    public_hex: &str,
) -> ApiResult<Option<umbral_pre::SecretKey>> {
    let active = match purpose {
        KeyPurpose::Reader => &app.proxy.keys.reader,
        KeyPurpose::Proxy => &app.proxy.keys.proxy,
    };
    if hex::encode(&active.public) == public_hex {
        return active.secret_key().map(Some).map_err(ApiError::internal);
    }
    match pair_for(&app.db, &app.kek, purpose, public_hex).await? {
        Some(p) => p.secret_key().map(Some).map_err(ApiError::internal),
        None => Ok(None),
    }
}

/// A stored pair of `purpose` by public key (hex, no prefix).
async fn pair_for(
    db: &Db,
    kek: &Kek,
    purpose: KeyPurpose,
    public_hex: &str,
) -> ApiResult<Option<UmbralKeyPair>> {
    let Some(row) = db.org_key(purpose, public_hex).await? else {
        return Ok(None);
    };
    unseal(kek, purpose, &row.public_key, &row.secret_sealed)
        .map(Some)
        .map_err(ApiError::internal)
}

/// Registers this org's public keys on-chain unless the ledger already has
/// exactly these (read first: no transaction, no block, on a plain restart).
pub async fn register(
    chain: &dyn Chain,
    service: &SigningIdentity,
    keys: &OrgKeys,
) -> Result<(), ChainError> {
    register_public(chain, service, &keys.reader.public, &keys.proxy.public).await
}

async fn register_public(
    chain: &dyn Chain,
    service: &SigningIdentity,
    reader: &[u8],
    proxy: &[u8],
) -> Result<(), ChainError> {
    let (reader, proxy) = (chain_key(reader), chain_key(proxy));
    match chain
        .evaluate(service, "GetOrgKeys", &json!({"org": service.msp_id()}))
        .await
    {
        Ok(bytes) => {
            if let Ok(k) = serde_json::from_slice::<RegisteredKeys>(&bytes)
                && k.reader_public_key == reader
                && k.proxy_public_key == proxy
            {
                return Ok(());
            }
        }
        Err(ChainError::Rejected { status: 404, .. }) => {}
        Err(e) => return Err(e),
    }
    chain
        .submit(
            service,
            "RegisterOrgKeys",
            &json!({"reader_public_key": reader, "proxy_public_key": proxy}),
        )
        .await
        .map(|_| ())
}

/// Registers the keys, retrying until the ledger takes them (or `stop`).
pub async fn register_until_done(
    chain: std::sync::Arc<dyn Chain>,
    service: SigningIdentity,
    reader: Vec<u8>,
    proxy: Vec<u8>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match register_public(chain.as_ref(), &service, &reader, &proxy).await {
            Ok(()) => {
                tracing::info!("org keys registered on-chain");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "registering the org keys failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}

/// One org's registered keys.
#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredKeys {
    pub org: String,
    /// `0x`-hex.
    pub reader_public_key: String,
    /// `0x`-hex.
    pub proxy_public_key: String,
}

/// Every org's registered keys, by org.
pub async fn consortium(
    chain: &dyn Chain,
    as_who: &SigningIdentity,
) -> ApiResult<BTreeMap<String, RegisteredKeys>> {
    let mut out = BTreeMap::new();
    let mut bookmark: Option<String> = None;
    loop {
        let mut args = json!({"limit": 100});
        if let Some(b) = &bookmark {
            args["bookmark"] = Value::String(b.clone());
        }
        let page: Value =
            serde_json::from_slice(&chain.evaluate(as_who, "ListOrgKeys", &args).await?)
                .map_err(|_| ApiError::bad_gateway("unexpected ListOrgKeys answer"))?;
        let orgs: Vec<RegisteredKeys> =
            serde_json::from_value(page.get("orgs").cloned().unwrap_or(Value::Null))
                .map_err(|_| ApiError::bad_gateway("unexpected ListOrgKeys answer"))?;
        for k in orgs {
            out.insert(k.org.clone(), k);
        }
        match page.get("bookmark").and_then(Value::as_str) {
            Some(b) if !b.is_empty() => bookmark = Some(b.to_owned()),
            _ => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testdb;

    #[tokio::test]
    async fn keys_persist_are_sealed_and_bound_to_their_row() {
        let (db, _d) = testdb::sqlite().await;
        let kek = Kek::from_bytes(&[7; 32]);
        let k1 = OrgKeys::load_or_create(&db, &kek).await.unwrap();
        let k2 = OrgKeys::load_or_create(&db, &kek).await.unwrap();
        assert_eq!(k1.reader.public, k2.reader.public);
        assert_eq!(k1.proxy.public, k2.proxy.public);
        assert_ne!(k1.reader.public, k1.proxy.public);
        // The stored secret is not the seed, and another KEK cannot open it.
        let row = db.active_org_key(KeyPurpose::Proxy).await.unwrap().unwrap();
        assert!(
            !row.secret_sealed
                .windows(k1.proxy.secret.len())
                .any(|w| w == k1.proxy.secret.as_slice())
        );
        assert!(
            OrgKeys::load_or_create(&db, &Kek::from_bytes(&[8; 32]))
                .await
                .is_err()
        );
        // A pair is found by its public key and purpose only.
        let hexp = hex::encode(&k1.proxy.public);
        assert!(
            pair_for(&db, &kek, KeyPurpose::Proxy, &hexp)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            pair_for(&db, &kek, KeyPurpose::Reader, &hexp)
                .await
                .unwrap()
                .is_none()
        );
    }
}
