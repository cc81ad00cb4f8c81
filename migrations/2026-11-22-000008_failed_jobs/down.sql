ALTER TABLE machine_status DROP COLUMN crashed_jobs;
