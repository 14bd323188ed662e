//! Shared test fixtures: orgs with a devnet CA, and a small key/value
//! chaincode of our own that exercises reads, writes, ranges and events.
#![allow(dead_code)]

use std::sync::Arc;

use ehr_chaincode::stub::Stub;
use ehr_chaincode::{Chaincode, Response};
use ehr_ledger::msp::SigningIdentity;
use ehr_ledger::msp::ca::{CertRole, OrgCa};
use ehr_ledger::{Devnet, DevnetConfig, OrgConfig};

pub const CHANNEL: &str = "ehr";

/// `put k v` (reads k first), `get k`, `add k n` (read-modify-write),
/// `scan start end`, `emit name payload` (writes `ev/<name>` too), `fail`.
pub struct KvChaincode;

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Chaincode for KvChaincode {
    fn init(&self, _stub: &mut dyn Stub, _args: &[Vec<u8>]) -> Response {
        Response::ok(Vec::new())
    }
    fn invoke(&self, stub: &mut dyn Stub, args: &[Vec<u8>]) -> Response {
        let f = args.first().map(|a| s(a)).unwrap_or_default();
        let arg = |i: usize| args.get(i).map(|a| s(a)).unwrap_or_default();
        let r = (|| -> Result<Vec<u8>, String> {
            match f.as_str() {
                "put" => {
                    stub.get_state(&arg(1)).map_err(|e| e.to_string())?;
                    stub.put_state(&arg(1), arg(2).as_bytes())
                        .map_err(|e| e.to_string())?;
                    Ok(arg(2).into_bytes())
                }
                "get" => Ok(stub
                    .get_state(&arg(1))
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default()),
                "add" => {
                    let cur: i64 = stub
                        .get_state(&arg(1))
                        .map_err(|e| e.to_string())?
                        .map(|v| s(&v).parse().unwrap_or(0))
                        .unwrap_or(0);
                    let n: i64 = arg(2).parse().map_err(|_| "not a number".to_string())?;
                    let v = (cur + n).to_string();
                    stub.put_state(&arg(1), v.as_bytes())
                        .map_err(|e| e.to_string())?;
                    Ok(v.into_bytes())
                }
                "scan" => {
                    let kvs = stub
                        .get_state_by_range(&arg(1), &arg(2), None)
                        .map_err(|e| e.to_string())?;
                    Ok(kvs
                        .iter()
                        .map(|kv| format!("{}={}", kv.key, s(&kv.value)))
                        .collect::<Vec<_>>()
                        .join(",")
                        .into_bytes())
                }
                "emit" => {
                    stub.put_state(&format!("ev/{}", arg(1)), arg(2).as_bytes())
                        .map_err(|e| e.to_string())?;
                    stub.set_event(&arg(1), arg(2).as_bytes())
                        .map_err(|e| e.to_string())?;
                    Ok(Vec::new())
                }
                "pput" => {
                    // Private value from the transient map, as Fabric apps pass secrets.
                    let v = stub
                        .transient()
                        .get("secret")
                        .cloned()
                        .ok_or_else(|| "transient \"secret\" missing".to_string())?;
                    stub.put_private_data(&arg(1), &arg(2), &v)
                        .map_err(|e| e.to_string())?;
                    Ok(Vec::new())
                }
                "pget" => Ok(stub
                    .get_private_data(&arg(1), &arg(2))
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default()),
                "phash" => Ok(stub
                    .get_private_data_hash(&arg(1), &arg(2))
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default()),
                "fail" => Err("asked to fail".into()),
                other => Err(format!("unknown function {other:?}")),
            }
        })();
        match r {
            Ok(p) => Response::ok(p),
            Err(m) => Response::error(500, m),
        }
    }
}

/// Three hospital orgs with their CAs (MSP ids HospitalAMSP..C).
pub struct Orgs {
    pub cas: Vec<OrgCa>,
    pub orgs: Vec<OrgConfig>,
}

pub fn orgs() -> Orgs {
    let mut cas = Vec::new();
    let mut orgs = Vec::new();
    for (msp, name) in [
        ("HospitalAMSP", "hospital-a"),
        ("HospitalBMSP", "hospital-b"),
        ("HospitalCMSP", "hospital-c"),
    ] {
        let ca = OrgCa::generate(msp, name).unwrap();
        orgs.push(OrgConfig::from_ca(&ca).unwrap());
        cas.push(ca);
    }
    Orgs { cas, orgs }
}

impl Orgs {
    pub fn user(&self, org: usize, name: &str) -> SigningIdentity {
        self.cas[org]
            .issue(name, CertRole::Client, &[("role", "clinician")])
            .unwrap()
    }
}

pub fn config(dir: &std::path::Path, orgs: &Orgs) -> DevnetConfig {
    DevnetConfig::new(dir, CHANNEL, orgs.orgs.clone()).with_chaincode("kv", Arc::new(KvChaincode))
}

pub fn open(dir: &std::path::Path, orgs: &Orgs) -> Devnet {
    Devnet::open(config(dir, orgs)).unwrap()
}
