-- Webhooks: subscriptions, the signing secret for calls' and assistants' own webhook_url, and
-- every delivery as a row (at-least-once: retried until delivered or 24 h old; any worker may
-- deliver one, claiming it for a short while first). Secrets are sealed like workspace secrets.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret_ciphertext TEXT NOT NULL,
    key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhooks_by_workspace ON webhooks (workspace_id);

CREATE TABLE webhook_signing (
    workspace_id TEXT PRIMARY KEY REFERENCES workspaces (id),
    secret_ciphertext TEXT NOT NULL,
    key_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    webhook_id TEXT,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    call_id TEXT,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    claimed_until BIGINT NOT NULL,
    last_status BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE INDEX webhook_deliveries_by_workspace ON webhook_deliveries (workspace_id, created_at);
