#!/usr/bin/env bash
# Web UIs for tests/test_browser.py besides the one the host pins: each version of the PyPI
# package comfyui-frontend-package named in scripts/frontends.txt (or as arguments) is
# pip-installed, without dependencies, into $SONIC_FRONTENDS_DIR/<version>/ (default
# .build/frontends/). The host venvs stay as they are: the test starts ComfyUI with
# `--front-end-root <that folder>/comfyui_frontend_package/static` when SONIC_FRONTEND names
# a version. Idempotent (a present version is kept). Called by scripts/run_tests.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${SONIC_BUILD_DIR:-$ROOT/.build}
FRONTENDS=${SONIC_FRONTENDS_DIR:-$BUILD/frontends}
PY=${SONIC_PYTHON:-python3}
[ -x "$BUILD/venv/bin/python" ] && PY=$BUILD/venv/bin/python

say() { printf '[setup_frontends] %s\n' "$*" >&2; }
if [ $# -gt 0 ]; then versions=("$@"); else mapfile -t versions < <(grep -v '^#' "$ROOT/scripts/frontends.txt" | awk 'NF {print $1}'); fi
for v in "${versions[@]}"; do
    dest=$FRONTENDS/$v
    [ -f "$dest/comfyui_frontend_package/static/index.html" ] && continue
    say "installing comfyui-frontend-package==$v into $dest"
    rm -rf "$dest.tmp"
    "$PY" -m pip install -q --no-deps --target "$dest.tmp" "comfyui-frontend-package==$v" \
        || { say "ERROR: pip could not install comfyui-frontend-package==$v (is PyPI reachable?)"; exit 1; }
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
done
