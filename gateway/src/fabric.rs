//! [`Chain`] over the Fabric Gateway gRPC service (`ehr-ledger`'s client):
//! the same code talks to the embedded devnet and to a real Fabric peer.

use std::sync::Arc;

use async_trait::async_trait;
use ehr_ledger::Devnet;
use ehr_ledger::client::{ClientError, GatewayClient};
use ehr_proto::protos::TxValidationCode;
use tonic::transport::{Channel, Endpoint};

use crate::chain::{Chain, ChainError, ChainVerification, Committed, EventScan, SigningIdentity};

/// The chaincode's function name for a cheap liveness call.
const PING: &str = "Ping";

/// TLS to the ledger's Fabric Gateway (a real peer listens with TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerTls {
    /// PEM of the CA that signed the peer's TLS certificate.
    pub ca_pem: String,
    /// The name to check the certificate for, when not the URL's host
    /// (e.g. `peer0.org1.example.com` for a peer reached at 127.0.0.1).
    pub domain: Option<String>,
}

/// A ledger reached over Fabric Gateway gRPC.
pub struct FabricChain {
    channel: Channel,
    channel_name: String,
    chaincode: String,
    /// The identity readiness checks are signed with.
    probe: SigningIdentity,
    /// The in-process devnet, when there is one (hash-chain verification).
    devnet: Option<Arc<Devnet>>,
}

impl FabricChain {
    /// A lazily connected client of the gateway at `endpoint`
    /// (`http://127.0.0.1:7051`).
    pub fn new(
        endpoint: &str,
        channel_name: &str,
        chaincode: &str,
        probe: SigningIdentity,
        devnet: Option<Arc<Devnet>>,
    ) -> Result<Self, ChainError> {
        Self::with_tls(endpoint, None, channel_name, chaincode, probe, devnet)
    }

    /// Like [`FabricChain::new`]; an `https://` endpoint needs `tls`: the
    /// CA that signed the peer's TLS certificate (a Fabric org's TLS CA).
    pub fn with_tls(
        endpoint: &str,
        tls: Option<&LedgerTls>,
        channel_name: &str,
        chaincode: &str,
        probe: SigningIdentity,
        devnet: Option<Arc<Devnet>>,
    ) -> Result<Self, ChainError> {
        let mut ep = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| ChainError::Other(format!("bad ledger endpoint {endpoint:?}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .tcp_nodelay(true);
        match (endpoint.starts_with("https://"), tls) {
            (true, Some(t)) => {
                let mut cfg = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca_pem));
                if let Some(d) = &t.domain {
                    cfg = cfg.domain_name(d.clone());
                }
                ep = ep
                    .tls_config(cfg)
                    .map_err(|e| ChainError::Other(format!("ledger TLS settings: {e}")))?;
            }
            (true, None) => {
                return Err(ChainError::Other(format!(
                    "the ledger endpoint {endpoint} is https: give the CA of the peer's TLS certificate (--ledger-ca-file)"
                )));
            }
            (false, Some(_)) => {
                return Err(ChainError::Other(format!(
                    "a ledger TLS CA was given but the endpoint {endpoint} is not https://"
                )));
            }
            (false, None) => {}
        }
        let channel = ep.connect_lazy();
        Ok(Self {
            channel,
            channel_name: channel_name.to_owned(),
            chaincode: chaincode.to_owned(),
            probe,
            devnet,
        })
    }

    /// The chaincode's events from block `from` on (as the probe identity),
    /// one item per block that has any.
    pub async fn event_blocks(
        &self,
        from: u64,
    ) -> Result<
        impl futures::Stream<Item = Result<ehr_ledger::client::EventBlock, ClientError>> + use<>,
        ChainError,
    > {
        self.client(&self.probe)
            .chaincode_event_blocks(
                &self.channel_name,
                &self.chaincode,
                Some(ehr_ledger::client::Checkpoint {
                    block: from,
                    after_tx_id: None,
                }),
            )
            .await
            .map_err(map_err)
    }

    fn client(&self, signer: &SigningIdentity) -> GatewayClient {
        GatewayClient::from_channel(self.channel.clone(), signer.clone())
    }
}

/// Blocks [`Chain::last_event_block`] looks at before it gives up (a
/// projection that far behind is catching up; the caller then waits).
const EVENT_SCAN_BLOCKS: u64 = 64;

/// The `height` of a `common.BlockchainInfo` (qscc `GetChainInfo`'s answer).
fn blockchain_info_height(b: &[u8]) -> Option<u64> {
    use prost::Message;
    ehr_proto::common::BlockchainInfo::decode(b)
        .ok()
        .map(|i| i.height)
}

/// A peer that cannot reach (or launch) the chaincode: the ledger is
/// unavailable for this call, not wrong.
fn chaincode_unreachable(text: &str) -> bool {
    const SIGNS: [&str; 4] = [
        "could not launch chaincode",
        "connection refused",
        "chaincode registration failed",
        "timeout expired while starting chaincode",
    ];
    let t = text.to_ascii_lowercase();
    SIGNS.iter().any(|s| t.contains(s))
}

fn map_err(e: ClientError) -> ChainError {
    match &e {
        ClientError::Connect(_) => ChainError::Unavailable(e.to_string()),
        ClientError::Status(s) => {
            if let Some((status, message)) = e.chaincode_failure() {
                return ChainError::rejected(status, &message);
            }
            match s.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted => ChainError::Unavailable(s.message().to_owned()),
                tonic::Code::PermissionDenied => ChainError::Rejected {
                    status: 403,
                    code: "forbidden".into(),
                    message: s.message().to_owned(),
                },
                _ => {
                    // Fabric's Endorse/Evaluate say "see attached details":
                    // the peer's reason is in the gateway.ErrorDetails.
                    let details: Vec<String> = ehr_ledger::rpc_error::error_details(s)
                        .into_iter()
                        .map(|d| format!("{} ({}): {}", d.address, d.msp_id, d.message))
                        .collect();
                    let text = if details.is_empty() {
                        e.to_string()
                    } else {
                        format!("{}: {}", s.message(), details.join("; "))
                    };
                    if chaincode_unreachable(&text) {
                        ChainError::Unavailable(text)
                    } else {
                        ChainError::Other(text)
                    }
                }
            }
        }
        _ => ChainError::Other(e.to_string()),
    }
}

#[async_trait]
impl Chain for FabricChain {
    async fn evaluate(
        &self,
        signer: &SigningIdentity,
        function: &str,
        arg: &serde_json::Value,
    ) -> Result<Vec<u8>, ChainError> {
        let arg = arg.to_string();
        self.client(signer)
            .evaluate(
                &self.channel_name,
                &self.chaincode,
                function,
                &[arg.as_bytes()],
            )
            .await
            .map_err(map_err)
    }

    async fn submit(
        &self,
        signer: &SigningIdentity,
        function: &str,
        arg: &serde_json::Value,
    ) -> Result<Committed, ChainError> {
        let arg = arg.to_string();
        let s = self
            .client(signer)
            .submit(
                &self.channel_name,
                &self.chaincode,
                function,
                &[arg.as_bytes()],
            )
            .await
            .map_err(map_err)?;
        if s.code != TxValidationCode::Valid {
            return Err(ChainError::Invalidated {
                tx_id: s.tx_id,
                reason: format!("{:?}", s.code),
            });
        }
        Ok(Committed {
            tx_id: s.tx_id,
            block: s.block,
            payload: s.payload,
        })
    }

    async fn verify_chain(&self) -> Result<ChainVerification, ChainError> {
        let Some(devnet) = &self.devnet else {
            return Err(ChainError::NotSupported(
                "hash-chain verification needs the embedded ledger (ehr up); verify a Fabric peer's chain with its own tools".into(),
            ));
        };
        let d = devnet.clone();
        let r = tokio::task::spawn_blocking(move || d.verify())
            .await
            .map_err(|e| ChainError::Other(e.to_string()))?;
        if let Some(reason) = &r.reason {
            tracing::error!(first_bad_block = ?r.first_bad_block, %reason, "ledger verification failed");
        }
        Ok(ChainVerification {
            height: r.height,
            verified: r.verified,
            first_bad_block: r.first_bad_block,
        })
    }

    async fn tx_proof(&self, tx_id: &str) -> Result<Option<crate::chain::TxProofView>, ChainError> {
        let Some(devnet) = &self.devnet else {
            return Err(ChainError::NotSupported(
                "transaction proofs need the embedded ledger (ehr up)".into(),
            ));
        };
        let d = devnet.clone();
        let tx = tx_id.to_owned();
        tokio::task::spawn_blocking(move || {
            let p = d.tx_proof(&tx)?;
            // The proof is about the hash chain: frames, data hashes and header
            // links up to the tip (~0.3 s for 31k txs; the full `verify` also
            // re-runs signatures and MVCC, ~25x slower, and is `/ledger/verify`).
            let report = d.verify_hash_chain();
            let in_chain = d.block_hash(p.block) == Some(p.block_hash);
            let chain_ok = report.verified || report.first_bad_block.is_some_and(|b| b > p.block);
            Some(crate::chain::TxProofView {
                tx_id: p.tx_id,
                block: p.block,
                block_hash: hex::encode(p.block_hash),
                verified: in_chain && chain_ok && p.code == TxValidationCode::Valid,
            })
        })
        .await
        .map_err(|e| ChainError::Other(e.to_string()))
    }

    async fn height(&self) -> Result<u64, ChainError> {
        if let Some(d) = &self.devnet {
            return Ok(d.height());
        }
        // A real peer: the query system chaincode, as the Fabric SDKs do.
        let info = self
            .client(&self.probe)
            .evaluate(
                &self.channel_name,
                "qscc",
                "GetChainInfo",
                &[self.channel_name.as_bytes()],
            )
            .await
            .map_err(map_err)?;
        blockchain_info_height(&info)
            .ok_or_else(|| ChainError::Other("undecodable GetChainInfo answer".into()))
    }

    async fn last_event_block(&self, from: u64, to: u64) -> Result<EventScan, ChainError> {
        if from > to {
            return Ok(EventScan::NoEvents);
        }
        if to - from >= EVENT_SCAN_BLOCKS {
            return Ok(EventScan::Unknown);
        }
        let Some(d) = &self.devnet else {
            // A peer: read the blocks with qscc, newest first.
            let client = self.client(&self.probe);
            for n in (from..=to).rev() {
                let events = client
                    .block_events(&self.channel_name, n)
                    .await
                    .map_err(map_err)?;
                if events.iter().any(|e| e.chaincode_id == self.chaincode) {
                    return Ok(EventScan::At(n));
                }
            }
            return Ok(EventScan::NoEvents);
        };
        let d = d.clone();
        let cc = self.chaincode.clone();
        tokio::task::spawn_blocking(move || {
            for n in (from..=to).rev() {
                let be = d
                    .block_events(n)
                    .map_err(|e| ChainError::Other(e.to_string()))?;
                if be.events.iter().any(|e| e.chaincode_id == cc) {
                    return Ok(EventScan::At(n));
                }
            }
            Ok(EventScan::NoEvents)
        })
        .await
        .map_err(|e| ChainError::Other(e.to_string()))?
    }

    async fn check(&self) -> Result<(), ChainError> {
        self.evaluate(&self.probe, PING, &serde_json::json!({}))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ehr_ledger::rpc_error::{Operation, chaincode_error};

    /// A real peer whose chaincode server is down answers Endorse/Evaluate
    /// with a generic message and the reason only in its ErrorDetails.
    #[test]
    fn an_unreachable_chaincode_is_unavailable_with_the_peers_reason() {
        use ehr_ledger::rpc_error::{ERROR_DETAIL_TYPE_URL, RpcStatus};
        use prost::Message;
        let status = |reason: &str| {
            let top = "failed to evaluate transaction, see attached details for more info";
            let detail = ehr_proto::gateway::ErrorDetail {
                address: "peer0.hospital-a.example.com:7051".into(),
                msp_id: "hospital-a".into(),
                message: reason.into(),
            };
            let rpc = RpcStatus {
                code: tonic::Code::FailedPrecondition as i32,
                message: top.into(),
                details: vec![prost_types::Any {
                    type_url: ERROR_DETAIL_TYPE_URL.into(),
                    value: detail.encode_to_vec(),
                }],
            };
            tonic::Status::with_details(
                tonic::Code::FailedPrecondition,
                top,
                rpc.encode_to_vec().into(),
            )
        };
        let down = status(
            "could not launch chaincode ehr_1.0:ab12: error starting container: dial tcp 127.0.0.1:9999: connect: connection refused",
        );
        match map_err(ClientError::Status(down)) {
            ChainError::Unavailable(m) => {
                assert!(
                    m.contains("127.0.0.1:9999") && m.contains("hospital-a"),
                    "{m}"
                )
            }
            other => panic!("mapped to {other:?}"),
        }
        // Another failure keeps its reason too, as a ledger error.
        match map_err(ClientError::Status(status("some other peer failure"))) {
            ChainError::Other(m) => assert!(m.contains("some other peer failure"), "{m}"),
            other => panic!("mapped to {other:?}"),
        }
    }

    #[tokio::test]
    async fn https_ledgers_need_their_tls_ca_and_http_ones_none() {
        let ca = ehr_ledger::msp::ca::OrgCa::generate("org-a", "org-a").unwrap();
        let probe = ca
            .issue("gateway", ehr_ledger::msp::ca::CertRole::Admin, &[])
            .unwrap();
        let tls = LedgerTls {
            ca_pem: ca.cert_pem().to_owned(),
            domain: Some("peer0.org-a.example.com".into()),
        };
        let mk = |url: &str, t: Option<&LedgerTls>| {
            FabricChain::with_tls(url, t, "ehr", "ehr", probe.clone(), None).map(|_| ())
        };
        assert!(mk("https://127.0.0.1:7051", Some(&tls)).is_ok());
        assert!(mk("http://127.0.0.1:7051", None).is_ok());
        let e = mk("https://127.0.0.1:7051", None).unwrap_err();
        assert!(e.to_string().contains("--ledger-ca-file"), "{e}");
        assert!(mk("http://127.0.0.1:7051", Some(&tls)).is_err());
        let bad = LedgerTls {
            ca_pem: "not a certificate".into(),
            domain: None,
        };
        // A CA that is not PEM fails when the channel first connects, not here;
        // the settings themselves are accepted.
        assert!(mk("https://127.0.0.1:7051", Some(&bad)).is_ok());
    }

    #[test]
    fn reads_the_height_of_a_blockchain_info() {
        // height = 300 (varint ac 02), current_block_hash = 2 bytes, previous = 1 byte.
        let info = [0x08, 0xac, 0x02, 0x12, 0x02, 0xaa, 0xbb, 0x1a, 0x01, 0xcc];
        assert_eq!(blockchain_info_height(&info), Some(300));
        // Field order does not matter.
        let info = [0x12, 0x01, 0xaa, 0x08, 0x05];
        assert_eq!(blockchain_info_height(&info), Some(5));
        assert_eq!(blockchain_info_height(&[0x12, 0x09, 0x00]), None);
        assert_eq!(blockchain_info_height(&[0x08, 0xff]), None);
    }

    /// Fabric 2.5's Endorse says only "see attached details"; the chaincode's
    /// status is in the `gateway.ErrorDetail` — it must still map to a 4xx.
    #[test]
    fn fabric_shaped_chaincode_errors_map_to_their_status() {
        let body = r#"{"code":"forbidden","message":"no"}"#;
        let endorse = chaincode_error(Operation::Endorse, "peer0:7051", "Org1MSP", 403, body);
        match map_err(ClientError::Status(endorse)) {
            ChainError::Rejected { status, code, .. } => {
                assert_eq!((status, code.as_str()), (403, "forbidden"))
            }
            other => panic!("endorse error mapped to {other:?}"),
        }
        let evaluate = chaincode_error(
            Operation::Evaluate,
            "peer0:7051",
            "Org1MSP",
            404,
            r#"{"code":"not_found","message":"no record"}"#,
        );
        match map_err(ClientError::Status(evaluate)) {
            ChainError::Rejected { status, code, .. } => {
                assert_eq!((status, code.as_str()), (404, "not_found"))
            }
            other => panic!("evaluate error mapped to {other:?}"),
        }
        assert!(matches!(
            map_err(ClientError::Status(tonic::Status::unavailable("peer down"))),
            ChainError::Unavailable(_)
        ));
    }
}
