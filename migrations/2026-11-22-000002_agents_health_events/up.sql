-- Agents, health, SSH checks, background jobs, events and webhooks.

-- Health is derived (heartbeats, SSH checks) and changes rarely; why it is what it is, and a
-- quarantine that keeps a machine out of use until ops look at it, sit next to it.
ALTER TABLE machines
    ADD COLUMN health_reason      text,
    ADD COLUMN health_changed_at  timestamptz,
    ADD COLUMN quarantined_at     timestamptz,
    ADD COLUMN quarantine_reason  text;

-- The live state of each machine: written by every heartbeat and SSH check, so it is kept
-- out of `machines` in a narrow row with no indexes beyond its key. Heartbeat updates are then
-- HOT updates (no index maintenance), and fillfactor leaves room on each page for them.
CREATE TABLE machine_status (
    machine_id             uuid PRIMARY KEY REFERENCES machines (id),
    last_heartbeat_at      timestamptz,
    agent_version          text,
    load1                  real,
    disk_used_pct          real,
    clock_skew_ms          integer,
    uptime_secs            bigint,
    -- Since when load per CPU has stayed above the overload threshold (NULL: it has not).
    overloaded_since       timestamptz,
    -- The last facts the machine reported (agent) or showed (SSH probe), and where from.
    facts                  jsonb,
    facts_source           text CHECK (facts_source IN ('agent', 'ssh')),
    facts_hash             bigint,
    facts_at               timestamptz,
    -- Facts that contradict what was declared, e.g. [{"field": "arch", ...}].
    mismatches             jsonb NOT NULL DEFAULT '[]',
    last_ssh_check_at      timestamptz,
    last_ssh_ok_at         timestamptz,
    ssh_failures           integer NOT NULL DEFAULT 0,
    ssh_error              text,
    -- Pinned on first contact; a different key quarantines the machine.
    ssh_host_key           text,
    ssh_host_key_fingerprint text,
    -- Set by ops or by onboarding: probe this machine at the next SSH round.
    probe_requested_at     timestamptz
) WITH (fillfactor = 70);

INSERT INTO machine_status (machine_id) SELECT id FROM machines;

-- One-time enrollment tokens. Only a SHA-256 of the secret is stored.
CREATE TABLE enrollment_tokens (
    id          uuid PRIMARY KEY,
    machine_id  uuid NOT NULL REFERENCES machines (id),
    secret_hash bytea NOT NULL UNIQUE,
    created_by  uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX enrollment_tokens_machine_idx ON enrollment_tokens (machine_id);
CREATE INDEX enrollment_tokens_open_idx ON enrollment_tokens (expires_at)
    WHERE used_at IS NULL AND revoked_at IS NULL;

CREATE INDEX api_tokens_machine_idx ON api_tokens (machine_id) WHERE machine_id IS NOT NULL;

-- Key pairs Fleetyard itself holds, e.g. the SSH key it checks machines with. The private
-- key never leaves the server through any endpoint.
CREATE TABLE platform_keys (
    name         text PRIMARY KEY,
    private_key  text NOT NULL,
    public_key   text NOT NULL,
    fingerprint  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per background job: which replica ran it last and how it went. Claiming a run is
-- an UPDATE on this row, so each scheduled run happens once however many replicas there are.
CREATE TABLE job_runs (
    job               text PRIMARY KEY,
    last_started_at   timestamptz,
    last_finished_at  timestamptz,
    lease_until       timestamptz,
    run_by            text,
    runs              bigint NOT NULL DEFAULT 0,
    last_outcome      text,
    last_report       jsonb
);

-- Reminders already sent, so each is sent once per due date.
CREATE TABLE reminders_sent (
    donation_id  uuid NOT NULL REFERENCES donations (id),
    ends_on      date NOT NULL,
    days_before  integer NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (donation_id, ends_on, days_before)
);

-- The outbox: events are written in the same transaction as the change they announce.
CREATE TABLE events (
    id          uuid PRIMARY KEY,
    type        text NOT NULL,
    subject     text NOT NULL,
    time        timestamptz NOT NULL DEFAULT now(),
    donor_id    uuid,
    data        jsonb NOT NULL
);
CREATE INDEX events_type_time_idx ON events (type, time);

CREATE TABLE webhook_subscriptions (
    id           uuid PRIMARY KEY,
    url          text NOT NULL,
    -- The HMAC key deliveries are signed with; shown to the subscriber once.
    secret       text NOT NULL,
    -- Event types delivered; empty means all.
    event_types  text[] NOT NULL DEFAULT '{}',
    description  text,
    active       boolean NOT NULL DEFAULT true,
    created_by   uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per (event, subscription), created with the event. A worker claims due rows with
-- SKIP LOCKED and a lease, so a crash mid-delivery only delays it.
CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         uuid NOT NULL REFERENCES events (id),
    subscription_id  uuid NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    abandoned_at     timestamptz,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, subscription_id)
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;
CREATE INDEX webhook_deliveries_subscription_idx ON webhook_deliveries (subscription_id, id);
