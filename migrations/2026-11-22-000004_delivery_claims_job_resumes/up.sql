-- A delivery in flight is claimed until `claimed_until`, apart from when it is next due
-- (`next_attempt_at`, the retry backoff). A subscription with a delivery in flight gets no
-- other until it is done, so a slow subscriber is never sent the same event twice.
ALTER TABLE webhook_deliveries ADD COLUMN claimed_until timestamptz;
CREATE INDEX webhook_deliveries_in_flight_idx ON webhook_deliveries (subscription_id)
    WHERE claimed_until IS NOT NULL;

-- When a job ran again after a gap (no finished run for several periods: the servers or the
-- database were down). The liveness sweep gives agents time to come back before it judges
-- their silence.
ALTER TABLE job_runs ADD COLUMN resumed_at timestamptz;

-- The outbox is pruned by age (jobs::outbox_retention).
CREATE INDEX events_time_idx ON events (time);
