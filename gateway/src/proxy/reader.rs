//! Reader side: after an allowed decision of this org, get the record's DEK
//! by threshold re-encryption (ask every proxy of the grant at once, verify
//! each cfrag, keep the first t good ones), or from the patient's custodian
//! for a decision without a threshold grant (break-glass).

use ehr_proto::ehr::proxy::v1::key_proxy_client::KeyProxyClient;
use ehr_proto::ehr::proxy::v1::{CfragResponse, ReencryptRequest, ReleaseRequest};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::{PreGrantView, key_bytes, wire};
use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::chain::ChainError;
use crate::crypto::sealer::SealedKey;
use crate::crypto::stream::Dek;
use crate::crypto::threshold::{
    Collector, GrantKeys, ProxyCfrag, capsule_of, decrypt_reencrypted, secret_key_of,
};
use crate::db::proxy::KeyPurpose;

/// Why one proxy gave no cfrag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyFailure {
    /// Not reachable, timed out, or no address known.
    Down(String),
    /// It refused (the decision is not current for it, or it holds no kfrag).
    Refused(String),
    /// Its cfrag failed verification.
    Bad(String),
}

/// The outcome of asking every proxy, for logs and errors.
fn summarise(failures: &[(String, ProxyFailure)]) -> String {
    let list = |f: fn(&ProxyFailure) -> Option<&String>| {
        failures
            .iter()
            .filter_map(|(org, e)| f(e).map(|why| format!("{org} ({why})")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    for (label, l) in [
        (
            "unreachable",
            list(|e| match e {
                ProxyFailure::Down(w) => Some(w),
                _ => None,
            }),
        ),
        (
            "refused",
            list(|e| match e {
                ProxyFailure::Refused(w) => Some(w),
                _ => None,
            }),
        ),
        (
            "bad cfrag",
            list(|e| match e {
                ProxyFailure::Bad(w) => Some(w),
                _ => None,
            }),
        ),
    ] {
        if !l.is_empty() {
            parts.push(format!("{label}: {l}"));
        }
    }
    parts.join("; ")
}

fn failure_of(status: &tonic::Status) -> ProxyFailure {
    use tonic::Code;
    let msg = status.message().chars().take(200).collect::<String>();
    match status.code() {
        Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::Unauthenticated
        | Code::InvalidArgument
        | Code::NotFound => ProxyFailure::Refused(msg),
        // The channel's own deadline (tonic reports it as Cancelled).
        Code::DeadlineExceeded | Code::Cancelled => ProxyFailure::Down("timed out".into()),
        _ => ProxyFailure::Down(format!("{:?}: {msg}", status.code())),
    }
}

/// Calls `org`'s gateway with a signed request, within the proxy timeout.
async fn call_proxy(
    app: &AppState,
    org: &str,
    method: &'static str,
    event_id: &str,
    record_id: &str,
) -> Result<CfragResponse, ProxyFailure> {
    let url = app
        .cfg
        .peers
        .get(org)
        .ok_or_else(|| ProxyFailure::Down("no gateway address configured".into()))?;
    let channel = app
        .proxy
        .channel(url)
        .map_err(|e| ProxyFailure::Down(e.message))?;
    let mut client = KeyProxyClient::new(channel);
    let header = Some(wire::header(method, org));
    let fut = async {
        match method {
            "Release" => {
                let m = ReleaseRequest {
                    header,
                    event_id: event_id.to_owned(),
                    record_id: record_id.to_owned(),
                };
                client.release(wire::sign(&app.service, method, &m)).await
            }
            _ => {
                let m = ReencryptRequest {
                    header,
                    event_id: event_id.to_owned(),
                    record_id: record_id.to_owned(),
                };
                client.reencrypt(wire::sign(&app.service, method, &m)).await
            }
        }
    };
    match tokio::time::timeout(app.proxy.settings.timeout, fut).await {
        Err(_) => Err(ProxyFailure::Down("timed out".into())),
        Ok(Err(status)) => Err(failure_of(&status)),
        Ok(Ok(r)) => Ok(r.into_inner()),
    }
}

/// The DEK of a record this org was just allowed to read (`event_id`), for
/// a patient whose key this gateway does not hold.
pub async fn dek(
    app: &AppState,
    event_id: &str,
    record_id: &str,
    patient_id: &str,
    sealed: &SealedKey,
) -> ApiResult<Dek> {
    match PreGrantView::load(app.chain.as_ref(), &app.service, event_id).await {
        Ok(g) => threshold_dek(app, &g, sealed).await,
        // No threshold grant behind this decision (break-glass, or a
        // consent not bound to one org): the patient's custodian.
        Err(ChainError::Rejected { status: 409, .. }) => {
            custodian_dek(app, event_id, record_id, patient_id, sealed).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The secret of the reader key a grant was made to.
async fn reader_secret(app: &AppState, grantee_key: &str) -> ApiResult<umbral_pre::SecretKey> {
    let hexk = hex::encode(key_bytes("grantee key", grantee_key)?);
    super::keys::secret_for(app, KeyPurpose::Reader, &hexk)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(
                "the grant was made to a reader key this gateway does not hold (rotated or another org's)",
            )
        })
}

/// t of n proxies.
async fn threshold_dek(app: &AppState, g: &PreGrantView, sealed: &SealedKey) -> ApiResult<Dek> {
    let reader_sk = reader_secret(app, &g.pre.grantee_public_key).await?;
    let keys = g.public_keys()?;
    let capsule =
        capsule_of(sealed).map_err(|_| ApiError::bad_gateway("malformed sealed key blob"))?;
    let t = g.pre.threshold as usize;
    let mut collector = Collector::new(&capsule, keys.as_grant_keys(), &g.pre.proxies, t)
        .map_err(|e| ApiError::bad_gateway(format!("unusable grant on-chain: {e}")))?;
    let mut calls: FuturesUnordered<_> = g
        .pre
        .proxies
        .iter()
        .map(|org| async move {
            (
                org.clone(),
                call_proxy(app, org, "Reencrypt", &g.event_id, &g.record_id).await,
            )
        })
        .collect();
    let mut failures: Vec<(String, ProxyFailure)> = Vec::new();
    while let Some((org, res)) = calls.next().await {
        match res {
            Ok(r) => {
                if let Err(e) = collector.offer(ProxyCfrag {
                    org: org.clone(),
                    cfrag: r.cfrag,
                }) {
                    tracing::warn!(proxy = %org, error = %e, "refused a capsule fragment");
                    app.metrics
                        .bad_cfrags
                        .get_or_create(&crate::metrics::PeerLabels { proxy: org.clone() })
                        .inc();
                    failures.push((org, ProxyFailure::Bad(e.to_string())));
                }
            }
            Err(f) => {
                tracing::warn!(proxy = %org, failure = ?f, "proxy gave no capsule fragment");
                failures.push((org, f));
            }
        }
        if collector.is_complete() {
            break;
        }
    }
    // Dropping the rest cancels the calls still in flight.
    drop(calls);
    if !collector.is_complete() {
        let n = g.pre.proxies.len();
        let refused = failures
            .iter()
            .filter(|(_, f)| matches!(f, ProxyFailure::Refused(_)))
            .count();
        let detail = summarise(&failures);
        // More refusals than the grant can spare: the proxies say no.
        return Err(if refused > n - t {
            ApiError::forbidden(format!("the proxies refused to re-encrypt ({detail})"))
        } else {
            ApiError::unavailable(format!(
                "{t} of {n} key proxies are needed and fewer answered correctly ({detail})"
            ))
        });
    }
    let collected = collector
        .finish()
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let used: Vec<&str> = collected.verified.iter().map(|(o, _)| o.as_str()).collect();
    tracing::info!(event_id = %g.event_id, proxies = ?used, "record key opened from re-encrypted fragments");
    decrypt_reencrypted(
        &reader_sk,
        &keys.delegating,
        &capsule,
        &collected,
        &sealed.ciphertext,
    )
    .map_err(|e| ApiError::bad_gateway(format!("opening the re-encrypted key: {e}")))
}

/// The patient's home gateway re-encrypts for this decision.
async fn custodian_dek(
    app: &AppState,
    event_id: &str,
    record_id: &str,
    patient_id: &str,
    sealed: &SealedKey,
) -> ApiResult<Dek> {
    let patient = super::patient_on_chain(app, patient_id).await?;
    let home = patient["home_org"].as_str().unwrap_or_default().to_owned();
    let patient_pk = super::chain_public_key(
        "patient key",
        patient["pre_public_key"].as_str().unwrap_or_default(),
    )?;
    let r = call_proxy(app, &home, "Release", event_id, record_id)
        .await
        .map_err(|f| match f {
            ProxyFailure::Refused(w) => ApiError::forbidden(format!(
                "the patient's home organisation refused key release: {w}"
            )),
            other => ApiError::unavailable(format!(
                "the patient's home gateway ({home}) is unavailable: {}",
                summarise(&[(home.clone(), other)])
            )),
        })?;
    let verifying = crate::crypto::threshold::public_key_from_bytes(&r.verifying_key)
        .map_err(|_| ApiError::bad_gateway("malformed key release answer"))?;
    let reader = &app.proxy.keys.reader;
    let reader_sk = secret_key_of(reader).map_err(ApiError::internal)?;
    let reader_pk = reader_sk.public_key();
    let capsule =
        capsule_of(sealed).map_err(|_| ApiError::bad_gateway("malformed sealed key blob"))?;
    let proxies = [home.clone()];
    let mut c = Collector::new(
        &capsule,
        GrantKeys {
            verifying: &verifying,
            delegating: &patient_pk,
            receiving: &reader_pk,
        },
        &proxies,
        1,
    )
    .map_err(ApiError::internal)?;
    c.offer(ProxyCfrag {
        org: home.clone(),
        cfrag: r.cfrag,
    })
    .map_err(|e| ApiError::bad_gateway(format!("the custodian's capsule fragment: {e}")))?;
    let collected = c
        .finish()
        .map_err(|e| ApiError::bad_gateway(e.to_string()))?;
    decrypt_reencrypted(
        &reader_sk,
        &patient_pk,
        &capsule,
        &collected,
        &sealed.ciphertext,
    )
    .map_err(|e| ApiError::bad_gateway(format!("opening the re-encrypted key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_summarised_and_classified() {
        let f = vec![
            ("org-a".to_owned(), ProxyFailure::Down("timed out".into())),
            ("org-b".to_owned(), ProxyFailure::Refused("revoked".into())),
            (
                "org-c".to_owned(),
                ProxyFailure::Bad("cfrag failed verification".into()),
            ),
        ];
        assert_eq!(
            summarise(&f),
            "unreachable: org-a (timed out); refused: org-b (revoked); bad cfrag: org-c (cfrag failed verification)"
        );
        assert!(matches!(
            failure_of(&tonic::Status::permission_denied("no")),
            ProxyFailure::Refused(_)
        ));
        assert!(matches!(
            failure_of(&tonic::Status::unavailable("down")),
            ProxyFailure::Down(_)
        ));
    }
}
