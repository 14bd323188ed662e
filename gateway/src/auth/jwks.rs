//! An external OIDC provider's JSON Web Key Set, fetched with reqwest and
//! cached. An unknown `kid` triggers a refetch (key rotation), at most once
//! per `min_refetch` so a flood of bogus kids cannot hammer the provider.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::Mutex;

use super::jwt::{AuthError, TrustedKey};

struct State {
    keys: HashMap<String, TrustedKey>,
    fetched_at: Option<Instant>,
    fetches: u64,
}

/// A cached JWKS.
pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    ttl: Duration,
    min_refetch: Duration,
    state: Mutex<State>,
}

/// The algorithm a JWK may be used with: asymmetric only, and fixed by the
/// key (its `alg`, else its type), never by the token.
fn key_alg(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        // Symmetric keys are never trusted from a key set.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => by_type,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::ES384) => Algorithm::ES384,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::RS384) => Algorithm::RS384,
        Some(KeyAlgorithm::RS512) => Algorithm::RS512,
        Some(KeyAlgorithm::PS256) => Algorithm::PS256,
        Some(KeyAlgorithm::PS384) => Algorithm::PS384,
        Some(KeyAlgorithm::PS512) => Algorithm::PS512,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(_) => return None,
    };
    // The declared alg must fit the key type.
    let fits = matches!(
        (&jwk.algorithm, alg),
        (
            AlgorithmParameters::EllipticCurve(_),
            Algorithm::ES256 | Algorithm::ES384
        ) | (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (AlgorithmParameters::OctetKeyPair(_), Algorithm::EdDSA)
    );
    fits.then_some(alg)
}

impl JwksCache {
    /// A cache of the key set at `url`.
    pub fn new(url: &str, client: reqwest::Client, ttl: Duration, min_refetch: Duration) -> Self {
        Self {
            url: url.to_owned(),
            client,
            ttl,
            min_refetch,
            state: Mutex::new(State {
                keys: HashMap::new(),
                fetched_at: None,
                fetches: 0,
            }),
        }
    }

    /// How many times the set was fetched (metrics, tests).
    pub async fn fetch_count(&self) -> u64 {
        self.state.lock().await.fetches
    }

    /// The trusted key for `kid`, fetching the set when it is stale or the
    /// kid is unknown (rate limited).
    pub async fn key(&self, kid: &str) -> Result<TrustedKey, AuthError> {
        let mut st = self.state.lock().await;
        let stale = st.fetched_at.is_none_or(|t| t.elapsed() >= self.ttl);
        let may_refetch = st
            .fetched_at
            .is_none_or(|t| t.elapsed() >= self.min_refetch);
        if stale || (!st.keys.contains_key(kid) && may_refetch) {
            match self.fetch().await {
                Ok(keys) => {
                    st.keys = keys;
                    st.fetched_at = Some(Instant::now());
                    st.fetches += 1;
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed");
                    // Keep serving cached keys; remember the attempt.
                    if st.fetched_at.is_none() && st.keys.is_empty() {
                        return Err(AuthError::KeySet);
                    }
                    st.fetched_at = Some(Instant::now());
                }
            }
        }
        st.keys.get(kid).cloned().ok_or(AuthError::UnknownKey)
    }

    async fn fetch(&self) -> Result<HashMap<String, TrustedKey>, reqwest::Error> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), key_alg(jwk)) else {
                continue;
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, TrustedKey { alg, key });
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::{Json, Router, extract::State as AxState, routing::get};
    use jsonwebtoken::{EncodingKey, Header};

    use super::*;
    use crate::auth::jwt::tests::{AUD, ISS};
    use crate::auth::jwt::{Issuer, KeySource, Verifier};

    fn p256() -> p256::SecretKey {
        loop {
            let b: [u8; 32] = rand::random();
            if let Ok(k) = p256::SecretKey::from_slice(&b) {
                return k;
            }
        }
    }

    type IdpState = (
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
        Arc<Vec<serde_json::Value>>,
    );

    /// A real JWKS endpoint on 127.0.0.1 serving key set `served[idx]`.
    struct Idp {
        url: String,
        which: Arc<AtomicUsize>,
        hits: Arc<AtomicUsize>,
    }

    async fn idp(sets: Vec<serde_json::Value>) -> Idp {
        let which = Arc::new(AtomicUsize::new(0));
        let hits = Arc::new(AtomicUsize::new(0));
        let sets = Arc::new(sets);
        let st = (which.clone(), hits.clone(), sets);
        let app = Router::new()
            .route(
                "/jwks.json",
                get(|AxState((w, h, s)): AxState<IdpState>| async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    Json(s[w.load(Ordering::SeqCst)].clone())
                }),
            )
            .with_state(st);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Idp { url, which, hits }
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder().build().unwrap()
    }

    fn verifier(url: &str, min_refetch: Duration) -> (Verifier, Arc<JwksCache>) {
        let cache = Arc::new(JwksCache::new(
            url,
            client(),
            Duration::from_secs(300),
            min_refetch,
        ));
        (
            Verifier::new(ISS, AUD, 5, KeySource::Jwks(cache.clone())),
            cache,
        )
    }

    #[tokio::test]
    async fn verifies_via_jwks_and_follows_rotation() {
        let k1 = Issuer::from_key(&p256(), ISS, AUD, 300).unwrap();
        let k2 = Issuer::from_key(&p256(), ISS, AUD, 300).unwrap();
        let idp = idp(vec![k1.jwks(), k2.jwks()]).await;
        let (v, cache) = verifier(&idp.url, Duration::from_millis(0));
        let (t1, _) = k1.issue("u1", "a").unwrap();
        assert_eq!(v.verify(&t1).await.unwrap().sub, "u1");
        // Cached: no second fetch for a known kid.
        v.verify(&t1).await.unwrap();
        assert_eq!(cache.fetch_count().await, 1);
        // The provider rotates to k2; a token with the new kid triggers a refetch.
        idp.which.store(1, Ordering::SeqCst);
        let (t2, _) = k2.issue("u2", "b").unwrap();
        assert_eq!(v.verify(&t2).await.unwrap().sub, "u2");
        assert_eq!(cache.fetch_count().await, 2);
        // k1 is gone from the set now.
        assert_eq!(v.verify(&t1).await, Err(AuthError::UnknownKey));
    }

    #[tokio::test]
    async fn unknown_kid_is_rejected_and_refetch_is_rate_limited() {
        let k1 = Issuer::from_key(&p256(), ISS, AUD, 300).unwrap();
        let stranger = Issuer::from_key(&p256(), ISS, AUD, 300).unwrap();
        let idp = idp(vec![k1.jwks()]).await;
        let (v, _) = verifier(&idp.url, Duration::from_secs(3600));
        let (t, _) = stranger.issue("u1", "a").unwrap();
        for _ in 0..20 {
            assert_eq!(v.verify(&t).await, Err(AuthError::UnknownKey));
        }
        assert_eq!(
            idp.hits.load(Ordering::SeqCst),
            1,
            "one fetch despite 20 unknown kids"
        );
    }

    #[tokio::test]
    async fn jwks_rejections() {
        let k1 = Issuer::from_key(&p256(), ISS, AUD, 300).unwrap();
        let idp = idp(vec![k1.jwks()]).await;
        let (v, _) = verifier(&idp.url, Duration::from_secs(3600));
        // HS256 keyed with the JWK's bytes, claiming the real kid.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(k1.kid().to_owned());
        let now = jsonwebtoken::get_current_timestamp();
        let c =
            serde_json::json!({"iss": ISS, "sub": "u", "aud": AUD, "exp": now + 60, "nbf": now});
        let t = jsonwebtoken::encode(
            &h,
            &c,
            &EncodingKey::from_secret(k1.jwks().to_string().as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(&t).await, Err(AuthError::Algorithm));
        // Wrong issuer / audience through the JWKS path too.
        let other_iss = Issuer::from_key(&p256(), "https://evil.test", AUD, 300).unwrap();
        let idp2 = idp_with(&other_iss).await;
        let (v2, _) = verifier(&idp2, Duration::from_secs(3600));
        let (t, _) = other_iss.issue("u", "u").unwrap();
        assert_eq!(v2.verify(&t).await, Err(AuthError::Issuer));
        let other_aud = Issuer::from_key(&p256(), ISS, "someone-else", 300).unwrap();
        let idp3 = idp_with(&other_aud).await;
        let (v3, _) = verifier(&idp3, Duration::from_secs(3600));
        let (t, _) = other_aud.issue("u", "u").unwrap();
        assert_eq!(v3.verify(&t).await, Err(AuthError::Audience));
    }

    async fn idp_with(i: &Issuer) -> String {
        idp(vec![i.jwks()]).await.url
    }

    #[tokio::test]
    async fn unreachable_jwks_is_a_key_set_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
        drop(l);
        let (v, _) = verifier(&url, Duration::from_secs(1));
        let k = Issuer::from_key(&p256(), ISS, AUD, 300).unwrap();
        let (t, _) = k.issue("u", "u").unwrap();
        assert_eq!(v.verify(&t).await, Err(AuthError::KeySet));
    }

    #[test]
    fn symmetric_jwks_keys_are_never_trusted() {
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(
            serde_json::json!({"kty": "oct", "k": "c2VjcmV0", "kid": "x", "alg": "HS256"}),
        )
        .unwrap();
        assert_eq!(key_alg(&jwk), None);
    }
}
