//! Fabric's hashes, byte for byte as `protoutil` computes them.
//!
//! - block header hash: SHA-256 of the ASN.1 DER encoding of
//!   `SEQUENCE { INTEGER number, OCTET STRING previous_hash, OCTET STRING data_hash }`
//!   (`protoutil.BlockHeaderBytes` marshals a Go struct with a `*big.Int` number),
//! - block data hash: SHA-256 over the concatenation of the block's data
//!   entries (`protoutil.ComputeBlockDataHash`),
//! - transaction id: hex of SHA-256(nonce || creator) (`protoutil.ComputeTxID`).

use sha2::{Digest, Sha256};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The DER bytes Fabric hashes for a block header.
pub fn block_header_der(number: u64, previous_hash: &[u8], data_hash: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + previous_hash.len() + data_hash.len());
    // INTEGER: minimal two's complement big-endian, as Go's asn1 encodes a
    // non-negative big.Int (a 0x00 is prepended when the top bit is set).
    let be = number.to_be_bytes();
    let first = be.iter().position(|b| *b != 0).unwrap_or(be.len() - 1);
    let mut int = be[first..].to_vec();
    if int[0] & 0x80 != 0 {
        int.insert(0, 0);
    }
    push_tlv(&mut body, 0x02, &int);
    push_tlv(&mut body, 0x04, previous_hash);
    push_tlv(&mut body, 0x04, data_hash);
    let mut out = Vec::with_capacity(body.len() + 4);
    push_tlv(&mut out, 0x30, &body);
    out
}

/// Fabric's block hash (`protoutil.BlockHeaderHash`).
pub fn block_header_hash(number: u64, previous_hash: &[u8], data_hash: &[u8]) -> [u8; 32] {
    sha256(&block_header_der(number, previous_hash, data_hash))
}

/// Fabric's block data hash: SHA-256 of the data entries joined with no separator.
pub fn block_data_hash<T: AsRef<[u8]>>(data: &[T]) -> [u8; 32] {
    let mut h = Sha256::new();
    for d in data {
        h.update(d.as_ref());
    }
    h.finalize().into()
}

/// Fabric's transaction id: lowercase hex of SHA-256(nonce || creator).
pub fn compute_tx_id(nonce: &[u8], creator: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(nonce);
    h.update(creator);
    hex::encode(h.finalize())
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let be = (len as u64).to_be_bytes();
        let first = be.iter().position(|b| *b != 0).unwrap_or(be.len() - 1);
        out.push(0x80 | (be.len() - first) as u8);
        out.extend_from_slice(&be[first..]);
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_header_der_is_go_asn1() {
        // Go: asn1.Marshal(asn1Header{Number: big.NewInt(0), PreviousHash: nil, DataHash: 32 bytes})
        let dh = [0xABu8; 32];
        let der = block_header_der(0, &[], &dh);
        let mut want = vec![0x30, 0x27, 0x02, 0x01, 0x00, 0x04, 0x00, 0x04, 0x20];
        want.extend_from_slice(&dh);
        assert_eq!(der[..9], want[..9]);
        assert_eq!(der, want);
    }

    #[test]
    fn integer_encoding_is_minimal_twos_complement() {
        let int_of = |n: u64| {
            let der = block_header_der(n, &[], &[]);
            // 30 len 02 ilen i... 04 00 04 00
            let ilen = der[3] as usize;
            der[4..4 + ilen].to_vec()
        };
        assert_eq!(int_of(0), vec![0x00]);
        assert_eq!(int_of(1), vec![0x01]);
        assert_eq!(int_of(127), vec![0x7f]);
        assert_eq!(int_of(128), vec![0x00, 0x80]);
        assert_eq!(int_of(256), vec![0x01, 0x00]);
        assert_eq!(int_of(u64::MAX), {
            let mut v = vec![0x00];
            v.extend_from_slice(&[0xff; 8]);
            v
        });
    }

    #[test]
    fn long_form_length() {
        let big = vec![7u8; 200];
        let der = block_header_der(5, &big, &[1; 32]);
        // outer: 30 81 <len>; prev hash: 04 81 c8
        assert_eq!(der[0], 0x30);
        assert_eq!(der[1], 0x81);
        assert_eq!(der[2] as usize, der.len() - 3);
        assert_eq!(&der[6..9], &[0x04, 0x81, 200]);
    }

    #[test]
    fn data_hash_is_hash_of_concatenation() {
        let a = b"hello ".to_vec();
        let b = b"world".to_vec();
        assert_eq!(block_data_hash(&[a, b]), sha256(b"hello world"));
        assert_eq!(
            hex::encode(block_data_hash::<Vec<u8>>(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn tx_id_is_hex_sha256_of_nonce_and_creator() {
        let id = compute_tx_id(b"ab", b"c");
        assert_eq!(id, hex::encode(sha256(b"abc")));
        assert_eq!(id.len(), 64);
    }
}
