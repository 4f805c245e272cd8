-- Portable SQL: the same schema runs on SQLite and PostgreSQL through sqlx's Any driver.
-- Times are milliseconds since the Unix epoch (BIGINT); JSON documents are TEXT.

CREATE TABLE workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    rate_limit_per_min BIGINT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

-- File-defined assistants have no workspace (every workspace sees them, read-only);
-- API-defined ones belong to one workspace.
CREATE TABLE assistants (
    id TEXT PRIMARY KEY,
    workspace_id TEXT REFERENCES workspaces (id),
    source TEXT NOT NULL,
    name TEXT NOT NULL,
    current_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);

CREATE TABLE assistant_versions (
    assistant_id TEXT NOT NULL REFERENCES assistants (id),
    version BIGINT NOT NULL,
    spec TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (assistant_id, version)
);

CREATE TABLE numbers (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    e164 TEXT NOT NULL,
    label TEXT,
    assistant_id TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (workspace_id, e164)
);

CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    address TEXT,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

CREATE TABLE calls (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    assistant_id TEXT NOT NULL,
    assistant_version BIGINT NOT NULL,
    direction TEXT NOT NULL,
    to_number TEXT NOT NULL,
    from_number TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    disposition TEXT,
    summary TEXT,
    ended_by TEXT,
    dynamic_variables TEXT NOT NULL,
    metadata TEXT NOT NULL,
    webhook_url TEXT,
    idempotency_key TEXT,
    worker_id TEXT,
    day TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT,
    duration_ms BIGINT
);
CREATE INDEX calls_by_workspace ON calls (workspace_id, created_at);
CREATE INDEX calls_by_status ON calls (status);

-- An idempotency key names one call for five minutes; the primary key makes the claim atomic.
CREATE TABLE idempotency_keys (
    workspace_id TEXT NOT NULL,
    key TEXT NOT NULL,
    call_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, key)
);

CREATE TABLE turns (
    call_id TEXT NOT NULL REFERENCES calls (id),
    turn BIGINT NOT NULL,
    end_of_turn_ms DOUBLE PRECISION NOT NULL,
    stt_final_ms DOUBLE PRECISION NOT NULL,
    llm_first_token_ms DOUBLE PRECISION NOT NULL,
    tts_first_audio_ms DOUBLE PRECISION NOT NULL,
    voice_to_voice_ms DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (call_id, turn)
);

CREATE TABLE transcript_lines (
    call_id TEXT NOT NULL REFERENCES calls (id),
    seq BIGINT NOT NULL,
    speaker TEXT NOT NULL,
    text TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    interrupted BIGINT NOT NULL,
    PRIMARY KEY (call_id, seq)
);

CREATE TABLE call_events (
    call_id TEXT NOT NULL REFERENCES calls (id),
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (call_id, seq)
);
