DROP TRIGGER IF EXISTS leases_count_hours_on_insert ON leases;
DROP TRIGGER IF EXISTS leases_count_hours_on_end ON leases;
DROP FUNCTION IF EXISTS fleetyard_count_lease_hours();
DROP TABLE IF EXISTS leased_hours_daily;
