"""What the audio adapter costs per UNet step, next to its FLOP-counted floor.

    .build/venv/bin/python bench/adapter_overhead.py [--reps 15] [--size 256]

CPU: fp32, 256x256, batch 2 (uncond + cond), wall time, interleaved repetitions.
GPU (when CUDA is available): fp16, 512x512, batch 2, summed kernel time from
torch.profiler (wall time at this size is bound by kernel launches).
Variants: plain UNet; our patch (keys/values and folded projections cached once per
sampling); the straightforward patch (the same formula recomputing keys and values
through the adapter's modules at every call), which is what a direct port does.
"""
import argparse
import copy

import torch

from common import boot, interleaved, load_adapter, load_unet, summary


def make_runner(model, x, t, ctx, chunks):
    to = copy.copy(model.model_options["transformer_options"])
    to["cond_or_uncond"] = chunks
    to["sigmas"] = t.float()
    dm = model.model.diffusion_model

    def run():
        with torch.no_grad():
            return dm(x, timesteps=t, context=ctx, transformer_options=to)
    return run


def flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def kernel_time(fn, reps):
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    total = sum(e.self_device_time_total for e in prof.key_averages())
    return total / reps / 1e3  # ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--size", type=int, default=None)
    args = ap.parse_args()
    fs = boot()
    import nodes
    from sonic_diffusion.patch import SonicAudioPatch

    gpu = torch.cuda.is_available()
    size = args.size or (512 if gpu else 256)
    dtype = torch.float16 if gpu else torch.float32
    device = torch.device("cuda") if gpu else torch.device("cpu")
    model = load_unet(fs, dtype=dtype)
    adapter = load_adapter(fs)
    g = torch.Generator().manual_seed(0)
    lat = size // 8
    x = torch.randn(2, 4, lat, lat, generator=g).to(device, dtype)
    t = torch.full((2,), 500, device=device)
    ctx = torch.randn(2, 77, 768, generator=g).to(device, dtype)
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=g), dim=-1)
    apply = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
    patched = apply.execute(model=model, sonic_adapter=adapter, audio_embeds=e, strength=1.0, start_percent=0.0,
                            end_percent=1.0).result[0]
    # The plain formula through the adapter's modules (the patch's training mode).
    naive = SonicAudioPatch(adapter, adapter.project(e), None, differentiable=True).register(model.clone())
    import comfy.model_management as mm

    mm.load_models_gpu([model, adapter.patcher])
    chunks = [1, 0]
    variants = {"plain": make_runner(model, x, t, ctx, chunks),
                "sonic (ours)": make_runner(patched, x, t, ctx, chunks),
                "sonic (straightforward)": make_runner(naive, x, t, ctx, chunks)}
    for fn in variants.values():  # warm-up, and builds our per-sampling cache once
        fn()
    base_flops = flops(variants["plain"])
    ours_flops = flops(variants["sonic (ours)"])
    naive_flops = flops(variants["sonic (straightforward)"])
    print(f"device: {torch.cuda.get_device_name() if gpu else 'cpu'}, {dtype}, {size}x{size}, batch 2 (uncond+cond)")
    print(f"UNet: {base_flops / 2 / 1e9:.1f} GFLOPs per image per step")
    print(f"FLOP-counted floor (adapter per step, K/V excluded): {100 * (ours_flops / base_flops - 1):.2f}%;"
          f" straightforward formula: {100 * (naive_flops / base_flops - 1):.2f}%")
    if gpu:
        ms = {k: kernel_time(v, args.reps) for k, v in variants.items()}
        for k, v in ms.items():
            print(f"{k:26s} kernel time {v:8.3f} ms  overhead {100 * (v / ms['plain'] - 1):6.2f}%")
    else:
        times = interleaved(variants, args.reps)
        med_plain = summary(times["plain"])[0]
        for k, v in times.items():
            med, q1, q3 = summary(v)
            print(f"{k:26s} median {1e3 * med:8.1f} ms  IQR [{1e3 * q1:.1f}, {1e3 * q3:.1f}]  "
                  f"overhead {100 * (med / med_plain - 1):6.2f}%")
        print("target: <= 3.5% on the CPU at 256x256")


if __name__ == "__main__":
    main()
