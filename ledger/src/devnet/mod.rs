//! The devnet: one process that is a Fabric peer (endorser + committer) and
//! orderer for one channel.
//!
//! - **Endorse**: check the signed proposal (MSP, signature, tx id), run the
//!   chaincode on a [`Simulator`](crate::simulator::Simulator), sign a
//!   `ProposalResponse` with the peer identity of an org, return the
//!   prepared (unsigned) transaction envelope.
//! - **Submit**: check the client-signed envelope and queue it for ordering.
//! - **Order + commit** (one thread, *group commit*): cut a block when
//!   `max_txs` transactions are queued or `batch_timeout` passed since the
//!   first; validate (endorsement policy, duplicate tx id, MVCC), append the
//!   block to the block file with one `fdatasync`, then apply valid writes,
//!   history and the tx index, and wake `CommitStatus` waiters and event
//!   streams. A transaction is acknowledged only after its block is durable.
//! - **Open** replays the block file into memory; a torn tail is cut off.

mod mvcc;
mod verify;

pub use verify::VerifyReport;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ehr_chaincode::{Chaincode, Response as CcResponse};
use ehr_proto::common::{Block, Envelope};
use ehr_proto::protos::{ChaincodeEvent, Response, SignedProposal, TxValidationCode};
use ehr_proto::rwset::TxPvtReadWriteSet;
use prost::Message;
use thiserror::Error;
use tokio::sync::{broadcast, oneshot};

use crate::block::{self, GenesisConfig, GenesisOrg, StoredBlock, TxPvtData};
use crate::hash::sha256;
use crate::msp::ca::{CertRole, OrgCa};
use crate::msp::{Msp, MspError, OrgMsp, SigningIdentity};
use crate::simulator::{SimResults, Simulator, TxContext};
use crate::state::{Version, WorldState};
use crate::store::blockfile::{BlockFile, BlockFileError};
use crate::tx::{self, CheckedProposal, TxError};

use mvcc::{BlockUpdates, decode_rwset};

/// Name of the block file inside the data directory.
pub const BLOCK_FILE: &str = "blocks.dat";
/// Lock file: one process at a time owns a ledger directory.
pub const LOCK_FILE: &str = "LOCK";

/// Ledger failures.
#[derive(Debug, Error)]
pub enum LedgerError {
    #[error(transparent)]
    Tx(#[from] TxError),
    #[error(transparent)]
    Msp(#[from] MspError),
    #[error(transparent)]
    Store(#[from] BlockFileError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("stored ledger is damaged: {0}")]
    Damaged(String),
    #[error("chaincode {0:?} is not hosted here")]
    UnknownChaincode(String),
    #[error("chaincode returned status {status}: {message}")]
    Chaincode { status: i32, message: String },
    #[error("chaincode host: {0}")]
    ChaincodeHost(String),
    #[error("transaction {0} was already submitted or committed")]
    Duplicate(String),
    #[error("orderer queue is full")]
    Busy,
    #[error("the ledger is shut down")]
    Closed,
}

/// An org of the devnet channel.
#[derive(Clone)]
pub struct OrgConfig {
    /// MSP id, e.g. `HospitalAMSP`.
    pub msp_id: String,
    /// The org's CA certificate(s), PEM.
    pub ca_pem: String,
    /// The org's peer identity (`OU=peer`), which signs its endorsements.
    pub peer: Option<SigningIdentity>,
}

impl std::fmt::Debug for OrgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgConfig")
            .field("msp_id", &self.msp_id)
            .field("has_peer", &self.peer.is_some())
            .finish_non_exhaustive()
    }
}

impl OrgConfig {
    /// An org from its CA, with a freshly issued peer identity `peer0.<msp>`.
    pub fn from_ca(ca: &OrgCa) -> Result<Self, MspError> {
        let peer = ca.issue(
            &format!("peer0.{}", ca.msp_id().to_lowercase()),
            CertRole::Peer,
            &[],
        )?;
        Ok(Self {
            msp_id: ca.msp_id().to_string(),
            ca_pem: ca.cert_pem().to_string(),
            peer: Some(peer),
        })
    }
}

/// How a chaincode is run.
#[derive(Clone)]
pub enum ChaincodeHost {
    /// In this process, called directly (the fast path).
    InProcess(Arc<dyn Chaincode>),
    /// Out of process over the Fabric shim: the devnet dials the chaincode
    /// server's `protos.Chaincode/Connect` (chaincode-as-a-service).
    Remote {
        /// `http://host:port` of the chaincode server.
        address: String,
    },
}

/// Group-commit parameters.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Cut a block at this many transactions.
    pub max_txs: usize,
    /// Cut a block at this many envelope bytes.
    pub max_bytes: usize,
    /// Cut a block this long after its first transaction arrived.
    pub timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_txs: 500,
            max_bytes: 8 * 1024 * 1024,
            timeout: Duration::from_millis(2),
        }
    }
}

/// Everything [`Devnet::open`] needs.
#[derive(Clone)]
pub struct DevnetConfig {
    /// Directory of the block file (created if missing).
    pub data_dir: PathBuf,
    /// Channel name.
    pub channel: String,
    /// Member orgs. On reopen they must match the genesis block.
    pub orgs: Vec<OrgConfig>,
    /// Chaincodes by name.
    pub chaincodes: BTreeMap<String, ChaincodeHost>,
    pub batch: BatchConfig,
    /// `fdatasync` each block before acknowledging it. Only benchmarks of
    /// the non-durable mode turn this off.
    pub durable: bool,
}

impl DevnetConfig {
    /// A durable config with default batching and no chaincode yet.
    pub fn new(data_dir: impl Into<PathBuf>, channel: &str, orgs: Vec<OrgConfig>) -> Self {
        Self {
            data_dir: data_dir.into(),
            channel: channel.to_string(),
            orgs,
            chaincodes: BTreeMap::new(),
            batch: BatchConfig::default(),
            durable: true,
        }
    }

    /// Adds a chaincode hosted in this process.
    pub fn with_chaincode(mut self, name: &str, cc: Arc<dyn Chaincode>) -> Self {
        self.chaincodes
            .insert(name.to_string(), ChaincodeHost::InProcess(cc));
        self
    }

    /// Adds a chaincode served out of process at `address` (CCaaS).
    pub fn with_remote_chaincode(mut self, name: &str, address: &str) -> Self {
        self.chaincodes.insert(
            name.to_string(),
            ChaincodeHost::Remote {
                address: address.to_string(),
            },
        );
        self
    }
}

/// The commit result of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxStatus {
    pub block: u64,
    pub tx_num: u64,
    pub code: TxValidationCode,
}

/// A transaction's place in the chain, for audit proofs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxProof {
    pub tx_id: String,
    pub block: u64,
    pub tx_num: u64,
    pub code: TxValidationCode,
    /// Fabric header hash of the block holding the transaction.
    pub block_hash: [u8; 32],
}

/// The chaincode events of one committed block (valid transactions only).
#[derive(Debug, Clone)]
pub struct BlockEvents {
    pub block: u64,
    pub events: Vec<ChaincodeEvent>,
}

/// A simulated and endorsed proposal.
#[derive(Debug, Clone)]
pub struct Endorsed {
    pub tx_id: String,
    pub response: Response,
    /// The transaction envelope to sign (payload) and submit.
    pub prepared: Envelope,
}

struct Pending {
    envelope_bytes: Vec<u8>,
    tx_id: String,
    rwset: mvcc::DecodedRwSet,
    pvt: Option<TxPvtReadWriteSet>,
    event: Option<ChaincodeEvent>,
    timestamp: ehr_chaincode::stub::TxTimestamp,
    /// Validation decided at submit (endorsement policy); `Valid` otherwise.
    precheck: TxValidationCode,
}

struct Chain {
    /// Header hash of every block.
    hashes: Vec<[u8; 32]>,
}

pub(crate) struct Core {
    /// Held (flock) for as long as the ledger is open.
    _lock: std::fs::File,
    channel: String,
    msp: Msp,
    state: Arc<RwLock<WorldState>>,
    blocks: BlockFile,
    chain: RwLock<Chain>,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<TxStatus>>>>,
    events: broadcast::Sender<Arc<BlockEvents>>,
    /// Private rwsets of endorsed, not yet submitted transactions.
    transient: Mutex<HashMap<String, TxPvtReadWriteSet>>,
    /// Endorsements this devnet signed: SHA-256(prp) → endorsements bytes.
    issued: Mutex<HashMap<[u8; 32], Vec<u8>>>,
    chaincodes: HashMap<String, Host>,
    peers: BTreeMap<String, SigningIdentity>,
    batch: BatchConfig,
}

enum Host {
    InProcess(Arc<dyn Chaincode>),
    Remote(Arc<crate::ccshim::RemoteChaincode>),
}

struct Shared {
    core: Arc<Core>,
    orderer: Option<SyncSender<Pending>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the queue ends the committer after the block it is on;
        // waiting for it releases the data directory lock deterministically.
        self.orderer.take();
        if let Some(h) = self.committer.take() {
            let _ = h.join();
        }
    }
}

/// A running devnet ledger. Cheap to clone; the committer thread stops when
/// the last clone is dropped.
#[derive(Clone)]
pub struct Devnet {
    shared: Arc<Shared>,
}

const TRANSIENT_MAX: usize = 100_000;
const ORDERER_QUEUE: usize = 200_000;

impl Devnet {
    /// Opens (or creates) the ledger in `config.data_dir`, replays it, and
    /// starts the committer. Must be called inside a tokio runtime when a
    /// remote chaincode is configured.
    pub fn open(config: DevnetConfig) -> Result<Self, LedgerError> {
        if config.channel.is_empty() {
            return Err(LedgerError::Config("empty channel name".into()));
        }
        if config.orgs.is_empty() {
            return Err(LedgerError::Config("at least one org is needed".into()));
        }
        if config.batch.max_txs == 0 {
            return Err(LedgerError::Config("batch.max_txs must be > 0".into()));
        }
        let mut orgs = Vec::new();
        let mut peers = BTreeMap::new();
        for o in &config.orgs {
            orgs.push(OrgMsp::new(&o.msp_id, &o.ca_pem)?);
            if let Some(p) = &o.peer {
                if p.msp_id() != o.msp_id {
                    return Err(LedgerError::Config(format!(
                        "peer of {} belongs to {}",
                        o.msp_id,
                        p.msp_id()
                    )));
                }
                peers.insert(o.msp_id.clone(), p.clone());
            }
        }
        if peers.is_empty() {
            return Err(LedgerError::Config(
                "at least one org needs a peer identity to endorse".into(),
            ));
        }
        let msp = Msp::new(orgs);
        for id in peers.values() {
            let v = msp.deserialize(id.serialized())?;
            if !v.has_role("peer") {
                return Err(LedgerError::Config(format!(
                    "peer identity of {} is not OU=peer",
                    id.msp_id()
                )));
            }
        }
        std::fs::create_dir_all(&config.data_dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(config.data_dir.join(LOCK_FILE))?;
        if lock.try_lock().is_err() {
            return Err(LedgerError::Config(format!(
                "ledger at {} is in use by another process",
                config.data_dir.display()
            )));
        }
        let (blocks, recovery) =
            BlockFile::open(&config.data_dir.join(BLOCK_FILE), config.durable)?;
        if recovery.truncated_bytes > 0 {
            tracing::warn!(
                bytes = recovery.truncated_bytes,
                "recovered from a torn write"
            );
        }
        let genesis = GenesisConfig {
            channel: config.channel.clone(),
            orgs: config
                .orgs
                .iter()
                .map(|o| GenesisOrg {
                    msp_id: o.msp_id.clone(),
                    ca_pem: o.ca_pem.clone(),
                })
                .collect(),
        };
        if blocks.is_empty() {
            let g =
                block::genesis_block(&genesis).map_err(|e| LedgerError::Config(e.to_string()))?;
            let rec = StoredBlock {
                block: Some(g),
                pvt: Vec::new(),
            };
            blocks.append(0, &rec.encode_to_vec())?;
        }
        let mut chaincodes = HashMap::new();
        for (name, host) in &config.chaincodes {
            let h = match host {
                ChaincodeHost::InProcess(cc) => Host::InProcess(cc.clone()),
                ChaincodeHost::Remote { address } => {
                    Host::Remote(Arc::new(crate::ccshim::RemoteChaincode::new(name, address)))
                }
            };
            chaincodes.insert(name.clone(), h);
        }
        let (events, _) = broadcast::channel(1024);
        let core = Arc::new(Core {
            _lock: lock,
            channel: config.channel.clone(),
            msp,
            state: Arc::new(RwLock::new(WorldState::default())),
            blocks,
            chain: RwLock::new(Chain { hashes: Vec::new() }),
            waiters: Mutex::new(HashMap::new()),
            events,
            transient: Mutex::new(HashMap::new()),
            issued: Mutex::new(HashMap::new()),
            chaincodes,
            peers,
            batch: config.batch,
        });
        core.replay(&genesis)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(ORDERER_QUEUE);
        let c = core.clone();
        let committer = std::thread::Builder::new()
            .name("devnet-committer".into())
            .spawn(move || c.run_committer(rx))?;
        Ok(Self {
            shared: Arc::new(Shared {
                core,
                orderer: Some(tx),
                committer: Some(committer),
            }),
        })
    }

    fn core(&self) -> &Arc<Core> {
        &self.shared.core
    }

    /// The channel this ledger serves.
    pub fn channel(&self) -> &str {
        &self.core().channel
    }

    /// The member orgs' MSP.
    pub fn msp(&self) -> &Msp {
        &self.core().msp
    }

    /// Number of blocks (the next block's number).
    pub fn height(&self) -> u64 {
        read(&self.core().chain).hashes.len() as u64
    }

    /// Header hash of block `n`.
    pub fn block_hash(&self, n: u64) -> Option<[u8; 32]> {
        let i = usize::try_from(n).ok()?;
        read(&self.core().chain).hashes.get(i).copied()
    }

    /// Block `n`, read from disk.
    pub fn block(&self, n: u64) -> Result<Block, LedgerError> {
        self.core().read_block(n).map(|s| s.0)
    }

    /// Where transaction `tx_id` was committed, with its block's hash.
    pub fn tx_proof(&self, tx_id: &str) -> Option<TxProof> {
        let loc = read(&self.core().state).txs.get(tx_id).copied()?;
        Some(TxProof {
            tx_id: tx_id.to_string(),
            block: loc.block,
            tx_num: loc.tx_num,
            code: TxValidationCode::try_from(loc.code)
                .unwrap_or(TxValidationCode::InvalidOtherReason),
            block_hash: self.block_hash(loc.block)?,
        })
    }

    /// Recomputes the whole hash chain and every transaction's validation
    /// from the block file; reports the first bad block.
    pub fn verify(&self) -> VerifyReport {
        verify::verify(self.core())
    }

    /// The cheap half of [`Devnet::verify`]: re-reads every block and checks
    /// frames, numbers, data hashes and the header hash chain against the
    /// committed hashes, without re-checking signatures or re-running MVCC.
    /// Catches any change to block headers or data (tx envelopes); a forged
    /// validation code needs the full [`Devnet::verify`].
    pub fn verify_hash_chain(&self) -> VerifyReport {
        verify::verify_hash_chain(self.core())
    }

    /// Runs a proposal without endorsing it (Fabric's Evaluate). The query
    /// system chaincode answers `qscc GetChainInfo <channel>` as a Fabric
    /// peer does (a `common.BlockchainInfo`), so clients can read the height.
    pub async fn evaluate(&self, sp: &SignedProposal) -> Result<Response, LedgerError> {
        let checked = tx::check_proposal(sp, &self.core().msp, &self.core().channel)?;
        if checked.chaincode == "qscc" && !self.core().chaincodes.contains_key("qscc") {
            return self.qscc(&checked.args);
        }
        let (resp, _) = self.core().simulate(&checked).await?;
        if resp.status >= ehr_chaincode::STATUS_ERROR_THRESHOLD {
            return Err(LedgerError::Chaincode {
                status: resp.status,
                message: resp.message,
            });
        }
        Ok(resp)
    }

    /// The part of Fabric's qscc the devnet serves: `GetChainInfo <channel>`
    /// and `GetBlockByNumber <channel> <number>`.
    fn qscc(&self, args: &[Vec<u8>]) -> Result<Response, LedgerError> {
        let fail = |message: &str| LedgerError::Chaincode {
            status: 500,
            message: format!("qscc: {message}"),
        };
        let function = args.first().map(Vec::as_slice).unwrap_or_default();
        let channel = args.get(1).map(Vec::as_slice).unwrap_or_default();
        if channel != self.channel().as_bytes() {
            return Err(fail("unknown channel"));
        }
        let payload = match function {
            b"GetChainInfo" => blockchain_info(&read(&self.core().chain).hashes),
            b"GetBlockByNumber" => {
                let n: u64 = args
                    .get(2)
                    .and_then(|a| std::str::from_utf8(a).ok())
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| fail("block number expected"))?;
                if n >= self.height() {
                    return Err(fail("block not found"));
                }
                self.block(n)?.encode_to_vec()
            }
            _ => {
                return Err(fail(
                    "only GetChainInfo and GetBlockByNumber are served here",
                ));
            }
        };
        Ok(Response {
            status: 200,
            message: String::new(),
            payload,
        })
    }

    /// Simulates and endorses a proposal (Fabric's Endorse). Endorses with
    /// the peers of `endorsing_orgs`, or else of the creator's org (or the
    /// first org with a peer).
    pub async fn endorse(
        &self,
        sp: &SignedProposal,
        endorsing_orgs: &[String],
    ) -> Result<Endorsed, LedgerError> {
        let core = self.core();
        let checked = tx::check_proposal(sp, &core.msp, &core.channel)?;
        if read(&core.state).txs.contains_key(&checked.tx_id) {
            return Err(LedgerError::Duplicate(checked.tx_id));
        }
        let (resp, results) = core.simulate(&checked).await?;
        if resp.status >= ehr_chaincode::STATUS_ERROR_THRESHOLD {
            return Err(LedgerError::Chaincode {
                status: resp.status,
                message: resp.message,
            });
        }
        let endorsers = core.endorsers(&checked, endorsing_orgs)?;
        let mut endorsements = Vec::with_capacity(endorsers.len());
        let mut prp = Vec::new();
        for e in endorsers {
            let pr = tx::endorse(
                e,
                &checked,
                resp.clone(),
                &results.rwset,
                results.event.as_ref(),
            );
            prp = pr.payload;
            endorsements.extend(pr.endorsement);
        }
        let key = sha256(&prp);
        let ends_bytes = endorsements_bytes(&endorsements);
        {
            let mut issued = lock(&core.issued);
            if issued.len() >= TRANSIENT_MAX {
                issued.clear();
            }
            issued.insert(key, ends_bytes);
        }
        if let Some(pvt) = results.pvt {
            let mut t = lock(&core.transient);
            if t.len() >= TRANSIENT_MAX {
                t.clear();
            }
            t.insert(checked.tx_id.clone(), pvt);
        }
        let prepared = tx::prepare_transaction(&checked, prp, endorsements);
        Ok(Endorsed {
            tx_id: checked.tx_id,
            response: resp,
            prepared,
        })
    }

    /// Accepts a signed transaction envelope for ordering (Fabric's Submit).
    /// Returns once queued; use [`Devnet::commit_status`] to wait for commit.
    pub fn submit(&self, env: &Envelope) -> Result<String, LedgerError> {
        let core = self.core();
        let parsed = tx::parse_transaction(env)?;
        if parsed.channel_id != core.channel {
            return Err(TxError::WrongChannel {
                got: parsed.channel_id,
                want: core.channel.clone(),
            }
            .into());
        }
        tx::check_creator(env, &parsed, &core.msp)?;
        let rwset = match decode_rwset(&parsed.rwset) {
            Ok(r) => r,
            Err(_) => {
                return Err(TxError::Malformed {
                    what: "read-write set",
                    reason: "undecodable".into(),
                }
                .into());
            }
        };
        let ours = {
            let issued = lock(&core.issued);
            issued
                .get(&sha256(&parsed.prp))
                .is_some_and(|b| *b == endorsements_bytes(&parsed.endorsements))
        };
        let precheck = if (ours && parsed.proposal_hash_matches)
            || tx::check_endorsements(&parsed, &core.msp)
        {
            TxValidationCode::Valid
        } else {
            TxValidationCode::EndorsementPolicyFailure
        };
        let pvt = lock(&core.transient).remove(&parsed.tx_id);
        let p = Pending {
            envelope_bytes: env.encode_to_vec(),
            tx_id: parsed.tx_id.clone(),
            rwset,
            pvt,
            event: parsed.event,
            timestamp: parsed.timestamp,
            precheck,
        };
        let Some(orderer) = self.shared.orderer.as_ref() else {
            return Err(LedgerError::Closed);
        };
        match orderer.try_send(p) {
            Ok(()) => Ok(parsed.tx_id),
            Err(TrySendError::Full(_)) => Err(LedgerError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(LedgerError::Closed),
        }
    }

    /// The commit status of `tx_id`, waiting until it is committed.
    pub async fn commit_status(&self, tx_id: &str) -> Result<TxStatus, LedgerError> {
        let rx = {
            let mut w = lock(&self.core().waiters);
            if let Some(s) = self.core().status_of(tx_id) {
                return Ok(s);
            }
            let (tx, rx) = oneshot::channel();
            w.entry(tx_id.to_string()).or_default().push(tx);
            rx
        };
        rx.await.map_err(|_| LedgerError::Closed)
    }

    /// The commit status of `tx_id` if it is committed.
    pub fn try_commit_status(&self, tx_id: &str) -> Option<TxStatus> {
        self.core().status_of(tx_id)
    }

    /// Live chaincode events of every block committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<BlockEvents>> {
        self.core().events.subscribe()
    }

    /// The chaincode events of block `n` (valid transactions), read from disk.
    pub fn block_events(&self, n: u64) -> Result<BlockEvents, LedgerError> {
        let (b, _) = self.core().read_block(n)?;
        Ok(BlockEvents {
            block: n,
            events: events_of(&b),
        })
    }

    /// Every key and value of chaincode `ns` in key order (tools and tests).
    pub fn state_snapshot(&self, ns: &str) -> Vec<(String, Vec<u8>)> {
        read(&self.core().state)
            .range(ns, "", "", usize::MAX)
            .into_iter()
            .map(|(k, v)| (k, v.value.to_vec()))
            .collect()
    }

    /// Path of the block file (for tools and tamper tests).
    pub fn block_file_path(&self) -> PathBuf {
        self.core().blocks.path().to_path_buf()
    }

    /// Byte range of block `n`'s record in the block file.
    pub fn block_file_range(&self, n: u64) -> Option<(u64, u64)> {
        self.core().blocks.payload_range(n)
    }
}

fn endorsements_bytes(e: &[ehr_proto::protos::Endorsement]) -> Vec<u8> {
    let mut out = Vec::new();
    for x in e {
        x.encode_length_delimited(&mut out).unwrap_or_default();
    }
    out
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match l.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Valid transactions' chaincode events of a block.
/// The chaincode events of a block's valid transactions (none in the
/// genesis block), as Fabric's event service delivers them.
pub fn events_of(b: &Block) -> Vec<ChaincodeEvent> {
    let filter = block::tx_filter(b);
    let mut out = Vec::new();
    if b.header.as_ref().is_some_and(|h| h.number == 0) {
        return out;
    }
    for (i, d) in b
        .data
        .as_ref()
        .map(|d| d.data.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if filter.get(i).copied() != Some(TxValidationCode::Valid as u8) {
            continue;
        }
        let Ok(env) = Envelope::decode(d.as_slice()) else {
            continue;
        };
        if let Ok(p) = tx::parse_transaction(&env)
            && let Some(e) = p.event
        {
            out.push(e);
        }
    }
    out
}

impl Core {
    fn status_of(&self, tx_id: &str) -> Option<TxStatus> {
        let loc = read(&self.state).txs.get(tx_id).copied()?;
        Some(TxStatus {
            block: loc.block,
            tx_num: loc.tx_num,
            code: TxValidationCode::try_from(loc.code)
                .unwrap_or(TxValidationCode::InvalidOtherReason),
        })
    }

    fn read_block(&self, n: u64) -> Result<(Block, Vec<TxPvtData>), LedgerError> {
        let bytes = self.blocks.read(n)?;
        let rec = StoredBlock::decode(bytes.as_slice())
            .map_err(|e| LedgerError::Damaged(format!("block {n}: {e}")))?;
        let b = rec
            .block
            .ok_or_else(|| LedgerError::Damaged(format!("block {n}: empty record")))?;
        Ok((b, rec.pvt))
    }

    fn endorsers(
        &self,
        p: &CheckedProposal,
        orgs: &[String],
    ) -> Result<Vec<&SigningIdentity>, LedgerError> {
        if !orgs.is_empty() {
            return orgs
                .iter()
                .map(|o| {
                    self.peers.get(o).ok_or_else(|| {
                        LedgerError::Config(format!("no peer of org {o:?} on this devnet"))
                    })
                })
                .collect();
        }
        let own = self.peers.get(&p.identity.msp_id);
        Ok(own
            .or_else(|| self.peers.values().next())
            .into_iter()
            .collect())
    }

    async fn simulate(&self, p: &CheckedProposal) -> Result<(Response, SimResults), LedgerError> {
        let host = self
            .chaincodes
            .get(&p.chaincode)
            .ok_or_else(|| LedgerError::UnknownChaincode(p.chaincode.clone()))?;
        let ctx = TxContext {
            tx_id: p.tx_id.clone(),
            channel_id: p.channel_id.clone(),
            timestamp: p.timestamp,
            creator: p.creator.clone(),
            transient: p.transient.clone(),
        };
        let mut sim = Simulator::new(self.state.clone(), &p.chaincode, ctx);
        let resp = match host {
            Host::InProcess(cc) => {
                let r: CcResponse = if p.is_init {
                    cc.init(&mut sim, &p.args)
                } else {
                    cc.invoke(&mut sim, &p.args)
                };
                Response {
                    status: r.status,
                    message: r.message,
                    payload: r.payload,
                }
            }
            Host::Remote(remote) => remote
                .execute(&mut sim, p)
                .await
                .map_err(|e| LedgerError::ChaincodeHost(e.to_string()))?,
        };
        Ok((resp, sim.results()))
    }

    /// Rebuilds state, history and indexes from the block file.
    fn replay(&self, genesis: &GenesisConfig) -> Result<(), LedgerError> {
        let n = self.blocks.len();
        let mut hashes = Vec::with_capacity(n as usize);
        let mut state = write(&self.state);
        for i in 0..n {
            let (b, pvt) = self.read_block(i)?;
            let h = b.header.clone().unwrap_or_default();
            if h.number != i {
                return Err(LedgerError::Damaged(format!(
                    "block {i} says it is block {}",
                    h.number
                )));
            }
            if i == 0 {
                let stored = block::genesis_config(&b)
                    .ok_or_else(|| LedgerError::Damaged("block 0 is not a genesis block".into()))?;
                if stored != *genesis {
                    return Err(LedgerError::Config(
                        "channel or orgs differ from the genesis block of this ledger".into(),
                    ));
                }
            } else {
                apply_block(&mut state, &b, &pvt);
            }
            hashes.push(block::header_hash(&b));
        }
        drop(state);
        write(&self.chain).hashes = hashes;
        tracing::info!(height = n, "devnet ledger opened");
        Ok(())
    }

    fn run_committer(self: Arc<Self>, rx: Receiver<Pending>) {
        while let Ok(first) = rx.recv() {
            let deadline = Instant::now() + self.batch.timeout;
            let mut bytes = first.envelope_bytes.len();
            let mut batch = vec![first];
            while batch.len() < self.batch.max_txs && bytes < self.batch.max_bytes {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(p) => {
                        bytes += p.envelope_bytes.len();
                        batch.push(p);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            if let Err(e) = self.commit_block(batch) {
                // The block is not durable: nothing was acknowledged, and
                // nothing can be committed after it. Stop, as a peer would.
                tracing::error!(error = %e, "block commit failed; the committer stops");
                // Wake every CommitStatus waiter with `Closed` instead of
                // leaving it hanging on a block that will never come.
                lock(&self.waiters).clear();
                return;
            }
        }
    }

    fn commit_block(&self, batch: Vec<Pending>) -> Result<(), LedgerError> {
        let (number, prev) = {
            let c = read(&self.chain);
            (
                c.hashes.len() as u64,
                c.hashes.last().copied().unwrap_or_default(),
            )
        };
        let mut codes = Vec::with_capacity(batch.len());
        {
            let state = read(&self.state);
            let mut ups = BlockUpdates::default();
            let mut seen = std::collections::HashSet::new();
            for (i, p) in batch.iter().enumerate() {
                let mut code = p.precheck;
                if code == TxValidationCode::Valid
                    && (state.txs.contains_key(&p.tx_id) || !seen.insert(p.tx_id.as_str()))
                {
                    code = TxValidationCode::DuplicateTxid;
                }
                if code == TxValidationCode::Valid {
                    code = mvcc::validate(&p.rwset, &state, &ups);
                }
                if code == TxValidationCode::Valid {
                    ups.add(
                        &p.rwset,
                        Version {
                            block: number,
                            tx: i as u64,
                        },
                    );
                }
                codes.push(code as u8);
            }
        }
        let envelopes: Vec<Vec<u8>> = batch.iter().map(|p| p.envelope_bytes.clone()).collect();
        let b = block::build_block(number, &prev, envelopes, &codes);
        let pvt: Vec<TxPvtData> = batch
            .iter()
            .enumerate()
            .filter(|(i, p)| codes[*i] == TxValidationCode::Valid as u8 && p.pvt.is_some())
            .map(|(i, p)| TxPvtData {
                tx_num: i as u64,
                pvt: p.pvt.clone(),
            })
            .collect();
        let hash = block::header_hash(&b);
        let rec = StoredBlock {
            block: Some(b),
            pvt,
        };
        self.blocks.append(number, &rec.encode_to_vec())?;

        // Durable: apply and acknowledge.
        let mut events = Vec::new();
        {
            let mut state = write(&self.state);
            for (i, p) in batch.iter().enumerate() {
                let v = Version {
                    block: number,
                    tx: i as u64,
                };
                let valid = codes[i] == TxValidationCode::Valid as u8;
                if valid {
                    let txid: Arc<str> = Arc::from(p.tx_id.as_str());
                    apply_rwset(&mut state, &p.rwset, v, &txid, p.timestamp);
                    if let Some(pvt) = &p.pvt {
                        apply_pvt(&mut state, pvt, v);
                    }
                    if let Some(e) = &p.event {
                        events.push(e.clone());
                    }
                }
                state
                    .txs
                    .entry(p.tx_id.clone())
                    .or_insert(crate::state::TxLocation {
                        block: number,
                        tx_num: i as u64,
                        code: codes[i] as i32,
                    });
            }
        }
        write(&self.chain).hashes.push(hash);
        {
            let mut w = lock(&self.waiters);
            for (i, p) in batch.iter().enumerate() {
                if let Some(list) = w.remove(&p.tx_id) {
                    let st = self.status_of(&p.tx_id).unwrap_or(TxStatus {
                        block: number,
                        tx_num: i as u64,
                        code: TxValidationCode::try_from(codes[i] as i32)
                            .unwrap_or(TxValidationCode::InvalidOtherReason),
                    });
                    for s in list {
                        let _ = s.send(st);
                    }
                }
            }
        }
        let _ = self.events.send(Arc::new(BlockEvents {
            block: number,
            events,
        }));
        tracing::debug!(block = number, txs = batch.len(), "block committed");
        Ok(())
    }
}

fn apply_rwset(
    state: &mut WorldState,
    rw: &mvcc::DecodedRwSet,
    v: Version,
    txid: &Arc<str>,
    ts: ehr_chaincode::stub::TxTimestamp,
) {
    for (ns, kv, _) in &rw.ns {
        for w in &kv.writes {
            let value = (!w.is_delete).then_some(w.value.as_slice());
            state.apply_write(ns, &w.key, value, v, txid, ts);
        }
    }
}

fn apply_pvt(state: &mut WorldState, pvt: &TxPvtReadWriteSet, v: Version) {
    for ns in &pvt.ns_pvt_rwset {
        for c in &ns.collection_pvt_rwset {
            let Ok(kv) = ehr_proto::kvrwset::KvrwSet::decode(c.rwset.as_slice()) else {
                continue;
            };
            for w in &kv.writes {
                let value = (!w.is_delete).then_some(w.value.as_slice());
                state.apply_private_write(&ns.namespace, &c.collection_name, &w.key, value, v);
            }
        }
    }
}

/// Applies a stored block's valid transactions to `state` (replay).
fn apply_block(state: &mut WorldState, b: &Block, pvt: &[TxPvtData]) {
    let number = b.header.as_ref().map(|h| h.number).unwrap_or_default();
    let filter = block::tx_filter(b).to_vec();
    let data = b
        .data
        .as_ref()
        .map(|d| d.data.as_slice())
        .unwrap_or_default();
    for (i, d) in data.iter().enumerate() {
        let code = filter
            .get(i)
            .copied()
            .unwrap_or(TxValidationCode::NotValidated as u8);
        let v = Version {
            block: number,
            tx: i as u64,
        };
        let Ok(env) = Envelope::decode(d.as_slice()) else {
            continue;
        };
        let Ok(p) = tx::parse_transaction(&env) else {
            continue;
        };
        if code == TxValidationCode::Valid as u8
            && let Ok(rw) = decode_rwset(&p.rwset)
        {
            let txid: Arc<str> = Arc::from(p.tx_id.as_str());
            apply_rwset(state, &rw, v, &txid, p.timestamp);
            if let Some(x) = pvt.iter().find(|x| x.tx_num == i as u64)
                && let Some(pv) = &x.pvt
            {
                apply_pvt(state, pv, v);
            }
        }
        state
            .txs
            .entry(p.tx_id)
            .or_insert(crate::state::TxLocation {
                block: number,
                tx_num: i as u64,
                code: code as i32,
            });
    }
}

/// The `common.BlockchainInfo` of a chain of header hashes.
fn blockchain_info(hashes: &[[u8; 32]]) -> Vec<u8> {
    let n = hashes.len();
    let hash = |back: usize| {
        n.checked_sub(back)
            .and_then(|i| hashes.get(i))
            .map(|h| h.to_vec())
            .unwrap_or_default()
    };
    ehr_proto::common::BlockchainInfo {
        height: n as u64,
        current_block_hash: hash(1),
        previous_block_hash: hash(2),
        bootstrapping_snapshot_info: None,
    }
    .encode_to_vec()
}

#[cfg(test)]
mod qscc_tests {
    use super::blockchain_info;
    use ehr_proto::common::BlockchainInfo;

    #[test]
    fn blockchain_info_is_fabrics_message() {
        use prost::Message;
        let hashes: Vec<[u8; 32]> = (0..300u16).map(|i| [(i % 251) as u8; 32]).collect();
        let info = BlockchainInfo::decode(blockchain_info(&hashes).as_slice()).unwrap();
        assert_eq!(info.height, 300);
        assert_eq!(info.current_block_hash, hashes[299].to_vec());
        assert_eq!(info.previous_block_hash, hashes[298].to_vec());
        let one = BlockchainInfo::decode(blockchain_info(&hashes[..1]).as_slice()).unwrap();
        assert_eq!((one.height, one.previous_block_hash.len()), (1, 0));
        assert_eq!(BlockchainInfo::decode(&[][..]).unwrap().height, 0);
    }
}
