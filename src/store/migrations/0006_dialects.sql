-- Ringg's and Ringez's clients against the same engine.
-- A call's first status is Ringg's `initiated` (it was `queued`).
UPDATE calls SET status = 'initiated' WHERE status = 'queued';

-- Ringez: the session a call was placed in and the agent that placed it (`X-Agent-ID`).
ALTER TABLE calls ADD COLUMN session_id TEXT;
ALTER TABLE calls ADD COLUMN agent_id TEXT;
CREATE INDEX calls_by_session ON calls (session_id);

-- Ringez calling sessions: opened with an API key; their id then authenticates the Ringez
-- paths alone (`X-Session-ID`) until they expire or are deleted.
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    session_type TEXT NOT NULL,
    agent_id TEXT,
    agent_context TEXT NOT NULL,
    privacy_mode BIGINT NOT NULL,
    currency TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX sessions_by_workspace ON sessions (workspace_id, created_at);

-- Contacts (Ringez's address book): a workspace's, labels in their own table for filtering.
CREATE TABLE contacts (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    name TEXT NOT NULL,
    phone_number TEXT NOT NULL,
    notes TEXT,
    metadata TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX contacts_by_workspace ON contacts (workspace_id, name);
CREATE TABLE contact_labels (
    contact_id TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    PRIMARY KEY (contact_id, label)
);
CREATE INDEX contact_labels_by_label ON contact_labels (label);

-- How a subscription's deliveries are shaped and signed: `ringline` (X-Ringline-Signature,
-- `{id, type, created_at, data}`) or `ringez` (X-Ringez-Signature, `{event, timestamp, data}`).
ALTER TABLE webhooks ADD COLUMN format TEXT NOT NULL DEFAULT 'ringline';
ALTER TABLE webhook_deliveries ADD COLUMN format TEXT NOT NULL DEFAULT 'ringline';
-- `ringez` for a call placed through Ringez's paths: its own webhook_url gets that format.
ALTER TABLE calls ADD COLUMN dialect TEXT;

-- Whether the call reached its assistant's goal, and why (a disposition's `success`, or the
-- LLM's judgement against `goal`); null when the assistant says neither.
ALTER TABLE calls ADD COLUMN success BIGINT;
ALTER TABLE calls ADD COLUMN success_reason TEXT;
