//! Fabric's proposal and transaction formats: building them (the client
//! side, as `fabric-gateway` does) and taking them apart with every check a
//! peer makes (the devnet side, as `protoutil` and the endorser/validator do).
//!
//! - tx id = hex(SHA-256(nonce || creator)), checked on every proposal and
//!   transaction;
//! - the proposal is signed over `SignedProposal.proposal_bytes`, the
//!   transaction over `Envelope.payload`;
//! - an endorsement is signed over `ProposalResponse.payload || endorser`;
//! - the proposal hash an endorsement commits to is SHA-256 of
//!   `channel_header || signature_header || ChaincodeProposalPayload without
//!   its transient map` (`protoutil.GetProposalHash1`).

use std::collections::BTreeMap;
use std::sync::Arc;

use ehr_chaincode::stub::TxTimestamp;
use ehr_proto::common::{ChannelHeader, Envelope, Header, HeaderType, Payload, SignatureHeader};
use ehr_proto::protos::{
    ChaincodeAction, ChaincodeActionPayload, ChaincodeEndorsedAction, ChaincodeEvent,
    ChaincodeHeaderExtension, ChaincodeId, ChaincodeInput, ChaincodeInvocationSpec,
    ChaincodeProposalPayload, ChaincodeSpec, Endorsement, Proposal, ProposalResponse,
    ProposalResponsePayload, Response, SignedProposal, Transaction, TransactionAction,
    TxValidationCode,
};
use ehr_proto::rwset::TxReadWriteSet;
use prost::Message;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::hash::compute_tx_id;
use crate::msp::{Msp, MspError, SigningIdentity, VerifiedIdentity};

/// A proposal or transaction that is not acceptable.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TxError {
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("creator: {0}")]
    Creator(MspError),
    #[error("bad signature: {0}")]
    Signature(MspError),
    #[error("tx id {got} does not match SHA-256(nonce || creator) = {want}")]
    TxIdMismatch { got: String, want: String },
    #[error("wrong channel {got:?}, this ledger serves {want:?}")]
    WrongChannel { got: String, want: String },
    #[error("certificate of the creator is expired or not yet valid")]
    Expired,
    #[error("no randomness: {0}")]
    Random(String),
}

impl TxError {
    fn malformed(what: &'static str, reason: impl ToString) -> Self {
        Self::Malformed {
            what,
            reason: reason.to_string(),
        }
    }

    /// The validation code a committer records for this failure.
    pub fn validation_code(&self) -> TxValidationCode {
        match self {
            TxError::Malformed { what, .. } if what.contains("header") => {
                TxValidationCode::BadCommonHeader
            }
            TxError::Malformed { .. } => TxValidationCode::BadPayload,
            TxError::Creator(_) | TxError::Signature(_) | TxError::Expired => {
                TxValidationCode::BadCreatorSignature
            }
            TxError::TxIdMismatch { .. } => TxValidationCode::BadProposalTxid,
            TxError::WrongChannel { .. } => TxValidationCode::TargetChainNotFound,
            TxError::Random(_) => TxValidationCode::InvalidOtherReason,
        }
    }
}

fn decode<M: Message + Default>(what: &'static str, b: &[u8]) -> Result<M, TxError> {
    M::decode(b).map_err(|e| TxError::malformed(what, e))
}

fn now_timestamp() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    now_timestamp().seconds
}

/// A freshly built, signed proposal.
#[derive(Debug, Clone)]
pub struct NewProposal {
    pub tx_id: String,
    pub signed: SignedProposal,
}

/// Builds and signs an endorser-transaction proposal invoking `chaincode`
/// with `args` (function name first), as the Fabric Gateway SDKs do.
pub fn new_proposal(
    signer: &SigningIdentity,
    channel: &str,
    chaincode: &str,
    args: Vec<Vec<u8>>,
    transient: BTreeMap<String, Vec<u8>>,
) -> Result<NewProposal, TxError> {
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|e| TxError::Random(e.to_string()))?;
    new_proposal_with(
        signer,
        channel,
        chaincode,
        args,
        transient,
        &nonce,
        now_timestamp(),
    )
}

/// [`new_proposal`] with a given nonce and timestamp (deterministic tx ids
/// for replaying the same transactions on two ledgers).
pub fn new_proposal_with(
    signer: &SigningIdentity,
    channel: &str,
    chaincode: &str,
    args: Vec<Vec<u8>>,
    transient: BTreeMap<String, Vec<u8>>,
    nonce: &[u8],
    timestamp: prost_types::Timestamp,
) -> Result<NewProposal, TxError> {
    if nonce.is_empty() {
        return Err(TxError::malformed("signature header", "empty nonce"));
    }
    let creator = signer.serialized().to_vec();
    let tx_id = compute_tx_id(nonce, &creator);
    let extension = ChaincodeHeaderExtension {
        chaincode_id: Some(ChaincodeId {
            name: chaincode.to_string(),
            ..Default::default()
        }),
    };
    let channel_header = ChannelHeader {
        r#type: HeaderType::EndorserTransaction as i32,
        timestamp: Some(timestamp),
        channel_id: channel.to_string(),
        tx_id: tx_id.clone(),
        extension: extension.encode_to_vec(),
        ..Default::default()
    };
    let signature_header = SignatureHeader {
        creator,
        nonce: nonce.to_vec(),
    };
    let header = Header {
        channel_header: channel_header.encode_to_vec(),
        signature_header: signature_header.encode_to_vec(),
    };
    let cis = ChaincodeInvocationSpec {
        chaincode_spec: Some(ChaincodeSpec {
            chaincode_id: Some(ChaincodeId {
                name: chaincode.to_string(),
                ..Default::default()
            }),
            input: Some(ChaincodeInput {
                args,
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let payload = ChaincodeProposalPayload {
        input: cis.encode_to_vec(),
        transient_map: transient.into_iter().collect(),
    };
    let proposal = Proposal {
        header: header.encode_to_vec(),
        payload: payload.encode_to_vec(),
        extension: Vec::new(),
    };
    let proposal_bytes = proposal.encode_to_vec();
    let signature = signer.sign(&proposal_bytes);
    Ok(NewProposal {
        tx_id,
        signed: SignedProposal {
            proposal_bytes,
            signature,
        },
    })
}

/// A proposal a peer has checked (signature, creator, tx id) and decoded.
#[derive(Debug, Clone)]
pub struct CheckedProposal {
    pub tx_id: String,
    pub channel_id: String,
    pub chaincode: String,
    pub args: Vec<Vec<u8>>,
    pub is_init: bool,
    pub transient: BTreeMap<String, Vec<u8>>,
    pub timestamp: TxTimestamp,
    /// `msp.SerializedIdentity` bytes of the creator.
    pub creator: Vec<u8>,
    pub identity: Arc<VerifiedIdentity>,
    /// The proposal's `common.Header` (channel and signature header bytes).
    pub header: Header,
    /// `ChaincodeProposalPayload` without the transient map, encoded.
    pub payload_no_transient: Vec<u8>,
    /// `protoutil.GetProposalHash1`.
    pub proposal_hash: [u8; 32],
    /// The signed proposal as received (sent on to an out-of-process chaincode).
    pub signed: SignedProposal,
}

/// Checks and decodes a signed proposal as Fabric's endorser does.
pub fn check_proposal(
    sp: &SignedProposal,
    msp: &Msp,
    channel: &str,
) -> Result<CheckedProposal, TxError> {
    let proposal: Proposal = decode("proposal", &sp.proposal_bytes)?;
    let header: Header = decode("proposal header", &proposal.header)?;
    let ch: ChannelHeader = decode("channel header", &header.channel_header)?;
    let sh: SignatureHeader = decode("signature header", &header.signature_header)?;
    if ch.r#type != HeaderType::EndorserTransaction as i32 {
        return Err(TxError::malformed(
            "channel header",
            format!("type {} is not ENDORSER_TRANSACTION", ch.r#type),
        ));
    }
    if ch.channel_id != channel {
        return Err(TxError::WrongChannel {
            got: ch.channel_id,
            want: channel.to_string(),
        });
    }
    if sh.nonce.is_empty() || sh.creator.is_empty() {
        return Err(TxError::malformed(
            "signature header",
            "nonce and creator are required",
        ));
    }
    let identity = msp.deserialize(&sh.creator).map_err(TxError::Creator)?;
    if !identity.valid_at(unix_now()) {
        return Err(TxError::Expired);
    }
    identity
        .verify(&sp.proposal_bytes, &sp.signature)
        .map_err(TxError::Signature)?;
    let want = compute_tx_id(&sh.nonce, &sh.creator);
    if ch.tx_id != want {
        return Err(TxError::TxIdMismatch {
            got: ch.tx_id,
            want,
        });
    }
    let ext: ChaincodeHeaderExtension = decode("chaincode header extension", &ch.extension)?;
    let chaincode = ext
        .chaincode_id
        .map(|c| c.name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| TxError::malformed("chaincode header extension", "no chaincode name"))?;
    let ccpp: ChaincodeProposalPayload = decode("chaincode proposal payload", &proposal.payload)?;
    let cis: ChaincodeInvocationSpec = decode("chaincode invocation spec", &ccpp.input)?;
    let input = cis
        .chaincode_spec
        .and_then(|s| s.input)
        .ok_or_else(|| TxError::malformed("chaincode invocation spec", "no input"))?;
    let payload_no_transient = ChaincodeProposalPayload {
        input: ccpp.input.clone(),
        transient_map: Default::default(),
    }
    .encode_to_vec();
    let proposal_hash = proposal_hash(&header, &payload_no_transient);
    let ts = ch.timestamp.unwrap_or_default();
    Ok(CheckedProposal {
        tx_id: ch.tx_id,
        channel_id: ch.channel_id,
        chaincode,
        args: input.args,
        is_init: input.is_init,
        transient: ccpp.transient_map.into_iter().collect(),
        timestamp: TxTimestamp {
            seconds: ts.seconds,
            nanos: ts.nanos,
        },
        creator: sh.creator,
        identity,
        header,
        payload_no_transient,
        proposal_hash,
        signed: sp.clone(),
    })
}

/// `protoutil.GetProposalHash1`.
pub fn proposal_hash(header: &Header, payload_no_transient: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(&header.channel_header);
    h.update(&header.signature_header);
    h.update(payload_no_transient);
    h.finalize().into()
}

/// Builds the endorser's signed `ProposalResponse`.
pub fn endorse(
    endorser: &SigningIdentity,
    proposal: &CheckedProposal,
    response: Response,
    rwset: &TxReadWriteSet,
    event: Option<&ChaincodeEvent>,
) -> ProposalResponse {
    let action = ChaincodeAction {
        results: rwset.encode_to_vec(),
        events: event.map(Message::encode_to_vec).unwrap_or_default(),
        response: Some(response.clone()),
        chaincode_id: Some(ChaincodeId {
            name: proposal.chaincode.clone(),
            ..Default::default()
        }),
    };
    let prp = ProposalResponsePayload {
        proposal_hash: proposal.proposal_hash.to_vec(),
        extension: action.encode_to_vec(),
    }
    .encode_to_vec();
    let endorsement = sign_endorsement(endorser, &prp);
    ProposalResponse {
        version: 1,
        timestamp: Some(now_timestamp()),
        response: Some(response),
        payload: prp,
        endorsement: Some(endorsement),
        interest: None,
    }
}

/// An endorsement of `prp` (signature over `prp || endorser`).
pub fn sign_endorsement(endorser: &SigningIdentity, prp: &[u8]) -> Endorsement {
    let mut msg = Vec::with_capacity(prp.len() + endorser.serialized().len());
    msg.extend_from_slice(prp);
    msg.extend_from_slice(endorser.serialized());
    Endorsement {
        endorser: endorser.serialized().to_vec(),
        signature: endorser.sign(&msg),
    }
}

/// The unsigned transaction envelope for a proposal and its endorsements
/// (what Fabric's gateway returns as `prepared_transaction`).
pub fn prepare_transaction(
    proposal: &CheckedProposal,
    prp: Vec<u8>,
    endorsements: Vec<Endorsement>,
) -> Envelope {
    let cap = ChaincodeActionPayload {
        chaincode_proposal_payload: proposal.payload_no_transient.clone(),
        action: Some(ChaincodeEndorsedAction {
            proposal_response_payload: prp,
            endorsements,
        }),
    };
    let tx = Transaction {
        actions: vec![TransactionAction {
            header: proposal.header.signature_header.clone(),
            payload: cap.encode_to_vec(),
        }],
    };
    let payload = Payload {
        header: Some(proposal.header.clone()),
        data: tx.encode_to_vec(),
    };
    Envelope {
        payload: payload.encode_to_vec(),
        signature: Vec::new(),
    }
}

/// A transaction envelope taken apart (no signature checked yet).
#[derive(Debug, Clone)]
pub struct ParsedTx {
    pub tx_id: String,
    pub channel_id: String,
    pub creator: Vec<u8>,
    pub nonce: Vec<u8>,
    pub timestamp: TxTimestamp,
    pub chaincode: String,
    pub rwset: TxReadWriteSet,
    pub event: Option<ChaincodeEvent>,
    pub response: Response,
    pub prp: Vec<u8>,
    pub endorsements: Vec<Endorsement>,
    /// Whether the endorsed proposal hash matches this transaction's header
    /// and chaincode proposal payload.
    pub proposal_hash_matches: bool,
}

/// Decodes an endorser transaction envelope down to its read-write set.
pub fn parse_transaction(env: &Envelope) -> Result<ParsedTx, TxError> {
    let payload: Payload = decode("payload", &env.payload)?;
    let header = payload
        .header
        .ok_or_else(|| TxError::malformed("payload header", "missing"))?;
    let ch: ChannelHeader = decode("channel header", &header.channel_header)?;
    let sh: SignatureHeader = decode("signature header", &header.signature_header)?;
    if ch.r#type != HeaderType::EndorserTransaction as i32 {
        return Err(TxError::malformed(
            "channel header",
            format!("type {} is not ENDORSER_TRANSACTION", ch.r#type),
        ));
    }
    let tx: Transaction = decode("transaction", &payload.data)?;
    let [action] = tx.actions.as_slice() else {
        return Err(TxError::malformed(
            "transaction",
            "exactly one action expected",
        ));
    };
    let cap: ChaincodeActionPayload = decode("chaincode action payload", &action.payload)?;
    let endorsed = cap
        .action
        .ok_or_else(|| TxError::malformed("chaincode action payload", "no action"))?;
    let prp: ProposalResponsePayload = decode(
        "proposal response payload",
        &endorsed.proposal_response_payload,
    )?;
    let cca: ChaincodeAction = decode("chaincode action", &prp.extension)?;
    let rwset: TxReadWriteSet = decode("read-write set", &cca.results)?;
    let event = if cca.events.is_empty() {
        None
    } else {
        Some(decode::<ChaincodeEvent>("chaincode event", &cca.events)?)
    };
    let chaincode = cca.chaincode_id.map(|c| c.name).unwrap_or_default();
    let proposal_hash_matches = action.header == header.signature_header
        && proposal_hash(&header, &cap.chaincode_proposal_payload).as_slice()
            == prp.proposal_hash.as_slice();
    let ts = ch.timestamp.unwrap_or_default();
    Ok(ParsedTx {
        tx_id: ch.tx_id,
        channel_id: ch.channel_id,
        creator: sh.creator,
        nonce: sh.nonce,
        timestamp: TxTimestamp {
            seconds: ts.seconds,
            nanos: ts.nanos,
        },
        chaincode,
        rwset,
        event,
        response: cca.response.unwrap_or_default(),
        prp: endorsed.proposal_response_payload,
        endorsements: endorsed.endorsements,
        proposal_hash_matches,
    })
}

/// Checks a transaction's creator, signature and tx id.
pub fn check_creator(env: &Envelope, tx: &ParsedTx, msp: &Msp) -> Result<(), TxError> {
    let id = msp.deserialize(&tx.creator).map_err(TxError::Creator)?;
    id.verify(&env.payload, &env.signature)
        .map_err(TxError::Signature)?;
    let want = compute_tx_id(&tx.nonce, &tx.creator);
    if tx.tx_id != want {
        return Err(TxError::TxIdMismatch {
            got: tx.tx_id.clone(),
            want,
        });
    }
    Ok(())
}

/// The endorsement policy of the devnet: at least one valid endorsement by
/// a peer of a member org, over a proposal hash that matches the transaction.
pub fn check_endorsements(tx: &ParsedTx, msp: &Msp) -> bool {
    if !tx.proposal_hash_matches {
        return false;
    }
    tx.endorsements.iter().any(|e| {
        let Ok(id) = msp.deserialize(&e.endorser) else {
            return false;
        };
        if !id.has_role("peer") {
            return false;
        }
        let mut msg = Vec::with_capacity(tx.prp.len() + e.endorser.len());
        msg.extend_from_slice(&tx.prp);
        msg.extend_from_slice(&e.endorser);
        id.verify(&msg, &e.signature).is_ok()
    })
}
