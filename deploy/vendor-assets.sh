#!/usr/bin/env bash
# deploy/vendor-assets.sh [--check]: the front-end files the /ui/ pages use, vendored from npm
# into api/assets/vendor/ (embedded in the binary, so the pages work without network access).
#   - No argument: fetches each pinned package (npm pack, checked against the sha512 integrity
#     pinned below), copies the listed files over the committed ones unchanged and rewrites
#     api/assets/vendor/SOURCES.md (each file, its package@version and sha256).
#   - --check: fetches the same way and fails, listing them, if any committed file (SOURCES.md
#     included) differs from what the pinned packages give, or if vendor/ holds files not
#     listed here. Changes nothing.
# To update a package: change its version and integrity here (npm view PACKAGE@VERSION
# dist.integrity), run this script, review the diff, run the tests.
# Needs npm and network access to the npm registry.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
vendor=$repo/api/assets/vendor

mode=write
case ${1:-} in
  '') ;;
  --check) mode=check ;;
  *) echo "usage: vendor-assets.sh [--check]" >&2; exit 2 ;;
esac

uplot=uplot@1.6.32
# package@version -> the integrity of its tarball as published (npm view uplot@1.6.32 dist.integrity).
declare -A integrity=(
  [$uplot]=sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==
)
# package@version, file in its tarball, where it goes under api/assets/vendor.
files=(
  "$uplot package/dist/uPlot.iife.min.js uplot/uPlot.iife.min.js"
  "$uplot package/dist/uPlot.min.css uplot/uPlot.min.css"
  "$uplot package/LICENSE uplot/LICENSE"
)

command -v npm >/dev/null 2>&1 || "$here/need.sh" npm npm >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Fetch and unpack each package into $tmp/pkg/<package@version>/.
declare -A license
for spec in "${!integrity[@]}"; do
  mkdir -p "$tmp/pkg/$spec"
  json=$(cd "$tmp" && npm pack "$spec" --json --pack-destination "$tmp" 2>"$tmp/npm.err") \
    || { cat "$tmp/npm.err" >&2; echo "vendor-assets.sh: npm pack $spec failed" >&2; exit 1; }
  read -r tarball got < <(node -e 'const [p] = JSON.parse(process.argv[1]); console.log(p.filename, p.integrity)' "$json")
  if [[ $got != "${integrity[$spec]}" ]]; then
    echo "vendor-assets.sh: $spec: the registry's tarball has integrity $got, pinned ${integrity[$spec]}" >&2
    exit 1
  fi
  tar -xzf "$tmp/$tarball" -C "$tmp/pkg/$spec" --no-same-owner --no-same-permissions
  license[$spec]=$(node -p 'require(process.argv[1]).license || "see LICENSE"' "$tmp/pkg/$spec/package/package.json")
done

# Stage what vendor/ should hold, SOURCES.md included, in $tmp/out.
mkdir -p "$tmp/out"
{
  echo '# Vendored front-end files'
  echo
  echo 'Copied unchanged from npm packages by `deploy/vendor-assets.sh`, which pins each package'
  echo "version and its tarball's sha512 integrity; this file is written by it too. The files are"
  echo 'embedded in the `fleetyard` binary, so the pages work without network access.'
  echo 'Check them with `deploy/vendor-assets.sh --check`; to update, change the pins in the script'
  echo 'and run it.'
  echo
  echo '| File | Package | From | sha256 |'
  echo '|---|---|---|---|'
} >"$tmp/out/SOURCES.md"
for entry in "${files[@]}"; do
  read -r spec from to <<<"$entry"
  src=$tmp/pkg/$spec/$from
  [[ -f $src ]] || { echo "vendor-assets.sh: $spec has no $from" >&2; exit 1; }
  mkdir -p "$(dirname "$tmp/out/$to")"
  cp "$src" "$tmp/out/$to"
  sum=$(sha256sum "$src" | cut -d' ' -f1)
  echo "| \`$to\` | \`$spec\` (${license[$spec]}) | \`${from#package/}\` | \`$sum\` |" >>"$tmp/out/SOURCES.md"
done

if [[ $mode == write ]]; then
  (cd "$tmp/out" && find . -type f) | while read -r f; do
    mkdir -p "$(dirname "$vendor/$f")"
    cp "$tmp/out/$f" "$vendor/$f"
  done
  echo "vendor-assets.sh: wrote $(cd "$tmp/out" && find . -type f | wc -l) files into $vendor" >&2
  exit 0
fi

bad=0
while read -r f; do
  if [[ ! -f $vendor/$f ]]; then
    echo "vendor-assets.sh: missing: api/assets/vendor/${f#./}" >&2; bad=1
  elif ! cmp -s "$tmp/out/$f" "$vendor/$f"; then
    echo "vendor-assets.sh: differs from the pinned package: api/assets/vendor/${f#./}" >&2; bad=1
  fi
done < <(cd "$tmp/out" && find . -type f | sort)
while read -r f; do
  [[ -f $tmp/out/$f ]] || { echo "vendor-assets.sh: not from a pinned package: api/assets/vendor/${f#./}" >&2; bad=1; }
done < <([[ -d $vendor ]] && cd "$vendor" && find . -type f | sort)
if (( bad )); then
  echo "vendor-assets.sh: api/assets/vendor does not match the pinned packages (deploy/vendor-assets.sh rewrites it)" >&2
  exit 1
fi
echo "vendor-assets.sh: api/assets/vendor matches the pinned packages" >&2
