-- Trust and contract (issue 13).

-- Service tokens act for named tenants, up to a priority, with caps on what they queue.
-- Tokens issued before keep the tenants they have already used.
ALTER TABLE api_tokens
    ADD COLUMN tenants text[] NOT NULL DEFAULT '{}',
    ADD COLUMN max_priority integer NOT NULL DEFAULT 100 CHECK (max_priority BETWEEN 0 AND 100),
    ADD COLUMN max_queued_leases integer CHECK (max_queued_leases >= 0),
    ADD COLUMN max_queued_jobs integer CHECK (max_queued_jobs >= 0),
    -- The transaction that revoked the token (its xid8, as a number): replicas poll for
    -- revocations by transaction, not by clock, so a slow commit is never missed.
    ADD COLUMN revoked_xid bigint;

UPDATE api_tokens t SET tenants = used.tenants
FROM (
    SELECT holder_id, array_agg(DISTINCT tenant ORDER BY tenant) AS tenants
    FROM (SELECT holder_id, tenant FROM leases UNION SELECT holder_id, tenant FROM jobs) l
    GROUP BY holder_id
) used
WHERE t.role = 'ci' AND used.holder_id = t.id;

CREATE FUNCTION api_tokens_revoked_xid() RETURNS trigger AS $$
BEGIN
    IF (TG_OP = 'INSERT' AND NEW.revoked_at IS NOT NULL)
       OR (TG_OP = 'UPDATE' AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at) THEN
        NEW.revoked_xid := pg_current_xact_id()::text::bigint;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_tokens_revoked_xid BEFORE INSERT OR UPDATE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION api_tokens_revoked_xid();

-- Every transaction a snapshot taken now cannot see has an id at least this.
CREATE FUNCTION fleetyard_snapshot_xmin() RETURNS bigint
    AS $$ SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint $$ LANGUAGE sql VOLATILE;

CREATE INDEX api_tokens_revoked_xid ON api_tokens (revoked_xid) WHERE role = 'agent' AND revoked_xid IS NOT NULL;

-- A user's sessions carry the generation they were issued in; logging out, changing the
-- password or being disabled moves it on, which ends every session issued before.
ALTER TABLE users ADD COLUMN session_generation integer NOT NULL DEFAULT 0;

-- Failed logins, per account and per source address, in windows.
CREATE TABLE login_failures (
    key text PRIMARY KEY,
    window_started_at timestamptz NOT NULL,
    failures integer NOT NULL
);
