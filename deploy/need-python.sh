#!/usr/bin/env bash
# deploy/need-python.sh: makes the Python venv the cloud fakes and vector tools run in,
# at $REPO/.local/venv, with deploy/cloud-fakes/requirements.txt installed, and prints
# its bin directory as the last line of stdout:
#     bin=$(deploy/need-python.sh) && "$bin/python" deploy/cloud-fakes/selftest.py
# Fast when nothing changed: pip only runs when requirements.txt's sha256 differs from
# the one stored in .local/venv/.requirements.sha256. Everything but that line goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
venv=$repo/.local/venv
req=$repo/deploy/cloud-fakes/requirements.txt
stamp=$venv/.requirements.sha256
want=$(sha256sum "$req" | cut -d' ' -f1)

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
