//! Block verification: a block is accepted only if its bytes hash to the CID that names it.

use cid::Cid;
use sha2::{Digest, Sha256};

use crate::error::{BlobError, Result};

/// Multicodec of raw blocks.
pub const RAW_CODEC: u64 = 0x55;
/// Multicodec of dag-pb blocks.
pub const DAG_PB_CODEC: u64 = 0x70;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;

/// Checks that the CID uses a codec and hash this crate can verify (raw or dag-pb, sha2-256).
pub fn check_supported(cid: &Cid) -> Result<()> {
    if cid.codec() != RAW_CODEC && cid.codec() != DAG_PB_CODEC {
        return Err(BlobError::InvalidInput(format!(
            "CID {cid} has codec 0x{:x}; only raw (0x55) and dag-pb (0x70) files are supported",
            cid.codec()
        )));
    }
    if cid.hash().code() != SHA2_256 || cid.hash().size() != 32 {
        return Err(BlobError::InvalidInput(format!(
            "CID {cid} uses multihash 0x{:x}; only sha2-256 is supported",
            cid.hash().code()
        )));
    }
    Ok(())
}

/// Verifies `data` against `cid`: sha2-256 of the bytes must equal the CID's digest.
pub fn verify_block(cid: &Cid, data: &[u8]) -> Result<()> {
    check_supported(cid)?;
    let digest = Sha256::digest(data);
    if digest.as_slice() == cid.hash().digest() {
        Ok(())
    } else {
        Err(BlobError::Corrupt { cid: *cid })
    }
}

/// Parses a CID given by a user or a node (any multibase; CIDv0 base58btc).
pub fn parse_cid(s: &str) -> Result<Cid> {
    let s = s.trim();
    let cid =
        Cid::try_from(s).map_err(|e| BlobError::InvalidInput(format!("bad CID {s:?}: {e}")))?;
    check_supported(&cid)?;
    Ok(cid)
}

/// The CID as Kubo prints it: CIDv0 in base58btc, CIDv1 in base32.
pub fn display_cid(cid: &Cid) -> String {
    cid.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::cid_of_bytes;
    use crate::params::ImportParams;

    #[test]
    fn a_flipped_bit_is_detected() {
        let blob = cid_of_bytes(b"abc", ImportParams::default()).unwrap();
        verify_block(&blob.cid, b"abc").unwrap();
        assert!(matches!(
            verify_block(&blob.cid, b"abd"),
            Err(BlobError::Corrupt { .. })
        ));
    }

    #[test]
    fn cids_parse_in_any_base_and_unsupported_ones_are_rejected() {
        let b32 = parse_cid("bafkreigks6arfsq3xxfpvqrrwonchxcnu6do76auprhhfomao6c273sixm").unwrap();
        let b58 = parse_cid("zb2rhkH7YENgBZDCu4DK5oQLHKiHQgbR8z9274uJb8X4gxYsc").unwrap();
        assert_eq!(b32, b58);
        assert!(parse_cid("not a cid").is_err());
        // dag-cbor codec
        assert!(parse_cid("bafyreigks6arfsq3xxfpvqrrwonchxcnu6do76auprhhfomao6c273sixm").is_err());
    }
}
