#!/usr/bin/env bash
# tests/contract/generate-client.sh SPEC DIR: generates the Python client for SPEC (the committed
# openapi/openapi.json) with openapi-python-client from the contract venv, as the importable
# package DIR/fleetyard_api_client (no packaging metadata: put DIR on PYTHONPATH). Any error or
# warning from the generator fails it: a client with pieces missing would test less than it says.
#     tests/contract/generate-client.sh openapi/openapi.json "$tmp" && PYTHONPATH="$tmp" ...
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
spec=${1:?usage: generate-client.sh SPEC DIR}
out=${2:?usage: generate-client.sh SPEC DIR}
bin=$("$repo/deploy/need-python.sh" tests/contract/requirements.txt)
mkdir -p "$out"
rm -rf "$out/fleetyard_api_client"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The venv's bin first: the generator runs ruff from PATH on what it wrote.
if ! PATH="$bin:$PATH" "$bin/openapi-python-client" generate --path "$spec" --meta none \
      --output-path "$out/fleetyard_api_client" >"$log" 2>&1; then
  cat "$log" >&2
  echo "generate-client.sh: openapi-python-client could not generate a client from $spec" >&2
  exit 1
fi
if grep -q 'Warning(s) encountered' "$log"; then
  cat "$log" >&2
  echo "generate-client.sh: openapi-python-client left pieces of the client out (warnings above)" >&2
  exit 1
fi
[[ -f $out/fleetyard_api_client/client.py ]] || { cat "$log" >&2; echo "generate-client.sh: no client.py in $out/fleetyard_api_client" >&2; exit 1; }
