#!/usr/bin/env bash
# The README's test command: builds (or reuses) the host, then runs the whole suite
# against the real ComfyUI 0.3.75 in-process on the CPU.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${SONIC_BUILD_DIR:-$ROOT/.build}
bash "$ROOT/scripts/setup_host.sh"
cd "$ROOT"
exec "$BUILD/venv/bin/python" -m pytest tests "$@"
