-- Each caller line's live analysis: its intent (for filtering calls) and the whole result
-- (intent, confidence, sentiment, entities, escalation) as JSON.
ALTER TABLE transcript_lines ADD COLUMN intent TEXT;
ALTER TABLE transcript_lines ADD COLUMN analysis TEXT;
