DROP INDEX IF EXISTS donations_ends_on_idx;
DROP INDEX IF EXISTS machines_health_idx;
DROP INDEX IF EXISTS leases_donor_granted;
DROP INDEX IF EXISTS leases_ended_at;
DROP INDEX IF EXISTS leases_granted_at;
