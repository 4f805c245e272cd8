-- Workspace secrets (provider keys), encrypted at rest: `ciphertext` is AES-256-GCM under the
-- server's secrets key (`key_id` names which), bound to the workspace and the name.
CREATE TABLE secrets (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    name TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (workspace_id, name)
);

-- What the first request with an idempotency key asked for, so that a different request
-- reusing the key is refused instead of answered with the first call.
ALTER TABLE idempotency_keys ADD COLUMN request_digest TEXT;
