#!/usr/bin/env bash
# The web pages' benchmark (release build, PostgreSQL on this machine, loopback only).
#
#   deploy/bench/pages.sh                         # 10,000 machines, 100,000 past leases
#   MACHINES=10000 LEASES=100000 REQUESTS=200 RUNS=3 deploy/bench/pages.sh
#
# One database with MACHINES machines (a quarter of each architecture; 2 % unreachable, some
# in maintenance or onboarding), LEASES past leases over the last 60 days and 200 queued ones.
# Then RUNS times, for each page: REQUESTS GETs in a row over one kept-alive connection, as one
# person clicking (latency p50/p95/p99 as the client on this machine sees it, loopback), and
# beside each page, as the baseline, the API's JSON for the same data (the page's extra cost is
# rendering and the session cookie). Last, each page's weight: its HTML and every stylesheet and
# script it links. The server's background jobs are off and it logs warnings only.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/need.sh curl curl

PG_PORT=${FLEETYARD_BENCH_PG_PORT:-54331}
LISTEN=${FLEETYARD_BENCH_LISTEN:-127.0.0.1:18083}
MACHINES=${MACHINES:-10000}
LEASES=${LEASES:-100000}
REQUESTS=${REQUESTS:-200}
RUNS=${RUNS:-3}

server_url=$(deploy/pg.sh start bench "$PG_PORT")
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
"$pg_bin/psql" -X -q "$server_url" -c "DROP DATABASE IF EXISTS fleetyard_pages WITH (FORCE)" \
  -c "CREATE DATABASE fleetyard_pages"
db_url=${server_url%/*}/fleetyard_pages

cargo build --release -p fleetyard --bin fleetyard -p fleetyard-tests --bin fleetyard-pagegen
bin=${CARGO_TARGET_DIR:-target}/release
work=.local/bench/pages
mkdir -p "$work"
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
FLEETYARD_AUTH__DATA_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FLEETYARD_AUTH__DATA_KEY

FLEETYARD_DATABASE_URL=$db_url FLEETYARD_JWT_SECRET=$secret FLEETYARD_LOG_FILTER=warn "$bin/fleetyard" migrate
"$bin/fleetyard-pagegen" setup --database-url "$db_url" --jwt-secret "$secret" --machines "$MACHINES" \
  --leases "$LEASES" --out "$work/session.txt"

FLEETYARD_DATABASE_URL=$db_url FLEETYARD_JWT_SECRET=$secret FLEETYARD_LISTEN=$LISTEN \
  FLEETYARD_LOG_FILTER=warn FLEETYARD_SCHEDULES__ENABLED=false \
  "$bin/fleetyard" serve 2>"$work/server.log" &
server_pid=$!
trap 'kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null; deploy/pg.sh stop bench >/dev/null 2>&1 || true' EXIT
for _ in $(seq 100); do curl -sf "http://$LISTEN/readyz" >/dev/null && break; sleep 0.1; done

# page | the API's JSON for the same data (the baseline)
pairs=(
  "/ui/dashboard|/api/v1/overview"
  "/ui/machines|/api/v1/machines"
  "/ui/machines?arch=riscv64&health=healthy&sort=hostname|/api/v1/machines?arch=riscv64&health=healthy&sort=hostname"
  "/ui/machines?q=bench-riscv64-0999|/api/v1/machines?q=bench-riscv64-0999"
  "/ui/queue|/api/v1/queue"
)
results=$work/results.txt
: >"$results"
for run in $(seq "$RUNS"); do
  for pair in "${pairs[@]}"; do
    page=${pair%%|*} api=${pair##*|}
    "$bin/fleetyard-pagegen" measure --server "$LISTEN" --session "$work/session.txt" --path "$page" \
      --requests "$REQUESTS" | sed "s/^/run $run: /" | tee -a "$results"
    "$bin/fleetyard-pagegen" measure --server "$LISTEN" --session "$work/session.txt" --bearer --path "$api" \
      --requests "$REQUESTS" | sed "s/^/run $run: /" | tee -a "$results"
  done
done
for page in /ui/dashboard /ui/machines; do
  "$bin/fleetyard-pagegen" weight --server "$LISTEN" --session "$work/session.txt" --path "$page" | tee -a "$results"
done
echo "results in $results"
