-- Machine-hours leased per day (UTC) and architecture, kept as leases end: the dashboard's
-- utilisation reads 30 rows per architecture instead of every lease of the last month (about
-- 50,000 at the benchmark's scale, 0.7 s to add up), and the history outlives any pruning of
-- old leases. Leases still running are added up live by the reader.
CREATE TABLE leased_hours_daily (
    day date NOT NULL,
    arch text NOT NULL,
    hours double precision NOT NULL,
    PRIMARY KEY (day, arch)
);

-- A lease's hours between `granted_at` and `ended_at`, split over the UTC days it spans.
CREATE FUNCTION fleetyard_count_lease_hours() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    g timestamp := NEW.granted_at AT TIME ZONE 'UTC';
    e timestamp := NEW.ended_at AT TIME ZONE 'UTC';
BEGIN
    IF e > g THEN
        INSERT INTO leased_hours_daily AS t (day, arch, hours)
        SELECT d::date, NEW.arch, extract(epoch FROM least(e, d + interval '1 day') - greatest(g, d)) / 3600.0
        FROM generate_series(date_trunc('day', g), e, interval '1 day') AS d
        WHERE least(e, d + interval '1 day') > greatest(g, d)
        ON CONFLICT (day, arch) DO UPDATE SET hours = t.hours + excluded.hours;
    END IF;
    RETURN NULL;
END $$;

-- Every way a lease ends sets `ended_at` once (release, expiry, a job's end, a lost machine).
CREATE TRIGGER leases_count_hours_on_end AFTER UPDATE OF ended_at ON leases
    FOR EACH ROW WHEN (OLD.ended_at IS NULL AND NEW.ended_at IS NOT NULL AND NEW.granted_at IS NOT NULL)
    EXECUTE FUNCTION fleetyard_count_lease_hours();
CREATE TRIGGER leases_count_hours_on_insert AFTER INSERT ON leases
    FOR EACH ROW WHEN (NEW.ended_at IS NOT NULL AND NEW.granted_at IS NOT NULL)
    EXECUTE FUNCTION fleetyard_count_lease_hours();

INSERT INTO leased_hours_daily (day, arch, hours)
SELECT d::date, l.arch, sum(extract(epoch FROM least(l.e, d + interval '1 day') - greatest(l.g, d)) / 3600.0)
FROM (SELECT arch, granted_at AT TIME ZONE 'UTC' AS g, ended_at AT TIME ZONE 'UTC' AS e FROM leases
      WHERE granted_at IS NOT NULL AND ended_at > granted_at) l,
     generate_series(date_trunc('day', l.g), l.e, interval '1 day') AS d
WHERE least(l.e, d + interval '1 day') > greatest(l.g, d)
GROUP BY 1, 2;
