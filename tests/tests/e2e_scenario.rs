//! The consent scenario end to end, through HTTP only: a patient at
//! hospital-a uploads a record; a hospital-b clinician is denied; the
//! patient grants TREAT to hospital-b clinicians in cardiology; the
//! cardiology clinician reads the exact bytes (key released across orgs by
//! proxy re-encryption); a dermatology clinician is denied; the patient
//! revokes; the next read is denied; the access log and an auditor's query
//! show every decision with its reason; the ledger verifies.

use anyhow::Result;
use ehr_tests::{Net, Services};
use serde_json::{Value, json};

const A: &str = "hospital-a";
const B: &str = "hospital-b";

fn file(n: usize) -> Vec<u8> {
    // Not compressible, not all zero, different per run.
    let seed: u8 = rand::random();
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

async fn read(net: &Net, org: &str, token: &str, record_id: &str) -> Result<reqwest::Response> {
    Ok(net
        .http
        .get(format!(
            "{}/records/{record_id}/content?purpose=TREAT",
            net.api(org)
        ))
        .bearer_auth(token)
        .send()
        .await?)
}

async fn scenario(services: Services) -> Result<()> {
    let Some(net) = Net::start(services, 64 * 1024 * 1024).await? else {
        return Ok(());
    };
    let patient = net.token(A, "patient-a").await?;
    let cardio = net.token(B, "cardio-b").await?;
    let derm = net.token(B, "derm-b").await?;
    let auditor = net.token(A, "auditor-a").await?;
    let pid = net.patient_id("patient-a").expect("demo patient");

    // Upload (several chunks, not a multiple of the chunk size).
    let data = file(300_001);
    let r = net
        .http
        .post(format!(
            "{}/patients/{pid}/records?category=lab&content_type=application/pdf",
            net.api(A)
        ))
        .bearer_auth(&patient)
        .body(data.clone())
        .send()
        .await?;
    assert_eq!(r.status(), 201, "{}", r.text().await?);
    let up: Value = r.json().await?;
    let rid = up["record_id"].as_str().unwrap().to_owned();
    assert_eq!(up["size"], 300_001);
    assert!(up["cid"].as_str().unwrap().starts_with("baf"));
    assert_eq!(up["sha256"].as_str().unwrap().len(), 64);

    // 1. The patient reads their own record at home: exact bytes.
    let r = read(&net, A, &patient, &rid).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await?.as_ref(), data.as_slice());

    // 2. A hospital-b clinician without consent: 403, logged.
    let r = read(&net, B, &cardio, &rid).await?;
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await?;
    assert_eq!(e["error"]["code"], "forbidden");

    // Grant TREAT to hospital-b clinicians in cardiology.
    let r = net
        .http
        .post(format!("{}/patients/{pid}/consents", net.api(A)))
        .bearer_auth(&patient)
        .json(&json!({
            "grantee": {"type": "role", "org": B, "role": "clinician"},
            "scope": {"categories": ["lab"]},
            "actions": ["read"],
            "purposes": ["TREAT"],
            "conditions": {"department": "cardiology"}
        }))
        .send()
        .await?;
    assert_eq!(r.status(), 201, "{}", r.text().await?);
    let consent: Value = r.json().await?;
    let consent_id = consent["consent_id"].as_str().unwrap().to_owned();
    assert!(consent["tx_id"].as_str().is_some());

    // 3. The cardiology clinician reads the exact bytes at hospital-b.
    let r = read(&net, B, &cardio, &rid).await?;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-access-event").is_some());
    assert_eq!(r.bytes().await?.as_ref(), data.as_slice());

    // 4. A dermatology clinician is denied.
    let r = read(&net, B, &derm, &rid).await?;
    assert_eq!(r.status(), 403);

    // Revoke; 5. the next read is denied.
    let r = net
        .http
        .delete(format!("{}/consents/{consent_id}", net.api(A)))
        .bearer_auth(&patient)
        .send()
        .await?;
    assert_eq!(r.status(), 200, "{}", r.text().await?);
    let r = read(&net, B, &cardio, &rid).await?;
    assert_eq!(r.status(), 403);

    // The patient's access log and an auditor's query show the five decisions.
    let expect = [
        ("allow", "patient-a"),
        ("deny", "cardio-b"),
        ("allow", "cardio-b"),
        ("deny", "derm-b"),
        ("deny", "cardio-b"),
    ];
    for (who, org, token, url) in [
        (
            "patient",
            A,
            &patient,
            format!("{}/patients/{pid}/access-log", net.api(A)),
        ),
        (
            "auditor",
            A,
            &auditor,
            format!("{}/audit/events?patient={pid}", net.api(A)),
        ),
    ] {
        let r = net.http.get(&url).bearer_auth(token).send().await?;
        assert_eq!(r.status(), 200, "{who} at {org}");
        // Asked right after the last decision (committed through another
        // org's gateway): the projection had caught up, so it answered.
        assert_eq!(
            r.headers()
                .get("x-audit-source")
                .and_then(|v| v.to_str().ok()),
            Some("projection"),
            "{who} at {org}"
        );
        let v: Value = r.json().await?;
        let events = v["events"].as_array().expect("events");
        let mut events: Vec<&Value> = events
            .iter()
            .filter(|e| e["record_id"] == rid.as_str())
            .collect();
        events.sort_by_key(|e| e["time"].as_str().unwrap_or_default().to_owned());
        assert_eq!(events.len(), 5, "{who} sees five decisions: {v}");
        for (e, (decision, user)) in events.iter().zip(expect) {
            assert_eq!(e["decision"], decision, "{who}: {e}");
            assert!(
                !e["reason"].as_str().unwrap_or_default().is_empty(),
                "{who}: reason in {e}"
            );
            assert!(
                e["block"].as_u64().is_some_and(|b| b > 0),
                "{who}: block number in {e}"
            );
            let actor_user = net
                .c
                .demo_users
                .iter()
                .find(|u| u.username == user)
                .map(|u| u.org.clone())
                .unwrap();
            assert_eq!(e["actor_org"], actor_user.as_str(), "{who}: {e}");
        }
    }

    // Both sources answer the same for every role, at both orgs.
    let admin_a = net.token(A, "admin").await?;
    let admin_b = net.token(B, "admin").await?;
    let auditor_b = net.token(B, "auditor-b").await?;
    let (api_a, api_b) = (net.api(A), net.api(B));
    let cases: Vec<(&str, &String, String)> = vec![
        (
            "patient",
            &patient,
            format!("{api_a}/patients/{pid}/access-log"),
        ),
        (
            "patient, paged",
            &patient,
            format!("{api_a}/patients/{pid}/access-log?limit=2"),
        ),
        (
            "patient, own events",
            &patient,
            format!("{api_a}/audit/events?decision=deny"),
        ),
        ("clinician at B", &cardio, format!("{api_b}/audit/events")),
        (
            "clinician at B, denials",
            &derm,
            format!("{api_b}/audit/events?decision=deny"),
        ),
        ("admin A", &admin_a, format!("{api_a}/audit/events")),
        ("admin B", &admin_b, format!("{api_b}/audit/events?org={B}")),
        (
            "auditor A",
            &auditor,
            format!("{api_a}/audit/events?purpose=TREAT&limit=3"),
        ),
        (
            "auditor B",
            &auditor_b,
            format!("{api_b}/audit/events?patient={pid}&decision=allow"),
        ),
        (
            "auditor B, time",
            &auditor_b,
            format!("{api_b}/audit/events?from=2020-01-01T00:00:00Z&break_glass=false"),
        ),
        (
            "disclosures",
            &patient,
            format!("{api_a}/patients/{pid}/disclosures"),
        ),
    ];
    for (who, token, url) in cases {
        let sep = if url.contains('?') { '&' } else { '?' };
        let mut answers = Vec::new();
        for (u, want) in [
            (url.clone(), "projection"),
            (format!("{url}{sep}source=ledger"), "ledger"),
        ] {
            let r = net.http.get(&u).bearer_auth(token).send().await?;
            assert_eq!(r.status(), 200, "{who}: {u}");
            let source = r
                .headers()
                .get("x-audit-source")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            assert_eq!(source.as_deref(), Some(want), "{who}: {u}");
            answers.push(r.json::<Value>().await?);
        }
        assert_eq!(answers[0], answers[1], "{who}: projection vs ledger");
    }
    // A bookmark of one source pages on in the other.
    let first: Value = net
        .http
        .get(format!("{api_a}/audit/events?limit=2"))
        .bearer_auth(&auditor)
        .send()
        .await?
        .json()
        .await?;
    let cursor = first["bookmark"]
        .as_str()
        .expect("more than two events")
        .to_owned();
    let mut next = Vec::new();
    for source in ["auto", "ledger"] {
        let v: Value = net
            .http
            .get(format!(
                "{api_a}/audit/events?limit=2&cursor={cursor}&source={source}"
            ))
            .bearer_auth(&auditor)
            .send()
            .await?
            .json()
            .await?;
        assert_eq!(v["events"].as_array().map(Vec::len), Some(2), "{v}");
        next.push(v);
    }
    assert_eq!(next[0], next[1]);
    // The same restrictions through the projection: 403 for another patient's log.
    let other = net.patient_id("patient-b").expect("demo patient");
    let r = net
        .http
        .get(format!("{api_a}/audit/events?patient={other}"))
        .bearer_auth(&patient)
        .send()
        .await?;
    assert_eq!(r.status(), 403);

    // A title stays at the patient's home gateway, sealed.
    let title = "Knee MRI, left — Dr. Ödön's referral";
    let r = net
        .http
        .post(format!("{api_a}/patients/{pid}/records?category=imaging"))
        .query(&[("title", title)])
        .bearer_auth(&patient)
        .body(file(1000))
        .send()
        .await?;
    assert_eq!(r.status(), 201, "{}", r.text().await?);
    let titled = r.json::<Value>().await?["record_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v: Value = net
        .http
        .get(format!("{api_a}/records/{titled}"))
        .bearer_auth(&patient)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["title"], title, "{v}");
    let list: Value = net
        .http
        .get(format!("{api_a}/patients/{pid}/records"))
        .bearer_auth(&patient)
        .send()
        .await?
        .json()
        .await?;
    let records = list["records"].as_array().expect("records");
    let with: Vec<&Value> = records
        .iter()
        .filter(|r| r.get("title").is_some())
        .collect();
    assert_eq!(with.len(), 1, "{list}");
    assert_eq!(with[0]["record_id"], titled.as_str());
    assert_eq!(with[0]["title"], title);
    // Another org's gateway sees the record (an auditor sees all metadata) but has no title.
    let r = net
        .http
        .get(format!("{api_b}/records/{titled}"))
        .bearer_auth(&auditor_b)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(v["record_id"], titled.as_str());
    assert!(v.get("title").is_none(), "{v}");
    // ... and refuses to keep one for a patient who is not its own.
    let r = net
        .http
        .post(format!(
            "{api_b}/patients/{pid}/records?category=lab&title=x"
        ))
        .bearer_auth(&cardio)
        .body(b"x".to_vec())
        .send()
        .await?;
    assert_eq!(r.status(), 422);
    // At rest: the column holds ciphertext, the ledger never saw the title.
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT title_sealed FROM record_titles WHERE record_id = $1")
            .bind(&titled)
            .fetch_one(net.c.gateways[0].state.db.pool())
            .await?;
    let needle = title.as_bytes();
    assert!(sealed.len() > needle.len());
    assert!(
        !sealed.windows(needle.len()).any(|w| w == needle),
        "title stored in clear"
    );
    assert!(!sealed.windows(4).any(|w| w == b"Knee"));
    let chain = std::fs::read(net.c.devnet.block_file_path())?;
    assert!(
        !chain.windows(needle.len()).any(|w| w == needle),
        "title on the ledger"
    );
    assert!(!chain.windows(8).any(|w| w == b"Knee MRI"));

    // Proof of a decision against the hash chain, disclosures, exports.
    let log: Value = net
        .http
        .get(format!("{}/patients/{pid}/access-log", net.api(A)))
        .bearer_auth(&patient)
        .send()
        .await?
        .json()
        .await?;
    let first = log["events"][0]["event_id"].as_str().unwrap().to_owned();
    let proof: Value = net
        .http
        .get(format!("{}/audit/events/{first}/proof", net.api(A)))
        .bearer_auth(&auditor)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(proof["verified"], true, "{proof}");
    assert_eq!(proof["block_hash"].as_str().unwrap().len(), 64);
    let disc: Value = net
        .http
        .get(format!("{}/patients/{pid}/disclosures", net.api(A)))
        .bearer_auth(&patient)
        .send()
        .await?
        .json()
        .await?;
    let disc = disc["disclosures"].as_array().unwrap();
    assert_eq!(disc.len(), 1, "one disclosure: to the cardiology clinician");
    assert_eq!(disc[0]["recipient_org"], B);
    let csv = net
        .http
        .get(format!(
            "{}/audit/export?format=csv&patient={pid}",
            net.api(A)
        ))
        .bearer_auth(&auditor)
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(csv.lines().count(), 6, "header + five decisions:\n{csv}");
    let fhir: Value = net
        .http
        .get(format!(
            "{}/audit/export?format=fhir&patient={pid}",
            net.api(A)
        ))
        .bearer_auth(&auditor)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(fhir["resourceType"], "Bundle");
    assert_eq!(fhir["entry"].as_array().unwrap().len(), 5);
    assert_eq!(fhir["entry"][0]["resource"]["resourceType"], "AuditEvent");

    // The gateway's projection of ledger events caught up with the five decisions.
    let db = &net.c.gateways[0].state.db;
    let filter = ehr_gateway::db::events::EventFilter {
        event_name: Some("AccessDecision".into()),
        patient_id: Some(pid.clone()),
        limit: 100,
        ..Default::default()
    };
    let mut projected = Vec::new();
    for _ in 0..100 {
        projected = db.query_events(&filter).await?;
        if projected.len() >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let decisions: Vec<_> = projected
        .iter()
        .map(|e| e.decision.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        decisions,
        ["allow", "deny", "allow", "deny", "deny"],
        "projection"
    );
    assert!(
        projected
            .iter()
            .all(|e| e.time_key.is_some() && e.actor_role.is_some()),
        "full entries projected"
    );
    assert!(
        db.checkpoint(ehr_gateway::projector::CHECKPOINT)
            .await?
            .is_some()
    );

    // Operations endpoints.
    let base = net.c.url(A).unwrap().to_owned();
    let r = net.http.get(format!("{base}/healthz")).send().await?;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-request-id").is_some(),
        "request id on every response"
    );
    let r = net.http.get(format!("{base}/readyz")).send().await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(v["ready"], true, "{v}");
    let m = net
        .http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(m.contains("ehr_gateway_access_allowed_total 1"), "{m}");
    let doc: Value = net
        .http
        .get(format!("{base}/openapi.json"))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for p in [
        "/api/v1/auth/token",
        "/api/v1/patients/{patient_id}/records",
        "/api/v1/records/{record_id}/content",
        "/api/v1/audit/events",
        "/api/v1/ledger/verify",
    ] {
        assert!(doc["paths"].get(p).is_some(), "OpenAPI lacks {p}");
    }
    for p in [
        "/api/v1/audit/events",
        "/api/v1/audit/export",
        "/api/v1/patients/{patient_id}/access-log",
        "/api/v1/patients/{patient_id}/disclosures",
    ] {
        let params = doc["paths"][p]["get"]["parameters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let source = params.iter().find(|q| q["name"] == "source");
        assert!(source.is_some(), "OpenAPI documents ?source= on {p}");
        assert!(
            source.unwrap().to_string().contains("ledger"),
            "{p}: {}",
            source.unwrap()
        );
    }

    // The ledger's hash chain verifies.
    let r = net
        .http
        .get(format!("{}/ledger/verify", net.api(A)))
        .bearer_auth(&auditor)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(v["verified"], true, "{v}");
    assert!(v["height"].as_u64().unwrap() > 5);
    net.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_scenario_on_sqlite_and_embedded_store() -> Result<()> {
    scenario(Services::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_scenario_on_postgres_and_ipfs_node() -> Result<()> {
    scenario(Services::PostgresIpfs).await
}
