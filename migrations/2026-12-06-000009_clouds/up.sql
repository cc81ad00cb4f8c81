-- Clouds: instances Fleetyard rents from AWS, Huawei Cloud and China Telecom Cloud (and
-- servers it imports from them), the launch calls that made them, the parts of the catalogue
-- that failed lately, the token buckets that pace calls, and counts of calls made.
--
-- Write-ahead: placement writes an instance row (`requested`) before anything is asked of a
-- cloud; the cloud worker records a launch with its idempotency token and moves the rows to
-- `launching` before it calls; ids come back into the rows after. A server killed anywhere in
-- between leaves a launch that is resumed with the same token, and instances tagged with
-- their launch that the reconcile finds.

-- A machine is donated (it has a donation and a donor) or rented from a cloud (neither).
ALTER TABLE machines
    ALTER COLUMN donation_id DROP NOT NULL,
    ALTER COLUMN donor_id DROP NOT NULL,
    ADD CONSTRAINT machines_donated_or_rented CHECK ((donation_id IS NULL) = (donor_id IS NULL));

CREATE TABLE cloud_launches (
    id uuid PRIMARY KEY,
    account text NOT NULL,
    provider text NOT NULL CHECK (provider IN ('aws', 'huawei_cloud', 'ctyun')),
    region text NOT NULL,
    flavour text NOT NULL,
    market text NOT NULL CHECK (market IN ('on_demand', 'spot')),
    image text NOT NULL,
    count integer NOT NULL CHECK (count > 0),
    -- Sent with every call of this launch, and never with another: a retry cannot launch twice.
    client_token text NOT NULL UNIQUE,
    state text NOT NULL CHECK (state IN ('calling', 'done', 'failed', 'unknown')),
    -- The secret in this launch's user data, which each instance's agent exchanges (with its
    -- instance id) for its own credential; refused after `secret_expires_at`.
    secret_hash bytea NOT NULL UNIQUE,
    secret_expires_at timestamptz NOT NULL,
    -- A replica is calling until then; past it, any replica may resume the launch.
    claimed_until timestamptz,
    calls integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    error_kind text,
    error_code text,
    error_message text
);
CREATE INDEX cloud_launches_open ON cloud_launches (claimed_until) WHERE state = 'calling';

CREATE TABLE cloud_instances (
    id uuid PRIMARY KEY,
    state text NOT NULL CHECK (state IN (
        'requested', 'launching', 'booting', 'ready', 'terminating', 'terminated', 'failed', 'lost')),
    account text NOT NULL,
    provider text NOT NULL CHECK (provider IN ('aws', 'huawei_cloud', 'ctyun')),
    region text NOT NULL,
    flavour text NOT NULL,
    market text NOT NULL CHECK (market IN ('on_demand', 'spot')),
    arch text NOT NULL CHECK (arch IN ('x86_64', 'aarch64', 'riscv64', 'loongarch64')),
    cores integer NOT NULL,
    memory_mib bigint NOT NULL,
    disk_gib bigint NOT NULL,
    hourly_micros bigint NOT NULL CHECK (hourly_micros >= 0),
    -- Whose monthly budget pays for it (NULL: a warm-pool instance nobody has taken yet, or an
    -- imported server).
    tenant text,
    -- The lease it is for: launched for it, or taken from the warm pool by it.
    lease_id uuid REFERENCES leases (id),
    launch_id uuid REFERENCES cloud_launches (id),
    -- The cloud's own id, once the cloud has answered.
    provider_id text,
    machine_id uuid UNIQUE REFERENCES machines (id),
    -- An existing server ops brought into the pool: never terminated by Fleetyard.
    imported boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Billing runs from here (the cloud created it, or it was imported) to `ended_at`.
    launched_at timestamptz,
    -- Its agent exchanged the launch's secret for a credential.
    enrolled_at timestamptz,
    ready_at timestamptz,
    -- A replica is terminating (or importing) it until then.
    claimed_until timestamptz,
    -- A booting instance whose agent has not beaten by then is terminated.
    deadline timestamptz,
    -- When the cloud last failed to list it; twice, a minute apart, and it is lost.
    missing_since timestamptz,
    ended_at timestamptz,
    end_reason text,
    CHECK ((state IN ('terminated', 'failed', 'lost')) = (ended_at IS NOT NULL))
);
CREATE UNIQUE INDEX cloud_instances_provider_id ON cloud_instances (account, region, provider_id)
    WHERE provider_id IS NOT NULL;
CREATE INDEX cloud_instances_open ON cloud_instances (state) WHERE ended_at IS NULL;
CREATE INDEX cloud_instances_launch ON cloud_instances (launch_id);
CREATE INDEX cloud_instances_tenant ON cloud_instances (tenant, created_at) WHERE tenant IS NOT NULL;
-- A lease waits for at most one instance at a time.
CREATE UNIQUE INDEX cloud_instances_one_per_lease ON cloud_instances (lease_id)
    WHERE lease_id IS NOT NULL AND state IN ('requested', 'launching', 'booting', 'ready');

-- Parts of the catalogue that failed lately, passed over by placement until `until`: an
-- offer (NULL flavour and market: a region; NULL region too: the whole account).
CREATE TABLE cloud_unavailable (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account text NOT NULL,
    region text,
    flavour text,
    market text,
    kind text NOT NULL CHECK (kind IN ('capacity', 'quota', 'throttled', 'invalid', 'auth', 'transient')),
    reason text NOT NULL,
    until timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cloud_unavailable_until ON cloud_unavailable (until);

-- Token buckets per account, region and kind of call, shared by every replica.
CREATE TABLE cloud_rate_buckets (
    account text NOT NULL,
    region text NOT NULL,
    bucket text NOT NULL CHECK (bucket IN ('launch_calls', 'launch_instances', 'other_calls')),
    tokens double precision NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (account, region, bucket)
);

-- What each account's regions were asked, and how it went.
CREATE TABLE cloud_calls (
    account text NOT NULL,
    region text NOT NULL,
    operation text NOT NULL,
    ok bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    throttled bigint NOT NULL DEFAULT 0,
    last_error text,
    last_error_at timestamptz,
    PRIMARY KEY (account, region, operation)
);

-- Ops asked to bring existing servers into the pool; the cloud worker does it.
CREATE TABLE cloud_imports (
    id uuid PRIMARY KEY,
    account text NOT NULL,
    region text NOT NULL,
    instance_ids text[] NOT NULL,
    tag_key text,
    tag_value text,
    state text NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    requested_by uuid REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    claimed_until timestamptz,
    finished_at timestamptz,
    machine_ids uuid[] NOT NULL DEFAULT '{}',
    error text,
    CHECK (cardinality(instance_ids) > 0 OR tag_key IS NOT NULL)
);

-- Where a lease may go, and what it is waiting for.
ALTER TABLE leases
    ADD COLUMN placement text NOT NULL DEFAULT 'any' CHECK (placement IN ('any', 'lab', 'cloud')),
    ADD COLUMN max_lab_wait_secs integer NOT NULL DEFAULT 600 CHECK (max_lab_wait_secs >= 0),
    -- Why a queued lease is not on a cloud, or what is being launched for it.
    ADD COLUMN cloud_note text,
    -- The cloud instance it was granted on.
    ADD COLUMN cloud_instance_id uuid REFERENCES cloud_instances (id);

-- A cloud instance bound to a waiting lease is that lease's, not the pool's: placement reads
-- the bindings and states, so a change to them is a change to what it reads. Row by row, and
-- only when a value changed (a statement trigger would fire for statements that change nothing).
CREATE TRIGGER cloud_instances_placement_epoch
    AFTER UPDATE OF lease_id, state ON cloud_instances FOR EACH ROW
    WHEN (OLD.lease_id IS DISTINCT FROM NEW.lease_id OR OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION bump_placement_epoch();
