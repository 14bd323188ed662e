//! Access-log queries (`/audit/events`, `/patients/{id}/access-log`,
//! disclosures, exports) from the event projection, answered exactly as the
//! chaincode's `QueryAccessLog` answers them: same validation, same role
//! rules ([`scope`]), same order, same page JSON, same bookmarks (a
//! bookmark from one source pages on in the other).
//!
//! The ledger stays the source of truth: [`projection_ready`] serves from
//! the projection only once it holds every block the ledger had committed
//! when the request came in; otherwise the caller falls back to the
//! chaincode.
//!
//! One difference: the chaincode examines at most 10,000 entries per call
//! and may return a short page with a bookmark; the projection always
//! returns full pages. Following bookmarks yields the same events.

use std::time::Duration;

use ehr_chaincode::contract::model::AccessEvent;
use ehr_chaincode::contract::time::Time;
use ehr_chaincode::contract::{ContractError, page};
use ehr_chaincode::identity::{Identity, Role};
use ehr_chaincode::stub::create_composite_key;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::chain::{Chain, EventScan};
use crate::db::log::{LogQuery, Start, Visibility};
use crate::db::{Db, DbError};
use crate::projector::CHECKPOINT;

/// How long a request waits for the projection to catch up.
pub const FRESHNESS_WAIT: Duration = Duration::from_secs(2);

/// Why a projection query failed.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The query is invalid (the chaincode answers 400).
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not ask this (the chaincode answers 403).
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Db(#[from] DbError),
    /// A projected row is not what the chaincode logged.
    #[error("corrupt projection row: {0}")]
    Corrupt(String),
}

impl From<ContractError> for AuditError {
    fn from(e: ContractError) -> Self {
        match e {
            ContractError::Forbidden(m) => Self::Forbidden(m),
            other => Self::BadRequest(other.to_string()),
        }
    }
}

/// `QueryAccessLog`'s argument: the chaincode's own type.
pub use ehr_chaincode::contract::audit::QueryArgs as LogArgs;

/// Parses the JSON the gateway would send to `QueryAccessLog` (a bad value
/// is a 400, as the chaincode's own parsing makes it).
pub fn parse_log_args(args: &Value) -> Result<LogArgs, AuditError> {
    serde_json::from_value(args.clone())
        .map_err(|e| AuditError::BadRequest(format!("invalid argument: {e}")))
}

/// The chaincode's visibility rules for access-log queries, in one place:
/// checks what the caller may ask, fills the filters a role implies, and
/// says which entries the caller may see.
///
/// - a patient: entries about themselves at their home org (`patient_id`
///   defaults to theirs; another patient → 403);
/// - a clinician: their own actions (`actor`/`org` default to theirs;
///   another → 403);
/// - an admin: entries whose actor's org or patient's home org is theirs;
/// - an auditor (any org): everything.
pub fn scope(caller: &Identity, q: &mut LogArgs) -> Result<Visibility, AuditError> {
    // What the caller may ask: the chaincode's own rule.
    ehr_chaincode::contract::audit::scope_query(caller, q)?;
    Ok(match caller.role {
        Role::Patient => match &caller.patient_id {
            Some(p) => Visibility::Patient {
                patient_id: p.clone(),
                org: caller.msp_id.clone(),
            },
            // The chaincode never issues such an identity; it would see nothing.
            None => Visibility::Patient {
                patient_id: String::new(),
                org: String::new(),
            },
        },
        Role::Clinician => Visibility::Actor {
            actor: caller.user_id.clone(),
            org: caller.msp_id.clone(),
        },
        Role::Admin => Visibility::Org(caller.msp_id.clone()),
        Role::Auditor => Visibility::All,
    })
}

/// A page as `QueryAccessLog` answers it.
#[derive(Debug, Serialize)]
pub struct EventPage {
    pub events: Vec<AccessEvent>,
    /// The block of each event (not part of the chaincode's page).
    #[serde(skip)]
    pub blocks: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bookmark: Option<String>,
}

fn key(object_type: &str, attrs: &[&str]) -> Result<String, AuditError> {
    create_composite_key(object_type, attrs)
        .map_err(|e| AuditError::BadRequest(format!("invalid argument: {e}")))
}

/// Where a resume key (inside the query's key range, after the prefix)
/// starts, in (time key, event id) order. Exact for any key: an entry's
/// key suffix is `time_key \0 event_id \0`.
fn start_of(rest: &str) -> Start {
    match rest.split_once('\u{0}') {
        None => Start::Time(rest.to_owned()),
        Some((t, rest2)) => match rest2.split_once('\u{0}') {
            None => Start::At {
                time_key: t.to_owned(),
                event_id: rest2.to_owned(),
                inclusive: true,
            },
            Some((id, tail)) => Start::At {
                time_key: t.to_owned(),
                event_id: id.to_owned(),
                inclusive: tail.is_empty(),
            },
        },
    }
}

/// Answers `QueryAccessLog` for `caller` from the projection.
pub async fn query(db: &Db, caller: &Identity, mut q: LogArgs) -> Result<EventPage, AuditError> {
    // The chaincode's own checks and key range, so the same input fails the
    // same way and a bookmark means the same position.
    let limit = ehr_chaincode::contract::audit::check_query(&q)?;
    let visibility = scope(caller, &mut q)?;
    let ehr_chaincode::contract::audit::KeyRange {
        object_type,
        attrs,
        prefix,
        start,
        end,
    } = ehr_chaincode::contract::audit::key_range(&q)?;
    let resume = match q.bookmark.as_deref() {
        Some(b) => {
            let k = page::decode_bookmark(b, &start, &end)?;
            Some(start_of(k.get(prefix.len()..).unwrap_or_default()))
        }
        None => None,
    };
    let lq = LogQuery {
        visibility: visibility.clone(),
        patient_id: q.patient_id.clone(),
        actor: q.actor.clone(),
        actor_org: q.org.clone(),
        decision: q.decision.as_ref().map(enum_text),
        purpose: q.purpose.as_ref().map(enum_text),
        break_glass: q.break_glass,
        from_key: q.from.map(Time::sort_key),
        to_key: q.to.map(Time::sort_key),
        start: resume,
        limit: i64::try_from(limit).unwrap_or(1000) + 1,
    };
    let mut rows = db.query_log(&lq).await?;
    let next = if rows.len() > limit {
        rows.truncate(limit + 1);
        rows.pop()
    } else {
        None
    };
    let mut events = Vec::with_capacity(rows.len());
    let blocks = rows.iter().map(|r| r.block).collect();
    for r in rows {
        let e: AccessEvent = serde_json::from_str(&r.payload)
            .map_err(|e| AuditError::Corrupt(format!("event {}: {e}", r.event_id)))?;
        if e.event_id != r.event_id
            || e.time.sort_key() != r.time_key
            || !ehr_chaincode::contract::audit::visible(caller, &e)
        {
            return Err(AuditError::Corrupt(format!(
                "event {} does not match its columns",
                r.event_id
            )));
        }
        events.push(e);
    }
    let bookmark = match next {
        Some(n) => {
            let mut full: Vec<&str> = attrs.iter().map(String::as_str).collect();
            full.push(&n.time_key);
            full.push(&n.event_id);
            Some(page::encode_bookmark(&key(object_type, &full)?))
        }
        None => None,
    };
    Ok(EventPage {
        events,
        blocks,
        bookmark,
    })
}

/// The JSON string a unit enum serializes to (`allow`, `TREAT`).
pub(crate) fn enum_text<T: Serialize>(x: &T) -> String {
    serde_json::to_value(x)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Why the projection cannot answer now (the caller then asks the chaincode).
#[derive(Debug, Error)]
pub enum NotReady {
    #[error("ledger height unknown: {0}")]
    Height(String),
    #[error("projection at block {at:?}, ledger at {target} after {waited:?}")]
    Behind {
        at: Option<i64>,
        target: u64,
        waited: Duration,
    },
    #[error("projection holds events from before the chaincode emitted full entries")]
    Partial,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Waits (up to `wait`) until the projection holds every chaincode event
/// of the blocks the ledger had committed when this was called.
pub async fn projection_ready(db: &Db, chain: &dyn Chain, wait: Duration) -> Result<(), NotReady> {
    let height = chain
        .height()
        .await
        .map_err(|e| NotReady::Height(e.to_string()))?;
    if let Some(tip) = height.checked_sub(1) {
        let done = db
            .checkpoint(CHECKPOINT)
            .await?
            .and_then(|b| u64::try_from(b).ok());
        if done.is_none_or(|d| d < tip) {
            // Blocks without events of the chaincode (genesis, config, only
            // invalid transactions) never move the checkpoint: the block to
            // wait for is the last one that has events.
            let first = done.map_or(0, |d| d + 1);
            let need = match chain.last_event_block(first, tip).await {
                Ok(EventScan::NoEvents) => None,
                Ok(EventScan::At(n)) => Some(n),
                Ok(EventScan::Unknown) | Err(_) => Some(tip),
            };
            if let Some(n) = need {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                if !db.wait_checkpoint(CHECKPOINT, n, wait).await? {
                    return Err(NotReady::Behind {
                        at: db.checkpoint(CHECKPOINT).await?,
                        target: u64::try_from(n).unwrap_or(u64::MAX),
                        waited: wait,
                    });
                }
            }
        }
    }
    if db.has_partial_log_rows().await? {
        return Err(NotReady::Partial);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The projection against the chaincode itself: the same access log
    //! (the real contract over a `MemStub`, its events projected), the same
    //! queries by every kind of caller, the same answers.

    use std::collections::BTreeMap;

    use ehr_chaincode::contract::EhrContract;
    use ehr_chaincode::memstub::MemStub;
    use ehr_chaincode::stub::TxTimestamp;
    use ehr_ledger::msp::ca::OrgCa;
    use serde_json::{Map, json};

    use super::*;
    use crate::crypto::kek::Kek;
    use crate::db::testdb;
    use crate::db::users::User;
    use crate::projector;

    const A: &str = "hospital-a";
    const B: &str = "hospital-b";
    const CID: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    const T0: i64 = 1_700_000_000;

    struct Who {
        creator: Vec<u8>,
        identity: Identity,
        umbral_pk: Vec<u8>,
    }

    /// Name, org, user id, role, patient id, attributes.
    type CastRow = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
        &'static [(&'static str, &'static str)],
    );

    struct World {
        stub: MemStub,
        people: BTreeMap<&'static str, Who>,
        n: u64,
    }

    impl World {
        fn new() -> Self {
            let kek = Kek::from_bytes(&[3u8; 32]);
            let cas: BTreeMap<&str, OrgCa> = [A, B]
                .into_iter()
                .map(|o| (o, OrgCa::generate(o, o).unwrap()))
                .collect();
            // (name, org, user id, role, patient id, attributes)
            let cast: [CastRow; 10] = [
                ("pa1", A, "u-pa1", "patient", Some("p-a1"), &[]),
                ("pa2", A, "u-pa2", "patient", Some("p-a2"), &[]),
                ("pb1", B, "u-pb1", "patient", Some("p-b1"), &[]),
                // The same user id at two orgs: different people.
                (
                    "doc-a",
                    A,
                    "doc",
                    "clinician",
                    None,
                    &[("department", "general")],
                ),
                (
                    "doc-b",
                    B,
                    "doc",
                    "clinician",
                    None,
                    &[("department", "cardiology")],
                ),
                (
                    "derm-b",
                    B,
                    "u-derm",
                    "clinician",
                    None,
                    &[("department", "dermatology")],
                ),
                ("admin-a", A, "admin", "admin", None, &[]),
                ("admin-b", B, "admin", "admin", None, &[]),
                ("aud-a", A, "aud", "auditor", None, &[]),
                ("aud-b", B, "aud", "auditor", None, &[]),
            ];
            let mut people = BTreeMap::new();
            for (name, org, user_id, role, patient_id, attrs) in cast {
                let user = User {
                    user_id: user_id.into(),
                    username: name.into(),
                    role: role.into(),
                    attributes: attrs
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                        .collect::<Map<_, _>>(),
                    patient_id: patient_id.map(str::to_owned),
                };
                let row = crate::identity::enroll(&cas[org], &kek, &user).unwrap();
                let signer = crate::identity::signer(&row, &kek).unwrap();
                let creator = signer.serialized().to_vec();
                let identity = ehr_chaincode::identity::from_creator(&creator).unwrap();
                assert_eq!(identity.msp_id, org);
                people.insert(
                    name,
                    Who {
                        creator,
                        identity,
                        umbral_pk: row.umbral_pk.clone(),
                    },
                );
            }
            Self {
                stub: MemStub::new(),
                people,
                n: 0,
            }
        }

        /// Runs `function(arg)` as `who` at `secs` (+ `nanos`); returns status and payload.
        fn call(
            &mut self,
            who: &str,
            function: &str,
            arg: Value,
            secs: i64,
            nanos: i32,
        ) -> (i32, Value) {
            self.n += 1;
            // Tx ids whose order is not the call order.
            let tx = hex::encode(sha2::Sha256::digest(self.n.to_be_bytes()));
            self.stub.set_creator(self.people[who].creator.clone());
            let ts = TxTimestamp {
                seconds: T0 + secs,
                nanos,
            };
            let (r, _) = self.stub.run(
                &EhrContract,
                tx,
                ts,
                &[function.as_bytes().to_vec(), arg.to_string().into_bytes()],
            );
            let payload = if r.is_ok() {
                serde_json::from_slice(&r.payload).unwrap_or(Value::Null)
            } else {
                Value::String(r.message)
            };
            (r.status, payload)
        }

        fn ok(&mut self, who: &str, function: &str, arg: Value, secs: i64) -> Value {
            let (status, v) = self.call(who, function, arg, secs, 0);
            assert_eq!(status, 200, "{who} {function}: {v}");
            v
        }
    }

    use sha2::Digest;

    /// A small but varied access log: allows, denies, break-glass, an
    /// unknown record, ties in time, several orgs on both sides.
    fn build() -> World {
        let mut w = World::new();
        for (admin, p, who) in [
            ("admin-a", "p-a1", "pa1"),
            ("admin-a", "p-a2", "pa2"),
            ("admin-b", "p-b1", "pb1"),
        ] {
            let pk = format!("0x{}", hex::encode(&w.people[who].umbral_pk));
            w.ok(
                admin,
                "RegisterPatient",
                json!({"patient_id": p, "pre_public_key": pk}),
                1,
            );
        }
        for (admin, p, r, cat) in [
            ("admin-a", "p-a1", "r-a1-lab", "lab"),
            ("admin-a", "p-a1", "r-a1-note", "note"),
            ("admin-a", "p-a2", "r-a2-lab", "lab"),
            ("admin-b", "p-b1", "r-b1-lab", "lab"),
        ] {
            w.ok(admin, "AddRecord", json!({"record_id": r, "patient_id": p, "category": cat, "cid": CID,
                "sha256": "ab".repeat(32), "size": 10, "content_type": "text/plain", "capsule_ref": CID}), 2);
        }
        w.ok("pa1", "GrantConsent", json!({"patient_id": "p-a1",
            "grantee": {"type": "role", "org": B, "role": "clinician"}, "scope": {"categories": ["lab"]},
            "actions": ["read"], "purposes": ["TREAT"], "conditions": {"department": "cardiology"}}), 3);
        let reads: [(&str, &str, &str, Option<&str>); 14] = [
            ("pa1", "r-a1-lab", "TREAT", None),
            ("doc-b", "r-a1-lab", "TREAT", None),
            ("derm-b", "r-a1-lab", "TREAT", None),
            ("doc-a", "r-a1-lab", "TREAT", None),
            ("doc-b", "r-a1-note", "TREAT", None),
            (
                "doc-a",
                "r-a2-lab",
                "ETREAT",
                Some("unconscious patient in ER"),
            ),
            ("doc-b", "r-b1-lab", "HRESCH", None),
            ("pb1", "r-b1-lab", "TREAT", None),
            ("pb1", "r-a1-lab", "TREAT", None),
            ("aud-a", "r-a1-lab", "TREAT", None),
            ("admin-b", "r-a2-lab", "HOPERAT", None),
            ("derm-b", "r-nobody", "TREAT", None),
            ("doc-b", "r-b1-lab", "ETREAT", Some("er")),
            ("pa2", "r-a2-lab", "TREAT", None),
        ];
        for (i, (who, record, purpose, j)) in reads.into_iter().enumerate() {
            let mut arg = json!({"record_id": record, "action": "read", "purpose": purpose});
            if let Some(j) = j {
                arg["justification"] = j.into();
            }
            // Pairs of decisions share a timestamp: order falls to the event id.
            let secs = 10 + (i as i64) / 2;
            let (status, v) = w.call(who, "RequestAccess", arg, secs, 250_000_000);
            assert_eq!(status, 200, "{who} reads {record}: {v}");
        }
        w
    }

    async fn project(w: &World) -> (Db, tempfile::TempDir) {
        let (db, dir) = testdb::sqlite().await;
        let rows: Vec<_> = w
            .stub
            .committed_events()
            .iter()
            .enumerate()
            .map(|(i, (tx, name, payload))| projector::project(tx, name, i as u64 + 1, payload))
            .collect();
        assert!(
            rows.iter()
                .filter(|r| r.event_name == projector::ACCESS_DECISION)
                .all(|r| r.time_key.is_some())
        );
        db.project_events(CHECKPOINT, &rows, rows.len() as i64)
            .await
            .unwrap();
        (db, dir)
    }

    /// The projection's answer in the chaincode's terms: status and JSON.
    async fn from_projection(db: &Db, who: &Identity, args: &Value) -> (i32, Value) {
        let q = match parse_log_args(args) {
            Ok(q) => q,
            Err(_) => return (400, Value::Null),
        };
        match query(db, who, q).await {
            Ok(p) => (200, serde_json::to_value(p).unwrap()),
            Err(AuditError::BadRequest(_)) => (400, Value::Null),
            Err(AuditError::Forbidden(_)) => (403, Value::Null),
            Err(e) => panic!("{e}"),
        }
    }

    fn time(secs: i64) -> String {
        Time::from_unix(T0 + secs, 250_000_000)
            .unwrap()
            .to_rfc3339()
    }

    #[tokio::test]
    async fn projection_answers_as_the_chaincode_for_every_role() {
        let mut w = build();
        let (db, _dir) = project(&w).await;
        let queries = vec![
            json!({}),
            json!({"patient_id": "p-a1"}),
            json!({"patient_id": "p-a2"}),
            json!({"patient_id": "p-b1"}),
            json!({"actor": "doc"}),
            json!({"actor": "doc", "org": A}),
            json!({"actor": "doc", "org": B}),
            json!({"org": B}),
            json!({"org": A, "decision": "deny"}),
            json!({"decision": "allow"}),
            json!({"purpose": "ETREAT"}),
            json!({"break_glass": true}),
            json!({"break_glass": false, "decision": "deny"}),
            json!({"break_glass": true, "org": A}),
            json!({"from": time(12)}),
            json!({"to": time(13)}),
            json!({"from": time(11), "to": time(14), "patient_id": "p-a1"}),
            json!({"from": "2023-11-14T22:13:31Z"}),
            json!({"limit": 1}),
            json!({"limit": 1000}),
            // Invalid: as the chaincode rejects them.
            json!({"limit": 0}),
            json!({"limit": 1001}),
            json!({"from": time(14), "to": time(12)}),
            json!({"from": "yesterday"}),
            json!({"decision": "maybe"}),
            json!({"purpose": "FUN"}),
            json!({"bookmark": "zz"}),
            json!({"bookmark": page::encode_bookmark("elsewhere")}),
            json!({"patient_id": "bad id!"}),
            json!({"unknown": 1}),
        ];
        let names: Vec<&str> = w.people.keys().copied().collect();
        let mut compared = 0;
        let mut non_empty = 0;
        for name in &names {
            for q in &queries {
                let who = w.people[name].identity.clone();
                let (cs, cv) = w.call(name, "QueryAccessLog", q.clone(), 100, 0);
                let (ps, pv) = from_projection(&db, &who, q).await;
                assert_eq!(ps, cs, "{name} {q}: chaincode {cv}");
                if cs == 200 {
                    assert_eq!(pv, cv, "{name} {q}");
                    if cv["events"].as_array().is_some_and(|e| !e.is_empty()) {
                        non_empty += 1;
                    }
                }
                compared += 1;
            }
        }
        assert_eq!(compared, names.len() * queries.len());
        assert!(non_empty > 100, "the comparisons saw events ({non_empty})");
        // Every role is restricted somewhere: a patient naming another
        // patient, a clinician naming another actor.
        let (s, _) = from_projection(
            &db,
            &w.people["pa1"].identity,
            &json!({"patient_id": "p-a2"}),
        )
        .await;
        assert_eq!(s, 403);
        let (s, _) = from_projection(&db, &w.people["doc-a"].identity, &json!({"org": B})).await;
        assert_eq!(s, 403);
    }

    #[tokio::test]
    async fn bookmarks_page_the_same_and_cross_sources() {
        let mut w = build();
        let (db, _dir) = project(&w).await;
        for (name, base) in [
            ("aud-a", json!({})),
            ("admin-a", json!({})),
            ("admin-b", json!({"decision": "deny"})),
            ("aud-b", json!({"break_glass": true})),
            ("doc-b", json!({})),
            ("pa1", json!({"from": time(10)})),
        ] {
            let who = w.people[name].identity.clone();
            for limit in [1, 2, 3] {
                // Whole walk through each source.
                let mut walks: Vec<Vec<Value>> = Vec::new();
                for source in ["chaincode", "projection", "alternating"] {
                    let mut events = Vec::new();
                    let mut bookmark: Option<String> = None;
                    for page_no in 0.. {
                        assert!(page_no < 100, "runaway paging");
                        let mut q = base.clone();
                        q["limit"] = limit.into();
                        if let Some(b) = &bookmark {
                            q["bookmark"] = b.clone().into();
                        }
                        let use_chain = match source {
                            "chaincode" => true,
                            "projection" => false,
                            _ => page_no % 2 == 0,
                        };
                        let v = if use_chain {
                            let (s, v) = w.call(name, "QueryAccessLog", q.clone(), 100, 0);
                            assert_eq!(s, 200, "{v}");
                            v
                        } else {
                            let (s, v) = from_projection(&db, &who, &q).await;
                            assert_eq!(s, 200);
                            v
                        };
                        events.extend(v["events"].as_array().cloned().unwrap_or_default());
                        match v.get("bookmark").and_then(Value::as_str) {
                            Some(b) => bookmark = Some(b.to_owned()),
                            None => break,
                        }
                    }
                    walks.push(events);
                }
                assert!(!walks[0].is_empty(), "{name} {base} sees events");
                assert_eq!(
                    walks[1], walks[0],
                    "{name} {base} limit {limit}: projection"
                );
                assert_eq!(
                    walks[2], walks[0],
                    "{name} {base} limit {limit}: alternating sources"
                );
            }
        }
    }

    #[test]
    fn start_positions_from_resume_keys() {
        assert_eq!(start_of("001"), Start::Time("001".into()));
        assert_eq!(
            start_of("t\u{0}id\u{0}"),
            Start::At {
                time_key: "t".into(),
                event_id: "id".into(),
                inclusive: true
            }
        );
        assert_eq!(
            start_of("t\u{0}id\u{0}\u{0}"),
            Start::At {
                time_key: "t".into(),
                event_id: "id".into(),
                inclusive: false
            }
        );
        assert_eq!(
            start_of("t\u{0}i"),
            Start::At {
                time_key: "t".into(),
                event_id: "i".into(),
                inclusive: true
            }
        );
    }
}
