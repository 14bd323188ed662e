//! The contract's errors and how they become a Fabric response.
//!
//! A rejected call returns a status >= 400 (so the peer fails endorsement
//! and nothing is written) and `Response.message` is JSON
//! `{"code":"...","message":"..."}` with one of the stable codes below.

use serde::Serialize;
use thiserror::Error;

use crate::Response;
use crate::identity::IdentityError;
use crate::stub::StubError;

/// A rejected call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContractError {
    /// Malformed or semantically invalid input (400).
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller may not do this (403), including unusable identities.
    #[error("{0}")]
    Forbidden(String),
    /// An id that does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// A duplicate or a state that forbids the change (409).
    #[error("{0}")]
    Conflict(String),
    /// The host failed or stored data is corrupt (500).
    #[error("{0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl ContractError {
    /// Shorthand for [`ContractError::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
    /// Shorthand for [`ContractError::Forbidden`].
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::Forbidden(msg.into())
    }
    /// Shorthand for [`ContractError::NotFound`].
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }
    /// Shorthand for [`ContractError::Conflict`].
    pub fn conflict(msg: impl Into<String>) -> Self {
        Self::Conflict(msg.into())
    }
    /// Shorthand for [`ContractError::Internal`].
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::Internal(msg.into())
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Internal(_) => "internal",
        }
    }

    /// The response status (HTTP-like).
    pub fn status(&self) -> i32 {
        match self {
            Self::InvalidArgument(_) => 400,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::Internal(_) => 500,
        }
    }

    /// The Fabric response carrying this error.
    pub fn to_response(&self) -> Response {
        let message = self.to_string();
        let body = serde_json::to_string(&ErrorBody {
            code: self.code(),
            message: &message,
        })
        .unwrap_or_else(|_| format!("{{\"code\":\"{}\"}}", self.code()));
        Response::error(self.status(), body)
    }
}

impl From<StubError> for ContractError {
    fn from(e: StubError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<IdentityError> for ContractError {
    fn from(e: IdentityError) -> Self {
        Self::Forbidden(format!("invalid caller identity: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_is_json_with_code_and_status() {
        let r = ContractError::conflict("patient \"p1\" already exists").to_response();
        assert_eq!(r.status, 409);
        let v: serde_json::Value = serde_json::from_str(&r.message).unwrap();
        assert_eq!(v["code"], "conflict");
        assert_eq!(v["message"], "patient \"p1\" already exists");
        assert!(!r.is_ok());
        for (e, s, c) in [
            (ContractError::invalid("x"), 400, "invalid_argument"),
            (ContractError::forbidden("x"), 403, "forbidden"),
            (ContractError::not_found("x"), 404, "not_found"),
            (ContractError::internal("x"), 500, "internal"),
        ] {
            assert_eq!((e.status(), e.code()), (s, c));
        }
    }
}
