"""bench/gpu_check.py --smoke on the CPU, so the GPU script cannot rot: every section runs
(in a subprocess: the script boots its own host) and its JSON holds real results."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_section(tmp_path):
    out = tmp_path / "smoke.json"
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["device"] == "cpu"
    # 1. the half-precision rule held for every case on the device (here: fp16 on the CPU)
    cases = report["exactness"]["cases"]
    assert {(c["variant"], c["audios"], c["rows"]) for c in cases} == {
        (v, a, r) for v in ("pack", "formula") for a in (1, 3) for r in ("uncond", "cond")}
    assert report["exactness"]["ok"], cases
    # 2. P1: timings and the FLOP floor are real numbers; the adapter costs FLOPs
    p1 = report["p1_adapter_overhead"]
    assert p1["plain_ms_median"] > 0 and p1["sonic_ms_median"] > 0 and p1["flop_floor_pct"] > 0
    assert all(math.isfinite(v) for v in p1["overhead_pct_iqr"])
    assert p1["wall_plain_ms_median"] > 0 and p1["wall_sonic_ms_median"] > 0  # wall clock, not only kernels
    assert all(math.isfinite(v) for v in p1["wall_overhead_pct_iqr"])
    # 3. P2: one row per batch, positive real-time factors
    assert [r["batch"] for r in report["p2_audio_encode"]["rows"]] == [1, 2]
    assert all(r["real_time_factor"] > 0 for r in report["p2_audio_encode"]["rows"])
    assert report["p2_audio_encode"]["frontend_dtype"] == "torch.float64"  # the CPU's; float32 on a GPU
    # 4. the CPU has no allocator peak to report, and says so
    assert report["adapter_peak"] == {"tracked": False}
    # 5. both graphs produced finite images of the requested size
    for key in ("audio_to_image", "edit"):
        g = report["graphs"][key]
        assert g["finite"] and g["shape"][1:3] == [64, 64], g
