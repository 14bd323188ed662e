//! A Fabric Gateway client: builds and signs proposals and transactions with
//! an X.509 identity (P-256) and drives `gateway.Gateway` — Evaluate;
//! Endorse + sign + Submit + CommitStatus; ChaincodeEvents from a block with
//! resume. It sends exactly the messages the official Fabric Gateway SDKs
//! send, so the same code talks to the devnet and to a Fabric 2.4+ peer.

use std::collections::BTreeMap;

use ehr_proto::gateway::gateway_client::GatewayClient as RawClient;
use ehr_proto::gateway::{
    ChaincodeEventsRequest, CommitStatusRequest, EndorseRequest, EvaluateRequest,
    SignedChaincodeEventsRequest, SignedCommitStatusRequest, SubmitRequest,
};
use ehr_proto::orderer::{SeekNextCommit, SeekPosition, SeekSpecified, seek_position};
use ehr_proto::protos::{ChaincodeEvent, TxValidationCode};
use futures::{Stream, StreamExt};
use prost::Message;
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

use crate::msp::SigningIdentity;
use crate::tx::{self, TxError};

/// Client failures.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to gateway: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The gateway answered with an error status (chaincode errors included).
    #[error("gateway: {0}")]
    Status(#[from] tonic::Status),
    #[error(transparent)]
    Tx(#[from] TxError),
    #[error("gateway response: {0}")]
    BadResponse(String),
}

impl ClientError {
    /// The gRPC status code, when the gateway answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    /// The chaincode's `(status, message)` when the gateway refused the call
    /// because the chaincode answered status ≥ 400 — read from Fabric's
    /// `gateway.ErrorDetail`s (Endorse puts it only there) or the message.
    pub fn chaincode_failure(&self) -> Option<(i32, String)> {
        match self {
            ClientError::Status(s) => crate::rpc_error::chaincode_failure(s),
            _ => None,
        }
    }
}

/// The outcome of a submitted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub tx_id: String,
    /// The chaincode's response payload from endorsement.
    pub payload: Vec<u8>,
    pub block: u64,
    /// Commit validation code; anything but `Valid` means the writes were
    /// not applied (e.g. `MvccReadConflict`).
    pub code: TxValidationCode,
}

/// An endorsed transaction, not yet signed and submitted.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub tx_id: String,
    pub channel: String,
    /// The chaincode's response payload.
    pub payload: Vec<u8>,
    /// The unsigned transaction envelope from the gateway.
    pub envelope: ehr_proto::common::Envelope,
}

/// One chaincode event with the place to resume after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventItem {
    pub block: u64,
    pub event: ChaincodeEvent,
}

impl EventItem {
    /// Where to resume so that this event is not delivered again.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            block: self.block,
            after_tx_id: Some(self.event.tx_id.clone()),
        }
    }
}

/// Every event of one chaincode in one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBlock {
    pub block: u64,
    pub events: Vec<ChaincodeEvent>,
}

/// Where a chaincode event stream starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// First block to read.
    pub block: u64,
    /// Skip events in `block` up to and including this transaction.
    pub after_tx_id: Option<String>,
}

/// A Fabric Gateway client for one identity.
#[derive(Clone)]
pub struct GatewayClient {
    raw: RawClient<Channel>,
    signer: SigningIdentity,
    endorsing_orgs: Vec<String>,
}

impl GatewayClient {
    /// Connects to `endpoint` (`http://127.0.0.1:7051`) in plaintext.
    pub async fn connect(endpoint: &str, signer: SigningIdentity) -> Result<Self, ClientError> {
        let ch = Endpoint::from_shared(endpoint.to_string())?
            .connect()
            .await?;
        Ok(Self::from_channel(ch, signer))
    }

    /// Uses an existing channel (e.g. one configured with TLS for a real peer).
    pub fn from_channel(channel: Channel, signer: SigningIdentity) -> Self {
        Self {
            raw: RawClient::new(channel)
                .max_decoding_message_size(crate::service::MAX_MESSAGE)
                .max_encoding_message_size(crate::service::MAX_MESSAGE),
            signer,
            endorsing_orgs: Vec::new(),
        }
    }

    /// Asks the gateway to endorse with these orgs' peers (Fabric's
    /// `endorsing_organizations`); empty lets the gateway choose.
    pub fn with_endorsing_orgs(mut self, orgs: Vec<String>) -> Self {
        self.endorsing_orgs = orgs;
        self
    }

    /// The identity this client signs with.
    pub fn identity(&self) -> &SigningIdentity {
        &self.signer
    }

    /// The chaincode events of block `number`'s valid transactions, read
    /// with the query system chaincode (`qscc GetBlockByNumber`), as from
    /// any Fabric peer.
    pub async fn block_events(
        &self,
        channel: &str,
        number: u64,
    ) -> Result<Vec<ChaincodeEvent>, ClientError> {
        let n = number.to_string();
        let bytes = self
            .evaluate(
                channel,
                "qscc",
                "GetBlockByNumber",
                &[channel.as_bytes(), n.as_bytes()],
            )
            .await?;
        let block = ehr_proto::common::Block::decode(bytes.as_slice())
            .map_err(|e| ClientError::BadResponse(format!("block {number}: {e}")))?;
        if block.header.as_ref().map(|h| h.number) != Some(number) {
            return Err(ClientError::BadResponse(format!(
                "asked for block {number}, got another"
            )));
        }
        Ok(crate::devnet::events_of(&block))
    }

    /// Evaluates (queries) `function(args)` on `chaincode`; returns the payload.
    pub async fn evaluate(
        &self,
        channel: &str,
        chaincode: &str,
        function: &str,
        args: &[&[u8]],
    ) -> Result<Vec<u8>, ClientError> {
        self.evaluate_transient(channel, chaincode, function, args, BTreeMap::new())
            .await
    }

    /// [`GatewayClient::evaluate`] with a transient map.
    pub async fn evaluate_transient(
        &self,
        channel: &str,
        chaincode: &str,
        function: &str,
        args: &[&[u8]],
        transient: BTreeMap<String, Vec<u8>>,
    ) -> Result<Vec<u8>, ClientError> {
        let p = tx::new_proposal(
            &self.signer,
            channel,
            chaincode,
            argv(function, args),
            transient,
        )?;
        let r = self
            .raw
            .clone()
            .evaluate(EvaluateRequest {
                transaction_id: p.tx_id,
                channel_id: channel.to_string(),
                proposed_transaction: Some(p.signed),
                target_organizations: Vec::new(),
            })
            .await?
            .into_inner();
        Ok(r.result.map(|r| r.payload).unwrap_or_default())
    }

    /// Submits `function(args)`: Endorse, sign, Submit, then wait for the
    /// commit status.
    pub async fn submit(
        &self,
        channel: &str,
        chaincode: &str,
        function: &str,
        args: &[&[u8]],
    ) -> Result<Submitted, ClientError> {
        self.submit_transient(channel, chaincode, function, args, BTreeMap::new())
            .await
    }

    /// [`GatewayClient::submit`] with a transient map.
    pub async fn submit_transient(
        &self,
        channel: &str,
        chaincode: &str,
        function: &str,
        args: &[&[u8]],
        transient: BTreeMap<String, Vec<u8>>,
    ) -> Result<Submitted, ClientError> {
        let (tx_id, payload) = self
            .endorse_and_submit(channel, chaincode, function, args, transient)
            .await?;
        let (code, block) = self.commit_status(channel, &tx_id).await?;
        Ok(Submitted {
            tx_id,
            payload,
            block,
            code,
        })
    }

    /// Endorse + sign + Submit without waiting for commit; returns the tx id
    /// and the endorsed response payload.
    pub async fn endorse_and_submit(
        &self,
        channel: &str,
        chaincode: &str,
        function: &str,
        args: &[&[u8]],
        transient: BTreeMap<String, Vec<u8>>,
    ) -> Result<(String, Vec<u8>), ClientError> {
        let prepared = self
            .endorse(channel, chaincode, function, args, transient)
            .await?;
        let tx_id = prepared.tx_id.clone();
        let payload = prepared.payload.clone();
        self.submit_prepared(prepared).await?;
        Ok((tx_id, payload))
    }

    /// Builds, signs and endorses a proposal; the result can be submitted
    /// later with [`GatewayClient::submit_prepared`].
    pub async fn endorse(
        &self,
        channel: &str,
        chaincode: &str,
        function: &str,
        args: &[&[u8]],
        transient: BTreeMap<String, Vec<u8>>,
    ) -> Result<Prepared, ClientError> {
        let p = tx::new_proposal(
            &self.signer,
            channel,
            chaincode,
            argv(function, args),
            transient,
        )?;
        let tx_id = p.tx_id.clone();
        let endorsed = self
            .raw
            .clone()
            .endorse(EndorseRequest {
                transaction_id: tx_id.clone(),
                channel_id: channel.to_string(),
                proposed_transaction: Some(p.signed),
                endorsing_organizations: self.endorsing_orgs.clone(),
            })
            .await?
            .into_inner();
        let envelope = endorsed
            .prepared_transaction
            .ok_or_else(|| ClientError::BadResponse("no prepared transaction".into()))?;
        let parsed = tx::parse_transaction(&envelope)?;
        if parsed.tx_id != tx_id {
            return Err(ClientError::BadResponse(
                "prepared transaction has another tx id".into(),
            ));
        }
        Ok(Prepared {
            tx_id,
            channel: channel.to_string(),
            payload: parsed.response.payload,
            envelope,
        })
    }

    /// Signs and submits an endorsed transaction (returns once ordered).
    pub async fn submit_prepared(&self, prepared: Prepared) -> Result<String, ClientError> {
        let mut env = prepared.envelope;
        env.signature = self.signer.sign(&env.payload);
        self.raw
            .clone()
            .submit(SubmitRequest {
                transaction_id: prepared.tx_id.clone(),
                channel_id: prepared.channel,
                prepared_transaction: Some(env),
            })
            .await?;
        Ok(prepared.tx_id)
    }

    /// Waits for `tx_id` to commit; returns its validation code and block.
    pub async fn commit_status(
        &self,
        channel: &str,
        tx_id: &str,
    ) -> Result<(TxValidationCode, u64), ClientError> {
        let request = CommitStatusRequest {
            transaction_id: tx_id.to_string(),
            channel_id: channel.to_string(),
            identity: self.signer.serialized().to_vec(),
        }
        .encode_to_vec();
        let signature = self.signer.sign(&request);
        let r = self
            .raw
            .clone()
            .commit_status(SignedCommitStatusRequest { request, signature })
            .await?
            .into_inner();
        let code = TxValidationCode::try_from(r.result).map_err(|_| {
            ClientError::BadResponse(format!("unknown validation code {}", r.result))
        })?;
        Ok((code, r.block_number))
    }

    /// Streams `chaincode`'s events from `from` (or from the next commit when
    /// `None`). Resume after a break with the last item's
    /// [`EventItem::checkpoint`].
    pub async fn chaincode_events(
        &self,
        channel: &str,
        chaincode: &str,
        from: Option<Checkpoint>,
    ) -> Result<impl Stream<Item = Result<EventItem, ClientError>> + use<>, ClientError> {
        let blocks = self
            .chaincode_event_blocks(channel, chaincode, from)
            .await?;
        Ok(blocks.flat_map(|r| {
            let items: Vec<Result<EventItem, ClientError>> = match r {
                Ok(b) => b
                    .events
                    .into_iter()
                    .map(|event| {
                        Ok(EventItem {
                            block: b.block,
                            event,
                        })
                    })
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(items)
        }))
    }

    /// Like [`GatewayClient::chaincode_events`], one item per block: every
    /// event of the chaincode in that block at once (as the gateway sends
    /// them), so a consumer knows when a block is complete.
    pub async fn chaincode_event_blocks(
        &self,
        channel: &str,
        chaincode: &str,
        from: Option<Checkpoint>,
    ) -> Result<impl Stream<Item = Result<EventBlock, ClientError>> + use<>, ClientError> {
        let (start, after) = match from {
            Some(c) => (
                seek_position::Type::Specified(SeekSpecified { number: c.block }),
                c.after_tx_id.unwrap_or_default(),
            ),
            None => (
                seek_position::Type::NextCommit(SeekNextCommit {}),
                String::new(),
            ),
        };
        let request = ChaincodeEventsRequest {
            channel_id: channel.to_string(),
            chaincode_id: chaincode.to_string(),
            identity: self.signer.serialized().to_vec(),
            start_position: Some(SeekPosition {
                r#type: Some(start),
            }),
            after_transaction_id: after,
        }
        .encode_to_vec();
        let signature = self.signer.sign(&request);
        let stream = self
            .raw
            .clone()
            .chaincode_events(SignedChaincodeEventsRequest { request, signature })
            .await?
            .into_inner();
        Ok(stream.map(|r| match r {
            Ok(resp) => Ok(EventBlock {
                block: resp.block_number,
                events: resp.events,
            }),
            Err(s) => Err(ClientError::Status(s)),
        }))
    }
}

fn argv(function: &str, args: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut v = Vec::with_capacity(args.len() + 1);
    v.push(function.as_bytes().to_vec());
    v.extend(args.iter().map(|a| a.to_vec()));
    v
}
