DROP TRIGGER cloud_instances_placement_epoch ON cloud_instances;
ALTER TABLE leases DROP COLUMN cloud_instance_id, DROP COLUMN cloud_note, DROP COLUMN max_lab_wait_secs,
    DROP COLUMN placement;
DROP TABLE cloud_imports;
DROP TABLE cloud_calls;
DROP TABLE cloud_rate_buckets;
DROP TABLE cloud_unavailable;
DROP TABLE cloud_instances;
DROP TABLE cloud_launches;
DELETE FROM machines WHERE donation_id IS NULL;
ALTER TABLE machines DROP CONSTRAINT machines_donated_or_rented,
    ALTER COLUMN donation_id SET NOT NULL, ALTER COLUMN donor_id SET NOT NULL;
