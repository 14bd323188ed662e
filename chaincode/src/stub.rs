//! The `Stub` trait: everything the contract may ask of the peer that hosts it.
//!
//! It mirrors Fabric's `ChaincodeStubInterface` closely enough that the same
//! contract code runs
//! - under the Fabric shim (`crate::shim`), where every call is a gRPC message
//!   to a real peer (GET_STATE, PUT_STATE, GET_STATE_BY_RANGE, ...),
//! - in the embedded devnet ledger's transaction simulator (`ehr-ledger`),
//! - and in unit tests ([`crate::memstub::MemStub`]).
//!
//! The trait is synchronous on purpose: the contract is plain deterministic
//! Rust. Hosts that are async bridge it (the shim runs each transaction on a
//! blocking thread).

use thiserror::Error;

/// Fabric's composite-key namespace prefix (`\u0000`).
pub const COMPOSITE_KEY_NAMESPACE: char = '\u{0}';
/// Fabric's `utf8.MaxRune`, used as the open end of a partial composite-key range.
pub const MAX_UNICODE_RUNE: char = '\u{10FFFF}';

/// One key/value from a range query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
}

/// One entry of a key's history (Fabric `queryresult.KeyModification`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyModification {
    pub tx_id: String,
    pub value: Vec<u8>,
    /// Seconds since the Unix epoch of the transaction that wrote it.
    pub timestamp_secs: i64,
    pub timestamp_nanos: i32,
    pub is_delete: bool,
}

/// A transaction timestamp as carried in the proposal's channel header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct TxTimestamp {
    pub seconds: i64,
    pub nanos: i32,
}

/// A failure of the host, not of the contract's logic (network, peer error,
/// a key the peer refused). The contract turns it into an error response.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StubError {
    #[error("peer error: {0}")]
    Peer(String),
    #[error("invalid key: {0}")]
    InvalidKey(String),
}

pub type StubResult<T> = Result<T, StubError>;

pub trait Stub {
    /// The transaction id (hex SHA-256 of nonce || creator, as Fabric computes it).
    fn tx_id(&self) -> &str;
    fn channel_id(&self) -> &str;
    /// The timestamp the client put in the proposal's channel header. The only
    /// clock the contract may read.
    fn tx_timestamp(&self) -> TxTimestamp;
    /// The proposal creator: bytes of a `msp.SerializedIdentity`.
    fn creator(&self) -> &[u8];
    /// The proposal's transient map (never written to the ledger).
    fn transient(&self) -> &std::collections::BTreeMap<String, Vec<u8>>;

    fn get_state(&mut self, key: &str) -> StubResult<Option<Vec<u8>>>;
    fn put_state(&mut self, key: &str, value: &[u8]) -> StubResult<()>;
    fn del_state(&mut self, key: &str) -> StubResult<()>;
    /// Keys in `[start, end)` in byte order; `end == ""` means unbounded.
    /// Returns at most `limit` entries when given (the host closes its
    /// iterator either way).
    fn get_state_by_range(
        &mut self,
        start: &str,
        end: &str,
        limit: Option<u32>,
    ) -> StubResult<Vec<Kv>>;
    fn get_history_for_key(&mut self, key: &str) -> StubResult<Vec<KeyModification>>;

    fn get_private_data(&mut self, collection: &str, key: &str) -> StubResult<Option<Vec<u8>>>;
    fn put_private_data(&mut self, collection: &str, key: &str, value: &[u8]) -> StubResult<()>;
    fn del_private_data(&mut self, collection: &str, key: &str) -> StubResult<()>;
    /// SHA-256 of a private value, readable by peers outside the collection.
    fn get_private_data_hash(&mut self, collection: &str, key: &str)
    -> StubResult<Option<Vec<u8>>>;

    /// Sets the transaction's single chaincode event (Fabric keeps the last one set).
    fn set_event(&mut self, name: &str, payload: &[u8]) -> StubResult<()>;
}

/// Fabric's `CreateCompositeKey`: `\u0000` + objectType + `\u0000` + each attr + `\u0000`.
/// Neither the type nor any attribute may contain `\u0000` or `\u{10FFFF}`.
pub fn create_composite_key(object_type: &str, attributes: &[&str]) -> StubResult<String> {
    validate_composite_part(object_type)?;
    let mut key = String::with_capacity(
        2 + object_type.len() + attributes.iter().map(|a| a.len() + 1).sum::<usize>(),
    );
    key.push(COMPOSITE_KEY_NAMESPACE);
    key.push_str(object_type);
    key.push(COMPOSITE_KEY_NAMESPACE);
    for a in attributes {
        validate_composite_part(a)?;
        key.push_str(a);
        key.push(COMPOSITE_KEY_NAMESPACE);
    }
    Ok(key)
}

/// Fabric's `SplitCompositeKey`: the object type and the attributes.
pub fn split_composite_key(key: &str) -> StubResult<(String, Vec<String>)> {
    let rest = key
        .strip_prefix(COMPOSITE_KEY_NAMESPACE)
        .ok_or_else(|| StubError::InvalidKey("not a composite key".into()))?;
    let mut parts: Vec<String> = rest
        .split(COMPOSITE_KEY_NAMESPACE)
        .map(str::to_owned)
        .collect();
    // The key ends with the separator, so the last part is empty.
    if parts.pop().as_deref() != Some("") || parts.is_empty() {
        return Err(StubError::InvalidKey("malformed composite key".into()));
    }
    let object_type = parts.remove(0);
    Ok((object_type, parts))
}

/// The `[start, end)` range that `GetStateByPartialCompositeKey` scans.
pub fn partial_composite_key_range(
    object_type: &str,
    attributes: &[&str],
) -> StubResult<(String, String)> {
    let start = create_composite_key(object_type, attributes)?;
    let mut end = start.clone();
    end.push(MAX_UNICODE_RUNE);
    Ok((start, end))
}

fn validate_composite_part(s: &str) -> StubResult<()> {
    if s.contains(COMPOSITE_KEY_NAMESPACE) || s.contains(MAX_UNICODE_RUNE) {
        return Err(StubError::InvalidKey(format!(
            "composite key part {s:?} contains U+0000 or U+10FFFF"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_key_matches_fabric_encoding() {
        let k = create_composite_key("consent", &["p1", "c9"]).unwrap();
        assert_eq!(k, "\u{0}consent\u{0}p1\u{0}c9\u{0}");
        let (t, attrs) = split_composite_key(&k).unwrap();
        assert_eq!(t, "consent");
        assert_eq!(attrs, vec!["p1".to_string(), "c9".to_string()]);
    }

    #[test]
    fn composite_key_rejects_separators() {
        assert!(create_composite_key("a\u{0}b", &[]).is_err());
        assert!(create_composite_key("a", &["x\u{10FFFF}"]).is_err());
    }

    #[test]
    fn partial_range_covers_children_only() {
        let (s, e) = partial_composite_key_range("rec", &["p1"]).unwrap();
        let child = create_composite_key("rec", &["p1", "r1"]).unwrap();
        let other = create_composite_key("rec", &["p2", "r1"]).unwrap();
        assert!(child.as_str() >= s.as_str() && child.as_str() < e.as_str());
        assert!(!(other.as_str() >= s.as_str() && other.as_str() < e.as_str()));
    }
}
