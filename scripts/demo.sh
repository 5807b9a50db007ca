#!/usr/bin/env bash
# The README's demo command: builds (or reuses) the host, then runs the audio-to-image
# workflow headless on the real ComfyUI server. Options: see scripts/demo.py --help.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${SONIC_BUILD_DIR:-$ROOT/.build}
bash "$ROOT/scripts/setup_host.sh"
exec "$BUILD/venv/bin/python" "$ROOT/scripts/demo.py" "$@"
