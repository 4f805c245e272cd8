-- Campaigns: an assistant calling a list of contacts, a few at a time, within a schedule.
-- A campaign's id is the workspace's name for it (Ringg's `campaign_id`), unique in the
-- workspace. One worker drives a campaign at a time: it holds the row's lease (driver_id
-- until driver_until), renewed while it dials; another worker takes over once it lapses.
CREATE TABLE campaigns (
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    assistant_id TEXT NOT NULL,
    from_number TEXT,
    concurrency BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    retry_interval_ms BIGINT NOT NULL,
    webhook_url TEXT,
    state TEXT NOT NULL,
    start_at BIGINT,
    end_at BIGINT,
    timezone TEXT,
    -- Calling hours each day in the timezone, as minutes after midnight: [start, end).
    hours_start BIGINT,
    hours_end BIGINT,
    driver_id TEXT,
    driver_until BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    launched_at BIGINT,
    started_at BIGINT,
    ended_at BIGINT,
    PRIMARY KEY (workspace_id, id)
);
CREATE INDEX campaigns_by_state ON campaigns (state, start_at);

-- One row per contact: pending (due at next_attempt_at), dialing (a call placed, or about to
-- be), done (outcome: the last call's status, or `skipped`/`canceled`).
CREATE TABLE campaign_contacts (
    workspace_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    phone TEXT NOT NULL,
    name TEXT,
    email TEXT,
    variables TEXT NOT NULL,
    custom_fields TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    claimed_at BIGINT,
    call_id TEXT,
    outcome TEXT,
    reason TEXT,
    PRIMARY KEY (workspace_id, campaign_id, seq)
);
CREATE INDEX campaign_contacts_due ON campaign_contacts (workspace_id, campaign_id, state, next_attempt_at);

-- The campaign a call was placed for: its history filter.
ALTER TABLE calls ADD COLUMN campaign_id TEXT;
CREATE INDEX calls_by_campaign ON calls (workspace_id, campaign_id);
