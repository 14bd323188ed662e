//! TLS for the chaincode server: a server certificate and key, and, when a
//! client CA is given, mutual TLS (the peer must present a certificate
//! issued by that CA), as Fabric's CCaaS `connection.json` expects with
//! `client_auth_required`.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use super::ShimError;

/// PEM files for the server's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate (chain), PEM.
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// CA certificate(s), PEM, that client certificates must chain to.
    /// `None` = no client authentication.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files and builds the server TLS configuration.
    pub fn load(&self) -> Result<ServerTlsConfig, ShimError> {
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        let client_ca = self.client_ca.as_deref().map(read).transpose()?;
        server_tls_config(&cert, &key, client_ca.as_deref())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ShimError> {
    std::fs::read(path).map_err(|source| ShimError::Io {
        context: format!("reading {}", path.display()),
        source,
    })
}

/// Builds the server TLS configuration from PEM bytes. Checks that each
/// input holds the expected PEM block; the TLS library checks the rest when
/// the server starts.
pub fn server_tls_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<ServerTlsConfig, ShimError> {
    require_pem(
        cert_pem,
        "-----BEGIN CERTIFICATE-----",
        "server certificate",
    )?;
    require_pem(key_pem, "PRIVATE KEY-----", "server key")?;
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
    if let Some(ca) = client_ca_pem {
        require_pem(ca, "-----BEGIN CERTIFICATE-----", "client CA")?;
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(config)
}

fn require_pem(bytes: &[u8], marker: &str, what: &str) -> Result<(), ShimError> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains(marker) {
        Ok(())
    } else {
        Err(ShimError::Tls(format!("{what} is not PEM (no {marker:?})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_pem_input() {
        assert!(server_tls_config(b"nope", b"-----BEGIN PRIVATE KEY-----", None).is_err());
        assert!(server_tls_config(b"-----BEGIN CERTIFICATE-----", b"nope", None).is_err());
        assert!(
            server_tls_config(
                b"-----BEGIN CERTIFICATE-----",
                b"-----BEGIN PRIVATE KEY-----",
                Some(b"nope")
            )
            .is_err()
        );
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let files = TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
        };
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    }
}
