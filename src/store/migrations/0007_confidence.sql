-- How sure speech recognition was of a caller line (0..1; NULL for agent lines, keypad
-- digits and providers that report no probabilities).
ALTER TABLE transcript_lines ADD COLUMN confidence DOUBLE PRECISION;
