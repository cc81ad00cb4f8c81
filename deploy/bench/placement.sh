#!/usr/bin/env bash
# Placement benchmark (release builds, PostgreSQL on this machine, loopback only).
#
#   deploy/bench/placement.sh                    # 10,000 machines, bursts of 10,000 requests
#   MACHINES=10000 REQUESTS=10000 CLIENTS=64 RUNS=3 deploy/bench/placement.sh
#
# One inventory of MACHINES ready, healthy lab machines (a quarter of each architecture) in one
# database, then RUNS times, each from a free inventory:
#   1. Fleetyard: CLIENTS concurrent clients send REQUESTS lease requests in all (architectures
#      in turn, `max_wait_minutes: 0`); grants per second and time-to-grant (p50/p99);
#   2. the baseline: pgbench with CLIENTS clients runs REQUESTS bare claims in all, each one
#      transaction that picks a free machine of the architecture (FOR UPDATE SKIP LOCKED),
#      marks it and inserts its lease. Each client keeps to one architecture (client id
#      modulo 4), so every architecture gets a quarter of the claims, as with Fleetyard.
# PostgreSQL runs with its normal durability settings (fsync on) from .local/pg-bench. The
# server's background jobs are off and it logs warnings only.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/need.sh curl curl

PG_PORT=${FLEETYARD_BENCH_PG_PORT:-54331}
LISTEN=${FLEETYARD_BENCH_LISTEN:-127.0.0.1:18082}
MACHINES=${MACHINES:-10000}
REQUESTS=${REQUESTS:-$MACHINES}
CLIENTS=${CLIENTS:-64}
RUNS=${RUNS:-3}
if (( REQUESTS > MACHINES )); then
  echo "REQUESTS must not exceed MACHINES (a baseline claim finding no machine aborts pgbench)" >&2
  exit 2
fi

server_url=$(deploy/pg.sh start bench "$PG_PORT")
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
"$pg_bin/psql" -X -q "$server_url" -c "DROP DATABASE IF EXISTS fleetyard_placement WITH (FORCE)" \
  -c "CREATE DATABASE fleetyard_placement"
db_url=${server_url%/*}/fleetyard_placement

cargo build --release -p fleetyard --bin fleetyard -p fleetyard-tests --bin fleetyard-placegen
bin=${CARGO_TARGET_DIR:-target}/release
work=.local/bench/placement
mkdir -p "$work"
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
FLEETYARD_AUTH__DATA_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FLEETYARD_AUTH__DATA_KEY

FLEETYARD_DATABASE_URL=$db_url FLEETYARD_JWT_SECRET=$secret FLEETYARD_LOG_FILTER=warn "$bin/fleetyard" migrate
"$bin/fleetyard-placegen" setup --database-url "$db_url" --jwt-secret "$secret" --machines "$MACHINES" \
  --out "$work/token.txt"

FLEETYARD_DATABASE_URL=$db_url FLEETYARD_JWT_SECRET=$secret FLEETYARD_LISTEN=$LISTEN \
  FLEETYARD_LOG_FILTER=warn FLEETYARD_SCHEDULES__ENABLED=false FLEETYARD_DB_POOL_SIZE=${POOL:-16} \
  "$bin/fleetyard" serve 2>"$work/server.log" &
server_pid=$!
trap 'kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null; deploy/pg.sh stop bench >/dev/null 2>&1 || true' EXIT
for _ in $(seq 100); do curl -sf "http://$LISTEN/readyz" >/dev/null && break; sleep 0.1; done

# The bare claim: pick a free machine of the architecture, mark it, insert its lease.
cat >"$work/claim.sql" <<'SQL'
\set a :client_id % 4 + 1
BEGIN;
SELECT s.machine_id AS machine, m.donation_id AS donation, m.donor_id AS donor
  FROM machine_status s JOIN machines m ON m.id = s.machine_id
  WHERE m.arch = (ARRAY['x86_64', 'aarch64', 'riscv64', 'loongarch64'])[:a]
    AND m.lifecycle = 'ready' AND m.health = 'healthy' AND m.cpu_cores >= 4 AND s.leases_granted = 0
  ORDER BY s.machine_id LIMIT 1 FOR UPDATE OF s SKIP LOCKED \gset
UPDATE machine_status SET leases_granted = leases_granted + 1 WHERE machine_id = :machine;
INSERT INTO leases (id, state, holder_kind, holder_id, holder_name, request_hash, tenant, purpose, priority,
    arch, min_cores, min_memory_mib, min_disk_gib, labels, trusted_only, duration_secs, deadline,
    machine_id, donation_id, donor_id, granted_at, expires_at)
  VALUES (gen_random_uuid(), 'granted', 'service', gen_random_uuid(), 'pgbench', '\x00', 'bench', 'ci', 50,
    (ARRAY['x86_64', 'aarch64', 'riscv64', 'loongarch64'])[:a], 4, 0, 0, '{}', false, 3600, now(),
    :machine, :donation, :donor, now(), now() + interval '1 hour');
END;
SQL

results=$work/results.txt
: >"$results"
per_client=$((REQUESTS / CLIENTS))
for run in $(seq "$RUNS"); do
  "$bin/fleetyard-placegen" reset --database-url "$db_url"
  line=$("$bin/fleetyard-placegen" burst --server "$LISTEN" --token "$work/token.txt" \
    --requests "$REQUESTS" --connections "$CLIENTS")
  echo "run $run fleetyard: $line" | tee -a "$results" >&2
  "$bin/fleetyard-placegen" reset --database-url "$db_url"
  # The baseline's best shot: an index that finds unclaimed machines directly, walked in order
  # (ORDER BY above); without both, pgbench managed about 40 % less here. Only for the
  # baseline; Fleetyard's own writes would pay for its upkeep.
  "$pg_bin/psql" -X -q "$db_url" -c "CREATE INDEX bench_free ON machine_status (machine_id) WHERE leases_granted = 0" \
    -c "VACUUM ANALYZE machine_status"
  # pgbench: the same number of claims (rounded down to a multiple of the clients).
  "$pg_bin/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -t "$per_client" -f "$work/claim.sql" -r "$db_url" \
    >"$work/pgbench-$run.txt" 2>&1 || { cat "$work/pgbench-$run.txt" >&2; exit 1; }
  "$pg_bin/psql" -X -q "$db_url" -c "DROP INDEX bench_free"
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$work/pgbench-$run.txt")
  latency=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$work/pgbench-$run.txt")
  echo "run $run baseline: {\"claims\":$((per_client * CLIENTS)),\"clients\":$CLIENTS,\"claims_per_second\":$tps,\"latency_avg_ms\":$latency}" \
    | tee -a "$results" >&2
done
echo
cat "$results"
