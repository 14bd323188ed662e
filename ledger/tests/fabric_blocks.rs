//! Golden test against blocks produced by a real Hyperledger Fabric 2.5.16
//! network (see `tests/fixtures/fabric-2.5.16/README.md`): our block data
//! hash, ASN.1 DER header hash chain, transaction parser, tx id, creator
//! signature (MSP chain + low-S ECDSA) and endorsement checks all agree with
//! what Fabric wrote.

use ehr_ledger::hash::{block_data_hash, block_header_hash, compute_tx_id};
use ehr_ledger::msp::{Msp, OrgMsp};
use ehr_ledger::tx;
use ehr_proto::common::{Block, Envelope};
use prost::Message;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/fabric-2.5.16");

fn blocks() -> Vec<Block> {
    (76..=81)
        .map(|n| {
            let bytes = std::fs::read(format!("{DIR}/block-{n}.pb")).unwrap();
            Block::decode(bytes.as_slice()).unwrap()
        })
        .collect()
}

fn msp() -> Msp {
    let ca = std::fs::read_to_string(format!("{DIR}/org1-ca.pem")).unwrap();
    Msp::new([OrgMsp::new("Org1MSP", &ca).unwrap()])
}

#[test]
fn fabric_block_hashes_match_ours() {
    let blocks = blocks();
    for w in blocks.windows(2) {
        let (a, b) = (w[0].header.as_ref().unwrap(), w[1].header.as_ref().unwrap());
        assert_eq!(b.number, a.number + 1);
        let ours = block_header_hash(a.number, &a.previous_hash, &a.data_hash);
        assert_eq!(b.previous_hash, ours.to_vec(), "hash of block {}", a.number);
    }
    for b in &blocks {
        let h = b.header.as_ref().unwrap();
        let data = &b.data.as_ref().unwrap().data;
        assert_eq!(
            h.data_hash,
            block_data_hash(data).to_vec(),
            "block {}",
            h.number
        );
    }
}

#[test]
fn fabric_transactions_pass_our_checks() {
    let msp = msp();
    let mut n = 0;
    for b in blocks() {
        for d in &b.data.unwrap().data {
            let env = Envelope::decode(d.as_slice()).unwrap();
            let p = tx::parse_transaction(&env).unwrap();
            assert_eq!(p.chaincode, "ehr");
            assert_eq!(p.tx_id, compute_tx_id(&p.nonce, &p.creator));
            assert!(p.proposal_hash_matches);
            tx::check_creator(&env, &p, &msp).unwrap();
            assert!(tx::check_endorsements(&p, &msp));
            // The endorser is a cryptogen peer: OU=peer under NodeOUs.
            let e = msp.deserialize(&p.endorsements[0].endorser).unwrap();
            assert!(e.has_role("peer"));
            // And tampering is caught.
            let mut bad = env.clone();
            let i = bad.payload.len() / 2;
            bad.payload[i] ^= 1;
            if let Ok(q) = tx::parse_transaction(&bad) {
                assert!(tx::check_creator(&bad, &q, &msp).is_err());
            }
            n += 1;
        }
    }
    assert_eq!(n, 6);
}

#[test]
fn a_foreign_org_is_refused() {
    let other = ehr_ledger::msp::ca::OrgCa::generate("Org1MSP", "impostor").unwrap();
    let msp = Msp::new([other.org_msp().unwrap()]);
    let b = &blocks()[0];
    let env = Envelope::decode(b.data.as_ref().unwrap().data[0].as_slice()).unwrap();
    let p = tx::parse_transaction(&env).unwrap();
    assert!(tx::check_creator(&env, &p, &msp).is_err());
    assert!(!tx::check_endorsements(&p, &msp));
}
