CREATE TABLE kernels (
    id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    state TEXT NOT NULL,
    settings TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    bytes BIGINT,
    rows_out BIGINT,
    ids BIGINT,
    error TEXT
);
CREATE INDEX kernels_by_collection ON kernels (collection, created_ms);
