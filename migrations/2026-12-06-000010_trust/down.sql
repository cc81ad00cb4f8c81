DROP TABLE login_failures;
ALTER TABLE users DROP COLUMN session_generation;
DROP TRIGGER api_tokens_revoked_xid ON api_tokens;
DROP FUNCTION api_tokens_revoked_xid();
DROP FUNCTION fleetyard_snapshot_xmin();
ALTER TABLE api_tokens
    DROP COLUMN tenants,
    DROP COLUMN max_priority,
    DROP COLUMN max_queued_leases,
    DROP COLUMN max_queued_jobs,
    DROP COLUMN revoked_xid;
