//! By-hand check of our Fabric formats against blocks a real Fabric peer or
//! orderer produced (`peer channel fetch N bN.pb -c CHANNEL ...`):
//!
//! ```sh
//! cargo run -p ehr-ledger --example fabric_block_check -- Org1MSP ca.pem b76.pb b77.pb ...
//! ```
//!
//! For every block: data hash = our `block_data_hash`; for consecutive blocks
//! previous hash = our `block_header_hash` (the ASN.1 DER header hash); for
//! every endorser transaction: our parser decodes it, tx id = our
//! `compute_tx_id(nonce, creator)`, the creator's certificate chains to the
//! org CA in our MSP and its envelope signature verifies (low-S), and the
//! endorsements satisfy our policy check (a peer of the org signed
//! `prp || endorser`, over a proposal hash matching the transaction).

use anyhow::{Context, Result, bail};
use ehr_ledger::hash::{block_data_hash, block_header_hash, compute_tx_id};
use ehr_ledger::msp::{Msp, OrgMsp};
use ehr_ledger::tx;
use ehr_proto::common::{Block, Envelope};
use prost::Message;

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        bail!("usage: fabric_block_check MSP_ID CA_PEM BLOCK_FILE...");
    }
    let msp = Msp::new([OrgMsp::new(&a[1], &std::fs::read_to_string(&a[2])?)?]);
    let mut prev: Option<[u8; 32]> = None;
    let mut txs = 0;
    for path in &a[3..] {
        let b = Block::decode(std::fs::read(path)?.as_slice()).context("not a block")?;
        let h = b.header.clone().context("no header")?;
        let data = b.data.clone().unwrap_or_default().data;
        if h.data_hash != block_data_hash(&data).to_vec() {
            bail!("block {}: data hash differs", h.number);
        }
        if let Some(p) = prev
            && h.previous_hash != p.to_vec()
        {
            bail!(
                "block {}: previous hash differs from our header hash",
                h.number
            );
        }
        let hash = block_header_hash(h.number, &h.previous_hash, &h.data_hash);
        for d in &data {
            let env = Envelope::decode(d.as_slice())?;
            let p = tx::parse_transaction(&env)
                .with_context(|| format!("block {}: parse", h.number))?;
            if p.tx_id != compute_tx_id(&p.nonce, &p.creator) {
                bail!("block {}: tx id differs", h.number);
            }
            tx::check_creator(&env, &p, &msp)
                .with_context(|| format!("block {}: creator", h.number))?;
            if !tx::check_endorsements(&p, &msp) {
                bail!("block {}: endorsement check failed", h.number);
            }
            txs += 1;
            println!(
                "block {} tx {} cc {} endorsements {} rwset ns {:?} ok",
                h.number,
                &p.tx_id[..16],
                p.chaincode,
                p.endorsements.len(),
                p.rwset
                    .ns_rwset
                    .iter()
                    .map(|n| n.namespace.as_str())
                    .collect::<Vec<_>>()
            );
        }
        println!(
            "block {} hash {} (data hash ok{})",
            h.number,
            hex::encode(hash),
            if prev.is_some() { ", chained" } else { "" }
        );
        prev = Some(hash);
    }
    println!(
        "all {} blocks and {txs} transactions check out",
        a.len() - 3
    );
    Ok(())
}
