-- Threshold proxy re-encryption. Keep in step with ../postgres/0003_proxy_reencryption.sql.

-- This org's own Umbral key pairs: 'reader' (grants to this org are made
-- to it) and 'proxy' (kfrags are sealed to it). Secrets sealed by the KEK.
-- Old pairs stay (active = 0) so grants made to them still open.
CREATE TABLE org_keys (
    public_key     TEXT PRIMARY KEY,
    purpose        TEXT NOT NULL,
    secret_sealed  BLOB NOT NULL,
    active         BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX org_keys_purpose ON org_keys(purpose, active);

-- Proxy side: the kfrags this org holds, one per grant (consent), as
-- delivered: still sealed to this org's proxy key. Deleted when the consent
-- is revoked or every record it was scoped to is erased.
CREATE TABLE kfrags (
    consent_id        TEXT PRIMARY KEY,
    patient_id        TEXT NOT NULL,
    proxy_public_key  TEXT NOT NULL,
    sealed            TEXT NOT NULL,
    -- JSON list of the scoped records not yet erased; NULL when the scope
    -- has categories (then only revocation ends it).
    scope_records     TEXT,
    received_at       BIGINT NOT NULL
);
CREATE INDEX kfrags_patient ON kfrags(patient_id);

-- Grantor side: sealed kfrags not yet accepted by their proxy. Written
-- before the grant is submitted, so a crash loses nothing; retried until
-- delivered, the consent ends, or the grant never reached the ledger.
CREATE TABLE kfrag_outbox (
    consent_id  TEXT NOT NULL,
    org         TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    last_error  TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (consent_id, org)
);
