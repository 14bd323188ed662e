//! Cross-hospital sharing by threshold proxy re-encryption, end to end over
//! HTTP, across three orgs. hospital-a is the patient's home, hospital-b
//! the reader, and the grant's 2-of-3 proxies are hospital-a, hospital-c
//! and hospital-b. The other gateways reach hospital-a and hospital-c
//! through a man in the middle ([`Adversary`]) that can take a proxy down,
//! make it hang or slow, or corrupt its cfrags, and that records every
//! message a proxy org receives and sends.
//!
//! Covered: a read through 2 of 3 proxies; one proxy down → still reads;
//! two down → 503 naming them; a hanging proxy times out; a malicious
//! proxy's cfrag is detected, attributed and replaced; revocation (proxies
//! refuse from the next block, delete their kfrags, a replayed old request
//! is refused); erasure (content unrecoverable, metadata stays); and that
//! the proxy-only org never sees the DEK or the plaintext.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use ehr_gateway::crypto::sealer::{KeySealer, SealedKey, UmbralSealer};
use ehr_proto::ehr::proxy::v1::key_proxy_client::KeyProxyClient;
use ehr_proto::ehr::proxy::v1::{DeliverKfragRequest, ReencryptRequest};
use ehr_tests::adversary::{Adversary, Mode};
use ehr_tests::{Net, Services, error_code};
use prost::Message;
use serde_json::{Value, json};

const A: &str = "hospital-a";
const B: &str = "hospital-b";
const C: &str = "hospital-c";

fn file(n: usize, salt: u8) -> Vec<u8> {
    let seed: u8 = rand::random::<u8>() ^ salt;
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 7) as u8)
        .collect()
}

struct World {
    net: Net,
    adv_a: Adversary,
    adv_c: Adversary,
    patient: String,
    cardio: String,
    pid: String,
}

impl World {
    async fn start() -> Result<Self> {
        let adv_a = Adversary::start().await?;
        let adv_c = Adversary::start().await?;
        let (ua, uc) = (adv_a.url.clone(), adv_c.url.clone());
        let net = Net::start_in(
            Services::Embedded,
            16 << 20,
            tempfile::tempdir()?,
            None,
            |cfg| {
                cfg.advertise.insert(A.into(), ua);
                cfg.advertise.insert(C.into(), uc);
                cfg.proxy.timeout = Duration::from_secs(3);
            },
        )
        .await?
        .context("embedded services are always there")?;
        adv_a.target(net.c.url(A).context("a")?)?;
        adv_c.target(net.c.url(C).context("c")?)?;
        let patient = net.token(A, "patient-a").await?;
        let cardio = net.token(B, "cardio-b").await?;
        let pid = net.patient_id("patient-a").context("demo patient")?;
        Ok(Self {
            net,
            adv_a,
            adv_c,
            patient,
            cardio,
            pid,
        })
    }

    fn state(&self, org: &str) -> &ehr_gateway::api::AppState {
        &self
            .net
            .c
            .gateways
            .iter()
            .find(|g| g.org == org)
            .expect("org")
            .state
    }

    async fn upload(&self, category: &str, data: &[u8]) -> Result<Value> {
        let r = self
            .net
            .http
            .post(format!(
                "{}/patients/{}/records?category={category}&content_type=application/octet-stream",
                self.net.api(A),
                self.pid
            ))
            .bearer_auth(&self.patient)
            .body(data.to_vec())
            .send()
            .await?;
        if r.status() != 201 {
            bail!("upload: {} {}", r.status(), r.text().await?);
        }
        Ok(r.json().await?)
    }

    async fn grant(&self, scope: Value) -> Result<Value> {
        let r = self
            .net
            .http
            .post(format!(
                "{}/patients/{}/consents",
                self.net.api(A),
                self.pid
            ))
            .bearer_auth(&self.patient)
            .json(&json!({
                "grantee": {"type": "role", "org": B, "role": "clinician"},
                "scope": scope,
                "actions": ["read"],
                "purposes": ["TREAT"],
                "conditions": {"department": "cardiology"}
            }))
            .send()
            .await?;
        if r.status() != 201 {
            bail!("grant: {} {}", r.status(), r.text().await?);
        }
        Ok(r.json().await?)
    }

    async fn read(&self, token: &str, org: &str, record_id: &str) -> Result<reqwest::Response> {
        Ok(self
            .net
            .http
            .get(format!(
                "{}/records/{record_id}/content?purpose=TREAT",
                self.net.api(org)
            ))
            .bearer_auth(token)
            .send()
            .await?)
    }

    /// Reads as cardio-b and returns (status, body bytes or error code).
    async fn cardio_reads(&self, record_id: &str) -> Result<(u16, Vec<u8>, String)> {
        let r = self.read(&self.cardio, B, record_id).await?;
        let status = r.status().as_u16();
        if status == 200 {
            return Ok((status, r.bytes().await?.to_vec(), String::new()));
        }
        let text = r.text().await?;
        Ok((status, Vec::new(), text))
    }

    /// Waits until no gateway holds a kfrag of `consent_id`.
    async fn kfrags_gone(&self, consent_id: &str) -> Result<()> {
        for _ in 0..100 {
            let mut any = false;
            for org in [A, B, C] {
                any |= self.state(org).db.held_kfrag(consent_id).await?.is_some();
            }
            if !any {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("kfrags of {consent_id} are still held 10 s after the consent ended")
    }

    /// The record's DEK, opened with the patient's key at their home
    /// gateway (the test's own knowledge, to look for it elsewhere).
    async fn dek_of(&self, record_id: &str) -> Result<Vec<u8>> {
        let a = self.state(A);
        let rec: Value = self
            .net
            .http
            .get(format!("{}/records/{record_id}", self.net.api(A)))
            .bearer_auth(&self.patient)
            .send()
            .await?
            .json()
            .await?;
        let cid: ehr_ipfs::Cid = rec["capsule_ref"]
            .as_str()
            .context("capsule_ref")?
            .parse()?;
        let bytes = ehr_gateway::pipeline::get_small(a.blobs.as_ref(), &cid, 65536).await?;
        let sealed: SealedKey = serde_json::from_slice(&bytes)?;
        let user = a.db.user_by_patient(&self.pid).await?.context("patient")?;
        let row = a.db.identity(&user.user_id).await?.context("identity")?;
        let keys = ehr_gateway::identity::umbral_keys(&row, &a.kek)?;
        Ok(UmbralSealer
            .open(&keys.secret, &sealed)?
            .as_bytes()
            .to_vec())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

async fn metric(net: &Net, org: &str, name: &str) -> Result<String> {
    let text = net
        .http
        .get(format!("{}/metrics", net.c.url(org).context("org")?))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name))
        .collect::<Vec<_>>()
        .join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn threshold_sharing_across_three_hospitals() -> Result<()> {
    let w = World::start().await?;
    let data = file(1 << 20, 1);
    let up = w.upload("lab", &data).await?;
    let rid = up["record_id"].as_str().context("record_id")?.to_owned();

    // The grant: 2 of 3 proxies, the grantee org last; every kfrag delivered.
    let g = w.grant(json!({"categories": ["lab"]})).await?;
    let consent_id = g["consent_id"].as_str().context("consent_id")?.to_owned();
    assert_eq!(g["key_grant"]["threshold"], 2);
    assert_eq!(g["key_grant"]["shares"], 3);
    assert_eq!(g["key_grant"]["proxies"], json!([A, C, B]));
    assert_eq!(g["key_grant"]["delivered"], json!([A, B, C]));
    assert_eq!(g["key_grant"]["pending"], json!([]));
    for org in [A, B, C] {
        assert!(
            w.state(org).db.held_kfrag(&consent_id).await?.is_some(),
            "{org} holds its kfrag"
        );
    }
    // On-chain: commitments only, never a kfrag.
    let consent: Value = w
        .net
        .http
        .get(format!("{}/patients/{}/consents", w.net.api(A), w.pid))
        .bearer_auth(&w.patient)
        .send()
        .await?
        .json()
        .await?;
    let pre = &consent["consents"][0]["pre"];
    assert_eq!(pre["kfrag_commitments"].as_array().map(Vec::len), Some(3));
    assert!(
        pre["verifying_key"]
            .as_str()
            .is_some_and(|k| k.starts_with("0x"))
    );

    // 1. hospital-b reads through the proxies: the exact bytes.
    let (s, body, err) = w.cardio_reads(&rid).await?;
    assert_eq!(s, 200, "{err}");
    assert!(body == data, "cross-org read returned other bytes");

    // 2. One proxy down (hospital-c): still reads (hospital-a + hospital-b).
    w.adv_c.set(Mode::Down);
    let (s, body, err) = w.cardio_reads(&rid).await?;
    assert_eq!(s, 200, "{err}");
    assert!(body == data);

    // 3. Two down (hospital-a and hospital-c): a clear 503 naming them.
    w.adv_a.set(Mode::Down);
    let (s, _, err) = w.cardio_reads(&rid).await?;
    assert_eq!(s, 503, "{err}");
    let e: Value = serde_json::from_str(&err)?;
    assert_eq!(e["error"]["code"], "unavailable");
    let msg = e["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("2 of 3") && msg.contains(A) && msg.contains(C),
        "{msg}"
    );

    // 4. A hanging proxy times out (3 s here) instead of blocking the read.
    w.adv_c.set(Mode::Hang);
    let t0 = std::time::Instant::now();
    let (s, _, err) = w.cardio_reads(&rid).await?;
    assert_eq!(s, 503, "{err}");
    assert!(err.contains("timed out"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));

    // 5. A malicious proxy with another one down: its bad cfrag is detected
    //    and named; with only one good cfrag left, 503.
    w.adv_c.set(Mode::Corrupt);
    let (s, _, err) = w.cardio_reads(&rid).await?;
    assert_eq!(s, 503, "{err}");
    assert!(err.contains("bad cfrag: hospital-c"), "{err}");
    // With the other proxy back (answering after the malicious one), the
    // bad cfrag is refused and the good one used: the exact bytes.
    w.adv_a.set(Mode::Slow(Duration::from_millis(1500)));
    let (s, body, err) = w.cardio_reads(&rid).await?;
    assert_eq!(s, 200, "{err}");
    assert!(body == data);
    let m = metric(&w.net, B, "ehr_gateway_bad_cfrags_total").await?;
    assert!(m.contains("proxy=\"hospital-c\"} 2"), "{m}");
    w.adv_a.set(Mode::Forward);
    w.adv_c.set(Mode::Forward);

    // 6. The proxy-only org (hospital-c) never saw the DEK or the plaintext:
    //    only sealed kfrags, re-encryption requests and cfrags passed.
    let dek = w.dek_of(&rid).await?;
    assert_eq!(dek.len(), 32);
    let seen_c = w.adv_c.seen();
    assert!(seen_c.iter().any(|s| s.method == "DeliverKfrag"));
    assert!(
        seen_c
            .iter()
            .any(|s| s.method == "Reencrypt" && s.response.is_some())
    );
    let windows: Vec<&[u8]> = (0..8)
        .map(|i| &data[i * 100_000..i * 100_000 + 48])
        .collect();
    for s in &seen_c {
        match s.method {
            "DeliverKfrag" => {
                let m = DeliverKfragRequest::decode(s.request.body.as_slice())?;
                assert!(!m.capsule.is_empty() && !m.ciphertext.is_empty());
            }
            "Reencrypt" => {
                ReencryptRequest::decode(s.request.body.as_slice())?;
                if let Some(cf) = &s.response {
                    serde_json::from_slice::<umbral_pre::CapsuleFrag>(cf)
                        .context("what hospital-c returned is a capsule fragment")?;
                }
            }
            other => bail!("hospital-c was asked {other}"),
        }
        for bytes in [Some(&s.request.body), s.response.as_ref()]
            .into_iter()
            .flatten()
        {
            assert!(!contains(bytes, &dek), "the DEK passed through hospital-c");
            assert!(!contains(bytes, hex::encode(&dek).as_bytes()));
            for win in &windows {
                assert!(!contains(bytes, win), "plaintext passed through hospital-c");
            }
        }
    }
    // …nor stored it: scan hospital-c's whole data dir.
    let mut stack = vec![w.state(C).cfg.data_dir.clone()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p)?;
                files += 1;
                assert!(!contains(&bytes, &dek), "DEK in {}", p.display());
                for win in &windows {
                    assert!(!contains(&bytes, win), "plaintext in {}", p.display());
                }
            }
        }
    }
    assert!(files > 0);

    // 7. Revocation: the next read is denied on-chain; every proxy deletes
    //    its kfrag; an old re-encryption request replayed to a proxy (with
    //    its valid signature) is refused.
    let old = seen_c
        .iter()
        .rev()
        .find(|s| s.method == "Reencrypt" && s.response.is_some())
        .context("a recorded re-encryption")?
        .request
        .clone();
    let r = w
        .net
        .http
        .delete(format!("{}/consents/{consent_id}", w.net.api(A)))
        .bearer_auth(&w.patient)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let (s, _, _) = w.cardio_reads(&rid).await?;
    assert_eq!(s, 403);
    w.kfrags_gone(&consent_id).await?;
    let real_c = tonic::transport::Endpoint::from_shared(w.net.c.url(C).context("c")?.to_owned())?
        .connect()
        .await?;
    let replay = KeyProxyClient::new(real_c.clone()).reencrypt(old).await;
    let status = replay.expect_err("a replayed request after revocation must be refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // 8. Erasure: a record scoped by its own consent; read; erase; the
    //    content is unrecoverable, the metadata stays.
    let data2 = file(200_000, 2);
    let up2 = w.upload("imaging", &data2).await?;
    let rid2 = up2["record_id"].as_str().context("record_id")?.to_owned();
    let g2 = w.grant(json!({"records": [rid2]})).await?;
    let consent2 = g2["consent_id"].as_str().context("consent_id")?.to_owned();
    let before = w.adv_c.seen().len();
    let (s, body, err) = w.cardio_reads(&rid2).await?;
    assert_eq!(s, 200, "{err}");
    assert!(body == data2);
    let old2 = w.adv_c.seen()[before..]
        .iter()
        .find(|s| s.method == "Reencrypt" && s.response.is_some())
        .context("a recorded re-encryption of record 2")?
        .request
        .clone();
    // Only the patient or a home-org admin may erase.
    let r = w
        .net
        .http
        .delete(format!("{}/records/{rid2}/content", w.net.api(B)))
        .bearer_auth(&w.cardio)
        .send()
        .await?;
    assert_eq!(error_code(r).await?.0, 403);
    // `ehr erase` (the CLI's client) through the home gateway.
    let out = ehr_gateway::client::erase(w.net.c.url(A).context("a")?, &w.patient, &rid2).await?;
    assert_eq!(out["destroyed"].as_array().map(Vec::len), Some(2), "{out}");
    assert!(out["tx_id"].as_str().is_some());
    for who in [(&w.patient, A), (&w.cardio, B)] {
        let r = w.read(who.0, who.1, &rid2).await?;
        assert_eq!(error_code(r).await?, (410, "gone".to_owned()));
    }
    let blobs = &w.state(A).blobs;
    let destroyed: Vec<String> = serde_json::from_value(out["destroyed"].clone())?;
    assert!(
        destroyed
            .iter()
            .any(|c| Some(c.as_str()) == up2["cid"].as_str())
    );
    for c in &destroyed {
        let cid: ehr_ipfs::Cid = c.parse()?;
        assert!(!blobs.has(&cid).await?, "{c} is still in the blob store");
    }
    let meta: Value = w
        .net
        .http
        .get(format!("{}/records/{rid2}", w.net.api(A)))
        .bearer_auth(&w.patient)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(meta["erased"], true);
    assert_eq!(meta["record_id"], rid2.as_str());
    w.kfrags_gone(&consent2).await?;
    let replay = KeyProxyClient::new(real_c).reencrypt(old2).await;
    assert_eq!(
        replay
            .expect_err("no re-encryption of an erased record")
            .code(),
        tonic::Code::PermissionDenied
    );
    // Erasing again finishes nothing new but is not an error.
    let again = ehr_gateway::client::erase(w.net.c.url(A).context("a")?, &w.patient, &rid2).await?;
    assert!(again.get("tx_id").is_none());

    // The first record is untouched by the second one's erasure (the patient reads it).
    let r = w.read(&w.patient, A, &rid).await?;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await?.as_ref() == data.as_slice());

    // The ledger verifies.
    let v: Value = w
        .net
        .http
        .get(format!("{}/ledger/verify", w.net.api(A)))
        .bearer_auth(&w.patient)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["verified"], true, "{v}");
    w.net.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grant_waits_for_a_down_proxy_and_delivers_later() -> Result<()> {
    let w = World::start().await?;
    let data = file(50_000, 3);
    let up = w.upload("lab", &data).await?;
    let rid = up["record_id"].as_str().context("record_id")?.to_owned();
    // hospital-c is down while the patient grants: its kfrag stays queued.
    w.adv_c.set(Mode::Down);
    let g = w.grant(json!({"categories": ["lab"]})).await?;
    let consent_id = g["consent_id"].as_str().context("consent_id")?.to_owned();
    assert_eq!(g["key_grant"]["delivered"], json!([A, B]));
    assert_eq!(g["key_grant"]["pending"], json!([C]));
    assert_eq!(w.state(A).db.outbox_for(&consent_id).await?.len(), 1);
    // 2 of 3 hold theirs: hospital-b already reads.
    let (s, body, err) = w.cardio_reads(&rid).await?;
    assert_eq!(s, 200, "{err}");
    assert!(body == data);
    // hospital-c comes back; the outbox delivers within a few retries.
    w.adv_c.set(Mode::Forward);
    let mut delivered = false;
    for _ in 0..150 {
        if w.state(C).db.held_kfrag(&consent_id).await?.is_some()
            && w.state(A).db.outbox_for(&consent_id).await?.is_empty()
        {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        delivered,
        "the queued kfrag was not delivered after hospital-c came back"
    );
    // With hospital-a down, hospital-c's late kfrag makes the second share.
    w.adv_a.set(Mode::Down);
    let (s, body, err) = w.cardio_reads(&rid).await?;
    assert_eq!(s, 200, "{err}");
    assert!(body == data);
    w.net.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn break_glass_across_orgs_uses_the_custodian() -> Result<()> {
    let w = World::start().await?;
    let data = file(40_000, 4);
    let up = w.upload("note", &data).await?;
    let rid = up["record_id"].as_str().context("record_id")?.to_owned();
    // No consent: break-glass (ETREAT + justification) by hospital-b; the
    // key comes from the patient's home gateway, re-encrypted to
    // hospital-b's registered reader key.
    let url = format!(
        "{}/records/{rid}/content?purpose=ETREAT&justification=unconscious%20patient%20in%20ER",
        w.net.api(B)
    );
    let r = w.net.http.get(&url).bearer_auth(&w.cardio).send().await?;
    assert_eq!(r.status(), 200, "{}", r.text().await?);
    assert!(r.bytes().await?.as_ref() == data.as_slice());
    assert!(w.adv_a.seen().iter().any(|s| s.method == "Release"));
    // With the custodian down there is no other way: 503.
    w.adv_a.set(Mode::Down);
    let r = w.net.http.get(&url).bearer_auth(&w.cardio).send().await?;
    assert_eq!(error_code(r).await?.0, 503);
    w.net.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patient_grants_with_their_own_exported_key() -> Result<()> {
    let w = World::start().await?;
    let a_url = w.net.c.url(A).context("a")?.to_owned();
    // Export: the patient, with the password again.
    let key = ehr_gateway::client::export_key(&a_url, "patient-a", ehr_gateway::up::DEMO_PASSWORD)
        .await?;
    assert_eq!(key.patient_id, w.pid);
    assert_eq!(key.secret_seed.len(), 64);
    let r = w
        .net
        .http
        .post(format!("{}/me/key/export", w.net.api(A)))
        .bearer_auth(&w.patient)
        .json(&json!({"password": "wrong"}))
        .send()
        .await?;
    assert_eq!(error_code(r).await?.0, 401);
    let doctor = w.net.token(A, "doctor-a").await?;
    let r = w
        .net
        .http
        .post(format!("{}/me/key/export", w.net.api(A)))
        .bearer_auth(&doctor)
        .json(&json!({"password": ehr_gateway::up::DEMO_PASSWORD}))
        .send()
        .await?;
    assert_eq!(error_code(r).await?.0, 403);

    let data = file(120_000, 5);
    let up = w.upload("lab", &data).await?;
    let rid = up["record_id"].as_str().context("record_id")?.to_owned();
    let consent = json!({
        "grantee": {"type": "role", "org": B, "role": "clinician"},
        "scope": {"categories": ["lab"]},
        "actions": ["read"],
        "purposes": ["TREAT"],
        "conditions": {"department": "cardiology"}
    });
    // The kfrags are made here, with the exported key; the gateway relays.
    let g =
        ehr_gateway::client::grant_with_own_key(&a_url, &w.patient, &key, consent.clone(), 2, 3)
            .await?;
    assert_eq!(g["key_grant"]["proxies"], json!([A, C, B]), "{g}");
    assert_eq!(g["key_grant"]["delivered"], json!([A, B, C]), "{g}");
    let (s, body, err) = w.cardio_reads(&rid).await?;
    assert_eq!(s, 200, "{err}");
    assert!(body == data);

    // A client grant to a key that is not the grantee org's reader key: 422, nothing recorded.
    let mut bad = consent.clone();
    bad["grantee"]["org"] = json!(C);
    let mut forged = ehr_gateway::client::grant_with_own_key(&a_url, &w.patient, &key, bad, 2, 3)
        .await
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        forged.is_empty(),
        "a grant to hospital-c itself is fine: {forged}"
    );
    let orgs: Value = w
        .net
        .http
        .get(format!("{}/orgs/keys", w.net.api(A)))
        .bearer_auth(&w.patient)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(orgs["orgs"].as_array().map(Vec::len), Some(3));
    let c_reader = orgs["orgs"][2]["reader_public_key"]
        .as_str()
        .context("c key")?
        .to_owned();
    let r = w
        .net
        .http
        .post(format!("{}/patients/{}/consents", w.net.api(A), w.pid))
        .bearer_auth(&w.patient)
        .json(&json!({
            "grantee": {"type": "org", "org": B},
            "scope": {"categories": ["lab"]},
            "actions": ["read"],
            "purposes": ["TREAT"],
            "key_grant": {
                "pre": {"grantee_public_key": c_reader, "verifying_key": key.verifying_key,
                        "threshold": 1, "shares": 1, "proxies": [A], "kfrag_commitments": ["ab".repeat(32)]},
                "sealed_kfrags": [{"org": A, "capsule": "AA==", "ciphertext": "AA=="}]
            }
        }))
        .send()
        .await?;
    forged = r.text().await?;
    assert!(
        forged.contains("not hospital-b's registered reader key"),
        "{forged}"
    );
    w.net.stop().await
}
