"""Per-module mutation scores for scripts/mutation.sh (run in the work copy, after `mutmut run`).

Usage: mutation_report.py MODULE_PATH SECONDS OUT_DIR
Appends one line to OUT_DIR/scores.tsv and writes each surviving mutant's diff to
OUT_DIR/survivors/<module>.txt. A timeout counts as killed (the mutant hangs the code);
"no tests" (no selected test reaches the function) counts as surviving."""
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code


def main(module, seconds, out_dir):
    meta = json.loads((Path("mutants") / (module + ".meta")).read_text())
    status = {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}
    counts = Counter(status.values())
    total = len(status)
    killed = counts["killed"] + counts["timeout"]
    score = 100.0 * killed / total if total else 100.0
    out = Path(out_dir)
    (out / "survivors").mkdir(parents=True, exist_ok=True)
    with open(out / "scores.tsv", "a") as f:
        f.write(f"{module}\t{killed}\t{total}\t{score:.1f}\t{counts['survived']}\t{counts['no tests']}"
                f"\t{counts['timeout']}\t{seconds}\n")
    survivors = [name for name, s in status.items() if s not in ("killed", "timeout")]
    lines = []
    for name in survivors:
        lines.append(f"# {name}: {status[name]}")
        lines.append(get_diff_for_mutant(name, path=Path(module)))
    (out / "survivors" / (module.replace("/", ".") + ".txt")).write_text("\n".join(lines) + "\n")
    print(f"{module}: {killed}/{total} killed ({score:.1f}%), {len(survivors)} left, {seconds} s")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
