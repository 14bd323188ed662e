//! The `ehr` command line (clap derive). Every option can also come from an
//! environment variable (shown in `--help`) or from the TOML file given by
//! `--config`; flags beat env, env beats the file, the file beats defaults.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ehrchain: health records with consent on a Fabric ledger and encrypted
/// files in IPFS.
#[derive(Debug, Parser)]
#[command(
    name = "ehr",
    version,
    about,
    long_about = "ehrchain: health records with consent on a Hyperledger Fabric ledger and \
                  encrypted files in IPFS.\n\n\
                  `ehr up` starts a whole consortium on this machine (devnet ledger with three \
                  hospital orgs and the chaincode, an embedded blob store, one REST gateway per \
                  org). `ehr serve` runs one org's gateway against an existing ledger.\n\n\
                  Settings come from flags, then environment variables, then the TOML file given \
                  by --config (same names as the long flags, with '_' for '-'), then defaults."
)]
pub struct Cli {
    /// TOML configuration file (keys: data_dir, bind, base_port, ledger_port, orgs,
    /// database_url, ipfs_api_url, max_upload_bytes, chunk_size, token_ttl_secs,
    /// token_leeway_secs, log_format, pre_threshold, pre_shares, proxy_timeout_ms,
    /// [oidc] issuer/audience/jwks_url).
    #[arg(
        long,
        short = 'c',
        env = "EHR_CONFIG",
        global = true,
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "EHR_LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a whole consortium on this machine: the devnet ledger with the chaincode, three
    /// hospital orgs, an embedded blob store and one gateway per org, each on its own port.
    /// State is kept in the data dir and survives restarts.
    Up(UpArgs),
    /// Run one org's gateway against an existing ledger (the devnet of an `ehr up` elsewhere,
    /// or a Fabric peer's Gateway service). The org's state (CA, keys, SQLite) lives in
    /// --data-dir; a CA created here must be added to the channel's MSP before users can
    /// transact.
    Serve(ServeArgs),
    /// Content-addressed blob store commands (the store `ehr up` uses by default:
    /// <data-dir>/blobs, or an IPFS node with --api): cid, put, get, pin, stat, gc, …
    Blob {
        #[command(subcommand)]
        cmd: ehr_ipfs::cli::BlobCommand,
    },
    /// Erase a record's content (GDPR Art. 17, crypto-shredding) through its home gateway:
    /// `DELETE /api/v1/records/{id}/content`. The metadata and the access log stay.
    Erase(EraseArgs),
    /// A patient's own Umbral key: export it from the home gateway, and make grants with it
    /// on this machine (the kfrags are made and sealed here, not by the gateway).
    Key {
        #[command(subcommand)]
        cmd: KeyCommand,
    },
}

/// `ehr key …`.
#[derive(Debug, Clone, Subcommand)]
pub enum KeyCommand {
    /// Sign in as a patient and write their key pair to a file (mode 0600). Keep it secret:
    /// it opens every record of the patient.
    Export {
        /// The patient's home gateway, e.g. http://127.0.0.1:8081.
        #[arg(long, env = "EHR_GATEWAY_URL", value_name = "URL")]
        gateway: String,
        /// The patient's username.
        #[arg(long, env = "EHR_USERNAME", value_name = "NAME")]
        username: String,
        /// The patient's password (prefer the environment variable).
        #[arg(
            long,
            env = "EHR_PASSWORD",
            value_name = "PASSWORD",
            hide_env_values = true
        )]
        password: String,
        /// Where to write the key (JSON); refuses to overwrite.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Grant consent with the exported key: kfrags to the grantee org's reader key, sealed to
    /// the proxy orgs, made here; the gateway records the grant and delivers them.
    Grant {
        /// The patient's home gateway.
        #[arg(long, env = "EHR_GATEWAY_URL", value_name = "URL")]
        gateway: String,
        /// The patient's bearer token.
        #[arg(long, env = "EHR_TOKEN", value_name = "JWT", hide_env_values = true)]
        token: String,
        /// The key file from `ehr key export`.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The consent as JSON (the body of POST /patients/{id}/consents; grantee.org required).
        #[arg(long, value_name = "FILE")]
        consent: PathBuf,
        /// Proxies needed to open a record key.
        #[arg(long, default_value_t = 2, value_name = "T")]
        threshold: u32,
        /// Proxy orgs holding a key fragment.
        #[arg(long, default_value_t = 3, value_name = "N")]
        shares: u32,
    },
}

/// Settings shared by every gateway.
#[derive(Debug, Clone, Args, Default)]
pub struct GatewayArgs {
    /// Directory for all state (databases, keys, ledger blocks, blobs). Created if missing.
    #[arg(long, env = "EHR_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// PostgreSQL URL (postgres://…). When unset each gateway uses SQLite in its data dir.
    /// With PostgreSQL each org gets its own schema in that database.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// Kubo (IPFS) RPC API URL, e.g. http://127.0.0.1:5001. When unset, the embedded
    /// blob store in the data dir is used.
    #[arg(long, env = "IPFS_API_URL", value_name = "URL")]
    pub ipfs_api_url: Option<String>,

    /// Largest accepted upload in bytes; larger bodies get 413. Default 1 GiB.
    #[arg(long, env = "EHR_MAX_UPLOAD_BYTES", value_name = "BYTES")]
    pub max_upload_bytes: Option<u64>,

    /// Plaintext chunk size of the file cipher in bytes (1024..=4194304). Default 65536.
    #[arg(long, env = "EHR_CHUNK_SIZE", value_name = "BYTES")]
    pub chunk_size: Option<u32>,

    /// Lifetime of tokens from the built-in issuer, in seconds. Default 3600.
    #[arg(long, env = "EHR_TOKEN_TTL_SECS", value_name = "SECS")]
    pub token_ttl_secs: Option<u64>,

    /// Clock skew tolerated on token exp/nbf, in seconds. Default 30.
    #[arg(long, env = "EHR_TOKEN_LEEWAY_SECS", value_name = "SECS")]
    pub token_leeway_secs: Option<u64>,

    /// External OIDC issuer (`iss`). Setting it (with --oidc-audience and --oidc-jwks-url)
    /// switches from the built-in issuer to validating the provider's tokens.
    #[arg(long, env = "EHR_OIDC_ISSUER", value_name = "URL", requires_all = ["oidc_audience", "oidc_jwks_url"])]
    pub oidc_issuer: Option<String>,

    /// Expected `aud` of external tokens.
    #[arg(long, env = "EHR_OIDC_AUDIENCE", value_name = "AUD")]
    pub oidc_audience: Option<String>,

    /// URL of the provider's JWKS (fetched and cached; refetched on an unknown `kid`).
    #[arg(long, env = "EHR_OIDC_JWKS_URL", value_name = "URL")]
    pub oidc_jwks_url: Option<String>,

    /// Threshold t of new cross-org grants: how many proxy orgs must re-encrypt for a reader
    /// to open a record key. Default 2.
    #[arg(long, env = "EHR_PRE_THRESHOLD", value_name = "T")]
    pub pre_threshold: Option<u32>,

    /// Shares n of new cross-org grants: how many proxy orgs get a key fragment (at most 16).
    /// Default 3.
    #[arg(long, env = "EHR_PRE_SHARES", value_name = "N")]
    pub pre_shares: Option<u32>,

    /// Deadline of one gateway-to-gateway call (key proxy), in milliseconds. Default 5000.
    #[arg(long, env = "EHR_PROXY_TIMEOUT_MS", value_name = "MS")]
    pub proxy_timeout_ms: Option<u64>,
}

/// `ehr serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// The org (MSP id) this gateway serves.
    #[arg(long, env = "EHR_ORG", value_name = "ORG")]
    pub org: String,

    /// Address to listen on. Default 127.0.0.1:8081.
    #[arg(long, env = "EHR_LISTEN", value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,

    /// Fabric Gateway endpoint of the ledger, e.g. http://127.0.0.1:7051 (an `ehr up` devnet)
    /// or https://peer0.org1.example.com:7051 (a Fabric peer, with --ledger-ca-file).
    #[arg(long, env = "EHR_LEDGER_URL", value_name = "URL")]
    pub ledger_url: String,

    /// PEM file of the CA that signed the peer's TLS certificate (the org's TLS CA); needed
    /// for an https:// ledger URL.
    #[arg(long, env = "EHR_LEDGER_CA_FILE", value_name = "FILE")]
    pub ledger_ca_file: Option<PathBuf>,

    /// Name to check the peer's TLS certificate for, when it is not the URL's host (e.g.
    /// peer0.org1.example.com for a peer reached at 127.0.0.1).
    #[arg(long, env = "EHR_LEDGER_TLS_DOMAIN", value_name = "NAME")]
    pub ledger_tls_domain: Option<String>,

    /// Another org's gateway (key proxy protocol and cross-org reads), as ORG=URL (repeat or
    /// comma-separate). Every org that can act as a proxy should be listed.
    #[arg(
        long = "peer",
        env = "EHR_PEERS",
        value_delimiter = ',',
        value_name = "ORG=URL"
    )]
    pub peers: Vec<String>,

    /// Another org's CA certificate, as ORG=PEM_FILE (repeat or comma-separate); used to
    /// authenticate other gateways' key proxy requests.
    #[arg(
        long = "org-ca",
        env = "EHR_ORG_CAS",
        value_delimiter = ',',
        value_name = "ORG=FILE"
    )]
    pub org_cas: Vec<String>,
}

/// `ehr up`.
#[derive(Debug, Clone, Args, Default)]
pub struct UpArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// Seed demo users: per org an admin, a patient, a clinician (cardiology and
    /// dermatology at hospital-b) and an auditor; passwords are printed.
    #[arg(long, env = "EHR_DEMO")]
    pub demo: bool,

    /// Address to bind every listener to. Default 127.0.0.1.
    #[arg(long, env = "EHR_BIND", value_name = "IP")]
    pub bind: Option<IpAddr>,

    /// Port of the first org's gateway; org i listens on base-port + i. Default 8081.
    /// 0 picks free ports.
    #[arg(long, env = "EHR_BASE_PORT", value_name = "PORT")]
    pub base_port: Option<u16>,

    /// Port of the devnet ledger's Fabric Gateway gRPC service. Default 7051; 0 picks one.
    #[arg(long, env = "EHR_LEDGER_PORT", value_name = "PORT")]
    pub ledger_port: Option<u16>,

    /// Organisations of the consortium (repeat or comma-separate).
    /// Default hospital-a,hospital-b,hospital-c.
    #[arg(
        long = "org",
        env = "EHR_ORGS",
        value_delimiter = ',',
        value_name = "ORG"
    )]
    pub orgs: Vec<String>,

    /// The URL other gateways use to reach ORG's gateway, as ORG=URL (repeat or
    /// comma-separate), when it differs from the address it binds (a reverse proxy or load
    /// balancer in front of it). Default: the bound address.
    #[arg(
        long = "advertise",
        env = "EHR_ADVERTISE",
        value_delimiter = ',',
        value_name = "ORG=URL"
    )]
    pub advertise: Vec<String>,
}

/// `ehr erase`.
#[derive(Debug, Clone, Args)]
pub struct EraseArgs {
    /// The record to erase (crypto-shred): its sealed key and ciphertext are destroyed, its
    /// metadata and access log stay on the ledger.
    #[arg(value_name = "RECORD_ID")]
    pub record_id: String,

    /// The patient's home gateway, e.g. http://127.0.0.1:8081.
    #[arg(long, env = "EHR_GATEWAY_URL", value_name = "URL")]
    pub gateway: String,

    /// A bearer token of the patient or an admin of the patient's home org
    /// (`POST /api/v1/auth/token`).
    #[arg(long, env = "EHR_TOKEN", value_name = "JWT", hide_env_values = true)]
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_up_flags() {
        let cli = Cli::try_parse_from([
            "ehr",
            "up",
            "--demo",
            "--base-port",
            "9001",
            "--org",
            "a,b",
            "--data-dir",
            "/tmp/x",
        ])
        .unwrap();
        let Command::Up(up) = cli.command else {
            panic!("expected up");
        };
        assert!(up.demo);
        assert_eq!(up.base_port, Some(9001));
        assert_eq!(up.orgs, ["a", "b"]);
        assert_eq!(up.gateway.data_dir, Some(PathBuf::from("/tmp/x")));
        assert!(Cli::try_parse_from(["ehr", "up", "--base-port", "x"]).is_err());
        // OIDC needs all three settings.
        assert!(Cli::try_parse_from(["ehr", "up", "--oidc-issuer", "https://i"]).is_err());
    }

    #[test]
    fn parses_serve() {
        let cli = Cli::try_parse_from([
            "ehr",
            "serve",
            "--org",
            "hospital-a",
            "--ledger-url",
            "http://127.0.0.1:7051",
            "--peer",
            "hospital-b=http://127.0.0.1:8082",
            "--org-ca",
            "hospital-b=/tmp/b.pem",
        ])
        .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(s.org, "hospital-a");
        assert_eq!(s.peers, ["hospital-b=http://127.0.0.1:8082"]);
        assert!(
            Cli::try_parse_from(["ehr", "serve", "--org", "a"]).is_err(),
            "ledger url is required"
        );
    }

    #[test]
    fn parses_erase_and_pre_settings() {
        let cli = Cli::try_parse_from([
            "ehr",
            "erase",
            "r-1",
            "--gateway",
            "http://127.0.0.1:8081",
            "--token",
            "t",
        ])
        .unwrap();
        let Command::Erase(e) = cli.command else {
            panic!("expected erase");
        };
        assert_eq!(e.record_id, "r-1");
        assert!(Cli::try_parse_from(["ehr", "erase", "r-1", "--token", "t"]).is_err());
        let cli = Cli::try_parse_from([
            "ehr",
            "up",
            "--pre-threshold",
            "3",
            "--pre-shares",
            "5",
            "--advertise",
            "hospital-c=http://10.0.0.3:8083",
        ])
        .unwrap();
        let Command::Up(up) = cli.command else {
            panic!("expected up");
        };
        assert_eq!(up.gateway.pre_threshold, Some(3));
        assert_eq!(up.gateway.pre_shares, Some(5));
        assert_eq!(up.advertise, ["hospital-c=http://10.0.0.3:8083"]);
    }

    #[test]
    fn blob_subcommands_are_wired() {
        let cli = Cli::try_parse_from(["ehr", "blob", "cid", "/etc/hostname"]).unwrap();
        assert!(matches!(cli.command, Command::Blob { .. }));
    }

    #[test]
    fn help_explains_each_option() {
        let mut cmd = Cli::command();
        let up = cmd.find_subcommand_mut("up").unwrap();
        for arg in up.get_arguments() {
            if arg.get_id() == "help" || arg.get_id() == "version" {
                continue;
            }
            assert!(arg.get_help().is_some(), "--{} has no help", arg.get_id());
        }
    }
}
