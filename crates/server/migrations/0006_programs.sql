-- LLM programs: every version of each program, compile jobs and recorded runs; the
-- language-model tokens each key used.
ALTER TABLE key_usage ADD COLUMN llm_tokens BIGINT NOT NULL DEFAULT 0;
CREATE TABLE programs (
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL,
    description TEXT,
    origin TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE program_jobs (
    id TEXT PRIMARY KEY,
    program TEXT NOT NULL,
    base_version BIGINT NOT NULL,
    state TEXT NOT NULL,
    settings TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    result_version BIGINT,
    report TEXT,
    error TEXT
);
CREATE INDEX program_jobs_by_program ON program_jobs (program, created_ms);
CREATE TABLE program_runs (
    id TEXT PRIMARY KEY,
    program TEXT NOT NULL,
    version BIGINT NOT NULL,
    principal TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    latency_us BIGINT NOT NULL,
    calls BIGINT NOT NULL,
    cached_calls BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    ok BIGINT NOT NULL,
    error TEXT
);
CREATE INDEX program_runs_by_time ON program_runs (created_ms, id);
CREATE INDEX program_runs_by_program ON program_runs (program, created_ms);
