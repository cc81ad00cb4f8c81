#!/usr/bin/env bash
# Proves the agent's dependency graph compiles no C or assembly for riscv64 and loongarch64,
# without building anything (no target standard library is needed): `cargo tree` resolves the
# graph for each target, with and without every optional feature.
set -euo pipefail
cd "$(dirname "$0")/../.."
bad='^(cc|cmake|ring|aws-lc-sys|aws-lc-rs|openssl-sys|openssl-src|boring-sys|bindgen|pkg-config|nasm-rs) '
for target in riscv64gc-unknown-linux-gnu loongarch64-unknown-linux-gnu; do
  for features in "" --all-features; do
    found=$(cargo tree -p fleetyard-agent $features -e normal,build --target "$target" --prefix none --format '{p}' \
      | grep -E "$bad" || true)
    if [[ -n $found ]]; then
      echo "fleetyard-agent pulls in C for $target ${features:-(default features)}:" >&2
      echo "$found" >&2
      exit 1
    fi
  done
done
echo "fleetyard-agent: no C in its dependency graph for riscv64 or loongarch64"
