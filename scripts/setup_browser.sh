#!/usr/bin/env bash
# Chromium for tests/test_browser.py only (the demo never needs it): Debian's chromium drives
# the real web UI headless (browser downloads are not possible). Installed with apt-get when
# missing and we are root or have password-less sudo; otherwise the browser test is skipped
# with its reason (and under CI=true that skip is a failure). SONIC_CHROMIUM names another
# binary. Called by scripts/run_tests.sh; the stamp lives in $SONIC_BUILD_DIR (default .build/).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${SONIC_BUILD_DIR:-$ROOT/.build}

say() { printf '[setup_browser] %s\n' "$*" >&2; }
stamp_ok() { [ -f "$BUILD/.stamp-$1" ] && [ "$(cat "$BUILD/.stamp-$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" > "$BUILD/.stamp-$1"; }

mkdir -p "$BUILD"
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
