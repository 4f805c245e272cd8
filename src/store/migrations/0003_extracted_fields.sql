-- What a call extracted (a flow's slots, as a JSON object) and the notes of its disposition.
ALTER TABLE calls ADD COLUMN extracted TEXT;
ALTER TABLE calls ADD COLUMN disposition_notes TEXT;
