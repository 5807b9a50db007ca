"""Shared set-up for the benchmarks: a booted host, generated weights, timing helpers."""
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import comfy_host  # noqa: E402


def accelerator_present():
    """Whether torch sees an accelerator ComfyUI can use; without one ComfyUI needs --cpu.
    The device itself always comes from comfy.model_management."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available())
                or (xpu is not None and xpu.is_available()))


def boot(cpu=None):
    """Boots the host; cpu=None lets ComfyUI pick the device (the CPU when torch sees no accelerator)."""
    comfy_host.boot(Path(tempfile.mkdtemp(prefix="sonic-bench-")),
                    cpu=not accelerator_present() if cpu is None else cpu)
    from testing.fixtures import FixtureSet

    return FixtureSet(comfy_host.FIXTURES)


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
    model, *_ = comfy.sd.load_checkpoint_guess_config(str(fs.full_checkpoint()),
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


def _backend(device):
    """torch.cuda / torch.xpu / torch.mps for an accelerator device, None for the CPU."""
    import torch

    return None if device.type == "cpu" else getattr(torch, device.type, None)


def synchronize(device):
    mod = _backend(device)
    if mod is not None and hasattr(mod, "synchronize"):
        mod.synchronize()


def device_name(device):
    import comfy.model_management as mm

    return mm.get_torch_device_name(device)


def reset_peak(device):
    mod = _backend(device)
    if mod is not None and hasattr(mod, "reset_peak_memory_stats"):
        mod.reset_peak_memory_stats(device)


def peak_allocated(device):
    """The allocator's peak since reset_peak, in bytes; None where torch does not track it (CPU, MPS)."""
    mod = _backend(device)
    if mod is not None and hasattr(mod, "max_memory_allocated"):
        return mod.max_memory_allocated(device)
    return None


def ratio_summary(num, den):
    """Median and IQR of the per-repetition ratios num[i] / den[i] - 1, in percent."""
    return summary([100.0 * (a / b - 1.0) for a, b in zip(num, den)])


def interleaved_measure(variants, reps, measure):
    """Like interleaved(), with `measure(fn)` giving each sample (e.g. profiled kernel time)."""
    values = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            values[name].append(measure(fn))
    return values


def _op_kind(name):
    """A coarse kind of a torch operator name, for profile shares."""
    kinds = (("convolution", ("conv",)), ("pooling", ("pool",)), ("spectrum", ("fft", "stft")),
             ("matmul / linear", ("addmm", "mm", "linear", "matmul", "bmm")),
             ("attention", ("attention", "softmax")), ("normalization", ("norm",)),
             ("activation", ("gelu", "silu", "sigmoid", "tanh", "relu", "clamp")))
    for kind, keys in kinds:
        if any(k in name for k in keys):
            return kind
    return "other (copies, adds, reshapes)"


def profile_shares(run):
    """{kind: share of self CPU time} over one call of run, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    shares = {}
    for ev in prof.key_averages():
        kind = _op_kind(ev.key.lower())
        shares[kind] = shares.get(kind, 0.0) + ev.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}, total / 1e3
