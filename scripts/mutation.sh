#!/usr/bin/env bash
# Mutation testing of the math and audio code with mutmut 3 (not in CI; docs/mutation.md).
#   bash scripts/mutation.sh                 every module below
#   bash scripts/mutation.sh mixing guidance  only these (names as in MODULES)
# mutmut is installed with pip --target into $SONIC_MUTMUT_LIB (default $SONIC_BUILD_DIR/mutmut-lib)
# and run by the test host's Python ($SONIC_BUILD_DIR/venv, built by scripts/setup_host.sh).
# Work happens in a temporary copy of the checkout (tracked and untracked, non-ignored files),
# removed at the end: the checkout stays clean. Scores and surviving mutants' diffs go to
# $SONIC_MUTATION_OUT (default $SONIC_BUILD_DIR/mutation).
#
# How it stays fast: tests/conftest.py boots ComfyUI once per pytest process (seconds), so
# mutmut runs with process_isolation=fork: one `pytest` in the parent (ComfyUI booted once,
# the stats run records which test reaches which function), then one fork per mutant that
# re-runs only the selected tests reaching the mutated function, fastest first, stopping at
# the first failure. Each module gets its own list of fast test files below (TESTS), so a
# slow graph test elsewhere in the suite never runs for it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export SONIC_BUILD_DIR=${SONIC_BUILD_DIR:-$ROOT/.build}
export SONIC_FIXTURE_DIR=${SONIC_FIXTURE_DIR:-$SONIC_BUILD_DIR/fixtures}
PY=${SONIC_PYTHON:-$SONIC_BUILD_DIR/venv/bin/python}
MUTMUT_LIB=${SONIC_MUTMUT_LIB:-$SONIC_BUILD_DIR/mutmut-lib}
OUT=${SONIC_MUTATION_OUT:-$SONIC_BUILD_DIR/mutation}
JOBS=${SONIC_MUTATION_JOBS:-2}
MUTMUT_VERSION=3.8.1  # scripts/mutation_names.py patches its trampoline module by name

say() { printf '[mutation] %s\n' "$*" >&2; }

# Module (the name on the command line) -> file mutated and the tests selected for it.
declare -A MODULES=(
    [patch]=sonic_diffusion/patch.py
    [blocks]=sonic_diffusion/blocks.py
    [batching]=sonic_diffusion/batching.py
    [mixing]=sonic_diffusion/mixing.py
    [guidance]=sonic_diffusion/guidance.py
    [animation]=sonic_diffusion/animation.py
    [audio_prep]=sonic_diffusion/audio_prep.py
    [resample]=sonic_diffusion/resample.py
    [audio_decode]=sonic_diffusion/audio_decode.py
    [schedule]=sonic_diffusion/edit/schedule.py
    [injection]=sonic_diffusion/edit/injection.py
)
ORDER=(batching mixing blocks schedule guidance animation audio_prep resample injection patch audio_decode)
# Test files (and pytest options such as -k) per module, one argument per line.
declare -A TESTS=(
    [patch]="tests/test_patch_units.py"
    [blocks]="tests/test_blocks_guidance_units.py
tests/test_block_weights.py
-k
presets or malformed or non_finite or table or factor or parse or output_block"
    [batching]="tests/test_batching_mixing_units.py"
    [mixing]="tests/test_batching_mixing_units.py
tests/test_audio_encode_inputs.py
-k
mix or ratio or lerp or pair or weighted or parse"
    [guidance]="tests/test_blocks_guidance_units.py"
    [animation]="tests/test_animation.py
tests/test_animation_units.py
-k
not node_is_interruptible and not frames_equal and not workflow and not five_minute"
    [audio_prep]="tests/test_audio_prep.py
tests/test_audio_rate_rule.py
tests/test_audio_units.py
-k
not decode and not fixture_clips"
    [resample]="tests/test_audio_prep.py
tests/test_audio_units.py
-k
resample or auto or tiled or crops or windows or units"
    [audio_decode]="tests/test_audio_decode_units.py"
    [schedule]="tests/test_edit_schedule_units.py
tests/test_edit.py
-k
diffusers or every_step_count or injection_step_counts or schedule_units"
    [injection]="tests/test_injection_units.py
tests/test_edit.py
-k
attention_injection_matches or feature_injection_matches or area_chunks or units"
)

selected=("$@")
[ ${#selected[@]} -eq 0 ] && selected=("${ORDER[@]}")
for name in "${selected[@]}"; do
    [ -n "${MODULES[$name]:-}" ] || { say "unknown module $name; choose from: ${ORDER[*]}"; exit 2; }
done
[ -x "$PY" ] || { say "no test host Python at $PY: run scripts/setup_host.sh first"; exit 2; }

if ! PYTHONPATH=$MUTMUT_LIB "$PY" -c "import mutmut, sys; sys.exit(mutmut.__version__ != '$MUTMUT_VERSION')" 2>/dev/null; then
    say "installing mutmut $MUTMUT_VERSION into $MUTMUT_LIB"
    # Without dependencies first: the host venv's own pytest must stay the one that runs.
    "$PY" -m pip install -q --target "$MUTMUT_LIB" --no-deps "mutmut==$MUTMUT_VERSION"
    "$PY" -m pip install -q --target "$MUTMUT_LIB" "click>=8.4.2" "coverage>=7.3" "libcst>=1.9" \
        "setproctitle>=1.3.7" "textual>=1.0"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sonic-mutation.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && git ls-files -co --exclude-standard -z | tar --null -cf - -T -) | tar -xf - -C "$WORK"
mkdir -p "$OUT"
rm -rf "$OUT/survivors" "$OUT/scores.tsv"
# One thread per forked child: two children share the 2 cores, and OpenMP pools do not survive fork.
export OMP_NUM_THREADS=1
# The plugin (scripts/mutation_names.py) maps ComfyUI's module names to mutmut's.
export PYTHONPATH=$MUTMUT_LIB:$WORK/scripts

started=$(date +%s)
for name in "${selected[@]}"; do
    module=${MODULES[$name]}
    {
        echo "[mutmut]"
        echo "source_paths = sonic_diffusion"
        echo "only_mutate = $module"
        # Everything the tests import, copied beside the mutated package (mutmut runs pytest in mutants/).
        printf 'also_copy =\n    __init__.py\n    nodes\n    scripts\n    testing\n    weights\n    web\n    workflows\n    pyproject.toml\n'
        printf 'pytest_add_cli_args =\n    -p\n    mutation_names\n'
        echo "pytest_add_cli_args_test_selection ="
        while IFS= read -r arg; do echo "    $arg"; done <<< "${TESTS[$name]}"
    } > "$WORK/setup.cfg"
    rm -rf "$WORK/mutants"
    say "$module: $(echo "${TESTS[$name]}" | tr '\n' ' ')"
    t0=$(date +%s)
    (cd "$WORK" && "$PY" -m mutmut run --max-children "$JOBS" > "$OUT/mutmut-$name.log" 2>&1) || {
        say "mutmut failed for $module; see $OUT/mutmut-$name.log"; exit 1; }
    (cd "$WORK" && "$PY" "$WORK/scripts/mutation_report.py" "$module" "$(( $(date +%s) - t0 ))" "$OUT")
done

echo
printf '%-36s %8s %6s %7s %9s %8s %8s %6s\n' module killed total score survived no_tests timeout secs
while IFS=$'\t' read -r module killed total score survived notests timeout secs; do
    printf '%-36s %8s %6s %6s%% %9s %8s %8s %6s\n' "$module" "$killed" "$total" "$score" "$survived" "$notests" "$timeout" "$secs"
done < "$OUT/scores.tsv"
echo "wall time: $(( $(date +%s) - started )) s; surviving mutants: $OUT/survivors/"
