#!/usr/bin/env bash
# tests/contract/run-local.sh: the contract run by hand, without cargo: a private PostgreSQL,
# a fresh database, a `fleetyard serve` from an already-built binary, the seed, then Schemathesis
# (every role) and the generated-client walkthrough. The Rust tests (tests/tests/api/contract.rs)
# do the same inside `deploy/test`.
#
#   tests/contract/run-local.sh [schemathesis|walkthrough|both]      (default: both)
#
# Environment:
#   FLEETYARD_BIN          the server binary (default: target/debug/fleetyard; copy it elsewhere
#                          first if someone else is rebuilding it)
#   CONTRACT_PG_NAME/PORT  the PostgreSQL cluster (deploy/pg.sh; default: schemathesis, 54350).
#                          Started if needed, and stopped at the end unless CONTRACT_KEEP_PG=1.
#   CONTRACT_PORT          the server's port (default 18090)
#   CONTRACT_REPORT_DIR    where Schemathesis' reports go (default: a new temporary directory)
#   CONTRACT_ARGS          extra arguments for schemathesis.py (e.g. "--roles admin --max-examples 8")
#   CONTRACT_SPEC          the document the walkthrough's client is generated from (default: the
#                          committed openapi/openapi.json)
#
# The server runs with background schedules off (the seed and the walkthrough run the liveness
# sweep through the API), login throttling raised to 100,000 failures (Schemathesis sends many
# failed logins from one address; the default 30 per 15 min would turn login into 429s), every
# network refused for SSH checks, and an HTTP proxy that goes nowhere, so nothing it is told by the
# fuzzer (webhook URLs, SSH hosts) ever makes it send traffic off this machine.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
what=${1:-both}
case $what in schemathesis | walkthrough | both) ;; *) echo "usage: $0 [schemathesis|walkthrough|both]" >&2; exit 2 ;; esac

bin=${FLEETYARD_BIN:-$repo/target/debug/fleetyard}
[[ -x $bin ]] || { echo "run-local.sh: no server binary at $bin" >&2; exit 2; }
pg_name=${CONTRACT_PG_NAME:-schemathesis}
pg_port=${CONTRACT_PG_PORT:-54350}
port=${CONTRACT_PORT:-18090}
base=http://127.0.0.1:$port

pybin=$(deploy/need-python.sh tests/contract/requirements.txt)
url=$(deploy/pg.sh start "$pg_name" "$pg_port")
work=$(mktemp -d /tmp/fleetyard-contract.XXXXXX)
server_pid=
cleanup() {
  if [[ -n $server_pid ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [[ -z ${CONTRACT_KEEP_PG:-} ]]; then deploy/pg.sh stop "$pg_name" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

psql=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)/psql
db=fleetyard_contract
"$psql" -X -q "$url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
export FLEETYARD_DATABASE_URL=${url%/*}/$db
export FLEETYARD_JWT_SECRET=contract-run-signing-secret-of-at-least-32-bytes
export FLEETYARD_AUTH__DATA_KEY=contract-run-data-key-of-at-least-32-bytes
"$bin" migrate >/dev/null
admin_password=contract-admin-password
echo "$admin_password" | "$bin" admin create-admin --email ops@contract.example --password-stdin >/dev/null

FLEETYARD_LISTEN=127.0.0.1:$port FLEETYARD_WORKERS=2 FLEETYARD_LOG_FILTER=warn \
  FLEETYARD_SCHEDULES__ENABLED=false \
  FLEETYARD_AUTH__LOGIN_FAILURES_PER_ADDRESS=100000 FLEETYARD_AUTH__LOGIN_FAILURES_PER_ACCOUNT=100000 \
  FLEETYARD_SSH_REFUSED_NETWORKS='[0.0.0.0/0, ::/0]' \
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9 NO_PROXY= \
  "$bin" serve >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
  curl -fs "$base/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "$base/readyz" >/dev/null || { cat "$work/server.log" >&2; echo "run-local.sh: the server did not start" >&2; exit 1; }

status=0
if [[ $what != walkthrough ]]; then
  "$pybin/python" tests/contract/seed.py --base-url "$base" --admin-email ops@contract.example \
    --admin-password "$admin_password" >"$work/seed.json"
  report=${CONTRACT_REPORT_DIR:-$(mktemp -d /tmp/fleetyard-schemathesis.XXXXXX)}
  # shellcheck disable=SC2086 # CONTRACT_ARGS is split on purpose
  "$pybin/python" tests/contract/schemathesis.py --base-url "$base" --seed-file "$work/seed.json" \
    --report-dir "$report" --python-bin "$pybin" ${CONTRACT_ARGS:-} || status=1
fi
if [[ $what != schemathesis ]]; then
  spec=${CONTRACT_SPEC:-openapi/openapi.json}
  if tests/contract/generate-client.sh "$spec" "$work/client"; then
    PYTHONPATH="$work/client" "$pybin/python" tests/contract/walkthrough.py --base-url "$base" \
      --admin-email ops@contract.example --admin-password "$admin_password" || status=1
  else
    echo "walkthrough: FAILED at step: generating the client from $spec" >&2
    status=1
  fi
fi
if grep -q 'ERROR' "$work/server.log"; then
  echo "run-local.sh: the server logged errors (first 20):" >&2
  grep 'ERROR' "$work/server.log" | head -n 20 >&2
fi
if grep -q 'panicked' "$work/server.log"; then
  echo "run-local.sh: the server panicked:" >&2
  grep -A5 'panicked' "$work/server.log" >&2
  status=1
fi
exit "$status"
