//! World state, key history and the transaction index, kept in memory and
//! rebuilt from the block file on open (the block file is the durable truth).
//!
//! Keys are ordered by their UTF-8 bytes, as in Fabric's LevelDB state
//! database, so range queries return the same order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ehr_chaincode::stub::TxTimestamp;

/// A committed version: (block number, transaction number in the block),
/// Fabric's `kvrwset.Version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub block: u64,
    pub tx: u64,
}

/// A value with the version that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedValue {
    pub value: Arc<[u8]>,
    pub version: Version,
}

/// One write of a key, for its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub tx_id: Arc<str>,
    pub value: Option<Arc<[u8]>>,
    pub timestamp: TxTimestamp,
}

/// Where a transaction landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxLocation {
    pub block: u64,
    pub tx_num: u64,
    /// Fabric `TxValidationCode` as stored in the block's TRANSACTIONS_FILTER.
    pub code: i32,
}

/// Private data of one collection, keyed by SHA-256 of the key (Fabric
/// validates private reads by key hash).
#[derive(Debug, Default)]
pub struct Collection {
    pub by_hash: HashMap<[u8; 32], (String, VersionedValue)>,
}

/// The whole in-memory state.
#[derive(Debug, Default)]
pub struct WorldState {
    /// namespace (chaincode name) → key → value.
    pub public: HashMap<String, BTreeMap<String, VersionedValue>>,
    /// (namespace, collection) → private data.
    pub private: HashMap<(String, String), Collection>,
    /// (namespace, key) → every committed write, oldest first.
    pub history: HashMap<(String, String), Vec<HistoryEntry>>,
    /// tx id → first occurrence in the chain.
    pub txs: HashMap<String, TxLocation>,
}

impl WorldState {
    /// The committed value of `key` in `ns`.
    pub fn get(&self, ns: &str, key: &str) -> Option<&VersionedValue> {
        self.public.get(ns)?.get(key)
    }

    /// The version of `key`, `None` when absent.
    pub fn version(&self, ns: &str, key: &str) -> Option<Version> {
        self.get(ns, key).map(|v| v.version)
    }

    /// Keys in `[start, end)` (`end == ""`: unbounded), in key order, at most `limit`.
    pub fn range(
        &self,
        ns: &str,
        start: &str,
        end: &str,
        limit: usize,
    ) -> Vec<(String, VersionedValue)> {
        let Some(m) = self.public.get(ns) else {
            return Vec::new();
        };
        if !end.is_empty() && end <= start {
            return Vec::new();
        }
        let upper = if end.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(end.to_string())
        };
        m.range((std::ops::Bound::Included(start.to_string()), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A private value by key hash.
    pub fn private_by_hash(
        &self,
        ns: &str,
        coll: &str,
        key_hash: &[u8; 32],
    ) -> Option<&VersionedValue> {
        self.private
            .get(&(ns.to_string(), coll.to_string()))?
            .by_hash
            .get(key_hash)
            .map(|(_, v)| v)
    }

    /// Applies one public write of a valid transaction.
    pub fn apply_write(
        &mut self,
        ns: &str,
        key: &str,
        value: Option<&[u8]>,
        version: Version,
        tx_id: &Arc<str>,
        timestamp: TxTimestamp,
    ) {
        let value: Option<Arc<[u8]>> = value.map(Arc::from);
        let m = self.public.entry(ns.to_string()).or_default();
        match &value {
            Some(v) => {
                m.insert(
                    key.to_string(),
                    VersionedValue {
                        value: v.clone(),
                        version,
                    },
                );
            }
            None => {
                m.remove(key);
            }
        }
        self.history
            .entry((ns.to_string(), key.to_string()))
            .or_default()
            .push(HistoryEntry {
                tx_id: tx_id.clone(),
                value,
                timestamp,
            });
    }

    /// Applies one private write of a valid transaction.
    pub fn apply_private_write(
        &mut self,
        ns: &str,
        coll: &str,
        key: &str,
        value: Option<&[u8]>,
        version: Version,
    ) {
        let h = crate::hash::sha256(key.as_bytes());
        let c = self
            .private
            .entry((ns.to_string(), coll.to_string()))
            .or_default();
        match value {
            Some(v) => {
                c.by_hash.insert(
                    h,
                    (
                        key.to_string(),
                        VersionedValue {
                            value: Arc::from(v),
                            version,
                        },
                    ),
                );
            }
            None => {
                c.by_hash.remove(&h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_is_byte_ordered_and_half_open() {
        let mut s = WorldState::default();
        let id: Arc<str> = Arc::from("t");
        for (i, k) in ["b", "a", "\u{0}x\u{0}1\u{0}", "c", "é"].iter().enumerate() {
            s.apply_write(
                "cc",
                k,
                Some(k.as_bytes()),
                Version {
                    block: 1,
                    tx: i as u64,
                },
                &id,
                TxTimestamp::default(),
            );
        }
        let keys =
            |v: Vec<(String, VersionedValue)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(s.range("cc", "a", "c", 10)), vec!["a", "b"]);
        assert_eq!(keys(s.range("cc", "b", "", 10)), vec!["b", "c", "é"]);
        assert_eq!(
            keys(s.range("cc", "", "", 2)),
            vec!["\u{0}x\u{0}1\u{0}", "a"]
        );
        assert!(s.range("cc", "c", "a", 10).is_empty());
        assert!(s.range("other", "", "", 10).is_empty());
        s.apply_write(
            "cc",
            "a",
            None,
            Version { block: 2, tx: 0 },
            &id,
            TxTimestamp::default(),
        );
        assert!(s.get("cc", "a").is_none());
        assert_eq!(s.history[&("cc".to_string(), "a".to_string())].len(), 2);
    }
}
