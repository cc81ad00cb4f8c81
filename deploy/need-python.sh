#!/usr/bin/env bash
# deploy/need-python.sh [REQUIREMENTS]: makes a Python venv with REQUIREMENTS installed and
# prints its bin directory as the last line of stdout.
#   - No argument: deploy/cloud-fakes/requirements.txt (the cloud fakes and vector tools),
#     in $REPO/.local/venv:
#         bin=$(deploy/need-python.sh) && "$bin/python" deploy/cloud-fakes/selftest.py
#   - A requirements file (absolute, or relative to here or to the repository): a venv of its own,
#     $REPO/.local/venv-<name of the file's directory>, so tools with clashing pins never
#     share one:
#         bin=$(deploy/need-python.sh tests/contract/requirements.txt)   # .local/venv-contract
# Fast when nothing changed: pip only runs when the requirements file's sha256 differs from
# the one stored in <venv>/.requirements.sha256. Everything but that line goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
default_req=$repo/deploy/cloud-fakes/requirements.txt
req=${1:-$default_req}
if [[ $req != /* && ! -f $req ]]; then req=$repo/$req; fi
[[ -f $req ]] || { echo "need-python.sh: no requirements file $req" >&2; exit 2; }
req=$(cd "$(dirname "$req")" && pwd)/$(basename "$req")
if [[ $req == "$default_req" ]]; then
  venv=$repo/.local/venv
else
  venv=$repo/.local/venv-$(basename "$(dirname "$req")")
fi
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)

# Test processes running side by side may all ask at once: one installs, the others wait for it.
mkdir -p "$repo/.local"
if command -v flock >/dev/null 2>&1; then
  exec 9>>"$venv.lock"
  flock -w 900 9 || { echo "need-python.sh: timed out waiting for another install into $venv" >&2; exit 1; }
fi

if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]] \
   && "$venv/bin/python" -c '' >/dev/null 2>&1; then
  echo "$venv/bin"
  exit 0
fi

python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || "$here/need.sh" python3 python3 >&2

make_venv() { "$python" -m venv "$venv" >&2; }
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  rm -rf "$venv"
  mkdir -p "$repo/.local"
  if ! make_venv; then
    # Debian/Ubuntu split venv/ensurepip into python3-venv (python3.X-venv); ensurepip's
    # directory is what it adds, so hand that to need.sh as the "program" it checks for
    # (need.sh tests it with -x, which a directory passes).
    echo "need-python.sh: '$python -m venv' failed; installing Debian's python3-venv" >&2
    rm -rf "$venv"
    pyver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    "$here/need.sh" "/usr/lib/python$pyver/ensurepip" python3-venv >&2 \
      || "$here/need.sh" "/usr/lib/python$pyver/ensurepip" "python$pyver-venv" >&2
    make_venv
  fi
fi

echo "need-python.sh: installing $req into $venv" >&2
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$req" >&2
echo "$want" >"$stamp"
echo "$venv/bin"
