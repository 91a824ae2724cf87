-- The keyed audit chain: entries before this migration are version 1 (plain SHA-256),
-- entries written by servers with `<data_dir>/audit-key` are version 2 (HMAC-SHA256).
ALTER TABLE audit ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
-- The incarnation of the collection a kernel was built from (NULL: built before
-- incarnations were recorded; adopted at startup while its collection exists).
ALTER TABLE kernels ADD COLUMN incarnation TEXT;
