#!/usr/bin/env bash
# deploy/need-chromium.sh: installs what the browser tests (tests/browser) run, each only if
# missing, through deploy/need.sh (apt-get as root or via sudo, non-interactive, on stderr):
#   - Debian's chromium, /usr/bin/chromium; playwright-core drives it and never downloads a
#     browser of its own (deploy/need-node-modules.sh);
#   - a CJK font (WenQuanYi Micro Hei, ~5 MB), so zh-CN pages show text rather than boxes in
#     screenshots: chromium without recommends brings only DejaVu;
#   - node and npm. playwright-core wants node 20 or newer; Debian bookworm's nodejs is 18, so
#     an older node is refused here with a message rather than failing later in the tests.
# Silent and quick when all is there:
#     deploy/need-chromium.sh && modules=$(deploy/need-node-modules.sh tests/browser)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/need.sh" /usr/bin/chromium chromium
# need.sh takes any path that passes -x as "already there"; the font's directory does.
"$here/need.sh" /usr/share/fonts/truetype/wqy fonts-wqy-microhei
"$here/need.sh" node nodejs
"$here/need.sh" npm npm
major=$(node -p 'process.versions.node.split(".")[0]')
if (( major < 20 )); then
  echo "need-chromium.sh: node $(node --version) is too old for playwright-core (needs 20 or newer);" \
       "install nodejs 20 or newer (e.g. from NodeSource)" >&2
  exit 1
fi
