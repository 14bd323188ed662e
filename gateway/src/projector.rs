//! Fills the ledger-event projection from the chaincode event stream, with
//! a resumable checkpoint (the last block fully projected). Replaying a
//! block is harmless: rows are keyed by (tx_id, event_name).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::db::Db;
use crate::db::events::ProjectedEvent;
use crate::fabric::FabricChain;

/// The checkpoint's name.
pub const CHECKPOINT: &str = "chaincode-events";

/// Turns one chaincode event into a projection row.
pub fn project(tx_id: &str, name: &str, block: u64, payload: &[u8]) -> ProjectedEvent {
    let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let decision = v
        .get("allowed")
        .and_then(Value::as_bool)
        .map(|a| if a { "allow" } else { "deny" }.to_owned());
    ProjectedEvent {
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
    }
}

async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Follows the event stream until `stop` flips, reconnecting after errors.
pub async fn run(chain: Arc<FabricChain>, db: Db, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let from = match db.checkpoint(CHECKPOINT).await {
            Ok(c) => c.map(|b| u64::try_from(b).unwrap_or(0)).unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "projection checkpoint unreadable");
                0
            }
        };
        let stream = match chain.events(from).await {
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
                    Some(Ok(item)) => {
                        // Key fragments that the event ends (before the
                        // checkpoint moves, so a failure is retried).
                        if let Err(e) = crate::proxy::events::on_event(&db, &item.event.event_name, &item.event.payload).await {
                            tracing::warn!(error = %e, "applying an event to the key fragments failed");
                            break;
                        }
                        let row = project(&item.event.tx_id, &item.event.event_name, item.block, &item.event.payload);
                        let block = i64::try_from(item.block).unwrap_or(i64::MAX);
                        if let Err(e) = db.project_events(CHECKPOINT, &[row], block).await {
                            tracing::warn!(error = %e, "projecting an event failed");
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
        let junk = project("tx2", "Other", 1, b"not json");
        assert_eq!(junk.decision, None);
    }
}
