#!/usr/bin/env bash
# Heartbeat ingest benchmark (release builds, PostgreSQL on this machine, loopback only).
#
#   deploy/bench/heartbeats.sh                 # 10,000 and 100,000 identities
#   PIN=0 deploy/bench/heartbeats.sh           # let the kernel place every process (see below)
#   WORKERS=1 deploy/bench/heartbeats.sh       # one HTTP worker thread (default: one per CPU it may use)
#   ROUNDS=20 SLICE_SECONDS=2 deploy/bench/heartbeats.sh
#
# Where things run: the agents a server hears from are on other machines, and so are the clients
# that would measure its ceiling. The load generator stands in for them on this machine, so by
# default it gets CPUs of its own: the server and PostgreSQL share the first half of the CPUs,
# the load generator the second half (with `taskset`), so the server's CPUs do only the server's
# and PostgreSQL's work. PIN=0 lets the load generator compete with them for every CPU.
#
# For each identity count, in one run against one server:
#   1. warm-up: each machine sends one heartbeat (its facts are stored once, as when agents start);
#   2. ROUNDS rounds of two closed-loop slices of SLICE_SECONDS each, in turn: the ceiling
#      (GET /healthz as fast as the server answers, 64 connections) and heartbeats as fast as the
#      server answers (64 connections). The ratio is taken per round, between neighbouring
#      slices: on two shared cores the ceiling alone swings by a third from minute to minute;
#   3. heartbeats at a fixed 10,000 per second for OPEN_LOOP_SECONDS (open loop: latency counted
#      from when each was due).
# PostgreSQL runs with its normal durability settings (fsync on) from .local/pg-bench. Background
# jobs are off on the server so that the figures are the ingest path's alone, and it logs warnings
# only (per-request log lines would be measured otherwise).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/need.sh curl curl

PG_PORT=${FLEETYARD_BENCH_PG_PORT:-54331}
LISTEN=${FLEETYARD_BENCH_LISTEN:-127.0.0.1:18080}
ROUNDS=${ROUNDS:-10}
SLICE_SECONDS=${SLICE_SECONDS:-3}
WORKERS=${WORKERS:-0}
OPEN_LOOP_SECONDS=${OPEN_LOOP_SECONDS:-15}
PIN=${PIN:-1}
IDENTITIES=${IDENTITIES:-"10000 100000"}
MAX_IDENTITIES=$(tr ' ' '\n' <<<"$IDENTITIES" | sort -n | tail -n 1)

deploy/need.sh taskset util-linux
cpus=$(nproc)
server_cpus='' server_side=() loadgen_side=()
if [ "$PIN" = 1 ] && [ "$cpus" -ge 2 ]; then
  half=$((cpus / 2))
  server_cpus=0-$((half - 1))
  server_side=(taskset -c "$server_cpus") loadgen_side=(taskset -c "$half-$((cpus - 1))")
  echo "server and PostgreSQL on CPUs $server_cpus, load generator on CPUs $half-$((cpus - 1))" >&2
fi

server_url=$(deploy/pg.sh start bench "$PG_PORT")
if [ -n "$server_cpus" ]; then
  # Backends started later inherit the postmaster's CPUs.
  postmaster=$(head -n 1 .local/pg-bench/data/postmaster.pid)
  for pid in "$postmaster" $(cat "/proc/$postmaster/task/$postmaster/children"); do taskset -a -c -p "$server_cpus" "$pid" >/dev/null || true; done
fi
psql_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)/psql
"$psql_bin" -X -q "$server_url" -c "DROP DATABASE IF EXISTS fleetyard_bench WITH (FORCE)" -c "CREATE DATABASE fleetyard_bench"
db_url=${server_url%/*}/fleetyard_bench

cargo build --release -p fleetyard --bin fleetyard -p fleetyard-tests --bin fleetyard-loadgen
bin=${CARGO_TARGET_DIR:-target}/release
work=.local/bench
mkdir -p "$work"
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
FLEETYARD_AUTH__DATA_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FLEETYARD_AUTH__DATA_KEY

FLEETYARD_DATABASE_URL=$db_url FLEETYARD_JWT_SECRET=$secret FLEETYARD_LOG_FILTER=warn "$bin/fleetyard" migrate
"$bin/fleetyard-loadgen" setup --database-url "$db_url" --jwt-secret "$secret" \
  --identities "$MAX_IDENTITIES" --out "$work/credentials.txt"

FLEETYARD_DATABASE_URL=$db_url FLEETYARD_JWT_SECRET=$secret FLEETYARD_LISTEN=$LISTEN \
  FLEETYARD_LOG_FILTER=warn FLEETYARD_SCHEDULES__ENABLED=false FLEETYARD_WORKERS=$WORKERS \
  "${server_side[@]}" "$bin/fleetyard" serve 2>"$work/server.log" &
server_pid=$!
trap 'kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null; deploy/pg.sh stop bench >/dev/null 2>&1 || true' EXIT
for _ in $(seq 100); do curl -sf "http://$LISTEN/readyz" >/dev/null && break; sleep 0.1; done

loadgen() { "${loadgen_side[@]}" "$bin/fleetyard-loadgen" "$1" --server "$LISTEN" --credentials "$work/credentials.txt" "${@:2}"; }
results=$work/results.jsonl
: >"$results"
for n in $IDENTITIES; do
  echo "== $n identities" >&2
  loadgen run --target heartbeat --identities "$n" --once --seconds 600 >/dev/null
  loadgen compare --identities "$n" --rounds "$ROUNDS" --slice-seconds "$SLICE_SECONDS" --server-pid "$server_pid" \
    | tee -a "$results" >&2
  loadgen run --target heartbeat --identities "$n" --rate 10000 --seconds "$OPEN_LOOP_SECONDS" | tee -a "$results" >&2
done

echo
"$bin/fleetyard-loadgen" table "$results"
