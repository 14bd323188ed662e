//! Blocks as Fabric builds them, and the record the block file stores for
//! each (the block plus the private data of its valid transactions, as
//! Fabric's private data store keeps it beside the block store).

use ehr_proto::common::{
    Block, BlockData, BlockHeader, BlockMetadata, BlockMetadataIndex, ChannelHeader, Envelope,
    Header, HeaderType, Payload,
};
use ehr_proto::rwset::TxPvtReadWriteSet;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::hash::{block_data_hash, block_header_hash};

/// Number of metadata slots in a Fabric block (`len(BlockMetadataIndex_name)`).
pub const METADATA_SLOTS: usize = 5;

/// The private read-write set of one transaction of a block.
#[derive(Clone, PartialEq, Message)]
pub struct TxPvtData {
    #[prost(uint64, tag = "1")]
    pub tx_num: u64,
    #[prost(message, optional, tag = "2")]
    pub pvt: Option<TxPvtReadWriteSet>,
}

/// What the block file holds for one block.
#[derive(Clone, PartialEq, Message)]
pub struct StoredBlock {
    #[prost(message, optional, tag = "1")]
    pub block: Option<Block>,
    #[prost(message, repeated, tag = "2")]
    pub pvt: Vec<TxPvtData>,
}

/// Builds block `number` over `envelopes` with the per-transaction
/// validation codes in the TRANSACTIONS_FILTER metadata.
pub fn build_block(
    number: u64,
    previous_hash: &[u8],
    envelopes: Vec<Vec<u8>>,
    codes: &[u8],
) -> Block {
    let data_hash = block_data_hash(&envelopes);
    let mut metadata = vec![Vec::new(); METADATA_SLOTS];
    metadata[BlockMetadataIndex::TransactionsFilter as usize] = codes.to_vec();
    Block {
        header: Some(BlockHeader {
            number,
            previous_hash: previous_hash.to_vec(),
            data_hash: data_hash.to_vec(),
        }),
        data: Some(BlockData { data: envelopes }),
        metadata: Some(BlockMetadata { metadata }),
    }
}

/// Fabric's hash of a block's header.
pub fn header_hash(block: &Block) -> [u8; 32] {
    let h = block.header.clone().unwrap_or_default();
    block_header_hash(h.number, &h.previous_hash, &h.data_hash)
}

/// The per-transaction validation codes of a block.
pub fn tx_filter(block: &Block) -> &[u8] {
    block
        .metadata
        .as_ref()
        .and_then(|m| {
            m.metadata
                .get(BlockMetadataIndex::TransactionsFilter as usize)
        })
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The devnet's channel definition, recorded in the genesis block. (Fabric
/// puts a `common.ConfigEnvelope` there; the devnet keeps the part it uses:
/// the channel name and each org's MSP id and CA certificates.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisConfig {
    pub channel: String,
    pub orgs: Vec<GenesisOrg>,
}

/// One org of the genesis config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenesisOrg {
    pub msp_id: String,
    pub ca_pem: String,
}

/// The genesis block: one CONFIG envelope carrying the [`GenesisConfig`] JSON.
pub fn genesis_block(config: &GenesisConfig) -> Result<Block, serde_json::Error> {
    let ch = ChannelHeader {
        r#type: HeaderType::Config as i32,
        channel_id: config.channel.clone(),
        ..Default::default()
    };
    let env = Envelope {
        payload: Payload {
            header: Some(Header {
                channel_header: ch.encode_to_vec(),
                signature_header: Vec::new(),
            }),
            data: serde_json::to_vec(config)?,
        }
        .encode_to_vec(),
        signature: Vec::new(),
    };
    Ok(build_block(0, &[], vec![env.encode_to_vec()], &[0]))
}

/// Reads the [`GenesisConfig`] back from a genesis block.
pub fn genesis_config(block: &Block) -> Option<GenesisConfig> {
    let data = block.data.as_ref()?.data.first()?;
    let env = Envelope::decode(data.as_slice()).ok()?;
    let payload = Payload::decode(env.payload.as_slice()).ok()?;
    let ch = ChannelHeader::decode(payload.header?.channel_header.as_slice()).ok()?;
    if ch.r#type != HeaderType::Config as i32 {
        return None;
    }
    serde_json::from_slice(&payload.data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_hashes_chain() {
        let g = genesis_block(&GenesisConfig {
            channel: "ehr".into(),
            orgs: vec![],
        })
        .unwrap();
        let g_hash = header_hash(&g);
        let b1 = build_block(1, &g_hash, vec![b"a".to_vec(), b"b".to_vec()], &[0, 11]);
        let h = b1.header.as_ref().unwrap();
        assert_eq!(h.previous_hash, g_hash.to_vec());
        assert_eq!(h.data_hash, crate::hash::sha256(b"ab").to_vec());
        assert_eq!(tx_filter(&b1), &[0, 11]);
        assert_eq!(b1.metadata.as_ref().unwrap().metadata.len(), METADATA_SLOTS);
        assert_eq!(genesis_config(&g).unwrap().channel, "ehr");
        assert!(genesis_config(&b1).is_none());
    }
}
