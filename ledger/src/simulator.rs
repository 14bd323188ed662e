//! The transaction simulator: runs a chaincode against committed state,
//! recording every read with its version and buffering every write, and turns
//! the result into Fabric's read-write set (`rwset.TxReadWriteSet`).
//!
//! As in Fabric: reads never see the transaction's own writes; reads, writes
//! and range queries appear in key order; a put of an empty value is a delete
//! (Fabric's `KVWrite.is_delete` is `len(value) == 0`); private writes go to
//! a private read-write set with only their hashes in the public one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use ehr_chaincode::stub::{KeyModification, Kv, Stub, StubError, StubResult, TxTimestamp};
use ehr_proto::kvrwset::{
    self, HashedRwSet, KvRead, KvReadHash, KvWrite, KvWriteHash, KvrwSet, QueryReads,
    RangeQueryInfo, range_query_info::ReadsInfo,
};
use ehr_proto::protos::ChaincodeEvent;
use ehr_proto::rwset::{
    CollectionHashedReadWriteSet, CollectionPvtReadWriteSet, NsPvtReadWriteSet, NsReadWriteSet,
    TxPvtReadWriteSet, TxReadWriteSet,
};
use prost::Message;

use crate::hash::sha256;
use crate::state::{Version, WorldState};

/// What the chaincode may know about its transaction.
#[derive(Debug, Clone, Default)]
pub struct TxContext {
    pub tx_id: String,
    pub channel_id: String,
    pub timestamp: TxTimestamp,
    /// `msp.SerializedIdentity` bytes of the proposal creator.
    pub creator: Vec<u8>,
    pub transient: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Default)]
struct RangeRec {
    start: String,
    end: String,
    reads: Vec<KvRead>,
    last_key: Option<String>,
    exhausted: bool,
}

/// What a simulation produced.
#[derive(Debug, Clone, Default)]
pub struct SimResults {
    /// The public read-write set.
    pub rwset: TxReadWriteSet,
    /// The private read-write set, when the transaction touched private data.
    pub pvt: Option<TxPvtReadWriteSet>,
    /// The transaction's chaincode event.
    pub event: Option<ChaincodeEvent>,
}

/// A simulator for one transaction on one chaincode namespace.
pub struct Simulator {
    state: Arc<RwLock<WorldState>>,
    ns: String,
    ctx: TxContext,
    reads: BTreeMap<String, Option<Version>>,
    writes: BTreeMap<String, Option<Vec<u8>>>,
    ranges: Vec<RangeRec>,
    pvt_reads: BTreeMap<(String, String), Option<Version>>,
    pvt_writes: BTreeMap<(String, String), Option<Vec<u8>>>,
    event: Option<(String, Vec<u8>)>,
}

fn to_kv_version(v: Option<Version>) -> Option<kvrwset::Version> {
    v.map(|v| kvrwset::Version {
        block_num: v.block,
        tx_num: v.tx,
    })
}

fn check_key(key: &str) -> StubResult<()> {
    if key.is_empty() {
        return Err(StubError::InvalidKey(
            "key must not be an empty string".into(),
        ));
    }
    Ok(())
}

impl Simulator {
    /// A simulator over `state` for chaincode `ns`.
    pub fn new(state: Arc<RwLock<WorldState>>, ns: &str, ctx: TxContext) -> Self {
        Self {
            state,
            ns: ns.to_string(),
            ctx,
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
            ranges: Vec::new(),
            pvt_reads: BTreeMap::new(),
            pvt_writes: BTreeMap::new(),
            event: None,
        }
    }

    fn read_state<T>(&self, f: impl FnOnce(&WorldState) -> T) -> StubResult<T> {
        let g = self
            .state
            .read()
            .map_err(|_| StubError::Peer("state lock poisoned".into()))?;
        Ok(f(&g))
    }

    /// Opens a range iterator over `[start, end)`; returns its id.
    pub fn range_open(&mut self, start: &str, end: &str) -> usize {
        self.ranges.push(RangeRec {
            start: start.to_string(),
            end: end.to_string(),
            ..Default::default()
        });
        self.ranges.len() - 1
    }

    /// Up to `n` more results of iterator `id`, and whether more remain.
    pub fn range_next(&mut self, id: usize, n: usize) -> StubResult<(Vec<Kv>, bool)> {
        let rec = self
            .ranges
            .get(id)
            .ok_or_else(|| StubError::Peer(format!("no iterator {id}")))?;
        if rec.exhausted || n == 0 {
            return Ok((Vec::new(), !rec.exhausted));
        }
        let ns = self.ns.clone();
        let (start, end, after) = (rec.start.clone(), rec.end.clone(), rec.last_key.clone());
        let rows = self.read_state(|s| {
            let from = after.as_deref().unwrap_or(&start);
            let mut rows = s.range(&ns, from, &end, n + 2);
            if after.is_some() && rows.first().is_some_and(|(k, _)| Some(k) == after.as_ref()) {
                rows.remove(0);
            }
            rows.truncate(n + 1);
            rows
        })?;
        let more = rows.len() > n;
        let rec = &mut self.ranges[id];
        let mut out = Vec::with_capacity(n.min(rows.len()));
        for (k, v) in rows.into_iter().take(n) {
            rec.reads.push(KvRead {
                key: k.clone(),
                version: to_kv_version(Some(v.version)),
            });
            rec.last_key = Some(k.clone());
            out.push(Kv {
                key: k,
                value: v.value.to_vec(),
            });
        }
        if !more {
            rec.exhausted = true;
        }
        Ok((out, more))
    }

    /// The chaincode namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// The context the chaincode sees.
    pub fn context(&self) -> &TxContext {
        &self.ctx
    }

    /// The recorded read-write set, private set and event.
    pub fn results(&self) -> SimResults {
        let reads = self
            .reads
            .iter()
            .map(|(k, v)| KvRead {
                key: k.clone(),
                version: to_kv_version(*v),
            })
            .collect();
        let writes = self
            .writes
            .iter()
            .map(|(k, v)| KvWrite {
                key: k.clone(),
                is_delete: v.is_none(),
                value: v.clone().unwrap_or_default(),
            })
            .collect();
        let range_queries_info = self
            .ranges
            .iter()
            .map(|r| RangeQueryInfo {
                start_key: r.start.clone(),
                end_key: r.end.clone(),
                itr_exhausted: r.exhausted,
                reads_info: Some(ReadsInfo::RawReads(QueryReads {
                    kv_reads: r.reads.clone(),
                })),
            })
            .collect();
        let kv = KvrwSet {
            reads,
            range_queries_info,
            writes,
            metadata_writes: Vec::new(),
        };

        // Private data, per collection (sorted by collection name).
        let mut colls: BTreeMap<String, (HashedRwSet, KvrwSet)> = BTreeMap::new();
        for ((c, k), v) in &self.pvt_reads {
            let e = colls.entry(c.clone()).or_default();
            e.0.hashed_reads.push(KvReadHash {
                key_hash: sha256(k.as_bytes()).to_vec(),
                version: to_kv_version(*v),
            });
            e.1.reads.push(KvRead {
                key: k.clone(),
                version: to_kv_version(*v),
            });
        }
        for ((c, k), v) in &self.pvt_writes {
            let e = colls.entry(c.clone()).or_default();
            e.0.hashed_writes.push(KvWriteHash {
                key_hash: sha256(k.as_bytes()).to_vec(),
                is_delete: v.is_none(),
                value_hash: v.as_deref().map(|v| sha256(v).to_vec()).unwrap_or_default(),
                is_purge: false,
            });
            e.1.writes.push(KvWrite {
                key: k.clone(),
                is_delete: v.is_none(),
                value: v.clone().unwrap_or_default(),
            });
        }
        let mut hashed = Vec::new();
        let mut pvt_colls = Vec::new();
        for (c, (h, p)) in colls {
            let pvt_bytes = p.encode_to_vec();
            hashed.push(CollectionHashedReadWriteSet {
                collection_name: c.clone(),
                hashed_rwset: h.encode_to_vec(),
                pvt_rwset_hash: sha256(&pvt_bytes).to_vec(),
            });
            pvt_colls.push(CollectionPvtReadWriteSet {
                collection_name: c,
                rwset: pvt_bytes,
            });
        }
        let pvt = (!pvt_colls.is_empty()).then(|| TxPvtReadWriteSet {
            data_model: 0,
            ns_pvt_rwset: vec![NsPvtReadWriteSet {
                namespace: self.ns.clone(),
                collection_pvt_rwset: pvt_colls,
            }],
        });
        SimResults {
            rwset: TxReadWriteSet {
                data_model: 0,
                ns_rwset: vec![NsReadWriteSet {
                    namespace: self.ns.clone(),
                    rwset: kv.encode_to_vec(),
                    collection_hashed_rwset: hashed,
                }],
            },
            pvt,
            event: self.event.as_ref().map(|(name, payload)| ChaincodeEvent {
                chaincode_id: self.ns.clone(),
                tx_id: self.ctx.tx_id.clone(),
                event_name: name.clone(),
                payload: payload.clone(),
            }),
        }
    }
}

impl Stub for Simulator {
    fn tx_id(&self) -> &str {
        &self.ctx.tx_id
    }
    fn channel_id(&self) -> &str {
        &self.ctx.channel_id
    }
    fn tx_timestamp(&self) -> TxTimestamp {
        self.ctx.timestamp
    }
    fn creator(&self) -> &[u8] {
        &self.ctx.creator
    }
    fn transient(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.ctx.transient
    }

    fn get_state(&mut self, key: &str) -> StubResult<Option<Vec<u8>>> {
        check_key(key)?;
        let ns = &self.ns;
        let got = self.read_state(|s| s.get(ns, key).cloned())?;
        self.reads
            .entry(key.to_string())
            .or_insert(got.as_ref().map(|v| v.version));
        Ok(got.map(|v| v.value.to_vec()))
    }

    fn put_state(&mut self, key: &str, value: &[u8]) -> StubResult<()> {
        check_key(key)?;
        let v = (!value.is_empty()).then(|| value.to_vec());
        self.writes.insert(key.to_string(), v);
        Ok(())
    }

    fn del_state(&mut self, key: &str) -> StubResult<()> {
        check_key(key)?;
        self.writes.insert(key.to_string(), None);
        Ok(())
    }

    fn get_state_by_range(
        &mut self,
        start: &str,
        end: &str,
        limit: Option<u32>,
    ) -> StubResult<Vec<Kv>> {
        let id = self.range_open(start, end);
        let mut out = Vec::new();
        let max = limit.map_or(usize::MAX, |l| l as usize);
        while out.len() < max {
            let (batch, more) = self.range_next(id, (max - out.len()).min(1000))?;
            out.extend(batch);
            if !more {
                break;
            }
        }
        Ok(out)
    }

    fn get_history_for_key(&mut self, key: &str) -> StubResult<Vec<KeyModification>> {
        check_key(key)?;
        let ns = &self.ns;
        self.read_state(|s| {
            s.history
                .get(&(ns.clone(), key.to_string()))
                .map(|h| {
                    // Fabric returns the newest first.
                    h.iter()
                        .rev()
                        .map(|e| KeyModification {
                            tx_id: e.tx_id.to_string(),
                            value: e.value.as_deref().map(<[u8]>::to_vec).unwrap_or_default(),
                            timestamp_secs: e.timestamp.seconds,
                            timestamp_nanos: e.timestamp.nanos,
                            is_delete: e.value.is_none(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    fn get_private_data(&mut self, collection: &str, key: &str) -> StubResult<Option<Vec<u8>>> {
        check_key(key)?;
        check_collection(collection)?;
        let h = sha256(key.as_bytes());
        let ns = &self.ns;
        let got = self.read_state(|s| s.private_by_hash(ns, collection, &h).cloned())?;
        self.pvt_reads
            .entry((collection.to_string(), key.to_string()))
            .or_insert(got.as_ref().map(|v| v.version));
        Ok(got.map(|v| v.value.to_vec()))
    }

    fn put_private_data(&mut self, collection: &str, key: &str, value: &[u8]) -> StubResult<()> {
        check_key(key)?;
        check_collection(collection)?;
        let v = (!value.is_empty()).then(|| value.to_vec());
        self.pvt_writes
            .insert((collection.to_string(), key.to_string()), v);
        Ok(())
    }

    fn del_private_data(&mut self, collection: &str, key: &str) -> StubResult<()> {
        check_key(key)?;
        check_collection(collection)?;
        self.pvt_writes
            .insert((collection.to_string(), key.to_string()), None);
        Ok(())
    }

    fn get_private_data_hash(
        &mut self,
        collection: &str,
        key: &str,
    ) -> StubResult<Option<Vec<u8>>> {
        check_key(key)?;
        check_collection(collection)?;
        let h = sha256(key.as_bytes());
        let ns = &self.ns;
        let got = self.read_state(|s| s.private_by_hash(ns, collection, &h).cloned())?;
        self.pvt_reads
            .entry((collection.to_string(), key.to_string()))
            .or_insert(got.as_ref().map(|v| v.version));
        Ok(got.map(|v| sha256(&v.value).to_vec()))
    }

    fn set_event(&mut self, name: &str, payload: &[u8]) -> StubResult<()> {
        if name.is_empty() {
            return Err(StubError::Peer("event name can not be empty string".into()));
        }
        self.event = Some((name.to_string(), payload.to_vec()));
        Ok(())
    }
}

fn check_collection(c: &str) -> StubResult<()> {
    if c.is_empty() {
        return Err(StubError::InvalidKey("collection must not be empty".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(keys: &[&str]) -> Arc<RwLock<WorldState>> {
        let mut s = WorldState::default();
        let id: Arc<str> = Arc::from("t0");
        for (i, k) in keys.iter().enumerate() {
            s.apply_write(
                "cc",
                k,
                Some(b"v"),
                Version {
                    block: 1,
                    tx: i as u64,
                },
                &id,
                TxTimestamp::default(),
            );
        }
        Arc::new(RwLock::new(s))
    }

    #[test]
    fn records_reads_writes_and_ranges_in_key_order() {
        let st = state_with(&["a", "b", "c", "d"]);
        let mut sim = Simulator::new(st, "cc", TxContext::default());
        assert_eq!(sim.get_state("b").unwrap(), Some(b"v".to_vec()));
        assert_eq!(sim.get_state("zz").unwrap(), None);
        sim.put_state("b", b"new").unwrap();
        // Reads do not see the transaction's own writes (as in Fabric).
        assert_eq!(sim.get_state("b").unwrap(), Some(b"v".to_vec()));
        sim.del_state("a").unwrap();
        sim.put_state("e", b"").unwrap();
        let r = sim.get_state_by_range("b", "", Some(2)).unwrap();
        assert_eq!(
            r.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
        sim.set_event("Ev", b"p").unwrap();
        let res = sim.results();
        let kv = KvrwSet::decode(res.rwset.ns_rwset[0].rwset.as_slice()).unwrap();
        assert_eq!(
            kv.reads
                .iter()
                .map(|r| (r.key.as_str(), r.version.is_some()))
                .collect::<Vec<_>>(),
            [("b", true), ("zz", false)]
        );
        assert_eq!(
            kv.writes
                .iter()
                .map(|w| (w.key.as_str(), w.is_delete))
                .collect::<Vec<_>>(),
            [("a", true), ("b", false), ("e", true)]
        );
        let rq = &kv.range_queries_info[0];
        assert!(!rq.itr_exhausted);
        let Some(ReadsInfo::RawReads(raw)) = &rq.reads_info else {
            panic!("raw reads expected")
        };
        assert_eq!(raw.kv_reads.len(), 2);
        assert_eq!(res.event.unwrap().event_name, "Ev");
        assert!(res.pvt.is_none());
    }

    #[test]
    fn private_writes_are_hashed_in_the_public_set() {
        let st = state_with(&[]);
        let mut sim = Simulator::new(st, "cc", TxContext::default());
        sim.put_private_data("coll", "k", b"secret").unwrap();
        let res = sim.results();
        let h = &res.rwset.ns_rwset[0].collection_hashed_rwset[0];
        let hashed = HashedRwSet::decode(h.hashed_rwset.as_slice()).unwrap();
        assert_eq!(hashed.hashed_writes[0].key_hash, sha256(b"k").to_vec());
        assert_eq!(
            hashed.hashed_writes[0].value_hash,
            sha256(b"secret").to_vec()
        );
        let pvt = res.pvt.unwrap();
        let c = &pvt.ns_pvt_rwset[0].collection_pvt_rwset[0];
        assert_eq!(h.pvt_rwset_hash, sha256(&c.rwset).to_vec());
        // The public set never carries the private value.
        assert!(!res.rwset.encode_to_vec().windows(6).any(|w| w == b"secret"));
    }
}
