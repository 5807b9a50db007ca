"""What the audio adapter costs per UNet step, next to its FLOP-counted floor.

    .build/venv/bin/python bench/adapter_overhead.py [--reps 15] [--size 256]

CPU: fp32, 256x256, batch 2 (uncond + cond), wall time, interleaved repetitions.
GPU (when CUDA is available): fp16, 512x512, batch 2, summed kernel time from
torch.profiler (wall time at this size is bound by kernel launches).
Variants: plain UNet; our patch (keys/values and folded projections cached once per
sampling); the straightforward patch (the same formula recomputing keys and values
through the adapter's modules at every call, testing/references.py's module_term),
which is what a direct port does. Each is measured with one audio and with several
distinct audios (the unfolded cached path). Printed: the median and IQR of the
per-repetition ratio, and whether the difference is inside the noise.
"""
import argparse

import torch
from common import boot, interleaved, load_adapter, load_unet, summary


def flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def kernel_time(fn, reps):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
    total = sum(e.self_device_time_total for e in prof.key_averages())
    return total / reps / 1e6  # s


def _report(label, variants, audios, reps, gpu, device):
    """FLOP floor and timed overhead of the adapter variants against the plain UNet."""
    from common import ratio_summary, synchronize

    for fn in variants.values():  # warm-up, and builds our per-sampling cache once
        fn()
    fl = {name: flops(fn) for name, fn in variants.items()}
    floor = 100 * (fl["sonic (ours)"] / fl["plain"] - 1)
    print(f"\n{label}: UNet {fl['plain'] / (2 * audios) / 1e9:.1f} GFLOPs per image "
          f"per step; FLOP-counted floor {floor:.2f}% (straightforward formula "
          f"{100 * (fl['sonic (straightforward)'] / fl['plain'] - 1):.2f}%)")
    if gpu:
        times = {name: [] for name in variants}
        for _ in range(reps):
            for name, fn in variants.items():
                times[name].append(kernel_time(fn, 1))
    else:
        times = interleaved(variants, reps, sync=lambda: synchronize(device))
    for name in ("sonic (ours)", "sonic (straightforward)"):
        med, q1, q3 = ratio_summary(times[name], times["plain"])
        noise = "  (inside the noise: the IQR spans 0)" if q1 <= 0.0 <= q3 else ""
        print(f"  {name:24s} per-repetition overhead median {med:+6.2f}%  IQR [{q1:+.2f}, {q3:+.2f}]%  "
              f"plain step {1e3 * summary(times['plain'])[0]:.0f} ms{noise}")
    med, q1, q3 = ratio_summary(times["sonic (ours)"], times["plain"])
    if q1 <= floor <= q3:
        print(f"  the FLOP floor {floor:.2f}% lies inside the IQR: the measured difference is within the noise")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--audios", type=int, default=3, help="distinct audios of the several-audio variant")
    args = ap.parse_args()
    fs = boot()
    import comfy.model_management as mm
    from common import device_name

    from testing.references import plain_formula_model
    from testing.unet import apply_adapter, unet_runner

    device = mm.get_torch_device()
    gpu = device.type != "cpu"
    size = args.size or (512 if gpu else 256)
    dtype = torch.float16 if gpu else torch.float32
    model = load_unet(fs, dtype=dtype)
    adapter = load_adapter(fs)
    g = torch.Generator().manual_seed(0)
    lat = size // 8
    k = args.audios
    e = torch.nn.functional.normalize(torch.randn(k, 1024, generator=g), dim=-1)
    mm.load_models_gpu([model, adapter.patcher])
    # One audio: batch 2 [uncond, cond]; several: batch 2k, k distinct audios on the cond rows.
    groups = {}
    for label, rows, embeds in (("one audio", 1, e[:1]), (f"{k} audios", k, e)):
        x = torch.randn(2 * rows, 4, lat, lat, generator=g).to(device, dtype)
        t = torch.full((2 * rows,), 500, device=device)
        ctx = torch.randn(2 * rows, 77, 768, generator=g).to(device, dtype)
        groups[label] = {"plain": unet_runner(model, x, t, ctx),
                         "sonic (ours)": unet_runner(apply_adapter(model, adapter, embeds), x, t, ctx),
                         "sonic (straightforward)": unet_runner(plain_formula_model(model, adapter, embeds),
                                                                x, t, ctx)}
    print(f"device: {device_name(device)}, {dtype}, {size}x{size}; {'summed kernel time' if gpu else 'wall time'}, "
          f"{args.reps} interleaved repetitions")
    for label, variants in groups.items():
        _report(label, variants, 1 if label == "one audio" else k, args.reps, gpu, device)
    print("\ntarget: <= 3.5% on the CPU at 256x256 (<= 2.5% on a GPU, bench/gpu_check.py)")


if __name__ == "__main__":
    main()
