DROP INDEX events_time_idx;
ALTER TABLE job_runs DROP COLUMN resumed_at;
DROP INDEX webhook_deliveries_in_flight_idx;
ALTER TABLE webhook_deliveries DROP COLUMN claimed_until;
