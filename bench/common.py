"""Shared set-up for the benchmarks: a booted host, generated weights, timing helpers."""
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import comfy_host  # noqa: E402


def boot():
    comfy_host.boot(Path(tempfile.mkdtemp(prefix="sonic-bench-")))
    from sonic_diffusion.fixtures import FixtureSet

    return FixtureSet(comfy_host.BUILD / "fixtures")


def load_adapter(fs):
    from sonic_diffusion import checkpoints
    from sonic_diffusion.runtime import SonicAdapter
    from sonic_diffusion.safe_load import load_weights_file

    proj, _ = load_weights_file(fs.projector())
    gates, _ = load_weights_file(fs.gates())
    model = checkpoints.build_adapter_model(checkpoints.projector_state(proj), checkpoints.gates_state(gates))
    return SonicAdapter(model, name="bench")


def load_unet(fs, dtype=None, device=None):
    import comfy.sd

    opts = {"dtype": dtype} if dtype is not None else {}
    model, *_ = comfy.sd.load_checkpoint_guess_config(str(fs.full_checkpoint(clip=False, vae=False)),
                                                      output_vae=False, output_clip=False, model_options=opts)
    return model


def summary(samples):
    s = sorted(samples)
    q1, q3 = s[len(s) // 4], s[(3 * len(s)) // 4]
    return statistics.median(s), q1, q3


def interleaved(variants, reps, sync=lambda: None):
    """Times each variant once per round, rounds interleaved, so drift hits all alike."""
    times = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times
