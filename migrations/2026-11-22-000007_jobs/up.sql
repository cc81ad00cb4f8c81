-- Build and test jobs: a command run on a machine the scheduler picks. Each attempt holds a
-- lease (leases.job_id); a machine lost mid-job ends that lease, and the job goes back to the
-- queue with a new one while attempts remain.
CREATE TABLE jobs (
    id uuid PRIMARY KEY,
    state text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled')),
    holder_kind text NOT NULL CHECK (holder_kind IN ('user', 'service')),
    holder_id uuid NOT NULL,
    holder_name text NOT NULL,
    idempotency_key text,
    request_hash bytea NOT NULL,
    tenant text NOT NULL,
    command text NOT NULL,
    env jsonb NOT NULL,
    timeout_secs integer NOT NULL CHECK (timeout_secs > 0),
    max_wait_secs integer NOT NULL CHECK (max_wait_secs >= 0),
    max_attempts integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 10),
    attempts integer NOT NULL DEFAULT 1,
    machine_id uuid REFERENCES machines (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    exit_code integer,
    end_reason text,
    output_bytes bigint NOT NULL DEFAULT 0,
    CHECK ((state IN ('queued', 'running')) = (finished_at IS NULL))
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (holder_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_holder ON jobs (holder_id, id);

ALTER TABLE leases ADD COLUMN job_id uuid REFERENCES jobs (id) ON DELETE CASCADE;
CREATE INDEX leases_job ON leases (job_id) WHERE job_id IS NOT NULL;

-- What a job printed (stdout and stderr together), in the order the agent sent it. Old
-- chunks are dropped past a cap, so the tail is always kept.
CREATE TABLE job_output (
    job_id uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq bigserial,
    attempt integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (job_id, seq)
);
