#!/usr/bin/env bash
# Static checks with the ecosystem's tools: `comfy-test lint` (ComfyUI node-pack rules),
# `ruff check` (rules in pyproject.toml [tool.ruff]) and the Registry's own checks from
# comfy-cli (`comfy node validate`, which must print no warning, and `comfy node pack`, whose
# archive scripts/check_archive.py lists and checks against .comfyignore).
#   bash scripts/lint.sh [VENV]     VENV: a virtual environment to use (default: .build/lint-venv);
#                                   comfy-test and ruff are pip-installed into it when missing.
# comfy-test has no per-file exemptions, so it runs on a copy of the pack without tests/ and
# testing/: the tests and their shared references hold plain-torch reference implementations (nn.LayerNorm, nn.Conv2d...) on purpose, to
# check the pack's comfy.ops code against; they are not node code and are never loaded by ComfyUI.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.build/lint-venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip --version >/dev/null
[ -x "$VENV/bin/comfy-test" ] || "$VENV/bin/python" -m pip install -q comfy-test
# ruff pinned: a newer ruff adds rules to the selected families and would fail a clean checkout.
[ -x "$VENV/bin/ruff" ] || "$VENV/bin/python" -m pip install -q "ruff==0.17.6"
COMFY_CLI_VERSION=1.23.0
"$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('comfy-cli') != sys.argv[1])" \
    "$COMFY_CLI_VERSION" 2>/dev/null || "$VENV/bin/python" -m pip install -q "comfy-cli==$COMFY_CLI_VERSION"

status=0
echo "== ruff check"
"$VENV/bin/ruff" check "$ROOT" || status=1

echo "== comfy-test lint (pack without tests/ and testing/)"
COPY="$(mktemp -d "${TMPDIR:-/tmp}/sonic-lint-XXXXXX")"
trap 'rm -rf "$COPY"' EXIT
tar -C "$ROOT" --exclude=./.build --exclude=./.build-hosts --exclude=./demo_output --exclude=./.git --exclude=./tests --exclude=./testing --exclude='*/__pycache__' -cf - . \
    | tar -C "$COPY" -xf -
"$VENV/bin/comfy-test" lint "$COPY" || status=1

# comfy-cli runs ruff's S102/S307/E702 over the whole checkout and exits 0 on a finding, so its
# output is read: anything but a clean pass fails. --skip-prompt: no telemetry question in CI.
echo "== comfy node validate (comfy-cli $COMFY_CLI_VERSION)"
out=$(cd "$ROOT" && PATH="$VENV/bin:$PATH" "$VENV/bin/comfy" --skip-prompt node validate 2>&1) || status=1
printf '%s\n' "$out"
if printf '%s' "$out" | grep -qi "warning\|error" || ! printf '%s' "$out" | grep -q "All validation checks passed"; then
    echo "comfy node validate did not pass cleanly"; status=1
fi

echo "== comfy node pack: the published archive"
rm -f "$ROOT/node.zip"
if (cd "$ROOT" && "$VENV/bin/comfy" --skip-prompt node pack >/dev/null 2>&1) && [ -f "$ROOT/node.zip" ]; then
    mv "$ROOT/node.zip" "$COPY.zip"
    "$VENV/bin/python" "$ROOT/scripts/check_archive.py" "$COPY.zip" || status=1
    rm -f "$COPY.zip"
else
    rm -f "$ROOT/node.zip"
    echo "comfy node pack failed"; status=1
fi
exit $status
