-- The addresses a key may be used from (Ringez's IP whitelist), set by its holder: JSON
-- {"ranges": ["203.0.113.0/24", …], "description": "…"}. NULL: any address.
ALTER TABLE api_keys ADD COLUMN allowed_addresses TEXT;

-- The key that opened a Ringez session: a session authenticating alone is held to that key's
-- addresses. NULL for sessions opened before.
ALTER TABLE sessions ADD COLUMN key_id TEXT;
