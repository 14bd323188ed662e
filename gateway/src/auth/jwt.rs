//! JWT bearer tokens: the built-in ES256 issuer (embedded mode) and the
//! verifier, which trusts either the built-in key or an external OIDC
//! provider's JWKS (see [`super::jwks`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::jwks::JwksCache;

/// Why a token was rejected. All map to 401; the variant is for logs/tests.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("missing claim")]
    MissingClaim,
    #[error("key set unavailable")]
    KeySet,
}

/// Claims the gateway issues and reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_username: Option<String>,
}

/// A key the verifier trusts: its algorithm is fixed by the key, never by
/// the token.
#[derive(Clone)]
pub struct TrustedKey {
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The built-in issuer: an ES256 key kept (PKCS#8 PEM, mode 0600) in the
/// data dir, generated on first start.
pub struct Issuer {
    issuer: String,
    audience: String,
    ttl_secs: u64,
    kid: String,
    encoding: EncodingKey,
    public_jwk: serde_json::Value,
    trusted: TrustedKey,
}

impl Issuer {
    /// Loads `dir/jwt-es256.pem` or creates it.
    pub fn load_or_create(
        dir: &Path,
        issuer: &str,
        audience: &str,
        ttl_secs: u64,
    ) -> Result<Self, std::io::Error> {
        let path = dir.join("jwt-es256.pem");
        let sk = match std::fs::read_to_string(&path) {
            Ok(pem) => p256::SecretKey::from_pkcs8_pem(&pem)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let sk = random_p256();
                let pem = sk
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                crate::fsutil::write_private(&path, pem.as_bytes())?;
                sk
            }
            Err(e) => return Err(e),
        };
        Self::from_key(&sk, issuer, audience, ttl_secs)
    }

    /// An issuer over a given key (tests).
    pub fn from_key(
        sk: &p256::SecretKey,
        issuer: &str,
        audience: &str,
        ttl_secs: u64,
    ) -> Result<Self, std::io::Error> {
        let der = sk
            .to_pkcs8_der()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let encoding = EncodingKey::from_ec_der(der.as_bytes());
        let point =
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&sk.public_key(), false);
        let (x, y) = match (point.x(), point.y()) {
            (Some(x), Some(y)) => (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y)),
            _ => return Err(std::io::Error::other("bad public key")),
        };
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(point.as_bytes())[..12]);
        let decoding = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_secs,
            public_jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "x": x, "y": y,
                "kid": kid, "alg": "ES256", "use": "sig"
            }),
            kid,
            encoding,
            trusted: TrustedKey {
                alg: Algorithm::ES256,
                key: decoding,
            },
        })
    }

    /// Issues a token for `sub`.
    pub fn issue(
        &self,
        sub: &str,
        username: &str,
    ) -> Result<(String, u64), jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.audience.clone(),
            exp: now + self.ttl_secs,
            nbf: now,
            iat: now,
            preferred_username: Some(username.to_owned()),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok((
            jsonwebtoken::encode(&header, &claims, &self.encoding)?,
            self.ttl_secs,
        ))
    }

    /// The public key as a JWK Set document.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.public_jwk] })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A verifier that trusts exactly this issuer's key.
    pub fn verifier(&self, leeway_secs: u64) -> Verifier {
        let mut keys = HashMap::new();
        keys.insert(self.kid.clone(), self.trusted.clone());
        Verifier::new(
            &self.issuer,
            &self.audience,
            leeway_secs,
            KeySource::Static(Arc::new(keys)),
        )
    }
}

fn random_p256() -> p256::SecretKey {
    loop {
        let mut b = zeroize::Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(b.as_mut());
        if let Ok(sk) = p256::SecretKey::from_slice(b.as_ref()) {
            return sk;
        }
    }
}

/// Where the verifier finds keys.
#[derive(Clone)]
pub enum KeySource {
    /// A fixed set by `kid` (the built-in issuer).
    Static(Arc<HashMap<String, TrustedKey>>),
    /// An external provider's JWKS, fetched and cached.
    Jwks(Arc<JwksCache>),
}

/// Validates bearer tokens.
#[derive(Clone)]
pub struct Verifier {
    issuer: String,
    audience: String,
    leeway: u64,
    keys: KeySource,
}

impl Verifier {
    /// A verifier for tokens from `issuer` meant for `audience`.
    pub fn new(issuer: &str, audience: &str, leeway_secs: u64, keys: KeySource) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: leeway_secs,
            keys,
        }
    }

    /// Checks signature (algorithm fixed by the trusted key), issuer,
    /// audience, expiry and not-before (with the leeway).
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // `alg: none` and other unknown algorithms fail to parse.
            ErrorKind::Json(_) | ErrorKind::InvalidAlgorithmName => AuthError::Algorithm,
            _ => AuthError::Malformed,
        })?;
        let kid = header.kid.as_deref().ok_or(AuthError::UnknownKey)?;
        let trusted = match &self.keys {
            KeySource::Static(m) => m.get(kid).cloned().ok_or(AuthError::UnknownKey)?,
            KeySource::Jwks(cache) => cache.key(kid).await?,
        };
        if header.alg != trusted.alg {
            return Err(AuthError::Algorithm);
        }
        let mut v = Validation::new(trusted.alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<Claims>(token, &trusted.key, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthError::Issuer,
                ErrorKind::InvalidAudience => AuthError::Audience,
                ErrorKind::InvalidSignature => AuthError::Signature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthError::Algorithm
                }
                ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim,
                _ => AuthError::Malformed,
            })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const ISS: &str = "https://issuer.test";
    pub(crate) const AUD: &str = "ehr-gateway";

    fn issuer() -> Issuer {
        Issuer::from_key(&random_p256(), ISS, AUD, 300).unwrap()
    }

    fn b64(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn claims(exp_delta: i64, nbf_delta: i64) -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        serde_json::json!({"iss": ISS, "sub": "u1", "aud": AUD, "exp": now + exp_delta, "nbf": now + nbf_delta, "iat": now})
    }

    /// Signs arbitrary claims with the issuer's key and kid.
    fn sign(iss: &Issuer, c: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(iss.kid.clone());
        jsonwebtoken::encode(&h, c, &iss.encoding).unwrap()
    }

    #[tokio::test]
    async fn issued_token_verifies() {
        let i = issuer();
        let (t, ttl) = i.issue("u1", "alice").unwrap();
        assert_eq!(ttl, 300);
        let c = i.verifier(5).verify(&t).await.unwrap();
        assert_eq!(c.sub, "u1");
        assert_eq!(c.preferred_username.as_deref(), Some("alice"));
    }

    #[tokio::test]
    async fn rejects_alg_none() {
        let i = issuer();
        let t = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": i.kid})),
            b64(&claims(300, 0))
        );
        assert_eq!(i.verifier(5).verify(&t).await, Err(AuthError::Algorithm));
    }

    #[tokio::test]
    async fn rejects_algorithm_confusion_hs256_with_public_key() {
        let i = issuer();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(i.kid.clone());
        // The classic attack: HMAC keyed with the public key's bytes.
        let pubkey = i.public_jwk.to_string();
        for secret in [pubkey.as_bytes(), b"x".as_slice()] {
            let t = jsonwebtoken::encode(&h, &claims(300, 0), &EncodingKey::from_secret(secret))
                .unwrap();
            assert_eq!(i.verifier(5).verify(&t).await, Err(AuthError::Algorithm));
        }
    }

    #[tokio::test]
    async fn rejects_wrong_issuer_audience_and_times() {
        let i = issuer();
        let v = i.verifier(5);
        let mut c = claims(300, 0);
        c["iss"] = "https://evil.test".into();
        assert_eq!(v.verify(&sign(&i, &c)).await, Err(AuthError::Issuer));
        let mut c = claims(300, 0);
        c["aud"] = "other-app".into();
        assert_eq!(v.verify(&sign(&i, &c)).await, Err(AuthError::Audience));
        assert_eq!(
            v.verify(&sign(&i, &claims(-60, -120))).await,
            Err(AuthError::Expired)
        );
        assert_eq!(
            v.verify(&sign(&i, &claims(600, 120))).await,
            Err(AuthError::NotYetValid)
        );
        // Within the leeway both are fine.
        assert!(v.verify(&sign(&i, &claims(-2, 2))).await.is_ok());
        let mut c = claims(300, 0);
        c.as_object_mut().unwrap().remove("sub");
        assert!(matches!(
            v.verify(&sign(&i, &c)).await,
            Err(AuthError::MissingClaim | AuthError::Malformed)
        ));
    }

    #[tokio::test]
    async fn rejects_tampered_payload_and_foreign_key() {
        let i = issuer();
        let v = i.verifier(5);
        let t = sign(&i, &claims(300, 0));
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims(300, 0);
        c["sub"] = "admin".into();
        let tampered = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
        assert_eq!(v.verify(&tampered).await, Err(AuthError::Signature));
        // Same kid, different key.
        let other = issuer();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(i.kid.clone());
        let forged = jsonwebtoken::encode(&h, &claims(300, 0), &other.encoding).unwrap();
        assert_eq!(v.verify(&forged).await, Err(AuthError::Signature));
        assert_eq!(v.verify("not.a.jwt").await, Err(AuthError::Malformed));
        assert_eq!(v.verify("").await, Err(AuthError::Malformed));
    }

    #[tokio::test]
    async fn rejects_unknown_kid_and_missing_kid() {
        let i = issuer();
        let v = i.verifier(5);
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("someone-else".into());
        let t = jsonwebtoken::encode(&h, &claims(300, 0), &i.encoding).unwrap();
        assert_eq!(v.verify(&t).await, Err(AuthError::UnknownKey));
        let h = Header::new(Algorithm::ES256);
        let t = jsonwebtoken::encode(&h, &claims(300, 0), &i.encoding).unwrap();
        assert_eq!(v.verify(&t).await, Err(AuthError::UnknownKey));
    }

    #[test]
    fn key_persists_in_data_dir() {
        let d = tempfile::tempdir().unwrap();
        let a = Issuer::load_or_create(d.path(), ISS, AUD, 60).unwrap();
        let b = Issuer::load_or_create(d.path(), ISS, AUD, 60).unwrap();
        assert_eq!(a.kid(), b.kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.path().join("jwt-es256.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
