//! Fills the ledger-event projection from the chaincode event stream, one
//! block at a time: a block's events and the checkpoint (the last block
//! fully projected) move in one transaction, so a checkpoint of `n` means
//! every event of blocks `..=n` is in the database. Replaying a block is
//! harmless: rows are keyed by (tx_id, event_name).

use std::sync::Arc;
use std::time::Duration;

use ehr_chaincode::contract::model::AccessEvent;
use futures::{FutureExt, StreamExt};
use serde_json::Value;

use crate::db::Db;
use crate::db::events::ProjectedEvent;
use crate::fabric::FabricChain;

/// The checkpoint's name.
pub const CHECKPOINT: &str = "chaincode-events";

/// The event whose payload is a full access-log entry.
pub const ACCESS_DECISION: &str = "AccessDecision";

/// Blocks projected in one database transaction at most (catching up).
const BATCH_BLOCKS: usize = 256;

/// Turns one chaincode event into a projection row. An `AccessDecision`
/// payload is the chaincode's full log entry (plus `allowed`); the
/// access-log columns, `time_key` included, are filled only when it parses
/// as one, so a row from an older chaincode is recognisably partial.
pub fn project(tx_id: &str, name: &str, block: u64, payload: &[u8]) -> ProjectedEvent {
    let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let decision = v
        .get("allowed")
        .and_then(Value::as_bool)
        .map(|a| if a { "allow" } else { "deny" }.to_owned());
    let mut row = ProjectedEvent {
        tx_id: tx_id.to_owned(),
        event_name: name.to_owned(),
        block: i64::try_from(block).unwrap_or(i64::MAX),
        payload: String::from_utf8_lossy(payload).into_owned(),
        patient_id: s("patient_id"),
        actor: s("actor"),
        actor_org: s("actor_org"),
        decision,
        purpose: s("purpose"),
        break_glass: v.get("break_glass").and_then(Value::as_bool),
        time: s("time"),
        event_id: s("event_id"),
        record_id: s("record_id"),
        patient_org: s("patient_org"),
        actor_role: s("actor_role"),
        action: s("action"),
        reason: s("reason"),
        time_key: None,
    };
    if name == ACCESS_DECISION
        && let Ok(e) = serde_json::from_slice::<AccessEvent>(payload)
    {
        // The typed entry is the truth; the stream's tx id must be its id.
        if e.event_id == tx_id {
            let text = |x: String| Some(x).filter(|t| !t.is_empty());
            row.time = Some(e.time.to_rfc3339());
            row.time_key = Some(e.time.sort_key());
            row.decision = text(crate::audit::enum_text(&e.decision));
            row.purpose = text(crate::audit::enum_text(&e.purpose));
            row.action = text(crate::audit::enum_text(&e.action));
            row.actor_role = text(crate::audit::enum_text(&e.actor_role));
            row.break_glass = Some(e.break_glass);
            row.patient_id = e.patient_id;
            row.patient_org = e.patient_org;
            row.actor = Some(e.actor);
            row.actor_org = Some(e.actor_org);
            row.record_id = Some(e.record_id);
            row.reason = Some(e.reason);
            row.event_id = Some(e.event_id);
        }
    }
    row
}

async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Follows the event stream until `stop` flips, reconnecting after errors.
pub async fn run(chain: Arc<FabricChain>, db: Db, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let from = match db.checkpoint(CHECKPOINT).await {
            Ok(c) => c.map(|b| u64::try_from(b).unwrap_or(0) + 1).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "projection checkpoint unreadable");
                0
            }
        };
        let stream = match chain.event_blocks(from).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "event stream unavailable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = stopped(&mut stop) => return,
                }
            }
        };
        let mut stream = Box::pin(stream);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(first)) => {
                        // Whatever further blocks are already here go in the same transaction.
                        let mut blocks = vec![first];
                        let mut broken = false;
                        while blocks.len() < BATCH_BLOCKS {
                            match stream.next().now_or_never() {
                                Some(Some(Ok(b))) => blocks.push(b),
                                Some(Some(Err(e))) => {
                                    tracing::debug!(error = %e, "event stream broke; resuming");
                                    broken = true;
                                    break;
                                }
                                Some(None) => {
                                    broken = true;
                                    break;
                                }
                                None => break,
                            }
                        }
                        // Key fragments that the events end (before the
                        // checkpoint moves, so a failure is retried).
                        let mut applied = true;
                        for e in blocks.iter().flat_map(|b| b.events.iter()) {
                            if let Err(err) = crate::proxy::events::on_event(&db, &e.event_name, &e.payload).await {
                                tracing::warn!(error = %err, "applying an event to the key fragments failed");
                                applied = false;
                                break;
                            }
                        }
                        if !applied {
                            break;
                        }
                        let last = blocks.last().map_or(0, |b| b.block);
                        let rows: Vec<ProjectedEvent> = blocks
                            .iter()
                            .flat_map(|b| {
                                b.events.iter().map(|e| {
                                    project(&e.tx_id, &e.event_name, b.block, &e.payload)
                                })
                            })
                            .collect();
                        let block = i64::try_from(last).unwrap_or(i64::MAX);
                        if let Err(e) = db.project_events(CHECKPOINT, &rows, block).await {
                            tracing::warn!(error = %e, "projecting events failed");
                            break;
                        }
                        if broken {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "event stream broke; resuming");
                        break;
                    }
                    None => break,
                },
                () = stopped(&mut stop) => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = stopped(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_access_decisions() {
        let p = br#"{"event_id":"e1","allowed":false,"reason":"no_consent","break_glass":false,"record_id":"r1","patient_id":"p1","actor":"u1","actor_org":"hospital-b","action":"read","purpose":"TREAT"}"#;
        let r = project("tx1", "AccessDecision", 7, p);
        assert_eq!(r.decision.as_deref(), Some("deny"));
        assert_eq!(r.patient_id.as_deref(), Some("p1"));
        assert_eq!(r.actor_org.as_deref(), Some("hospital-b"));
        assert_eq!(r.block, 7);
        assert_eq!(r.break_glass, Some(false));
        // An event of the older chaincode (no time, no roles): partial.
        assert_eq!(r.time_key, None);
        let junk = project("tx2", "Other", 1, b"not json");
        assert_eq!(junk.decision, None);
    }

    #[test]
    fn projects_full_entries() {
        let p = br#"{"event_id":"tx1","tx_id":"tx1","time":"2023-11-14T22:15:20.5Z","time_unix":1700000120,"actor":"u1","actor_org":"hospital-b","actor_role":"clinician","patient_id":"p1","patient_org":"hospital-a","record_id":"r1","action":"read","purpose":"ETREAT","decision":"allow","reason":"break_glass","break_glass":true,"justification":"er","allowed":true}"#;
        let r = project("tx1", ACCESS_DECISION, 9, p);
        assert_eq!(r.time_key.as_deref(), Some("001700000120500000000"));
        assert_eq!(r.time.as_deref(), Some("2023-11-14T22:15:20.500Z"));
        assert_eq!(r.decision.as_deref(), Some("allow"));
        assert_eq!(r.purpose.as_deref(), Some("ETREAT"));
        assert_eq!(r.patient_org.as_deref(), Some("hospital-a"));
        assert_eq!(r.actor_role.as_deref(), Some("clinician"));
        assert_eq!(r.break_glass, Some(true));
        assert_eq!(r.event_id.as_deref(), Some("tx1"));
        // A payload that claims another transaction's id is not trusted as an entry.
        assert_eq!(project("tx9", ACCESS_DECISION, 9, p).time_key, None);
    }
}
