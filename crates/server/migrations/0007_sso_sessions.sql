-- Single sign-on sessions (crates/server/src/oidc.rs): one row per sign-in through the
-- OpenID provider; the console's token names it (claim `sid`) and is refused once the
-- row is revoked (sign-out) or expired.
CREATE TABLE sso_sessions (
    id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    collections TEXT,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX sso_sessions_by_expiry ON sso_sessions (expires_ms);
