//! `verify`: re-read every block from disk and recompute what the ledger
//! claims — each frame's CRC, the header hash chain (number, previous hash,
//! data hash), and every transaction's validation code (creator signature,
//! tx id, endorsement policy, duplicate tx id, MVCC against a state rebuilt
//! from scratch), plus the private data hashes. Reports the first bad block.

use ehr_proto::common::Envelope;
use ehr_proto::protos::TxValidationCode;
use prost::Message;

use super::mvcc::{self, BlockUpdates, decode_rwset};
use super::{Core, apply_block, read};
use crate::block;
use crate::hash::{block_data_hash, sha256};
use crate::state::{Version, WorldState};
use crate::tx;

/// The outcome of [`super::Devnet::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blocks checked (the ledger height when verification ran).
    pub height: u64,
    /// Whether every block checked out.
    pub verified: bool,
    /// The first block that did not.
    pub first_bad_block: Option<u64>,
    /// Why it did not.
    pub reason: Option<String>,
}

pub(super) fn verify(core: &Core) -> VerifyReport {
    verify_blocks(core, true)
}

/// Only frames, headers and the hash chain: no signature or MVCC re-check.
pub(super) fn verify_hash_chain(core: &Core) -> VerifyReport {
    verify_blocks(core, false)
}

fn verify_blocks(core: &Core, full: bool) -> VerifyReport {
    let height = read(&core.chain).hashes.len() as u64;
    let bad = |n: u64, why: String| VerifyReport {
        height,
        verified: false,
        first_bad_block: Some(n),
        reason: Some(why),
    };
    let mut state = WorldState::default();
    let mut prev: Vec<u8> = Vec::new();
    for n in 0..height {
        let (b, pvt) = match core.read_block(n) {
            Ok(x) => x,
            Err(e) => return bad(n, e.to_string()),
        };
        let Some(h) = b.header.clone() else {
            return bad(n, "no header".into());
        };
        if h.number != n {
            return bad(n, format!("header says block {}", h.number));
        }
        if h.previous_hash != prev {
            return bad(n, "previous hash does not match the previous block".into());
        }
        let data = b.data.clone().unwrap_or_default().data;
        if h.data_hash != block_data_hash(&data).to_vec() {
            return bad(n, "data hash does not match the block data".into());
        }
        let hash = block::header_hash(&b);
        if read(&core.chain).hashes.get(n as usize) != Some(&hash) {
            return bad(n, "block hash differs from the one committed".into());
        }
        prev = hash.to_vec();
        if n == 0 {
            if block::genesis_config(&b).is_none() {
                return bad(0, "not a genesis block".into());
            }
            continue;
        }
        if !full {
            continue;
        }
        let filter = block::tx_filter(&b).to_vec();
        if filter.len() != data.len() {
            return bad(n, "transactions filter length differs from the data".into());
        }
        let mut ups = BlockUpdates::default();
        let mut seen = std::collections::HashSet::new();
        for (i, d) in data.iter().enumerate() {
            let code = recompute_code(core, d, &state, &mut ups, &mut seen, n, i as u64);
            if code as u8 != filter[i] {
                return bad(
                    n,
                    format!(
                        "tx {i}: recorded validation code {} but recomputed {}",
                        filter[i], code as u8
                    ),
                );
            }
        }
        for x in &pvt {
            if let Err(why) = check_pvt(&data, x) {
                return bad(n, why);
            }
        }
        apply_block(&mut state, &b, &pvt);
    }
    VerifyReport {
        height,
        verified: true,
        first_bad_block: None,
        reason: None,
    }
}

fn recompute_code(
    core: &Core,
    d: &[u8],
    state: &WorldState,
    ups: &mut BlockUpdates,
    seen: &mut std::collections::HashSet<String>,
    block: u64,
    i: u64,
) -> TxValidationCode {
    let Ok(env) = Envelope::decode(d) else {
        return TxValidationCode::BadPayload;
    };
    let p = match tx::parse_transaction(&env) {
        Ok(p) => p,
        Err(e) => return e.validation_code(),
    };
    if let Err(e) = tx::check_creator(&env, &p, &core.msp) {
        return e.validation_code();
    }
    if !tx::check_endorsements(&p, &core.msp) {
        return TxValidationCode::EndorsementPolicyFailure;
    }
    if state.txs.contains_key(&p.tx_id) || !seen.insert(p.tx_id.clone()) {
        return TxValidationCode::DuplicateTxid;
    }
    let Ok(rw) = decode_rwset(&p.rwset) else {
        return TxValidationCode::BadRwset;
    };
    let code = mvcc::validate(&rw, state, ups);
    if code == TxValidationCode::Valid {
        ups.add(&rw, Version { block, tx: i });
    }
    code
}

fn check_pvt(data: &[Vec<u8>], x: &block::TxPvtData) -> Result<(), String> {
    let why = |s: &str| format!("private data of tx {}: {s}", x.tx_num);
    let d = data
        .get(x.tx_num as usize)
        .ok_or_else(|| why("no such transaction"))?;
    let env = Envelope::decode(d.as_slice()).map_err(|_| why("bad envelope"))?;
    let p = tx::parse_transaction(&env).map_err(|e| why(&e.to_string()))?;
    let pvt = x.pvt.as_ref().ok_or_else(|| why("empty"))?;
    for ns in &pvt.ns_pvt_rwset {
        for c in &ns.collection_pvt_rwset {
            let want = p
                .rwset
                .ns_rwset
                .iter()
                .filter(|n| n.namespace == ns.namespace)
                .flat_map(|n| n.collection_hashed_rwset.iter())
                .find(|h| h.collection_name == c.collection_name)
                .map(|h| h.pvt_rwset_hash.clone());
            if want.as_deref() != Some(sha256(&c.rwset).as_slice()) {
                return Err(why("hash does not match the block"));
            }
        }
    }
    Ok(())
}
