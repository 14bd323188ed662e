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
