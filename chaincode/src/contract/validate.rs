//! Syntax checks for every externally supplied string the contract stores.
//!
//! Each `check_*` returns `Err(ContractError::InvalidArgument)` naming the
//! field, so a rejected call says exactly what was wrong.

use base64::Engine as _;

use super::error::ContractError;

/// The longest id (record, patient, consent, user, MSP, event).
pub const MAX_ID_LEN: usize = 64;
/// The longest free text (break-glass justification, review note). Free
/// text must not contain PHI; the cap keeps it to a sentence or two.
pub const MAX_TEXT_CHARS: usize = 512;
/// The largest record (plaintext bytes): 64 GiB.
pub const MAX_RECORD_SIZE: u64 = 64 * 1024 * 1024 * 1024;
/// The longest capsule reference.
pub const MAX_CAPSULE_REF_LEN: usize = 256;
/// The longest MIME type.
pub const MAX_CONTENT_TYPE_LEN: usize = 255;

/// Whether `s` is an id: 1..=64 of `[A-Za-z0-9._:-]`, and not `.` or `..`
/// (no path separators, no whitespace, nothing that needs escaping).
pub fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Checks an id field.
pub fn check_id(field: &str, s: &str) -> Result<(), ContractError> {
    if is_id(s) {
        Ok(())
    } else {
        Err(ContractError::invalid(format!(
            "{field} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9._:-] (got {} characters)",
            s.chars().count()
        )))
    }
}

/// Checks a SHA-256 digest: 64 lowercase hex digits.
pub fn check_sha256(field: &str, s: &str) -> Result<(), ContractError> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ContractError::invalid(format!(
            "{field} must be 64 lowercase hex digits"
        )))
    }
}

/// Checks an IPFS CID: CIDv0 (`Qm...`, 46 base58btc characters) or CIDv1
/// in lowercase base32 multibase (`b...`), and that it decodes as a CID.
pub fn check_cid(field: &str, s: &str) -> Result<(), ContractError> {
    const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let shape_ok = if let Some(rest) = s.strip_prefix("Qm") {
        s.len() == 46 && rest.bytes().all(|b| BASE58.contains(&b))
    } else if let Some(rest) = s.strip_prefix('b') {
        (8..=128).contains(&s.len()) && rest.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'))
    } else {
        false
    };
    if !shape_ok {
        return Err(ContractError::invalid(format!(
            "{field} must be a CIDv0 (Qm..., 46 base58 characters) or a CIDv1 in lowercase base32 (b...)"
        )));
    }
    cid::Cid::try_from(s)
        .map(|_| ())
        .map_err(|e| ContractError::invalid(format!("{field} is not a valid CID: {e}")))
}

/// Checks a MIME type `type/subtype` (RFC 6838 restricted names; no
/// parameters).
pub fn check_content_type(field: &str, s: &str) -> Result<(), ContractError> {
    fn restricted_name(n: &str) -> bool {
        let mut bytes = n.bytes();
        matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
            && n.len() <= 127
            && bytes.all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                    )
            })
    }
    let ok = s.len() <= MAX_CONTENT_TYPE_LEN
        && s.split_once('/')
            .is_some_and(|(t, st)| restricted_name(t) && restricted_name(st));
    if ok {
        Ok(())
    } else {
        Err(ContractError::invalid(format!(
            "{field} must be a MIME type type/subtype without parameters"
        )))
    }
}

/// Checks a capsule reference: 1..=256 printable ASCII characters, no spaces.
pub fn check_capsule_ref(field: &str, s: &str) -> Result<(), ContractError> {
    if !s.is_empty() && s.len() <= MAX_CAPSULE_REF_LEN && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(ContractError::invalid(format!(
            "{field} must be 1-{MAX_CAPSULE_REF_LEN} printable ASCII characters without spaces"
        )))
    }
}

/// Normalises optional free text: trims it, treats blank as absent, and
/// rejects control characters and text over [`MAX_TEXT_CHARS`].
pub fn normalize_text(field: &str, s: Option<&str>) -> Result<Option<String>, ContractError> {
    let Some(s) = s else { return Ok(None) };
    let t = s.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars().count() > MAX_TEXT_CHARS {
        return Err(ContractError::invalid(format!(
            "{field} is longer than {MAX_TEXT_CHARS} characters"
        )));
    }
    if t.chars().any(char::is_control) {
        return Err(ContractError::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(Some(t.to_owned()))
}

/// Checks an Umbral public key (a compressed secp256k1 point, 33 bytes) and
/// returns it in the canonical form umbral-pre's serde uses: `0x` + 66
/// lowercase hex digits. Accepts that form, bare hex (either case) or
/// standard base64 (44 characters, padded).
pub fn canonical_public_key(field: &str, s: &str) -> Result<String, ContractError> {
    let bad = || {
        ContractError::invalid(format!(
            "{field} must be a compressed Umbral public key (33 bytes starting 02 or 03) as 0x-hex, hex or base64"
        ))
    };
    let hex_part = s.strip_prefix("0x").unwrap_or(s);
    let bytes = if hex_part.len() == 66 && hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(hex_part).map_err(|_| bad())?
    } else if s.len() == 44 {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| bad())?
    } else {
        return Err(bad());
    };
    if bytes.len() != 33 || !matches!(bytes[0], 2 | 3) {
        return Err(bad());
    }
    Ok(format!("0x{}", hex::encode(bytes)))
}

/// Checks a hex string: even length, 2..=256 lowercase hex digits.
pub fn check_hex(field: &str, s: &str) -> Result<(), ContractError> {
    if s.len() >= 2
        && s.len() <= 256
        && s.len().is_multiple_of(2)
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(ContractError::invalid(format!(
            "{field} must be 2-256 lowercase hex digits (whole bytes)"
        )))
    }
}

/// Rejects duplicates in a list (keeps the caller's order otherwise).
pub fn check_unique<T: Ord + std::fmt::Debug>(
    field: &str,
    items: &[T],
) -> Result<(), ContractError> {
    let mut seen = std::collections::BTreeSet::new();
    for it in items {
        if !seen.insert(it) {
            return Err(ContractError::invalid(format!(
                "{field} lists {it:?} more than once"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["p1", "P-001", "a.b_c:d-e", &"x".repeat(64)] {
            assert!(is_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "a b",
            "é",
            &"x".repeat(65),
            "a\u{0}",
        ] {
            assert!(!is_id(bad), "{bad:?}");
        }
        assert!(check_id("patient_id", "a/b").is_err());
    }

    #[test]
    fn sha256() {
        assert!(check_sha256("h", &"a".repeat(64)).is_ok());
        assert!(check_sha256("h", &"A".repeat(64)).is_err());
        assert!(check_sha256("h", &"a".repeat(63)).is_err());
        assert!(check_sha256("h", &"g".repeat(64)).is_err());
    }

    #[test]
    fn cids() {
        // Kubo's CIDs for "hello world" (v0) and the empty raw block (v1).
        assert!(check_cid("cid", "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o").is_ok());
        assert!(
            check_cid(
                "cid",
                "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            )
            .is_ok()
        );
        // Wrong length, bad alphabet, uppercase base32, other bases.
        assert!(check_cid("cid", "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5").is_err());
        assert!(check_cid("cid", "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff50").is_err());
        assert!(
            check_cid(
                "cid",
                "BAFKREIHDWDCEFGH4DQKJV67UZCMW7OJEE6XEDZDETOJUZJEVTENXQUVYKU"
            )
            .is_err()
        );
        assert!(check_cid("cid", "zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA").is_err());
        // Right shape, not a CID (bad multihash).
        assert!(check_cid("cid", "baaaaaaaaaaaaaaaaaaaaaaaa").is_err());
        assert!(check_cid("cid", "../etc/passwd").is_err());
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/pdf",
            "image/dicom",
            "application/fhir+json",
            "text/plain",
        ] {
            assert!(check_content_type("ct", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "pdf",
            "text/",
            "/plain",
            "text/plain; charset=utf-8",
            "a b/c",
            "text/pl ain",
        ] {
            assert!(check_content_type("ct", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capsule_refs() {
        assert!(check_capsule_ref("c", "capsule:abc/1").is_ok());
        assert!(check_capsule_ref("c", "").is_err());
        assert!(check_capsule_ref("c", "a b").is_err());
        assert!(check_capsule_ref("c", &"a".repeat(257)).is_err());
    }

    #[test]
    fn text() {
        assert_eq!(normalize_text("j", None).unwrap(), None);
        assert_eq!(normalize_text("j", Some("   ")).unwrap(), None);
        assert_eq!(
            normalize_text("j", Some(" ok ")).unwrap().as_deref(),
            Some("ok")
        );
        assert!(normalize_text("j", Some(&"é".repeat(512))).is_ok());
        assert!(normalize_text("j", Some(&"é".repeat(513))).is_err());
        assert!(normalize_text("j", Some("a\nb")).is_err());
    }

    #[test]
    fn public_keys() {
        let hex = format!("02{}", "ab".repeat(32));
        let canon = format!("0x{hex}");
        assert_eq!(canonical_public_key("k", &hex).unwrap(), canon);
        assert_eq!(canonical_public_key("k", &canon).unwrap(), canon);
        assert_eq!(
            canonical_public_key("k", &hex.to_uppercase()).unwrap(),
            canon
        );
        let bytes = hex::decode(&hex).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(canonical_public_key("k", &b64).unwrap(), canon);
        // Wrong prefix byte, wrong length, junk.
        assert!(canonical_public_key("k", &format!("04{}", "ab".repeat(32))).is_err());
        assert!(canonical_public_key("k", &"ab".repeat(33)).is_err());
        assert!(canonical_public_key("k", &"02".repeat(32)).is_err());
        assert!(canonical_public_key("k", "0xzz").is_err());
    }

    #[test]
    fn hex_and_unique() {
        assert!(check_hex("h", "00ff").is_ok());
        assert!(check_hex("h", "0").is_err());
        assert!(check_hex("h", "0F").is_err());
        assert!(check_unique("l", &["a", "b"]).is_ok());
        assert!(check_unique("l", &["a", "b", "a"]).is_err());
    }
}
