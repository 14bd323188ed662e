//! Request extractors: the authenticated caller, JSON bodies whose
//! rejections use the API's error shape, and id validation.

use axum::extract::{FromRef, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::chain::SigningIdentity;
use crate::db::users::User;

/// The authenticated caller: the user row and their signing identity.
pub struct Caller {
    pub user: User,
    pub signer: SigningIdentity,
}

impl<S> FromRequestParts<S> for Caller
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let app = AppState::from_ref(state);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("expected 'Authorization: Bearer <token>'"))?;
        if token.len() > 8192 {
            return Err(ApiError::unauthorized("token too long"));
        }
        let claims = app.verifier.verify(token.trim()).await.map_err(|e| {
            app.metrics.auth_failures.inc();
            tracing::info!(reason = %e, "token rejected");
            ApiError::unauthorized(format!("invalid token: {e}"))
        })?;
        let user = match app.db.user(&claims.sub).await? {
            Some(u) => Some(u),
            None => match &claims.preferred_username {
                Some(name) => app.db.user_by_username(name).await?,
                None => None,
            },
        }
        .ok_or_else(|| ApiError::unauthorized("token subject is not a user of this gateway"))?;
        let row = app
            .db
            .identity(&user.user_id)
            .await?
            .ok_or_else(|| ApiError::forbidden("user has no enrolled identity"))?;
        let signer = crate::identity::signer(&row, &app.kek).map_err(ApiError::internal)?;
        Ok(Caller { user, signer })
    }
}

/// A JSON body; malformed JSON, wrong types and missing fields are 400s
/// (422 for a well-formed body with the wrong shape) in the API's shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::unprocessable(format!(
                "wrong JSON shape: {}",
                e.body_text()
            ))),
            Err(JsonRejection::JsonSyntaxError(_)) => Err(ApiError::bad_request("malformed JSON")),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::bad_request(
                "expected Content-Type: application/json",
            )),
            Err(JsonRejection::BytesRejection(e)) => {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    Err(ApiError::too_large("JSON body too large"))
                } else {
                    Err(ApiError::bad_request("could not read body"))
                }
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Longest id accepted in a path or body.
pub const MAX_ID_LEN: usize = 64;

/// Checks an id (patient, record, consent, event): 1..=64 of
/// `[A-Za-z0-9._-]`, not starting with '.', so path tricks (`..`, `/`, `%2F`)
/// never reach the ledger or the filesystem.
pub fn check_id(kind: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid {kind} id: 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("record", "r-0123abcd").is_ok());
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "a%2Fb",
            ".hidden",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(check_id("record", bad).is_err(), "{bad:?}");
        }
    }
}
