//! Bad input through HTTP: malformed JSON, wrong types, huge bodies, unknown
//! ids, path traversal, invalid CIDs and ids, over-long strings. Every answer
//! is a 4xx with the error shape, never a 5xx, and nothing is written (the
//! ledger height and the user count do not move). Also: a failed upload
//! leaves no orphan pinned.

use anyhow::{Context, Result};
use ehr_gateway::db::uploads::UploadState;
use ehr_tests::{Net, Services, error_code};
use reqwest::Method;
use serde_json::{Value, json};

const A: &str = "hospital-a";
const LIMIT: u64 = 256 * 1024;

/// Method, URL, bearer token, content type, body, acceptable statuses.
type Case<'a> = (Method, String, Option<&'a str>, &'a str, Vec<u8>, &'a [u16]);

async fn height(net: &Net, token: &str) -> Result<u64> {
    let v: Value = net
        .http
        .get(format!("{}/ledger/verify", net.api(A)))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    Ok(v["height"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_4xx_with_the_error_shape_and_writes_nothing() -> Result<()> {
    let net = Net::start(Services::Embedded, LIMIT)
        .await?
        .expect("embedded needs no service");
    let patient = net.token(A, "patient-a").await?;
    let admin = net.token(A, "admin").await?;
    let pid = net.patient_id("patient-a").unwrap();
    let api = net.api(A);
    let h0 = height(&net, &admin).await?;
    let users0 = net.c.gateways[0].state.db.user_count().await?;

    let long = "x".repeat(5000);
    let huge_json = format!(
        "{{\"username\":\"{}\",\"password\":\"x\"}}",
        "y".repeat(80 * 1024 * 1024)
    );
    // (method, path, token, content type, body, acceptable statuses)
    let cases: Vec<Case> = vec![
        // Malformed JSON and wrong types.
        (Method::POST, format!("{api}/auth/token"), None, "application/json", b"{not json".to_vec(), &[400]),
        (Method::POST, format!("{api}/auth/token"), None, "application/json", br#"{"username":5,"password":[]}"#.to_vec(), &[400, 422]),
        (Method::POST, format!("{api}/auth/token"), None, "text/plain", br#"{"username":"a","password":"b"}"#.to_vec(), &[400, 415]),
        (Method::POST, format!("{api}/users"), Some(&admin), "application/json", br#"{"username":"n","password":"12345678","role":"wizard"}"#.to_vec(), &[400, 422]),
        (Method::POST, format!("{api}/users"), Some(&admin), "application/json", br#"{"username":"n","password":"12345678","role":"clinician","attributes":{"department":7}}"#.to_vec(), &[400, 422]),
        (Method::POST, format!("{api}/users"), Some(&admin), "application/json", br#"{"username":"n","password":"12345678","role":"clinician","attributes":{"ehr.role":"admin"}}"#.to_vec(), &[400]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":"everyone"}"#.to_vec(), &[400, 422]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":{"type":"org","org":"hospital-b"},"scope":{"records":["../../etc/passwd"]},"actions":["read"],"purposes":["TREAT"]}"#.to_vec(), &[400, 404, 422]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":{"type":"org","org":"hospital-b"},"scope":{"categories":["lab"]},"actions":["read"],"purposes":["WHATEVER"]}"#.to_vec(), &[400, 422]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"[1,2,3]"#.to_vec(), &[400, 422]),
        // Huge bodies.
        (Method::POST, format!("{api}/auth/token"), None, "application/json", huge_json.into_bytes(), &[413]),
        (Method::POST, format!("{api}/patients/{pid}/records?category=lab"), Some(&patient), "application/octet-stream", vec![7u8; LIMIT as usize + 1], &[413]),
        // Unknown ids.
        (Method::GET, format!("{api}/records/r-000000000000000000000000"), Some(&patient), "", vec![], &[403, 404]),
        (Method::GET, format!("{api}/records/r-000000000000000000000000/content"), Some(&patient), "", vec![], &[404]),
        (Method::DELETE, format!("{api}/consents/c-000000000000000000000000"), Some(&patient), "", vec![], &[403, 404]),
        (Method::POST, format!("{api}/patients/p-nobody/records?category=lab"), Some(&patient), "application/octet-stream", b"hello".to_vec(), &[403, 404]),
        (Method::GET, format!("{api}/no/such/endpoint"), Some(&patient), "", vec![], &[404]),
        // Path traversal in ids.
        (Method::GET, format!("{api}/records/..%2F..%2Fetc%2Fpasswd/content"), Some(&patient), "", vec![], &[400, 404]),
        (Method::GET, format!("{api}/records/.hidden"), Some(&patient), "", vec![], &[400]),
        (Method::GET, format!("{api}/patients/..%2Fx/records"), Some(&patient), "", vec![], &[400, 404]),
        (Method::POST, format!("{api}/patients/{pid}%2F..%2F..%2Fx/records?category=lab"), Some(&patient), "application/octet-stream", b"x".to_vec(), &[400, 404]),
        // Invalid CIDs where an id is expected.
        (Method::GET, format!("{api}/records/bafy-not-a-cid!!/content"), Some(&patient), "", vec![], &[400]),
        (Method::GET, format!("{api}/records/QmNotACid%00/content"), Some(&patient), "", vec![], &[400]),
        // Key grants, key export, erasure.
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":{"type":"org","org":"hospital-b"},"scope":{"categories":["lab"]},"actions":["read"],"purposes":["TREAT"],"key_grant":"yes"}"#.to_vec(), &[400]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":{"type":"org","org":"hospital-b"},"scope":{"categories":["lab"]},"actions":["read"],"purposes":["TREAT"],"key_grant":{"threshold":5,"shares":3}}"#.to_vec(), &[400]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":{"type":"org","org":"hospital-b"},"scope":{"categories":["lab"]},"actions":["read"],"purposes":["TREAT"],"key_grant":{"shares":17}}"#.to_vec(), &[400]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":{"type":"org","org":"hospital-b"},"scope":{"categories":["lab"]},"actions":["read"],"purposes":["TREAT"],"key_grant":{"proxies":["hospital-a","hospital-a"]}}"#.to_vec(), &[400]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":{"type":"org","org":"hospital-b"},"scope":{"categories":["lab"]},"actions":["read"],"purposes":["TREAT"],"key_grant":{"proxies":["hospital-z"]}}"#.to_vec(), &[422]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":{"type":"org","org":"hospital-b"},"scope":{"categories":["lab"]},"actions":["read"],"purposes":["TREAT"],"key_grant":{"colour":"red"}}"#.to_vec(), &[400]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":{"type":"org","org":"hospital-b"},"scope":{"categories":["lab"]},"actions":["read"],"purposes":["TREAT"],"pre":{}}"#.to_vec(), &[400]),
        (Method::POST, format!("{api}/patients/{pid}/consents"), Some(&patient), "application/json", br#"{"grantee":{"type":"org","org":"hospital-b"},"scope":{"categories":["lab"]},"actions":["read"],"purposes":["TREAT"],"key_grant":{"pre":{"grantee_public_key":"0x02","threshold":1,"shares":1,"proxies":["hospital-a"],"kfrag_commitments":["ab"]},"sealed_kfrags":[{"org":"hospital-a","capsule":"!!","ciphertext":"AA=="}]}}"#.to_vec(), &[400, 422]),
        (Method::POST, format!("{api}/me/key/export"), Some(&patient), "application/json", b"{}".to_vec(), &[400, 422]),
        (Method::POST, format!("{api}/me/key/export"), Some(&patient), "application/json", json!({"password": long}).to_string().into_bytes(), &[400, 401]),
        (Method::POST, format!("{api}/me/key/export"), Some(&admin), "application/json", br#"{"password":"x"}"#.to_vec(), &[403]),
        (Method::DELETE, format!("{api}/records/..%2F..%2Fetc/content"), Some(&patient), "", vec![], &[400, 404]),
        (Method::DELETE, format!("{api}/records/r-000000000000000000000000/content"), Some(&patient), "", vec![], &[403, 404]),
        // Over-long strings and bad parameters.
        (Method::POST, format!("{api}/auth/token"), None, "application/json", json!({"username": long, "password": "x"}).to_string().into_bytes(), &[400, 401]),
        (Method::GET, format!("{api}/records/{}/content", "r".repeat(500)), Some(&patient), "", vec![], &[400]),
        (Method::GET, format!("{api}/records/r-1/content?purpose=ETREAT&justification={}", "j".repeat(600)), Some(&patient), "", vec![], &[400]),
        (Method::GET, format!("{api}/records/r-1/content?purpose=FUN"), Some(&patient), "", vec![], &[400]),
        (Method::POST, format!("{api}/patients/{pid}/records?category=poetry"), Some(&patient), "application/octet-stream", b"x".to_vec(), &[400]),
        (Method::POST, format!("{api}/patients/{pid}/records?category=lab&content_type=not%20a%20type"), Some(&patient), "application/octet-stream", b"x".to_vec(), &[400]),
        (Method::POST, format!("{api}/patients/{pid}/records?category=lab&title={}", "t".repeat(300)), Some(&patient), "application/octet-stream", b"x".to_vec(), &[400]),
        (Method::GET, format!("{api}/audit/events?decision=maybe"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?from=yesterday"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?limit=-1"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?cursor={}", "z".repeat(3000)), Some(&admin), "", vec![], &[400]),
        // Access-log queries, answered by the projection or the chaincode: the same 4xx either way.
        (Method::GET, format!("{api}/audit/events?source=chain"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/patients/{pid}/access-log?source=everywhere"), Some(&patient), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?limit=0"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?limit=0&source=ledger"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?limit=5000"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?from=0001-01-01T00:00:00Z"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?cursor=zz"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?cursor=00ff"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?break_glass=maybe"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/events?actor=a%20b"), Some(&admin), "", vec![], &[400]),
        (Method::GET, format!("{api}/patients/{pid}/access-log?bookmark=zz"), Some(&patient), "", vec![], &[400]),
        (Method::GET, format!("{api}/patients/{pid}/access-log?limit=abc"), Some(&patient), "", vec![], &[400]),
        (Method::GET, format!("{api}/patients/p-someone-else/access-log"), Some(&patient), "", vec![], &[403]),
        (Method::GET, format!("{api}/patients/{pid}/disclosures?bookmark=zz"), Some(&patient), "", vec![], &[400]),
        (Method::GET, format!("{api}/audit/export?format=csv&cursor=zz"), Some(&admin), "", vec![], &[400]),
        // Auth problems.
        (Method::GET, format!("{api}/me"), None, "", vec![], &[401]),
        (Method::GET, format!("{api}/me"), Some("not-a-jwt"), "", vec![], &[401]),
        (Method::POST, format!("{api}/auth/token"), None, "application/json", br#"{"username":"patient-a","password":"wrong-password"}"#.to_vec(), &[401]),
        (Method::POST, format!("{api}/users"), Some(&patient), "application/json", br#"{"username":"eve","password":"12345678","role":"admin"}"#.to_vec(), &[403]),
    ];
    // No connection reuse: a server may close a connection after refusing
    // an oversized body.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    for (i, (method, url, token, ctype, body, ok)) in cases.into_iter().enumerate() {
        let mut rb = http.request(method.clone(), &url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if !ctype.is_empty() {
            rb = rb.header("content-type", ctype);
        }
        if !body.is_empty() {
            rb = rb.body(body);
        }
        let shown: String = url.chars().take(120).collect();
        let r = match rb.send().await {
            Ok(r) => r,
            // A server may close the connection on a body over the limit
            // before reading it all; that is a refusal, not a 5xx.
            Err(e) if ok.contains(&413) => {
                eprintln!("case {i} {method} {shown}: connection closed ({e})");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (status, code) = error_code(r)
            .await
            .with_context(|| format!("case {i} {method} {shown}"))?;
        assert!(
            ok.contains(&status),
            "case {i} {method} {shown}: got {status} {code}, want one of {ok:?}"
        );
        assert!(status < 500, "case {i}: 5xx");
    }

    // Nothing was written: no block, no user.
    assert_eq!(height(&net, &admin).await?, h0, "the ledger did not grow");
    assert_eq!(net.c.gateways[0].state.db.user_count().await?, users0);
    net.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_upload_leaves_no_orphan_pinned() -> Result<()> {
    let net = Net::start(Services::Embedded, LIMIT)
        .await?
        .expect("embedded needs no service");
    // A clinician at hospital-c has no consent to write into patient-a's record.
    let doctor = net.token("hospital-c", "doctor-c").await?;
    let pid = net.patient_id("patient-a").unwrap();
    let r = net
        .http
        .post(format!(
            "{}/patients/{pid}/records?category=note",
            net.api("hospital-c")
        ))
        .bearer_auth(&doctor)
        .body(vec![1u8; 100_000])
        .send()
        .await?;
    let (status, _) = error_code(r).await?;
    assert_eq!(status, 403);
    // The gateway's bookkeeping says the upload was cleaned up, and the blob
    // store no longer pins what it stored.
    let state = &net.c.gateways[2].state;
    let cleaned = state.db.uploads_in_state(UploadState::Cleaned).await?;
    assert_eq!(
        cleaned.len(),
        1,
        "the upload got as far as the blob store and was cleaned up"
    );
    let u = &cleaned[0];
    let cids: Vec<&String> = [&u.cid, &u.capsule_cid].into_iter().flatten().collect();
    assert_eq!(cids.len(), 2, "ciphertext and sealed key were stored");
    for cid in cids {
        let cid: ehr_ipfs::Cid = cid.parse()?;
        let stat = state.blobs.stat(&cid).await?;
        assert!(!stat.pinned, "orphan {cid} still pinned");
    }
    assert!(
        state
            .db
            .uploads_in_state(UploadState::BlobStored)
            .await?
            .is_empty()
    );
    net.stop().await
}
