-- A key made by rotating another shares its request budget: the rate limiter counts the
-- requests of a key and every successor under the first key's id, so rotating a key never
-- buys a fresh minute's worth of requests. NULL for a key created on its own.
ALTER TABLE api_keys ADD COLUMN rate_bucket TEXT;
