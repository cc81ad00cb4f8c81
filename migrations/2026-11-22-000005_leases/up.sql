-- Leases: a machine held for one holder for a while. A CI runner is a lease; so, later, is the
-- machine a job runs on. A lease waits in the queue (`queued`) until the scheduler grants it a
-- machine (`granted`), and ends `released`, `expired`, `cancelled` (released while queued) or
-- `failed` (it waited past its deadline, or lost its machine).
CREATE TABLE leases (
    id uuid PRIMARY KEY,
    state text NOT NULL CHECK (state IN ('queued', 'granted', 'released', 'expired', 'cancelled', 'failed')),
    holder_kind text NOT NULL CHECK (holder_kind IN ('user', 'service')),
    holder_id uuid NOT NULL,
    holder_name text NOT NULL,
    idempotency_key text,
    -- What was asked, hashed, so a retry with the same key but another body is refused.
    request_hash bytea NOT NULL,
    tenant text NOT NULL,
    purpose text NOT NULL,
    priority integer NOT NULL CHECK (priority BETWEEN 0 AND 100),
    arch text NOT NULL,
    min_cores integer NOT NULL,
    min_memory_mib bigint NOT NULL,
    min_disk_gib bigint NOT NULL,
    labels jsonb NOT NULL,
    trusted_only boolean NOT NULL,
    duration_secs integer NOT NULL CHECK (duration_secs > 0),
    ssh_public_key text,
    queued_at timestamptz NOT NULL DEFAULT now(),
    -- A lease still queued at this time fails.
    deadline timestamptz NOT NULL,
    machine_id uuid REFERENCES machines (id),
    donation_id uuid REFERENCES donations (id),
    donor_id uuid REFERENCES donors (id),
    granted_at timestamptz,
    expires_at timestamptz,
    ended_at timestamptz,
    end_reason text,
    CHECK ((state IN ('queued', 'granted')) = (ended_at IS NULL)),
    CHECK (state <> 'queued' OR machine_id IS NULL),
    CHECK (state <> 'granted' OR (machine_id IS NOT NULL AND granted_at IS NOT NULL AND expires_at IS NOT NULL))
);

-- Never double-booked: one granted lease per machine, whatever the replicas do.
CREATE UNIQUE INDEX leases_one_per_machine ON leases (machine_id) WHERE state = 'granted';
-- A retried request with the same key finds its lease instead of making another.
CREATE UNIQUE INDEX leases_idempotency ON leases (holder_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX leases_queued ON leases (queued_at) WHERE state = 'queued';
CREATE INDEX leases_granted_expiry ON leases (expires_at) WHERE state = 'granted';
CREATE INDEX leases_holder ON leases (holder_id, id);
CREATE INDEX leases_donor ON leases (donor_id, id);

-- How much each machine has been used and how reliable it has been, for placement scores.
ALTER TABLE machine_status
    ADD COLUMN leases_granted bigint NOT NULL DEFAULT 0,
    ADD COLUMN unreachable_episodes integer NOT NULL DEFAULT 0,
    ADD COLUMN lost_leases integer NOT NULL DEFAULT 0;
