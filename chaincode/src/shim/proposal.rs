//! What a transaction carries: the arguments (from the message payload) and
//! the context the contract may read (from the signed proposal).

use std::collections::BTreeMap;

use ehr_proto::common::{ChannelHeader, Header, HeaderType, SignatureHeader};
use ehr_proto::protos::{ChaincodeInput, ChaincodeMessage, ChaincodeProposalPayload, Proposal};
use prost::Message;

use super::ShimError;
use crate::stub::TxTimestamp;

/// The context of one INIT/TRANSACTION, read from its `SignedProposal`.
#[derive(Clone, PartialEq, Eq)]
pub struct TxContext {
    /// The transaction id (the message's `txid`, equal to the channel header's).
    pub tx_id: String,
    /// The channel the peer runs the transaction on (the message's `channel_id`).
    pub channel_id: String,
    /// The client's timestamp from the channel header.
    pub timestamp: TxTimestamp,
    /// The creator: an encoded `msp.SerializedIdentity`.
    pub creator: Vec<u8>,
    /// The proposal's transient map.
    pub transient: BTreeMap<String, Vec<u8>>,
}

// Hand-written so that creator certificates and transient data never end up
// in logs through `{:?}`.
impl std::fmt::Debug for TxContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxContext")
            .field("tx_id", &self.tx_id)
            .field("channel_id", &self.channel_id)
            .field("timestamp", &self.timestamp)
            .field("creator_len", &self.creator.len())
            .field("transient_keys", &self.transient.len())
            .finish()
    }
}

/// Decodes the arguments and the context of an INIT/TRANSACTION message.
///
/// Checks that the message names a transaction and a channel, that the
/// signed proposal is present and decodes down to the channel header and the
/// signature header, that the channel header is an endorser (or config)
/// transaction with the same tx id and a timestamp, and that the creator is
/// present.
pub fn parse_transaction(msg: &ChaincodeMessage) -> Result<(ChaincodeInput, TxContext), ShimError> {
    if msg.txid.is_empty() {
        return Err(ShimError::invalid("message", "empty txid"));
    }
    if msg.channel_id.is_empty() {
        return Err(ShimError::invalid("message", "empty channel_id"));
    }
    let input = ChaincodeInput::decode(msg.payload.as_slice())
        .map_err(|e| ShimError::decode("ChaincodeInput", e))?;

    let signed = msg
        .proposal
        .as_ref()
        .ok_or_else(|| ShimError::invalid("message", "no signed proposal"))?;
    let proposal = Proposal::decode(signed.proposal_bytes.as_slice())
        .map_err(|e| ShimError::decode("Proposal", e))?;
    let header =
        Header::decode(proposal.header.as_slice()).map_err(|e| ShimError::decode("Header", e))?;
    let channel_header = ChannelHeader::decode(header.channel_header.as_slice())
        .map_err(|e| ShimError::decode("ChannelHeader", e))?;
    let signature_header = SignatureHeader::decode(header.signature_header.as_slice())
        .map_err(|e| ShimError::decode("SignatureHeader", e))?;
    let payload = ChaincodeProposalPayload::decode(proposal.payload.as_slice())
        .map_err(|e| ShimError::decode("ChaincodeProposalPayload", e))?;

    let kind = channel_header.r#type;
    if kind != HeaderType::EndorserTransaction as i32 && kind != HeaderType::Config as i32 {
        return Err(ShimError::invalid(
            "ChannelHeader",
            format!("type {kind} is not an endorser transaction"),
        ));
    }
    if channel_header.tx_id != msg.txid {
        return Err(ShimError::invalid(
            "ChannelHeader",
            "tx_id differs from the message's txid",
        ));
    }
    let ts = channel_header
        .timestamp
        .ok_or_else(|| ShimError::invalid("ChannelHeader", "no timestamp"))?;
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(ShimError::invalid(
            "ChannelHeader",
            "timestamp nanos out of range",
        ));
    }
    if signature_header.creator.is_empty() {
        return Err(ShimError::invalid("SignatureHeader", "no creator"));
    }

    let ctx = TxContext {
        tx_id: msg.txid.clone(),
        channel_id: msg.channel_id.clone(),
        timestamp: TxTimestamp {
            seconds: ts.seconds,
            nanos: ts.nanos,
        },
        creator: signature_header.creator,
        transient: payload.transient_map,
    };
    Ok((input, ctx))
}
