"""P3: one denoising step of the pack in ComfyUI against the reference implementation built
the authors' way (a diffusers UNet2DConditionModel whose transformer blocks carry gated
audio attention, testing/references.py's diffusers_reference), same weights, fp32, same
threads, interleaved repetitions, in one run.

    .build/venv/bin/python bench/peer_step.py [--size 256] [--reps 5] [--threads N] [--profile]

Variants: each side plain and with the adapter; the pack with ComfyUI's default CPU
attention and with PyTorch SDPA (what `--use-pytorch-cross-attention` selects; diffusers
uses SDPA). Prints medians, the per-repetition ratio (median and IQR) and the outputs'
largest difference. Target: the pack >= 1.3x faster per step. --profile adds, for the authors'
UNet and the pack (SDPA), the share of one step's CPU time per kind of operator (where the
time goes).
"""
import argparse

import torch
from common import boot, interleaved, load_adapter, load_unet, profile_shares, summary


def comfy_runner(model, x, t, ctx, attention):
    """testing.unet.unet_runner under the attention function named `attention`."""
    import comfy.ldm.modules.attention as attn

    from testing.unet import unet_runner

    chosen = {"default": attn.optimized_attention, "sdpa": attn.attention_pytorch}[attention]
    call = unet_runner(model, x, t, ctx)

    def run():
        saved = attn.optimized_attention
        attn.optimized_attention = chosen  # looked up at call time by ComfyUI's and the pack's attention
        try:
            return call()
        finally:
            attn.optimized_attention = saved
    return run


def _print_results(variants, outs, args):
    """Timings side by side, the speed-ups over the authors' code, and (--profile) op shares."""
    diff = max(float((outs["pack + adapter (default attn)"] - outs["diffusers + adapter (authors)"]).abs().max()),
               float((outs["pack + adapter (SDPA)"] - outs["diffusers + adapter (authors)"]).abs().max()))
    times = interleaved(variants, args.reps)
    print(f"fp32, {args.size}x{args.size}, batch 2, {torch.get_num_threads()} threads, {args.reps} interleaved "
          f"repetitions; pack vs authors' output: max |diff| {diff:.1e}")
    for k, v in times.items():
        med, q1, q3 = summary(v)
        print(f"  {k:32s} median {1e3 * med:8.0f} ms  IQR [{1e3 * q1:.0f}, {1e3 * q3:.0f}]")
    for ours in ("pack + adapter (default attn)", "pack + adapter (SDPA)"):
        ratios = [a / b for a, b in zip(times["diffusers + adapter (authors)"], times[ours])]
        med, q1, q3 = summary(ratios)
        print(f"speed-up of {ours} over the authors' implementation: {med:.2f}x (IQR {q1:.2f}..{q3:.2f}); "
              f"target >= 1.3x")
    if args.profile:
        for name in ("diffusers + adapter (authors)", "pack + adapter (SDPA)"):
            shares, ms = profile_shares(variants[name])
            print(f"profile of {name} (self CPU {ms:.0f} ms): "
                  + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fs = boot(cpu=True)
    from testing.references import diffusers_reference
    from testing.unet import apply_adapter

    model = load_unet(fs)
    adapter = load_adapter(fs)
    g = torch.Generator().manual_seed(0)
    lat = args.size // 8
    x1 = torch.randn(1, 4, lat, lat, generator=g)
    x = torch.cat([x1, x1])
    ctx = torch.randn(2, 77, 768, generator=g)
    t = torch.full((2,), 500)
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=g), dim=-1)
    patched = apply_adapter(model, adapter, e)
    # The reference's rows: [uncond with the null audio, cond with the audio], as the pack's.
    tokens = {"tokens": torch.cat([adapter.null_tokens(), adapter.project(e)])}
    ref_plain, ref_sonic = diffusers_reference(fs, tokens)

    def diffusers_runner(unet):
        def run():
            with torch.no_grad():
                return unet(x, t, encoder_hidden_states=ctx).sample
        return run

    variants = {
        "diffusers plain": diffusers_runner(ref_plain),
        "diffusers + adapter (authors)": diffusers_runner(ref_sonic),
        "pack plain (default attn)": comfy_runner(model, x, t, ctx, "default"),
        "pack + adapter (default attn)": comfy_runner(patched, x, t, ctx, "default"),
        "pack plain (SDPA)": comfy_runner(model, x, t, ctx, "sdpa"),
        "pack + adapter (SDPA)": comfy_runner(patched, x, t, ctx, "sdpa"),
    }
    outs = {k: fn() for k, fn in variants.items()}  # warm-up; builds the pack's per-sampling cache
    _print_results(variants, outs, args)


if __name__ == "__main__":
    main()
