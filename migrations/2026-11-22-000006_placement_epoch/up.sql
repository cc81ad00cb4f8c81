-- What placement reads changes rarely compared with how often it places. Every change to it
-- bumps this counter (by trigger, so none can be forgotten): a scheduler that sees the counter
-- where it left it may reuse what it read before instead of reading 10,000 machines again.
CREATE TABLE placement_epoch (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    epoch bigint NOT NULL
);
INSERT INTO placement_epoch (epoch) VALUES (0);

CREATE FUNCTION bump_placement_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE placement_epoch SET epoch = epoch + 1;
    RETURN NULL;
END;
$$;

-- A machine's fitness, availability or size changed.
CREATE TRIGGER machines_placement_epoch
    AFTER UPDATE OF lifecycle, health, quarantined_at, labels, arch, cpu_cores, memory_mib, disk_gib, donation_id,
        ssh_host, ssh_port, ssh_user
    ON machines FOR EACH STATEMENT EXECUTE FUNCTION bump_placement_epoch();
CREATE TRIGGER machines_insert_placement_epoch
    AFTER INSERT OR DELETE ON machines FOR EACH STATEMENT EXECUTE FUNCTION bump_placement_epoch();
-- A donor's terms changed.
CREATE TRIGGER donations_placement_epoch
    AFTER UPDATE OF usage_policy, status, model ON donations FOR EACH STATEMENT EXECUTE FUNCTION bump_placement_epoch();
-- A machine was given back (released, expired, lost). Grants bump the counter once per round,
-- explicitly, so that the granting scheduler can tell its own change from anyone else's.
CREATE TRIGGER leases_ended_placement_epoch
    AFTER UPDATE ON leases FOR EACH ROW WHEN (OLD.state = 'granted' AND NEW.state <> 'granted')
    EXECUTE FUNCTION bump_placement_epoch();
CREATE TRIGGER leases_deleted_placement_epoch
    AFTER DELETE ON leases FOR EACH ROW WHEN (OLD.state = 'granted') EXECUTE FUNCTION bump_placement_epoch();
