//! Authentication: passwords (Argon2id), the built-in JWT issuer, and token
//! verification against the built-in key or an external OIDC JWKS.

pub mod jwks;
pub mod jwt;
pub mod password;
