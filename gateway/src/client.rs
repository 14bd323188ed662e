//! The `ehr` commands that act through a running gateway's REST API.

use anyhow::Context;

/// `ehr erase`: asks the record's home gateway to crypto-shred it
/// (`DELETE /api/v1/records/{id}/content`); returns the gateway's answer.
pub async fn erase(
    gateway: &str,
    token: &str,
    record_id: &str,
) -> anyhow::Result<serde_json::Value> {
    crate::api::extract::check_id("record", record_id).map_err(|e| anyhow::anyhow!(e.message))?;
    let url = format!(
        "{}/api/v1/records/{record_id}/content",
        gateway.trim_end_matches('/')
    );
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()?
        .delete(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "erase failed ({status}): {body}");
    serde_json::from_str(&body).with_context(|| format!("unexpected answer from {url}"))
}

fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()?)
}

async fn json_of(resp: reqwest::Response, what: &str) -> anyhow::Result<serde_json::Value> {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{what} failed ({status}): {body}");
    serde_json::from_str(&body).with_context(|| format!("unexpected answer to {what}"))
}

/// `ehr key export`: signs in as a patient and exports their Umbral key.
pub async fn export_key(
    gateway: &str,
    username: &str,
    password: &str,
) -> anyhow::Result<crate::api::keys::ExportedKey> {
    let base = format!("{}/api/v1", gateway.trim_end_matches('/'));
    let c = http()?;
    let tok = json_of(
        c.post(format!("{base}/auth/token"))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .with_context(|| format!("calling {base}"))?,
        "signing in",
    )
    .await?;
    let token = tok["access_token"].as_str().context("no access_token")?;
    let v = json_of(
        c.post(format!("{base}/me/key/export"))
            .bearer_auth(token)
            .json(&serde_json::json!({"password": password}))
            .send()
            .await?,
        "key export",
    )
    .await?;
    Ok(serde_json::from_value(v)?)
}

/// `ehr key grant`: the patient's own client makes the threshold grant
/// with the patient's exported key — kfrags to the grantee org's
/// registered reader key, sealed to `shares` proxy orgs (the grantee org
/// last), any `threshold` of which open a record — and submits the consent
/// (`consent` is the body of `POST /patients/{id}/consents`).
pub async fn grant_with_own_key(
    gateway: &str,
    token: &str,
    key: &crate::api::keys::ExportedKey,
    mut consent: serde_json::Value,
    threshold: u32,
    shares: u32,
) -> anyhow::Result<serde_json::Value> {
    use crate::crypto::sealer::UmbralKeyPair;
    use crate::crypto::threshold::{ProxyKey, ThresholdGrant, secret_key_of};
    use base64::Engine;
    let base = format!("{}/api/v1", gateway.trim_end_matches('/'));
    let grantee_org = consent["grantee"]["org"]
        .as_str()
        .context("the consent's grantee must name an org (grantee.org)")?
        .to_owned();
    let c = http()?;
    let orgs = json_of(
        c.get(format!("{base}/orgs/keys"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("calling {base}"))?,
        "reading the org keys",
    )
    .await?;
    let registered: std::collections::BTreeMap<String, crate::proxy::keys::RegisteredKeys> =
        serde_json::from_value::<Vec<crate::proxy::keys::RegisteredKeys>>(orgs["orgs"].clone())?
            .into_iter()
            .map(|k| (k.org.clone(), k))
            .collect();
    let proxies =
        crate::proxy::grantor::choose_proxies(&registered, &grantee_org, None, shares as usize)
            .map_err(|e| anyhow::anyhow!(e.message))?;
    let pk = |s: &str| -> anyhow::Result<umbral_pre::PublicKey> {
        crate::proxy::chain_public_key("key", s).map_err(|e| anyhow::anyhow!(e.message))
    };
    let grantee = registered
        .get(&grantee_org)
        .with_context(|| format!("{grantee_org} has not registered its keys"))?;
    let mut proxy_keys = Vec::new();
    for p in &proxies {
        proxy_keys.push(ProxyKey {
            org: p.clone(),
            public_key: pk(&registered[p].proxy_public_key)?,
        });
    }
    let seed =
        zeroize::Zeroizing::new(hex::decode(&key.secret_seed).context("secret_seed is not hex")?);
    let pair = UmbralKeyPair::from_seed(seed)?;
    anyhow::ensure!(
        crate::proxy::chain_key(&pair.public) == key.public_key,
        "the key file's secret does not match its public key"
    );
    let grant = ThresholdGrant::generate(
        &secret_key_of(&pair)?,
        &pair.signer()?,
        &pk(&grantee.reader_public_key)?,
        &proxy_keys,
        threshold as usize,
    )?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let sealed: Vec<serde_json::Value> = grant
        .sealed_kfrags
        .iter()
        .map(|s| {
            serde_json::json!({
                "org": s.org,
                "capsule": b64.encode(&s.ciphertext.capsule),
                "ciphertext": b64.encode(&s.ciphertext.ciphertext),
            })
        })
        .collect();
    consent["key_grant"] = serde_json::json!({"pre": grant.metadata, "sealed_kfrags": sealed});
    json_of(
        c.post(format!("{base}/patients/{}/consents", key.patient_id))
            .bearer_auth(token)
            .json(&consent)
            .send()
            .await?,
        "granting",
    )
    .await
}
