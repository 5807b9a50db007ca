#!/usr/bin/env bash
# Refreshes the README's pictures in docs/screenshots/ from the browser test (the test run
# itself writes them to a temp folder, so `bash scripts/run_tests.sh` leaves the checkout clean).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${SONIC_BUILD_DIR:-$ROOT/.build}
env -u SONIC_COMFYUI_DIR bash "$ROOT/scripts/setup_host.sh"
bash "$ROOT/scripts/setup_browser.sh"
cd "$ROOT"
SONIC_SCREENSHOT_DIR=$ROOT/docs/screenshots exec env -u SONIC_COMFYUI_DIR "$BUILD/venv/bin/python" -m pytest \
    tests/test_browser.py -q -rs -k "loads_in_the_page or help_pages" "$@"
