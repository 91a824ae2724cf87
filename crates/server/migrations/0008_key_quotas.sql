-- Per-key quotas (crates/server/src/quota.rs, docs/quotas.md): NULL is unlimited.
ALTER TABLE api_keys ADD COLUMN quota_records BIGINT;
ALTER TABLE api_keys ADD COLUMN quota_bytes BIGINT;
ALTER TABLE api_keys ADD COLUMN quota_requests_per_day BIGINT;

-- Authenticated requests per key per UTC day (`day`: days since 1970-01-01), for
-- `requests_per_day`; flushed with the other usage counters.
CREATE TABLE key_usage_daily (
    key_id TEXT NOT NULL,
    day BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    PRIMARY KEY (key_id, day)
);
