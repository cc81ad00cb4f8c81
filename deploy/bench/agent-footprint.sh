#!/usr/bin/env bash
# Agent footprint benchmark: resident memory and CPU time of fleetyard-agent (release build,
# heartbeat every 10 s to a local Fleetyard) side by side with Debian's prometheus-node-exporter
# scraped every 10 s, measured over the same window on this machine.
#
#   deploy/bench/agent-footprint.sh              # 10-minute window
#   MINUTES=60 deploy/bench/agent-footprint.sh   # a full hour
#
# CPU per hour is the CPU time used in the window scaled to an hour; the window is printed.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/need.sh curl curl

MINUTES=${MINUTES:-10}
PG_PORT=${FLEETYARD_BENCH_PG_PORT:-54331}
LISTEN=${FLEETYARD_BENCH_LISTEN:-127.0.0.1:18081}
EXPORTER=127.0.0.1:19100

deploy/need.sh prometheus-node-exporter prometheus-node-exporter
exporter_bin=$(command -v prometheus-node-exporter)

server_url=$(deploy/pg.sh start bench "$PG_PORT")
psql_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)/psql
"$psql_bin" -X -q "$server_url" -c "DROP DATABASE IF EXISTS fleetyard_footprint WITH (FORCE)" -c "CREATE DATABASE fleetyard_footprint"
db_url=${server_url%/*}/fleetyard_footprint

cargo build --release -p fleetyard --bin fleetyard -p fleetyard-agent --bin fleetyard-agent
bin=${CARGO_TARGET_DIR:-target}/release
work=.local/bench/footprint
rm -rf "$work" && mkdir -p "$work"
export FLEETYARD_DATABASE_URL=$db_url FLEETYARD_LISTEN=$LISTEN FLEETYARD_LOG_FILTER=warn
FLEETYARD_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FLEETYARD_JWT_SECRET
FLEETYARD_AUTH__DATA_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FLEETYARD_AUTH__DATA_KEY

"$bin/fleetyard" admin seed-demo >/dev/null
"$bin/fleetyard" serve 2>"$work/server.log" &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; deploy/pg.sh stop bench >/dev/null 2>&1 || true' EXIT
for _ in $(seq 100); do curl -sf "http://$LISTEN/readyz" >/dev/null && break; sleep 0.1; done

api=http://$LISTEN/api/v1
admin=$(curl -sf -X POST "$api/auth/login" -H 'content-type: application/json' \
  -d '{"email":"admin@fleetyard.local","password":"fleetyard-admin-demo"}' | sed 's/.*"token":"\([^"]*\)".*/\1/')
machine=$(curl -sf "$api/machines?lifecycle=ready&limit=1" -H "authorization: Bearer $admin" | sed 's/.*"items":\[{"id":"\([^"]*\)".*/\1/')
token=$(curl -sf -X POST "$api/machines/$machine/enrollment-token" -H "authorization: Bearer $admin" | sed 's/.*"token":"\([^"]*\)".*/\1/')
"$bin/fleetyard-agent" --server "http://$LISTEN" --state-dir "$work/agent" enroll --token "$token"

"$bin/fleetyard-agent" --server "http://$LISTEN" --state-dir "$work/agent" run 2>"$work/agent.log" &
agent=$!
"$exporter_bin" --web.listen-address="$EXPORTER" 2>"$work/exporter.log" &
exporter=$!
pids+=("$agent" "$exporter")
sleep 2

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
ticks_per_second=$(getconf CLK_TCK)
agent_start=$(cpu_ticks "$agent") exporter_start=$(cpu_ticks "$exporter")
samples=$((MINUTES * 6))
echo "measuring for $MINUTES minutes ($samples samples, every 10 s)..." >&2
: >"$work/rss.tsv"
for _ in $(seq "$samples"); do
  curl -sf "http://$EXPORTER/metrics" >/dev/null
  printf '%s\t%s\n' "$(rss_kib "$agent")" "$(rss_kib "$exporter")" >>"$work/rss.tsv"
  sleep 10
done
agent_ticks=$(( $(cpu_ticks "$agent") - agent_start ))
exporter_ticks=$(( $(cpu_ticks "$exporter") - exporter_start ))
kill -0 "$agent" || { echo "the agent died during the measurement" >&2; exit 1; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
maximum() { sort -n | tail -n 1; }
agent_median=$(cut -f1 "$work/rss.tsv" | median) agent_max=$(cut -f1 "$work/rss.tsv" | maximum)
exporter_median=$(cut -f2 "$work/rss.tsv" | median) exporter_max=$(cut -f2 "$work/rss.tsv" | maximum)
per_hour() { awk -v t="$1" -v hz="$ticks_per_second" -v m="$MINUTES" 'BEGIN {printf "%.2f", t / hz * 60 / m}'; }
heartbeats=$(grep -c . "$work/rss.tsv")

echo
echo "Window: $MINUTES minutes on $(nproc) cores; the agent sent a heartbeat about every 10 s, the exporter was scraped every 10 s ($heartbeats times)."
echo
echo "| process | RSS median (MiB) | RSS max (MiB) | CPU seconds per hour |"
echo "| --- | ---: | ---: | ---: |"
awk -v a="$agent_median" -v b="$agent_max" -v c="$(per_hour "$agent_ticks")" \
  'BEGIN {printf "| fleetyard-agent | %.1f | %.1f | %s |\n", a/1024, b/1024, c}'
awk -v a="$exporter_median" -v b="$exporter_max" -v c="$(per_hour "$exporter_ticks")" \
  'BEGIN {printf "| prometheus-node-exporter | %.1f | %.1f | %s |\n", a/1024, b/1024, c}'
awk -v a="$agent_median" -v b="$exporter_median" 'BEGIN {printf "\nagent / exporter resident memory (medians): %.0f %%\n", 100*a/b}'
