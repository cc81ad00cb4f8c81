-- Jobs that died by a signal on a machine (a crash, the kernel's OOM killer) count against its
-- reliability in placement, as lost leases and silences do.
ALTER TABLE machine_status ADD COLUMN crashed_jobs integer NOT NULL DEFAULT 0;
