-- What the dashboard and the donors' usage report read: leases by when they were granted and
-- when they ended (utilisation over time, waits), and by donor over time (usage per month).
CREATE INDEX leases_granted_at ON leases (granted_at) WHERE granted_at IS NOT NULL;
CREATE INDEX leases_ended_at ON leases (ended_at);
CREATE INDEX leases_donor_granted ON leases (donor_id, granted_at) WHERE granted_at IS NOT NULL;
CREATE INDEX machines_health_idx ON machines (health);
CREATE INDEX donations_ends_on_idx ON donations (ends_on) WHERE ends_on IS NOT NULL;
