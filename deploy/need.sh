#!/usr/bin/env bash
# deploy/need.sh PROGRAM PACKAGE: installs Debian's PACKAGE unless PROGRAM is already there.
# Used by deploy/test for what the tests run for real (OpenSSH's server, ...).
set -euo pipefail
program=$1 package=$2
if [[ -x $program ]] || command -v "$program" >/dev/null 2>&1; then
  exit 0
fi
echo "need.sh: installing $package (for $program)" >&2
if [[ $(id -u) -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "need.sh: $program is missing; install the $package package (as root: apt-get install $package)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# A package's post-install scripts may try to start its service; there may be no init to do
# it (containers, CI), and the tests start their own instances anyway.
"${sudo[@]}" apt-get install -y --no-install-recommends "$package" >&2 \
  || { "${sudo[@]}" apt-get update >&2 && "${sudo[@]}" apt-get install -y --no-install-recommends "$package" >&2; }
[[ -x $program ]] || command -v "$program" >/dev/null 2>&1 || { echo "need.sh: $package did not provide $program" >&2; exit 1; }
