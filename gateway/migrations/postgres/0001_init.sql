-- Gateway schema (PostgreSQL). Keep in step with ../sqlite/0001_init.sql.
CREATE TABLE users (
    user_id     TEXT PRIMARY KEY,
    username    TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    attributes  TEXT NOT NULL,
    patient_id  TEXT UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE credentials (
    user_id        TEXT PRIMARY KEY REFERENCES users(user_id) ON DELETE CASCADE,
    password_hash  TEXT NOT NULL,
    updated_at     BIGINT NOT NULL
);

-- Enrolled Fabric identities and Umbral keys; private keys sealed by the KEK.
CREATE TABLE identities (
    user_id           TEXT PRIMARY KEY,
    msp_id            TEXT NOT NULL,
    cert_pem          TEXT NOT NULL,
    key_sealed        BYTEA NOT NULL,
    umbral_pk         BYTEA NOT NULL,
    umbral_sk_sealed  BYTEA NOT NULL,
    created_at        BIGINT NOT NULL
);

-- Upload bookkeeping: started -> blob_stored -> submitted | cleaned.
CREATE TABLE uploads (
    record_id    TEXT PRIMARY KEY,
    patient_id   TEXT NOT NULL,
    uploader     TEXT NOT NULL,
    state        TEXT NOT NULL,
    cid          TEXT,
    capsule_cid  TEXT,
    sha256       TEXT,
    size         BIGINT,
    tx_id        TEXT,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX uploads_state ON uploads(state);

-- Projection of chaincode events (the ledger stays the source of truth).
CREATE TABLE ledger_events (
    tx_id       TEXT NOT NULL,
    event_name  TEXT NOT NULL,
    block       BIGINT NOT NULL,
    payload     TEXT NOT NULL,
    patient_id  TEXT,
    actor       TEXT,
    actor_org   TEXT,
    decision    TEXT,
    purpose     TEXT,
    break_glass BIGINT,
    time        TEXT,
    PRIMARY KEY (tx_id, event_name)
);
CREATE INDEX ledger_events_patient ON ledger_events(patient_id);
CREATE INDEX ledger_events_block ON ledger_events(block);

CREATE TABLE checkpoints (
    name        TEXT PRIMARY KEY,
    block       BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
