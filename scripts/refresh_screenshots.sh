#!/usr/bin/env bash
# Refreshes the README's pictures from the browser test (the test run itself writes them to a
# temp folder, so `bash scripts/run_tests.sh` leaves the checkout clean): each workflow's
# screenshot becomes workflows/<name>.png with its graph embedded (scripts/build_workflow_pngs.py:
# drag it onto ComfyUI's canvas to load the workflow); the help panel goes to docs/screenshots/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${SONIC_BUILD_DIR:-$ROOT/.build}
env -u SONIC_COMFYUI_DIR bash "$ROOT/scripts/setup_host.sh"
bash "$ROOT/scripts/setup_browser.sh"
cd "$ROOT"
shots=$(mktemp -d)
trap 'rm -rf "$shots"' EXIT
SONIC_SCREENSHOT_DIR=$shots env -u SONIC_COMFYUI_DIR "$BUILD/venv/bin/python" -m pytest \
    tests/test_browser.py -q -rs -k "loads_in_the_page or help_pages" "$@"
cp "$shots/help_page.png" "$ROOT/docs/screenshots/help_page.png"
env -u SONIC_COMFYUI_DIR "$BUILD/venv/bin/python" "$ROOT/scripts/build_workflow_pngs.py" --screenshots "$shots"
