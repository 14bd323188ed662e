//! An in-memory [`Stub`] with Fabric's transaction semantics, for tests of
//! this crate and of other crates.
//!
//! It behaves like a peer's transaction simulator, not like a plain map:
//! - **State** is a `BTreeMap` of committed key/values; range queries run over
//!   it in byte order.
//! - **Writes are buffered** in a write set for the current transaction and
//!   are not visible to reads of the same transaction (Fabric has no
//!   read-your-own-writes). [`MemStub::commit`] applies them (and records key
//!   history); [`MemStub::discard`] drops them, as a peer drops the write set
//!   of a proposal whose response status is an error.
//! - **Private data** lives per collection, with SHA-256 hashes readable by
//!   anyone, and follows the same buffering.
//! - **Events**: one per transaction, the last one set wins.
//! - **Reads** (keys and scanned ranges) are recorded per transaction, so
//!   tests can see what would land in a read set.
//! - The **creator**, **tx id**, **timestamp**, channel and transient map are
//!   settable.
//!
//! [`MemStub::run`] is the usual test entry: begin a transaction, invoke a
//! chaincode, commit when the response is OK and discard otherwise.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::stub::{KeyModification, Kv, Stub, StubError, StubResult, TxTimestamp};
use crate::{Chaincode, Response};

/// A write the current transaction made: `None` is a delete.
pub type Write = (String, Option<Vec<u8>>);

/// What a committed (or discarded) transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxRecord {
    pub tx_id: String,
    pub timestamp: TxTimestamp,
    /// Public writes in the order the chaincode made them.
    pub writes: Vec<Write>,
    /// Private writes in order: (collection, key, value or delete).
    pub private_writes: Vec<(String, String, Option<Vec<u8>>)>,
    /// The transaction's chaincode event (name, payload), if any.
    pub event: Option<(String, Vec<u8>)>,
    /// Keys read with `get_state`, in order (the read set's keys).
    pub reads: Vec<String>,
    /// Ranges scanned with `get_state_by_range`, in order: (start, end).
    pub range_reads: Vec<(String, String)>,
    /// Whether the writes were applied.
    pub committed: bool,
}

/// An in-memory peer for one chaincode namespace.
#[derive(Debug, Clone)]
pub struct MemStub {
    channel_id: String,
    tx_id: String,
    timestamp: TxTimestamp,
    creator: Vec<u8>,
    transient: BTreeMap<String, Vec<u8>>,

    state: BTreeMap<String, Vec<u8>>,
    history: BTreeMap<String, Vec<KeyModification>>,
    private: BTreeMap<String, BTreeMap<String, Vec<u8>>>,

    writes: Vec<Write>,
    private_writes: Vec<(String, String, Option<Vec<u8>>)>,
    event: Option<(String, Vec<u8>)>,
    reads: Vec<String>,
    range_reads: Vec<(String, String)>,

    /// Every transaction finished with `commit` or `discard`, in order.
    log: Vec<TxRecord>,
}

impl Default for MemStub {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStub {
    /// An empty ledger on channel `mychannel`, tx id of 64 zeros, time 0.
    pub fn new() -> Self {
        Self {
            channel_id: "mychannel".into(),
            tx_id: "0".repeat(64),
            timestamp: TxTimestamp::default(),
            creator: Vec::new(),
            transient: BTreeMap::new(),
            state: BTreeMap::new(),
            history: BTreeMap::new(),
            private: BTreeMap::new(),
            writes: Vec::new(),
            private_writes: Vec::new(),
            event: None,
            reads: Vec::new(),
            range_reads: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Sets the proposal creator (bytes of a `msp.SerializedIdentity`).
    pub fn set_creator(&mut self, creator: Vec<u8>) {
        self.creator = creator;
    }

    /// Sets the channel id.
    pub fn set_channel_id(&mut self, channel_id: impl Into<String>) {
        self.channel_id = channel_id.into();
    }

    /// Sets the transient map of the next proposal.
    pub fn set_transient(&mut self, transient: BTreeMap<String, Vec<u8>>) {
        self.transient = transient;
    }

    /// Starts a transaction: sets its id and timestamp and clears any
    /// pending write set and event.
    pub fn begin(&mut self, tx_id: impl Into<String>, timestamp: TxTimestamp) {
        self.tx_id = tx_id.into();
        self.timestamp = timestamp;
        self.writes.clear();
        self.private_writes.clear();
        self.event = None;
        self.reads.clear();
        self.range_reads.clear();
    }

    /// The current transaction's public writes, in order.
    pub fn pending_writes(&self) -> &[Write] {
        &self.writes
    }

    /// The current transaction's event, if one was set.
    pub fn pending_event(&self) -> Option<&(String, Vec<u8>)> {
        self.event.as_ref()
    }

    /// Applies the current write set to state (recording key history) and
    /// returns what the transaction did.
    pub fn commit(&mut self) -> TxRecord {
        for (key, value) in &self.writes {
            let modification = KeyModification {
                tx_id: self.tx_id.clone(),
                value: value.clone().unwrap_or_default(),
                timestamp_secs: self.timestamp.seconds,
                timestamp_nanos: self.timestamp.nanos,
                is_delete: value.is_none(),
            };
            self.history
                .entry(key.clone())
                .or_default()
                .push(modification);
            match value {
                Some(v) => {
                    self.state.insert(key.clone(), v.clone());
                }
                None => {
                    self.state.remove(key);
                }
            }
        }
        for (collection, key, value) in &self.private_writes {
            let coll = self.private.entry(collection.clone()).or_default();
            match value {
                Some(v) => {
                    coll.insert(key.clone(), v.clone());
                }
                None => {
                    coll.remove(key);
                }
            }
        }
        self.finish(true)
    }

    /// Drops the current write set and event and returns what they were.
    pub fn discard(&mut self) -> TxRecord {
        self.finish(false)
    }

    fn finish(&mut self, committed: bool) -> TxRecord {
        let record = TxRecord {
            tx_id: self.tx_id.clone(),
            timestamp: self.timestamp,
            writes: std::mem::take(&mut self.writes),
            private_writes: std::mem::take(&mut self.private_writes),
            event: self.event.take(),
            reads: std::mem::take(&mut self.reads),
            range_reads: std::mem::take(&mut self.range_reads),
            committed,
        };
        self.log.push(record.clone());
        record
    }

    /// Runs one transaction: `begin`, `invoke`, then `commit` if the response
    /// is OK or `discard` if it is an error.
    pub fn run(
        &mut self,
        chaincode: &dyn Chaincode,
        tx_id: impl Into<String>,
        timestamp: TxTimestamp,
        args: &[Vec<u8>],
    ) -> (Response, TxRecord) {
        self.begin(tx_id, timestamp);
        let response = chaincode.invoke(self, args);
        let record = if response.is_ok() {
            self.commit()
        } else {
            self.discard()
        };
        (response, record)
    }

    /// Committed state.
    pub fn state(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.state
    }

    /// Committed private data of one collection.
    pub fn private_collection(&self, collection: &str) -> Option<&BTreeMap<String, Vec<u8>>> {
        self.private.get(collection)
    }

    /// Every finished transaction, in order.
    pub fn tx_log(&self) -> &[TxRecord] {
        &self.log
    }

    /// Events of committed transactions, in order.
    pub fn committed_events(&self) -> Vec<(String, String, Vec<u8>)> {
        self.log
            .iter()
            .filter(|t| t.committed)
            .filter_map(|t| {
                t.event
                    .as_ref()
                    .map(|(n, p)| (t.tx_id.clone(), n.clone(), p.clone()))
            })
            .collect()
    }

    fn check_key(key: &str) -> StubResult<()> {
        if key.is_empty() {
            return Err(StubError::InvalidKey("empty key".into()));
        }
        Ok(())
    }
}

impl Stub for MemStub {
    fn tx_id(&self) -> &str {
        &self.tx_id
    }

    fn channel_id(&self) -> &str {
        &self.channel_id
    }

    fn tx_timestamp(&self) -> TxTimestamp {
        self.timestamp
    }

    fn creator(&self) -> &[u8] {
        &self.creator
    }

    fn transient(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.transient
    }

    fn get_state(&mut self, key: &str) -> StubResult<Option<Vec<u8>>> {
        Self::check_key(key)?;
        self.reads.push(key.to_owned());
        Ok(self.state.get(key).cloned())
    }

    fn put_state(&mut self, key: &str, value: &[u8]) -> StubResult<()> {
        Self::check_key(key)?;
        if value.is_empty() {
            // A peer treats an empty value as a delete; a contract that
            // means to delete must say so.
            return Err(StubError::InvalidKey(format!(
                "empty value for key {key:?} (use del_state)"
            )));
        }
        self.writes.push((key.to_owned(), Some(value.to_vec())));
        Ok(())
    }

    fn del_state(&mut self, key: &str) -> StubResult<()> {
        Self::check_key(key)?;
        self.writes.push((key.to_owned(), None));
        Ok(())
    }

    fn get_state_by_range(
        &mut self,
        start: &str,
        end: &str,
        limit: Option<u32>,
    ) -> StubResult<Vec<Kv>> {
        use std::ops::Bound;
        let upper = if end.is_empty() {
            Bound::Unbounded
        } else {
            if end < start {
                return Err(StubError::InvalidKey(format!(
                    "range end {end:?} before start {start:?}"
                )));
            }
            Bound::Excluded(end.to_owned())
        };
        self.range_reads.push((start.to_owned(), end.to_owned()));
        let max = limit.map_or(usize::MAX, |l| l as usize);
        Ok(self
            .state
            .range((Bound::Included(start.to_owned()), upper))
            .take(max)
            .map(|(k, v)| Kv {
                key: k.clone(),
                value: v.clone(),
            })
            .collect())
    }

    fn get_history_for_key(&mut self, key: &str) -> StubResult<Vec<KeyModification>> {
        Self::check_key(key)?;
        Ok(self.history.get(key).cloned().unwrap_or_default())
    }

    fn get_private_data(&mut self, collection: &str, key: &str) -> StubResult<Option<Vec<u8>>> {
        Self::check_key(key)?;
        Ok(self
            .private
            .get(collection)
            .and_then(|c| c.get(key))
            .cloned())
    }

    fn put_private_data(&mut self, collection: &str, key: &str, value: &[u8]) -> StubResult<()> {
        Self::check_key(key)?;
        if collection.is_empty() {
            return Err(StubError::InvalidKey("empty collection name".into()));
        }
        self.private_writes
            .push((collection.to_owned(), key.to_owned(), Some(value.to_vec())));
        Ok(())
    }

    fn del_private_data(&mut self, collection: &str, key: &str) -> StubResult<()> {
        Self::check_key(key)?;
        self.private_writes
            .push((collection.to_owned(), key.to_owned(), None));
        Ok(())
    }

    fn get_private_data_hash(
        &mut self,
        collection: &str,
        key: &str,
    ) -> StubResult<Option<Vec<u8>>> {
        Self::check_key(key)?;
        Ok(self
            .private
            .get(collection)
            .and_then(|c| c.get(key))
            .map(|v| Sha256::digest(v).to_vec()))
    }

    fn set_event(&mut self, name: &str, payload: &[u8]) -> StubResult<()> {
        if name.is_empty() {
            return Err(StubError::InvalidKey("empty event name".into()));
        }
        self.event = Some((name.to_owned(), payload.to_vec()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stub::{create_composite_key, partial_composite_key_range};

    fn ts(s: i64) -> TxTimestamp {
        TxTimestamp {
            seconds: s,
            nanos: 0,
        }
    }

    #[test]
    fn writes_are_invisible_until_commit() {
        let mut s = MemStub::new();
        s.begin("t1", ts(1));
        s.put_state("a", b"1").unwrap();
        assert_eq!(s.get_state("a").unwrap(), None);
        let rec = s.commit();
        assert!(rec.committed);
        assert_eq!(rec.writes, vec![("a".to_string(), Some(b"1".to_vec()))]);
        assert_eq!(s.get_state("a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn reads_and_ranges_are_recorded_per_transaction() {
        let mut s = MemStub::new();
        s.begin("t1", ts(1));
        s.get_state("a").unwrap();
        s.get_state_by_range("b", "c", Some(1)).unwrap();
        let rec = s.commit();
        assert_eq!(rec.reads, vec!["a".to_string()]);
        assert_eq!(rec.range_reads, vec![("b".to_string(), "c".to_string())]);
        s.begin("t2", ts(2));
        assert!(s.commit().reads.is_empty());
    }

    #[test]
    fn discard_drops_writes_and_event() {
        let mut s = MemStub::new();
        s.begin("t1", ts(1));
        s.put_state("a", b"1").unwrap();
        s.set_event("E", b"x").unwrap();
        let rec = s.discard();
        assert!(!rec.committed);
        assert!(s.state().is_empty());
        assert!(s.committed_events().is_empty());
    }

    #[test]
    fn range_is_half_open_in_byte_order_and_limited() {
        let mut s = MemStub::new();
        s.begin("t1", ts(1));
        for k in ["a", "b", "c", "d"] {
            s.put_state(k, b"v").unwrap();
        }
        s.commit();
        let keys = |v: Vec<Kv>| v.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
        assert_eq!(
            keys(s.get_state_by_range("b", "d", None).unwrap()),
            ["b", "c"]
        );
        assert_eq!(
            keys(s.get_state_by_range("b", "", None).unwrap()),
            ["b", "c", "d"]
        );
        assert_eq!(
            keys(s.get_state_by_range("a", "", Some(2)).unwrap()),
            ["a", "b"]
        );
        assert!(s.get_state_by_range("d", "a", None).is_err());
    }

    #[test]
    fn partial_composite_range_over_state() {
        let mut s = MemStub::new();
        s.begin("t1", ts(1));
        let k1 = create_composite_key("rec", &["p1", "r1"]).unwrap();
        let k2 = create_composite_key("rec", &["p1", "r2"]).unwrap();
        let k3 = create_composite_key("rec", &["p2", "r1"]).unwrap();
        for k in [&k1, &k2, &k3] {
            s.put_state(k, b"v").unwrap();
        }
        s.commit();
        let (a, b) = partial_composite_key_range("rec", &["p1"]).unwrap();
        let got: Vec<_> = s
            .get_state_by_range(&a, &b, None)
            .unwrap()
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(got, vec![k1, k2]);
    }

    #[test]
    fn history_records_puts_and_deletes() {
        let mut s = MemStub::new();
        s.begin("t1", ts(10));
        s.put_state("k", b"1").unwrap();
        s.commit();
        s.begin("t2", ts(20));
        s.del_state("k").unwrap();
        s.commit();
        let h = s.get_history_for_key("k").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].tx_id, "t1");
        assert!(!h[0].is_delete);
        assert_eq!(h[1].timestamp_secs, 20);
        assert!(h[1].is_delete);
        assert_eq!(s.get_state("k").unwrap(), None);
    }

    #[test]
    fn private_data_and_hash() {
        let mut s = MemStub::new();
        s.begin("t1", ts(1));
        s.put_private_data("c", "k", b"secret").unwrap();
        assert_eq!(s.get_private_data("c", "k").unwrap(), None);
        s.commit();
        assert_eq!(
            s.get_private_data("c", "k").unwrap(),
            Some(b"secret".to_vec())
        );
        assert_eq!(
            s.get_private_data_hash("c", "k").unwrap(),
            Some(Sha256::digest(b"secret").to_vec())
        );
    }

    #[test]
    fn last_event_wins_and_empty_values_are_refused() {
        let mut s = MemStub::new();
        s.begin("t1", ts(1));
        s.set_event("A", b"1").unwrap();
        s.set_event("B", b"2").unwrap();
        assert!(s.put_state("k", b"").is_err());
        s.commit();
        assert_eq!(
            s.committed_events(),
            vec![("t1".to_string(), "B".to_string(), b"2".to_vec())]
        );
    }
}
