#!/usr/bin/env bash
# deploy/need-node-modules.sh DIR: installs DIR's npm packages exactly as DIR/package-lock.json
# pins them (npm ci) and prints the absolute path of DIR/node_modules as the last line of stdout:
#     modules=$(deploy/need-node-modules.sh tests/browser)
# DIR is absolute, or relative to the current directory or to the repository.
# Fast when nothing changed: npm only runs when package-lock.json's sha256 differs from the one
# stored in DIR/node_modules/.lock.sha256 (npm ci empties node_modules, stamp included, first).
# Never downloads a browser: the browser tests drive Debian's chromium (deploy/need-chromium.sh).
# Everything but that last line goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
[[ $# -eq 1 ]] || { echo "usage: need-node-modules.sh DIR" >&2; exit 2; }
dir=$1
if [[ $dir != /* && ! -d $dir ]]; then dir=$repo/$dir; fi
[[ -f $dir/package-lock.json ]] || { echo "need-node-modules.sh: no package-lock.json in $dir" >&2; exit 2; }
dir=$(cd "$dir" && pwd)
modules=$dir/node_modules
stamp=$modules/.lock.sha256
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)

# Test processes running side by side may all ask at once: one installs, the others wait for it.
# The lock lives in .local (ignored by git), one per DIR.
mkdir -p "$repo/.local"
if command -v flock >/dev/null 2>&1; then
  exec 9>>"$repo/.local/node_modules-$(printf '%s' "$dir" | sha256sum | cut -c1-16).lock"
  flock -w 900 9 || { echo "need-node-modules.sh: timed out waiting for another install into $modules" >&2; exit 1; }
fi

if [[ -d $modules && -f $stamp && $(cat "$stamp") == "$want" ]]; then
  echo "$modules"
  exit 0
fi

command -v node >/dev/null 2>&1 || "$here/need.sh" node nodejs >&2
command -v npm >/dev/null 2>&1 || "$here/need.sh" npm npm >&2

echo "need-node-modules.sh: npm ci in $dir" >&2
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm_config_update_notifier=false
(cd "$dir" && npm ci --no-audit --no-fund) >&2
echo "$want" >"$stamp"
echo "$modules"
