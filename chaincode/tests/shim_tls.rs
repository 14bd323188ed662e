//! The shim's server TLS and mutual TLS, with certificates made here by a
//! test CA, loaded through `TlsFiles` from real files.

mod shim_support;

use std::path::PathBuf;

use ehr_chaincode::shim::TlsFiles;
use ehr_proto::protos::chaincode_message::Type;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use shim_support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    /// A client certificate from a CA the server does not trust.
    rogue_client: (String, String),
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let ca = new_ca("ehr test CA");
    let rogue = new_ca("rogue CA");
    Pki {
        ca_pem: ca.pem(),
        server: leaf(
            &ca,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        client: leaf(&ca, &["peer0.org1"], ExtendedKeyUsagePurpose::ClientAuth),
        rogue_client: leaf(&rogue, &["intruder"], ExtendedKeyUsagePurpose::ClientAuth),
    }
}

/// Writes PEM files in a fresh temporary directory (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ehr-shim-tls-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn write(&self, name: &str, body: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tls_files(dir: &TempDir, pki: &Pki, mutual: bool) -> TlsFiles {
    TlsFiles {
        cert: dir.write("server.pem", &pki.server.0),
        key: dir.write("server.key", &pki.server.1),
        client_ca: mutual.then(|| dir.write("client-ca.pem", &pki.ca_pem)),
    }
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await
}

/// Whether a peer over `channel` gets the shim's REGISTER.
async fn gets_register(channel: Result<Channel, tonic::transport::Error>) -> bool {
    let Ok(channel) = channel else { return false };
    let Ok(mut peer) = Peer::open(channel).await else {
        return false;
    };
    matches!(peer.recv_end().await, Ok(Some(m)) if m.r#type == Type::Register as i32)
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_of_the_configured_ca() {
    let pki = pki();
    let dir = TempDir::new("mtls");
    let tls = tls_files(&dir, &pki, true).load().unwrap();
    let server = start_shim(TestChaincode, Some(tls)).await;

    // A peer with a client certificate from the CA: full protocol works.
    let channel = tls_channel(server.addr, &pki.ca_pem, Some(&pki.client))
        .await
        .unwrap();
    let mut peer = Peer::open(channel).await.unwrap();
    peer.handshake().await;
    assert_eq!(
        completed(&peer.run_tx("tx1", &[b"put", b"k", b"v"]).await).status,
        200
    );

    // No client certificate, or one from another CA: refused.
    assert!(!gets_register(tls_channel(server.addr, &pki.ca_pem, None).await).await);
    assert!(
        !gets_register(tls_channel(server.addr, &pki.ca_pem, Some(&pki.rogue_client)).await).await
    );
}

#[tokio::test]
async fn server_tls_without_client_auth() {
    let pki = pki();
    let dir = TempDir::new("tls");
    let tls = tls_files(&dir, &pki, false).load().unwrap();
    let server = start_shim(TestChaincode, Some(tls)).await;

    assert!(gets_register(tls_channel(server.addr, &pki.ca_pem, None).await).await);
    // Plaintext gRPC to a TLS server fails.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    assert!(!gets_register(plain).await);
    // A client that does not trust the server's CA fails.
    let other = new_ca("other CA").pem();
    assert!(!gets_register(tls_channel(server.addr, &other, None).await).await);
}

#[tokio::test]
async fn mismatched_key_is_refused_at_start() {
    let pki = pki();
    let dir = TempDir::new("bad");
    let files = TlsFiles {
        cert: dir.write("server.pem", &pki.server.0),
        key: dir.write("client.key", &pki.client.1),
        client_ca: None,
    };
    let tls = files.load().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service = ehr_chaincode::shim::ChaincodeService::new(
        TestChaincode,
        ehr_chaincode::shim::ShimConfig::new(CC_ID).unwrap(),
    );
    let r = ehr_chaincode::shim::serve(listener, service, Some(tls), async {}).await;
    assert!(
        r.is_err(),
        "a key that does not match the certificate is an error"
    );
}
