//! Production mode: tokens come from an external OIDC provider (a real
//! HTTP server on 127.0.0.1 serving its JWKS); the gateways validate issuer,
//! audience, expiry and signature, map the token to the enrolled user, and
//! the built-in issuer is off.

use anyhow::Result;
use axum::{Json, Router, routing::get};
use ehr_gateway::auth::jwt::Issuer;
use ehr_gateway::config::OidcConfig;
use ehr_tests::{Net, error_code};
use serde_json::Value;

const ISS: &str = "https://idp.example.test";
const AUD: &str = "ehrchain";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn external_idp_tokens_are_validated_and_mapped_to_users() -> Result<()> {
    let idp_dir = tempfile::tempdir()?;
    let idp = Issuer::load_or_create(idp_dir.path(), ISS, AUD, 300)?;
    let rogue_dir = tempfile::tempdir()?;
    let rogue = Issuer::load_or_create(rogue_dir.path(), ISS, AUD, 300)?;
    let jwks = idp.jwks();
    let app = Router::new().route("/jwks.json", get(move || async move { Json(jwks) }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let jwks_url = format!("http://{}/jwks.json", l.local_addr()?);
    tokio::spawn(async move { axum::serve(l, app).await });

    let net = Net::start_oidc(OidcConfig {
        issuer: ISS.into(),
        audience: AUD.into(),
        jwks_url,
    })
    .await?;
    let api = net.api("hospital-a");

    // A token from the provider for an enrolled user (mapped by username).
    let (token, _) = idp.issue("idp-subject-123", "patient-a")?;
    let me: Value = net
        .http
        .get(format!("{api}/me"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(me["username"], "patient-a", "{me}");
    assert_eq!(me["role"], "patient");

    // Same claims, signed by a key the provider does not publish: 401.
    let (forged, _) = rogue.issue("idp-subject-123", "patient-a")?;
    let r = net
        .http
        .get(format!("{api}/me"))
        .bearer_auth(&forged)
        .send()
        .await?;
    assert_eq!(error_code(r).await?, (401, "unauthorized".to_owned()));

    // A valid token for someone who is not a user here: 401.
    let (stranger, _) = idp.issue("nobody", "nobody")?;
    let r = net
        .http
        .get(format!("{api}/me"))
        .bearer_auth(&stranger)
        .send()
        .await?;
    assert_eq!(error_code(r).await?.0, 401);

    // The built-in issuer is off.
    let r = net
        .http
        .post(format!("{api}/auth/token"))
        .json(&serde_json::json!({"username": "patient-a", "password": "demo-password"}))
        .send()
        .await?;
    assert_eq!(error_code(r).await?.0, 400);
    net.stop().await
}
