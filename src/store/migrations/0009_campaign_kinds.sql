-- Ringez's batches, scheduled calls and queues are campaigns of their own kind, placed for a
-- session: its budget applies to every call, its agent is named on them, and its calls speak
-- Ringez's dialect. `call_settings` is JSON: `max_duration_s`, `record`, and `metadata` merged
-- into every call's.
ALTER TABLE campaigns ADD COLUMN kind TEXT NOT NULL DEFAULT 'campaign';
ALTER TABLE campaigns ADD COLUMN session_id TEXT;
ALTER TABLE campaigns ADD COLUMN agent_id TEXT;
ALTER TABLE campaigns ADD COLUMN dialect TEXT;
ALTER TABLE campaigns ADD COLUMN call_settings TEXT;
CREATE INDEX campaigns_by_session ON campaigns (workspace_id, session_id);

-- A queue's order and patience: contacts with a higher priority are called first among those
-- due; one still waiting at expires_at is skipped.
ALTER TABLE campaign_contacts ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_contacts ADD COLUMN expires_at BIGINT;

-- The contact's own time zone (given, or its number's when that has one): calling hours are
-- its local time; without one, the campaign's zone.
ALTER TABLE campaign_contacts ADD COLUMN timezone TEXT;
