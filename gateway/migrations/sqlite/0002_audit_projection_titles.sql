-- Audit queries from the projection, and record titles. Keep in step with ../postgres/0002_audit_projection_titles.sql.

-- Access-log fields of an AccessDecision event (the payload is the full log entry).
ALTER TABLE ledger_events ADD COLUMN event_id TEXT;
ALTER TABLE ledger_events ADD COLUMN record_id TEXT;
ALTER TABLE ledger_events ADD COLUMN patient_org TEXT;
ALTER TABLE ledger_events ADD COLUMN actor_role TEXT;
ALTER TABLE ledger_events ADD COLUMN action TEXT;
ALTER TABLE ledger_events ADD COLUMN reason TEXT;
-- The chaincode's time key (12-digit seconds + 9-digit nanos): text order is time order.
ALTER TABLE ledger_events ADD COLUMN time_key TEXT;

-- One index per access path of QueryAccessLog, each in its (time key, event id) order.
DROP INDEX ledger_events_patient;
CREATE INDEX ledger_events_log_patient ON ledger_events(patient_id, time_key, event_id)
    WHERE event_name = 'AccessDecision';
CREATE INDEX ledger_events_log_actor ON ledger_events(actor, time_key, event_id)
    WHERE event_name = 'AccessDecision';
CREATE INDEX ledger_events_log_org ON ledger_events(actor_org, time_key, event_id)
    WHERE event_name = 'AccessDecision';
CREATE INDEX ledger_events_log_patient_org ON ledger_events(patient_org, time_key, event_id)
    WHERE event_name = 'AccessDecision';
CREATE INDEX ledger_events_log_break_glass ON ledger_events(time_key, event_id)
    WHERE event_name = 'AccessDecision' AND break_glass = 1;
CREATE INDEX ledger_events_log_time ON ledger_events(time_key, event_id)
    WHERE event_name = 'AccessDecision';

-- Backfill: re-project every event with the new fields (the ledger is the source of truth;
-- replay is idempotent by (tx_id, event_name)).
DELETE FROM ledger_events;
DELETE FROM checkpoints WHERE name = 'chaincode-events';

-- Upload titles (may be PHI): never on-chain, sealed by the KEK bound to the record id.
CREATE TABLE record_titles (
    record_id     TEXT PRIMARY KEY,
    title_sealed  BLOB NOT NULL,
    created_at    BIGINT NOT NULL
);
