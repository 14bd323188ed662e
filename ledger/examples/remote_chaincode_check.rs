//! By-hand check of the devnet's peer side of the shim against any CCaaS
//! chaincode server, e.g. a Go chaincode on Fabric's own shim that serves
//! `put k v`, `get k` and `whoami` (creator MSP id, CN and Fabric CA
//! attributes as Go's `x509` + `encoding/json` read them):
//!
//! ```sh
//! cargo run -p ehr-ledger --example remote_chaincode_check -- http://127.0.0.1:9998 labcc
//! ```

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use ehr_ledger::msp::ca::{CertRole, OrgCa};
use ehr_ledger::{Devnet, DevnetConfig, OrgConfig, tx};
use ehr_proto::protos::TxValidationCode;

#[tokio::main]
async fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let [_, address, name] = a.as_slice() else {
        bail!("usage: remote_chaincode_check CHAINCODE_URL NAME");
    };
    let dir = std::env::temp_dir().join(format!("ehr-remote-check-{}", std::process::id()));
    let ca = OrgCa::generate("HospitalAMSP", "hospital-a")?;
    let devnet = Devnet::open(
        DevnetConfig::new(&dir, "ehr", vec![OrgConfig::from_ca(&ca)?])
            .with_remote_chaincode(name, address),
    )?;
    let user = ca.issue(
        "dr-who",
        CertRole::Client,
        &[("ehr.role", "clinician"), ("department", "A&E <emergency>")],
    )?;
    let call = |f: &str, args: &[&str]| {
        let mut v = vec![f.as_bytes().to_vec()];
        v.extend(args.iter().map(|s| s.as_bytes().to_vec()));
        tx::new_proposal(&user, "ehr", name, v, BTreeMap::new())
    };

    let p = call("put", &["greeting", "hello from the devnet"])?;
    let e = devnet.endorse(&p.signed, &[]).await?;
    let mut env = e.prepared;
    env.signature = user.sign(&env.payload);
    devnet.submit(&env)?;
    let st = devnet.commit_status(&e.tx_id).await?;
    println!("submit put: block {} {:?}", st.block, st.code);
    if st.code != TxValidationCode::Valid {
        bail!("not valid");
    }
    let r = devnet.evaluate(&call("get", &["greeting"])?.signed).await?;
    println!("evaluate get: {}", String::from_utf8_lossy(&r.payload));
    let r = devnet.evaluate(&call("whoami", &[])?.signed).await?;
    println!("evaluate whoami: {}", String::from_utf8_lossy(&r.payload));
    let e = devnet.evaluate(&call("nosuch", &[])?.signed).await;
    println!("evaluate unknown function: {e:?}");
    let report = devnet.verify();
    println!("verify: {report:?}");
    drop(devnet);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
