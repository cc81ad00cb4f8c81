DROP TABLE job_output;
ALTER TABLE leases DROP COLUMN job_id;
DROP TABLE jobs;
