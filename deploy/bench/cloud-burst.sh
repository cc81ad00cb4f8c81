#!/usr/bin/env bash
# Cloud burst and reconcile benchmark (release builds, PostgreSQL and moto on this machine,
# loopback only).
#
#   deploy/bench/cloud-burst.sh                  # 100 requests, reconcile over 1,000 instances
#   REQUESTS=100 INSTANCES=1000 RUNS=3 deploy/bench/cloud-burst.sh
#
# A full lab (every x86_64 machine leased for a day) and one AWS account on moto's EC2 server,
# with EC2's published rate limits (RunInstances: 5 calls then 2 a second; 1,000 instances then
# 2 a second). RUNS times, each on a fresh database and a fresh moto:
#   1. Fleetyard: REQUESTS x86_64 lease requests at once (`placement: any`, no tolerance for the
#      lab). A booter plays each instance's boot with a real fleetyard-agent. Reported: cloud
#      calls by operation, throttling errors, time from each request to the launch call made
#      for it and to a usable lease (granted with its connection), p50 and p99;
#   2. the baseline: the same number of instances, one RunInstances call per request, all at
#      once, straight to moto, as a provisioner without batching makes them;
#   3. a reconcile round over INSTANCES instances tagged with the platform, all known to the
#      database, then over as many orphans; beside it, checking the known ones one
#      DescribeInstances call each.
# The server's schedules run as in production (the liveness sweep every 5 s decides that a
# booted instance's agent reports).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/need.sh curl curl

PG_PORT=${FLEETYARD_BENCH_PG_PORT:-54332}
LISTEN=${FLEETYARD_BENCH_LISTEN:-127.0.0.1:18083}
MOTO_PORT=${FLEETYARD_BENCH_MOTO_PORT:-54345}
REQUESTS=${REQUESTS:-100}
INSTANCES=${INSTANCES:-1000}
RUNS=${RUNS:-3}

python_bin=$(deploy/need-python.sh)
server_url=$(deploy/pg.sh start bench-cloud "$PG_PORT")
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
cargo build --release -p fleetyard --bin fleetyard -p fleetyard-agent --bin fleetyard-agent \
  -p fleetyard-tests --bin fleetyard-cloudgen --bin fleetyard-cloud-booter
bin=${CARGO_TARGET_DIR:-target}/release
work=.local/bench/cloud
mkdir -p "$work/agents" "$work/keys"
printf 'BENCHACCESSKEY' >"$work/keys/ak"
printf 'bench-secret-key' >"$work/keys/sk"
cp "$bin/fleetyard-agent" "$work/agents/fleetyard-agent-$(uname -m)"
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
FLEETYARD_AUTH__DATA_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
export FLEETYARD_AUTH__DATA_KEY
keys=$(cd "$work/keys" && pwd) agents=$(cd "$work/agents" && pwd)
cat >"$work/fleetyard.toml" <<TOML
[clouds]
platform = "fleetyard-bench"
agent_server_url = "http://$LISTEN"
agent_binaries_dir = "$agents"
default_tenant_budget = 10000.0

[[clouds.accounts]]
name = "aws-bench"
provider = "aws"
access_key_file = "$keys/ak"
secret_key_file = "$keys/sk"
max_instances = 2000

[[clouds.accounts.regions]]
name = "us-east-1"
endpoint = "http://127.0.0.1:$MOTO_PORT"

[[clouds.accounts.regions.flavours]]
name = "c6i.xlarge"
arch = "x86_64"
cores = 4
memory_gib = 8
disk_gib = 40
hourly_price = 0.17

[[clouds.accounts.regions.images]]
id = "img-openeuler-2403-x86"
arch = "x86_64"
os = "openEuler 24.03 LTS"
TOML

pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  deploy/pg.sh stop bench-cloud >/dev/null 2>&1 || true
}
trap cleanup EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; return 1; }

results=$work/results.txt
: >"$results"
for run in $(seq "$RUNS"); do
  "$pg_bin/psql" -X -q "$server_url" -c "DROP DATABASE IF EXISTS fleetyard_cloud WITH (FORCE)" \
    -c "CREATE DATABASE fleetyard_cloud"
  db_url=${server_url%/*}/fleetyard_cloud
  MOTO_EC2_LOAD_DEFAULT_AMIS=false "$python_bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$work/moto.log" 2>&1 &
  moto=$!
  wait_port "$MOTO_PORT"
  FLEETYARD_DATABASE_URL=$db_url FLEETYARD_JWT_SECRET=$secret FLEETYARD_LOG_FILTER=warn "$bin/fleetyard" migrate
  "$bin/fleetyard-cloudgen" setup --database-url "$db_url" --jwt-secret "$secret" --out "$work/token.txt"
  FLEETYARD_CONFIG=$work/fleetyard.toml FLEETYARD_DATABASE_URL=$db_url FLEETYARD_JWT_SECRET=$secret \
    FLEETYARD_LISTEN=$LISTEN FLEETYARD_LOG_FILTER=warn "$bin/fleetyard" serve 2>"$work/server.log" &
  server=$!
  "$bin/fleetyard-cloud-booter" --moto "http://127.0.0.1:$MOTO_PORT" 2>"$work/booter.log" &
  booter=$!
  pids=("$moto" "$server" "$booter")
  wait_port "${LISTEN##*:}"

  line=$("$bin/fleetyard-cloudgen" burst --server "http://$LISTEN" --token "$work/token.txt" \
    --database-url "$db_url" --requests "$REQUESTS")
  echo "run $run fleetyard: $line" | tee -a "$results" >&2
  kill "$booter" "$server"
  wait "$booter" "$server" 2>/dev/null || true
  line=$("$bin/fleetyard-cloudgen" baseline-burst --moto "http://127.0.0.1:$MOTO_PORT" --requests "$REQUESTS")
  echo "run $run baseline: $line" | tee -a "$results" >&2
  line=$(FLEETYARD_DATABASE_URL=$db_url FLEETYARD_JWT_SECRET=$secret FLEETYARD_LOG_FILTER=warn \
    "$bin/fleetyard-cloudgen" reconcile --config "$work/fleetyard.toml" --database-url "$db_url" \
    --jwt-secret "$secret" --moto "http://127.0.0.1:$MOTO_PORT" --instances "$INSTANCES")
  echo "run $run reconcile: $line" | tee -a "$results" >&2
  kill "$moto"
  wait "$moto" 2>/dev/null || true
done
echo
cat "$results"
