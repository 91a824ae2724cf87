-- Control-plane metadata: API keys, usage, the audit log and its head, backup jobs.
-- Written in the SQL that SQLite and PostgreSQL share; both run this same file.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    role TEXT NOT NULL,
    collections TEXT,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT,
    revoked_ms BIGINT,
    rotated_to TEXT
);

CREATE TABLE key_usage (
    key_id TEXT PRIMARY KEY,
    requests BIGINT NOT NULL,
    records_written BIGINT NOT NULL,
    texts_embedded BIGINT NOT NULL,
    bytes_stored BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);

CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_by_actor ON audit (actor, seq);
CREATE INDEX audit_by_action ON audit (action, seq);

CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);

CREATE TABLE backups (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    format TEXT NOT NULL,
    path TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    bytes BIGINT,
    collections BIGINT,
    error TEXT
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
