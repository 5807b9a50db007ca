#!/usr/bin/env bash
# Static checks with the ecosystem's tools: `comfy-test lint` (ComfyUI node-pack rules) and
# `ruff check` (rules in pyproject.toml [tool.ruff]).
#   bash scripts/lint.sh [VENV]     VENV: a virtual environment to use (default: .build/lint-venv);
#                                   comfy-test and ruff are pip-installed into it when missing.
# comfy-test has no per-file exemptions, so it runs on a copy of the pack without tests/: the
# tests hold plain-torch reference implementations (nn.LayerNorm, nn.Conv2d...) on purpose, to
# check the pack's comfy.ops code against; they are not node code and are never loaded by ComfyUI.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.build/lint-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip --version >/dev/null
[ -x "$VENV/bin/comfy-test" ] || "$VENV/bin/python" -m pip install -q comfy-test
[ -x "$VENV/bin/ruff" ] || "$VENV/bin/python" -m pip install -q ruff

status=0
echo "== ruff check"
"$VENV/bin/ruff" check "$ROOT" || status=1

echo "== comfy-test lint (pack without tests/)"
COPY="$(mktemp -d "${TMPDIR:-/tmp}/sonic-lint-XXXXXX")"
trap 'rm -rf "$COPY"' EXIT
tar -C "$ROOT" --exclude=./.build --exclude=./.build-hosts --exclude=./demo_output --exclude=./.git --exclude=./tests --exclude='*/__pycache__' -cf - . \
    | tar -C "$COPY" -xf -
"$VENV/bin/comfy-test" lint "$COPY" || status=1
exit $status
