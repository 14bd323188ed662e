//! Configuration: a TOML file, overridden by environment variables, overridden
//! by command-line flags (clap reads env and flags; the file fills what they
//! leave unset; then built-in defaults).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Configuration errors.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {0}: {1}")]
    Invalid(&'static str, String),
}

/// The TOML file. Every key is optional; unknown keys are an error so typos
/// do not pass silently.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Where state lives (databases, keys, blob store, ledger).
    pub data_dir: Option<PathBuf>,
    /// Address gateways and the ledger bind to.
    pub bind: Option<IpAddr>,
    /// First gateway port; org i listens on base_port + i.
    pub base_port: Option<u16>,
    /// Port of the devnet ledger's Fabric Gateway gRPC service.
    pub ledger_port: Option<u16>,
    /// The consortium's organisations (MSP ids).
    pub orgs: Option<Vec<String>>,
    /// PostgreSQL URL; SQLite in the data dir when unset.
    pub database_url: Option<String>,
    /// Kubo RPC API URL; the embedded blob store when unset.
    pub ipfs_api_url: Option<String>,
    /// Largest accepted upload in bytes.
    pub max_upload_bytes: Option<u64>,
    /// Plaintext chunk size of the file cipher in bytes.
    pub chunk_size: Option<u32>,
    /// Lifetime of built-in tokens in seconds.
    pub token_ttl_secs: Option<u64>,
    /// Clock skew tolerated when validating tokens, in seconds.
    pub token_leeway_secs: Option<u64>,
    /// External OIDC provider (production mode).
    pub oidc: Option<OidcConfig>,
    /// Log format: `text` or `json`.
    pub log_format: Option<String>,
    /// t of new threshold grants (proxies needed to open a key).
    pub pre_threshold: Option<u32>,
    /// n of new threshold grants (proxies holding a key fragment).
    pub pre_shares: Option<u32>,
    /// Deadline of one call to another gateway, in milliseconds.
    pub proxy_timeout_ms: Option<u64>,
}

/// External identity provider settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    pub issuer: String,
    pub audience: String,
    pub jwks_url: String,
}

impl FileConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// Defaults.
pub mod defaults {
    /// Default first gateway port.
    pub const BASE_PORT: u16 = 8081;
    /// Default ledger port.
    pub const LEDGER_PORT: u16 = 7051;
    /// Default orgs.
    pub const ORGS: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];
    /// 1 GiB.
    pub const MAX_UPLOAD_BYTES: u64 = 1024 * 1024 * 1024;
    /// 1 hour.
    pub const TOKEN_TTL_SECS: u64 = 3600;
    /// 30 seconds.
    pub const TOKEN_LEEWAY_SECS: u64 = 30;
    /// Data dir.
    pub const DATA_DIR: &str = ".ehr";
}

/// Settings of one org's gateway, fully resolved.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The org (MSP id) this gateway serves.
    pub org: String,
    pub listen: SocketAddr,
    /// This org's state directory.
    pub data_dir: PathBuf,
    pub database_url: String,
    /// PostgreSQL schema for this gateway (several gateways share one DB).
    pub database_schema: Option<String>,
    pub max_upload_bytes: u64,
    pub chunk_size: u32,
    pub token_ttl_secs: u64,
    pub token_leeway_secs: u64,
    pub oidc: Option<OidcConfig>,
    /// The public base URL of this gateway (issuer of built-in tokens).
    pub public_url: String,
    /// Every org's gateway URL (this one's too), for the key proxy protocol.
    pub peers: BTreeMap<String, String>,
    /// CA certificates (PEM) of every org of the consortium.
    pub org_cas: BTreeMap<String, String>,
    /// Threshold proxy re-encryption settings.
    pub proxy: crate::proxy::ProxySettings,
}

/// Checks an org name: lowercase letters, digits and '-', 1..=32 chars.
pub fn valid_org(org: &str) -> bool {
    (1..=32).contains(&org.len())
        && org
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Checks the numeric limits shared by all gateways.
pub fn validate_limits(max_upload_bytes: u64, chunk_size: u32) -> Result<(), ConfigError> {
    if max_upload_bytes == 0 {
        return Err(ConfigError::Invalid(
            "max_upload_bytes",
            "must be > 0".into(),
        ));
    }
    if !(crate::crypto::stream::MIN_CHUNK_SIZE..=crate::crypto::stream::MAX_CHUNK_SIZE)
        .contains(&chunk_size)
    {
        return Err(ConfigError::Invalid(
            "chunk_size",
            format!(
                "must be within {}..={}",
                crate::crypto::stream::MIN_CHUNK_SIZE,
                crate::crypto::stream::MAX_CHUNK_SIZE
            ),
        ));
    }
    Ok(())
}

/// The default bind address.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_and_rejects_unknown_keys() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ehr.toml");
        std::fs::write(
            &p,
            r#"
base_port = 9000
orgs = ["a", "b"]
max_upload_bytes = 1048576
[oidc]
issuer = "https://idp"
audience = "ehr"
jwks_url = "https://idp/jwks"
"#,
        )
        .unwrap();
        let c = FileConfig::load(&p).unwrap();
        assert_eq!(c.base_port, Some(9000));
        assert_eq!(c.orgs.unwrap(), ["a", "b"]);
        assert_eq!(c.oidc.unwrap().audience, "ehr");
        std::fs::write(&p, "base_prot = 1").unwrap();
        assert!(matches!(
            FileConfig::load(&p),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            FileConfig::load(&d.path().join("missing.toml")),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn validation() {
        assert!(valid_org("hospital-a"));
        assert!(!valid_org("Hospital A"));
        assert!(!valid_org(""));
        assert!(validate_limits(0, 65536).is_err());
        assert!(validate_limits(1, 10).is_err());
        assert!(validate_limits(1, 65536).is_ok());
    }
}
