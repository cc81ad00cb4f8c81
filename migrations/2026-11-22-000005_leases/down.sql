ALTER TABLE machine_status
    DROP COLUMN leases_granted,
    DROP COLUMN unreachable_episodes,
    DROP COLUMN lost_leases;
DROP TABLE leases;
