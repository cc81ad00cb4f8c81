DROP INDEX api_tokens_revoked_idx;
