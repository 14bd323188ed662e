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
