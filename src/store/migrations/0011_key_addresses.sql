-- The addresses a key may be used from (Ringez's IP whitelist), set by its holder: JSON
-- {"ranges": ["203.0.113.0/24", …], "description": "…"}. NULL: any address.
ALTER TABLE api_keys ADD COLUMN allowed_addresses TEXT;
