-- Every replica asks every few seconds which agent credentials were revoked since its last
-- look; revoked tokens are few, so a partial index answers without scanning all of them.
CREATE INDEX api_tokens_revoked_idx ON api_tokens (revoked_at) WHERE revoked_at IS NOT NULL;
