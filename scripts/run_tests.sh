#!/usr/bin/env bash
# The README's test command. Builds (or reuses) each host with scripts/setup_host.sh, then
# runs these jobs in turn, in-process on the CPU, and prints a summary with their times:
#   comfyui-0.3.75     the whole suite on ComfyUI 0.3.75 ($SONIC_BUILD_DIR, default .build/)
#   no-torchaudio      the pack's audio path on the same host with `torchaudio` unimportable
#                      (tests/conftest.py, SONIC_BLOCK_TORCHAUDIO=1): the audio test files
#                      (tests/test_*audio*.py, tests/test_clap.py) and the registration test
#   <tree name>/browser-<v>  tests/test_browser.py on each further tree with the web UI
#                      comfyui-frontend-package <v> (scripts/setup_frontends.sh installs it, the
#                      server runs it through --front-end-root): by default the newest one in
#                      scripts/frontends.txt. SONIC_BROWSER_FRONTENDS lists others; "host" is the
#                      tree's own pin (1.49.6 on 0.33.0), e.g. the middle frontend, not in CI:
#                        SONIC_BROWSER_FRONTENDS=host SONIC_TEST_JOBS=comfyui-0.33.0/browser-host \
#                          bash scripts/run_tests.sh
#                      (0.3.75's own pin, 1.32.9, runs in the comfyui-0.3.75 jobs.)
#   <tree name>        the host-facing tests on each further ComfyUI tree, with its own venv under
#                      $SONIC_HOSTS_BUILD_DIR/<tree name> (default .build-hosts/): the tree named
#                      by SONIC_COMFYUI_DIR (e.g. your own install) and ../shared/hosts/comfyui-0.33.0
#                      when it exists. Trees are used in place, read only.
# Their venvs build in the background while the 0.3.75 jobs run.
# Arguments go to every pytest run (e.g. -q, -x, -k name). SONIC_TEST_JOBS picks jobs by
# name (space-separated; default: all). Under CI=true a missing further host is an error,
# and tests/conftest.py fails a skipped browser test. Stand-in weights are generated once,
# in $SONIC_BUILD_DIR/fixtures, and shared by all jobs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${SONIC_BUILD_DIR:-$ROOT/.build}
HOSTS_BUILD=${SONIC_HOSTS_BUILD_DIR:-$ROOT/.build-hosts}
SHARED_HOST=$ROOT/../shared/hosts/comfyui-0.33.0
CI_STRICT=false
case "${CI:-}" in true | TRUE | True | 1 | yes) CI_STRICT=true ;; esac

say() { printf '[run_tests] %s\n' "$*" >&2; }

# Further hosts: SONIC_COMFYUI_DIR, then the shared 0.33.0 tree; each once.
extra_hosts=()
add_host() {
    local dir
    dir=$(cd "$1" && pwd -P)
    for known in "${extra_hosts[@]+"${extra_hosts[@]}"}"; do [ "$known" = "$dir" ] && return; done
    extra_hosts+=("$dir")
}
if [ -n "${SONIC_COMFYUI_DIR:-}" ]; then
    [ -d "$SONIC_COMFYUI_DIR" ] || { say "ERROR: SONIC_COMFYUI_DIR=$SONIC_COMFYUI_DIR is not a folder"; exit 2; }
    add_host "$SONIC_COMFYUI_DIR"
fi
[ -d "$SHARED_HOST" ] && add_host "$SHARED_HOST"
if [ ${#extra_hosts[@]} -eq 0 ]; then
    if $CI_STRICT; then
        say "ERROR: CI=true and no second ComfyUI host: $SHARED_HOST is missing and SONIC_COMFYUI_DIR is unset"
        exit 2
    fi
    say "NOTE: only ComfyUI 0.3.75 is tested ($SHARED_HOST is missing; set SONIC_COMFYUI_DIR for another tree)"
fi

# Further hosts run the tests that exercise the host-facing glue (node registration, docs,
# workflow conversion and execution, file paths, generation, the combinations with GLIGEN,
# attn2-replace packs, LoRA and ControlNet, the edit through ComfyUI's sampling): the whole
# suite twice does not fit CI's time on 2 cores. SONIC_HOST_TESTS="tests" runs everything.
# A failure there fails the run; SONIC_STRICT_HOSTS=0 reports it as advisory instead (for
# trying a tree of your own).
read -r -a host_tests <<< "${SONIC_HOST_TESTS:-tests/test_registration.py tests/test_node_docs.py tests/test_workflows.py tests/test_audio_paths.py tests/test_generation.py tests/test_combinations.py tests/test_loudness_curve.py tests/test_edit_comfy.py tests/test_server_memory.py tests/test_inversion_cache.py tests/test_audio_budget.py tests/test_audio_rate_rule.py tests/test_weight_ranges.py tests/test_audio_encoder_interop.py tests/test_audio_rows.py tests/test_guider_roles.py tests/test_regions.py tests/test_patch_state.py tests/test_context_windows.py tests/test_animatediff.py tests/test_frame_timing.py}"
host_advisory=
[ "${SONIC_STRICT_HOSTS:-1}" = 0 ] && host_advisory=yes

wanted() { [ -z "${SONIC_TEST_JOBS:-}" ] || [[ " $SONIC_TEST_JOBS " == *" $1 "* ]]; }
# A further tree is built when its own job or one of its browser jobs is wanted.
wanted_tree() { wanted "$1" || [[ " ${SONIC_TEST_JOBS:-} " == *" $1/browser-"* ]]; }
read -r -a browser_frontends <<< "${SONIC_BROWSER_FRONTENDS:-$(grep -v '^#' "$ROOT/scripts/frontends.txt" | awk 'NF {v = $1} END {print v}')}"

# The 0.3.75 host first. The further hosts' venvs build in the background while the first
# jobs run (pip mostly waits on disk and network, the tests on the CPU); a broken build fails
# the run before that host's job.
t0=$SECONDS
env -u SONIC_COMFYUI_DIR SONIC_BUILD_DIR="$BUILD" bash "$ROOT/scripts/setup_host.sh"
mkdir -p "$HOSTS_BUILD"
build_pid=
build_log=$HOSTS_BUILD/setup.log
if [ ${#extra_hosts[@]} -gt 0 ]; then
    (
        for dir in "${extra_hosts[@]}"; do
            name=$(basename "$dir")
            wanted_tree "$name" || continue
            SONIC_COMFYUI_DIR=$dir SONIC_BUILD_DIR=$HOSTS_BUILD/$name SONIC_TORCH_FROM=$BUILD/venv \
                bash "$ROOT/scripts/setup_host.sh" || exit 1
        done
    ) > "$build_log" 2>&1 &
    build_pid=$!
    say "building the further hosts in the background (log: $build_log)"
fi
bash "$ROOT/scripts/setup_browser.sh"
SONIC_BUILD_DIR="$BUILD" bash "$ROOT/scripts/setup_frontends.sh"
say "0.3.75 host ready in $((SECONDS - t0)) s"

cd "$ROOT"
summary=()
failed=0
# A run must leave the checkout as it found it (tests write only to temp folders).
checkout_state() { git -C "$ROOT" status --porcelain --untracked-files=all 2>/dev/null || true; }
before=$(checkout_state)
run_job() {  # name, then env assignments, then --, then pytest arguments
    local name=$1 start=$SECONDS rc=0
    shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    say "job $name: $*"
    env "${envs[@]}" SONIC_FIXTURE_DIR="$BUILD/fixtures" "$@" || rc=$?
    if [ "$rc" -eq 5 ] && [ -n "${ok5:-}" ]; then rc=0; fi
    summary+=("$(printf '%-18s rc=%-3s %5d s%s' "$name" "$rc" $((SECONDS - start)) "${advisory:+ (advisory)}")")
    [ "$rc" -eq 0 ] || [ -n "${advisory:-}" ] || failed=1
}

if wanted comfyui-0.3.75; then
    # In groups of test files, one process each: models loaded by earlier tests stay in
    # ComfyUI's caches, and one process for the whole suite grew past 19 GB (OOM-killed on a
    # 24 GB machine). Exit code 5 (a -k that selects nothing in a group) is not a failure.
    mapfile -t all_tests < <(cd "$ROOT" && ls tests/test_*.py | LC_ALL=C sort)
    group_size=${SONIC_TEST_GROUP_SIZE:-4}
    for ((i = 0; i < ${#all_tests[@]}; i += group_size)); do
        ok5=yes run_job "comfyui-0.3.75/$((i / group_size + 1))" -u SONIC_COMFYUI_DIR SONIC_BUILD_DIR="$BUILD" -- \
            "$BUILD/venv/bin/python" -m pytest "${all_tests[@]:i:group_size}" -rs "$@"
    done
fi
if wanted no-torchaudio; then
    audio_tests=(tests/test_*audio*.py tests/test_clap.py tests/test_registration.py)
    run_job no-torchaudio -u SONIC_COMFYUI_DIR SONIC_BUILD_DIR="$BUILD" SONIC_BLOCK_TORCHAUDIO=1 -- \
        "$BUILD/venv/bin/python" -m pytest "${audio_tests[@]}" -rs "$@"
fi
if [ -n "$build_pid" ]; then
    wait_start=$SECONDS
    if wait "$build_pid"; then
        say "further hosts ready (waited $((SECONDS - wait_start)) s for their build)"
    else
        grep -v "is ignored: it is neither a file nor a directory" "$build_log" | tail -40 >&2
        say "ERROR: building a further host failed (log above: $build_log); their jobs do not run"
        summary+=("$(printf '%-18s FAILED to build%s' "further hosts" "${host_advisory:+ (advisory)}")")
        [ -n "$host_advisory" ] || failed=1
        extra_hosts=()
    fi
fi
for dir in "${extra_hosts[@]+"${extra_hosts[@]}"}"; do
    name=$(basename "$dir")
    # The tree is read only: bytecode goes to the build folder.
    tree_env=(SONIC_COMFYUI_DIR="$dir" SONIC_BUILD_DIR="$HOSTS_BUILD/$name" PYTHONPYCACHEPREFIX="$HOSTS_BUILD/$name/pycache")
    if wanted "$name"; then
        advisory=$host_advisory run_job "$name" "${tree_env[@]}" -- \
            "$HOSTS_BUILD/$name/venv/bin/python" -m pytest "${host_tests[@]}" -rs "$@"
    fi
    for v in "${browser_frontends[@]+"${browser_frontends[@]}"}"; do
        wanted "$name/browser-$v" || wanted "$name" || continue
        fe=$v
        [ "$v" = host ] && fe=
        advisory=$host_advisory run_job "$name/browser-$v" "${tree_env[@]}" SONIC_FRONTEND="$fe" \
            SONIC_FRONTENDS_DIR="$BUILD/frontends" -- \
            "$HOSTS_BUILD/$name/venv/bin/python" -m pytest tests/test_browser.py -rs "$@"
    done
done

after=$(checkout_state)
if [ "$before" != "$after" ]; then
    say "ERROR: the tests changed the checkout (git status before and after differ):"
    diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") >&2 || true
    summary+=("checkout           changed by the tests")
    failed=1
fi
say "summary (total $((SECONDS - t0)) s; $(df -Ph "$BUILD" | awk 'NR == 2 {print $4}') of disk left):"
for line in "${summary[@]+"${summary[@]}"}"; do say "  $line"; done
exit $failed
