-- The fleet control plane (crates/fleet): devices, enrollment tokens, groups, releases,
-- deployments and their per-device execution records. Portable SQL (SQLite and PostgreSQL):
-- BIGINT for numbers and times (unix ms), TEXT for ids, states and JSON documents.
CREATE TABLE fleet_devices (
    id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    identity TEXT NOT NULL,
    status TEXT NOT NULL,
    labels TEXT NOT NULL,
    inventory TEXT NOT NULL,
    static_group TEXT,
    enrolled_with TEXT,
    created_ms BIGINT NOT NULL,
    decided_ms BIGINT,
    decided_by TEXT,
    last_seen_ms BIGINT,
    online BIGINT NOT NULL DEFAULT 0,
    token_hash TEXT,
    token_expires_ms BIGINT,
    challenge TEXT,
    challenge_expires_ms BIGINT
);
CREATE UNIQUE INDEX fleet_devices_by_key ON fleet_devices (public_key);

CREATE TABLE fleet_enrollment_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    labels TEXT NOT NULL,
    static_group TEXT,
    expires_ms BIGINT NOT NULL,
    uses_left BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);

CREATE TABLE fleet_groups (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    filter TEXT,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE fleet_releases (
    id TEXT PRIMARY KEY,
    channel TEXT NOT NULL,
    version BIGINT NOT NULL,
    kernel_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    length BIGINT NOT NULL,
    manifest TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (channel, version)
);

CREATE TABLE fleet_deltas (
    release_id TEXT NOT NULL,
    from_release_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    length BIGINT NOT NULL,
    PRIMARY KEY (release_id, from_release_id)
);

CREATE TABLE fleet_deployments (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    release_id TEXT NOT NULL,
    target TEXT NOT NULL,
    plan TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    digest TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    approved_by TEXT,
    approved_digest TEXT,
    approved_ms BIGINT,
    current_phase BIGINT NOT NULL DEFAULT 0,
    phase_started_ms BIGINT,
    phase_done_ms BIGINT,
    started_ms BIGINT,
    finished_ms BIGINT,
    target_count BIGINT NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX fleet_deployments_by_state ON fleet_deployments (state);

CREATE TABLE fleet_executions (
    deployment_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    rank BIGINT NOT NULL,
    phase BIGINT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0,
    reason TEXT,
    next_retry_ms BIGINT NOT NULL DEFAULT 0,
    since_ms BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    from_release TEXT,
    revert TEXT,
    history TEXT NOT NULL,
    log TEXT NOT NULL,
    last_report TEXT,
    PRIMARY KEY (deployment_id, device_id)
);
CREATE INDEX fleet_executions_by_device ON fleet_executions (device_id, state);
CREATE INDEX fleet_executions_by_state ON fleet_executions (deployment_id, state);
