//! Shared test harness: real X.509 identities with Fabric CA attributes, an
//! in-memory peer (`MemStub`) and the contract, driven through
//! `Chaincode::invoke` exactly as a host drives it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ehr_chaincode::contract::EhrContract;
use ehr_chaincode::memstub::{MemStub, TxRecord};
use ehr_chaincode::stub::{TxTimestamp, create_composite_key, partial_composite_key_range};
use ehr_chaincode::{Chaincode, Response};
use prost::Message;
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The base time of every scenario (2023-11-14T22:13:20Z).
pub const T0: i64 = 1_700_000_000;

/// A caller: MSP id and the bytes of its `msp.SerializedIdentity`.
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: &'static str,
    pub msp: String,
    pub user_id: String,
    /// `ehr.role`.
    pub role: String,
    /// Every certificate attribute (including `ehr.role`).
    pub attrs: BTreeMap<String, String>,
    pub creator: Vec<u8>,
}

/// A PEM certificate with subject CN and Fabric CA attributes.
pub fn cert_pem(cn: &str, attrs: &BTreeMap<String, String>) -> String {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let doc = json!({ "attrs": attrs });
    params
        .custom_extensions
        .push(CustomExtension::from_oid_content(
            &[1, 2, 3, 4, 5, 6, 7, 8, 1],
            serde_json::to_vec(&doc).unwrap(),
        ));
    let key = KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().pem()
}

/// Builds an actor with role and extra attributes.
pub fn actor(name: &'static str, msp: &str, cn: &str, role: &str, extra: &[(&str, &str)]) -> Actor {
    let mut attrs = BTreeMap::new();
    attrs.insert("ehr.role".to_string(), role.to_string());
    for (k, v) in extra {
        attrs.insert(k.to_string(), v.to_string());
    }
    let pem = cert_pem(cn, &attrs);
    let creator = ehr_proto::msp::SerializedIdentity {
        mspid: msp.into(),
        id_bytes: pem.into_bytes(),
    }
    .encode_to_vec();
    Actor {
        name,
        msp: msp.into(),
        user_id: attrs
            .get("ehr.user_id")
            .cloned()
            .unwrap_or_else(|| cn.to_string()),
        role: role.to_string(),
        attrs,
        creator,
    }
}

/// The fixed cast (certificates are generated once per test binary, so
/// every run and every fresh stub sees byte-identical creators).
pub struct Cast {
    /// Patient p1 of Org1MSP.
    pub pat1: Actor,
    /// A patient certificate claiming p1 but issued by Org2MSP.
    pub pat1_fake: Actor,
    /// Patient p2 of Org1MSP.
    pub pat2: Actor,
    /// Clinician of Org1MSP (p1's home org), cardiology.
    pub clin1: Actor,
    /// dr-bob: clinician of Org2MSP, cardiology.
    pub bob: Actor,
    /// dr-carol: clinician of Org2MSP, oncology.
    pub carol: Actor,
    /// dr-dave: clinician of Org3MSP, no department.
    pub dave: Actor,
    /// A second "dr-bob", of Org3MSP.
    pub bob3: Actor,
    pub aud1: Actor,
    pub aud2: Actor,
    pub adm1: Actor,
    pub adm2: Actor,
    /// Admin of Org3MSP.
    pub adm3: Actor,
}

impl Cast {
    /// Every actor, in a fixed order.
    pub fn all(&self) -> Vec<&Actor> {
        vec![
            &self.pat1,
            &self.pat1_fake,
            &self.pat2,
            &self.clin1,
            &self.bob,
            &self.carol,
            &self.dave,
            &self.bob3,
            &self.aud1,
            &self.aud2,
            &self.adm1,
            &self.adm2,
            &self.adm3,
        ]
    }
}

pub fn cast() -> &'static Cast {
    static CAST: OnceLock<Cast> = OnceLock::new();
    CAST.get_or_init(|| Cast {
        pat1: actor(
            "pat1",
            "Org1MSP",
            "pat1",
            "patient",
            &[("ehr.patient_id", "p1")],
        ),
        pat1_fake: actor(
            "pat1_fake",
            "Org2MSP",
            "pat1x",
            "patient",
            &[("ehr.patient_id", "p1")],
        ),
        pat2: actor(
            "pat2",
            "Org1MSP",
            "pat2",
            "patient",
            &[("ehr.patient_id", "p2")],
        ),
        clin1: actor(
            "clin1",
            "Org1MSP",
            "dr-alice",
            "clinician",
            &[("department", "cardiology")],
        ),
        bob: actor(
            "bob",
            "Org2MSP",
            "dr-bob",
            "clinician",
            &[("department", "cardiology")],
        ),
        carol: actor(
            "carol",
            "Org2MSP",
            "dr-carol",
            "clinician",
            &[("department", "oncology")],
        ),
        dave: actor("dave", "Org3MSP", "dr-dave", "clinician", &[]),
        bob3: actor(
            "bob3",
            "Org3MSP",
            "dr-bob",
            "clinician",
            &[("department", "cardiology")],
        ),
        aud1: actor("aud1", "Org1MSP", "audrey", "auditor", &[]),
        aud2: actor("aud2", "Org2MSP", "august", "auditor", &[]),
        adm1: actor("adm1", "Org1MSP", "admin1", "admin", &[]),
        adm2: actor("adm2", "Org2MSP", "admin2", "admin", &[]),
        adm3: actor("adm3", "Org3MSP", "admin3", "admin", &[]),
    })
}

/// A valid compressed public key (hex).
pub fn pubkey(n: u8) -> String {
    format!("02{}", hex::encode([n; 32]))
}

/// A valid CIDv1 (raw, sha2-256) of `data`.
pub fn cid_of(data: &[u8]) -> String {
    let mh = multihash_sha256(data);
    // CIDv1: version 1, codec raw (0x55), multihash; base32 lower, "b" prefix.
    let mut bytes = vec![0x01, 0x55];
    bytes.extend(mh);
    format!("b{}", base32_lower(&bytes))
}

fn multihash_sha256(data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x12, 0x20];
    v.extend(Sha256::digest(data));
    v
}

fn base32_lower(data: &[u8]) -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The contract on an in-memory peer, with a deterministic tx-id sequence.
pub struct World {
    pub stub: MemStub,
    pub cc: EhrContract,
    pub seq: u64,
    pub now: i64,
}

/// One call's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub response: Response,
    pub tx: TxRecord,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.response.is_ok()
    }
    /// The JSON payload (panics on an error response).
    pub fn json(&self) -> Value {
        assert!(
            self.response.is_ok(),
            "expected success, got {} {}",
            self.response.status,
            self.response.message
        );
        serde_json::from_slice(&self.response.payload).unwrap()
    }
    /// The error code of a failed call.
    pub fn code(&self) -> String {
        assert!(!self.response.is_ok(), "expected an error, got success");
        let v: Value = serde_json::from_str(&self.response.message).unwrap();
        v["code"].as_str().unwrap().to_string()
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> Self {
        Self {
            stub: MemStub::new(),
            cc: EhrContract::new(),
            seq: 0,
            now: T0,
        }
    }

    /// The next tx id: hex SHA-256 of the sequence number, like Fabric's.
    pub fn next_tx_id(&mut self) -> String {
        self.seq += 1;
        hex::encode(Sha256::digest(self.seq.to_be_bytes()))
    }

    /// Invokes `function` with `arg` as `who`, at `self.now` (+ nothing),
    /// committing on success and discarding on error.
    pub fn call(&mut self, who: &Actor, function: &str, arg: Value) -> Outcome {
        let tx = self.next_tx_id();
        self.stub.set_creator(who.creator.clone());
        let args = vec![
            function.as_bytes().to_vec(),
            serde_json::to_vec(&arg).unwrap(),
        ];
        let ts = TxTimestamp {
            seconds: self.now,
            nanos: 0,
        };
        let (response, tx) = self.stub.run(&self.cc as &dyn Chaincode, tx, ts, &args);
        Outcome { response, tx }
    }

    /// Calls and asserts success.
    pub fn ok(&mut self, who: &Actor, function: &str, arg: Value) -> Value {
        let o = self.call(who, function, arg.clone());
        assert!(
            o.ok(),
            "{function} {arg} by {} failed: {} {}",
            who.name,
            o.response.status,
            o.response.message
        );
        o.json()
    }

    /// Number of access events in committed state.
    pub fn event_count(&self) -> usize {
        let (s, e) = partial_composite_key_range("ehr.event", &[]).unwrap();
        self.stub.state().range(s..e).count()
    }

    /// The committed access event with this id.
    pub fn event(&self, id: &str) -> Option<Value> {
        let k = create_composite_key("ehr.event", &[id]).unwrap();
        self.stub
            .state()
            .get(&k)
            .map(|v| serde_json::from_slice(v).unwrap())
    }

    /// Registers p1 (Org1) and p2 (Org1), and records: r-lab, r-img, r-note,
    /// r-erased (erased) of p1; r2-lab of p2.
    pub fn standard(&mut self) {
        let c = cast();
        self.ok(
            &c.pat1,
            "RegisterPatient",
            json!({"patient_id":"p1","pre_public_key":pubkey(1)}),
        );
        self.ok(
            &c.adm1,
            "RegisterPatient",
            json!({"patient_id":"p2","pre_public_key":pubkey(2)}),
        );
        for (id, pid, cat) in [
            ("r-lab", "p1", "lab"),
            ("r-img", "p1", "imaging"),
            ("r-note", "p1", "note"),
            ("r-erased", "p1", "lab"),
            ("r2-lab", "p2", "lab"),
        ] {
            self.ok(&c.clin1, "AddRecord", record_args(id, pid, cat));
        }
        self.ok(&c.pat1, "EraseRecord", json!({"record_id":"r-erased"}));
    }
}

/// `AddRecord` arguments for a record with content derived from its id.
pub fn record_args(id: &str, patient: &str, category: &str) -> Value {
    json!({
        "record_id": id,
        "patient_id": patient,
        "category": category,
        "cid": cid_of(id.as_bytes()),
        "sha256": hex::encode(Sha256::digest(id.as_bytes())),
        "size": id.len(),
        "content_type": "application/fhir+json",
        "capsule_ref": format!("capsule:{id}"),
    })
}

/// `GrantConsent` arguments: p1's lab records, read, TREAT, to `grantee`.
pub fn lab_consent(id: &str, grantee: Value) -> Value {
    json!({
        "consent_id": id, "patient_id": "p1", "grantee": grantee,
        "scope": {"categories": ["lab"]}, "actions": ["read"], "purposes": ["TREAT"],
    })
}

/// An RFC 3339 string for `T0 + offset` seconds.
pub fn at(offset: i64) -> String {
    ehr_chaincode::contract::time::Time::from_unix(T0 + offset, 0)
        .unwrap()
        .to_rfc3339()
}

/// Keys the transaction wrote under a composite object type.
pub fn writes_under(tx: &TxRecord, object_type: &str) -> usize {
    let (s, e) = partial_composite_key_range(object_type, &[]).unwrap();
    tx.writes
        .iter()
        .filter(|(k, _)| k.as_str() >= s.as_str() && k.as_str() < e.as_str())
        .count()
}

/// Asserts an error with this code and that nothing was written.
pub fn rejected(o: &Outcome, code: &str) {
    assert_eq!(o.code(), code, "{}", o.response.message);
    let status = match code {
        "invalid_argument" => 400,
        "forbidden" => 403,
        "not_found" => 404,
        "conflict" => 409,
        _ => 500,
    };
    assert_eq!(o.response.status, status);
    assert!(!o.tx.committed);
    assert!(
        o.tx.writes.is_empty(),
        "a rejected call wrote {:?}",
        o.tx.writes
    );
    assert!(o.tx.event.is_none());
}

/// The name of the event a call set (empty when none).
pub fn event_name(o: &Outcome) -> &str {
    o.tx.event.as_ref().map(|(n, _)| n.as_str()).unwrap_or("")
}

/// A `RequestAccess` for `read` (with a justification when given); the answer.
pub fn request(w: &mut World, who: &Actor, record: &str, purpose: &str, j: Option<&str>) -> Value {
    let mut arg = json!({"record_id": record, "action": "read", "purpose": purpose});
    if let Some(j) = j {
        arg["justification"] = json!(j);
    }
    w.ok(who, "RequestAccess", arg)
}
