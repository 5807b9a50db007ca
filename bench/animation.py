"""Audio-reactive animation cost: embeddings per second for a 3-minute clip at 8 fps,
and the share of the total time spent on encoding vs sampling.

    .build/venv/bin/python bench/animation.py [--frames 8] [--size 256] [--steps 25]

Kept small for a shared CPU: the windows of the first --frames frames of the 3-minute
clip are built from the whole clip and encoded (MS-CLAP stand-in weights, same cost as
the real ones); one UNet call (cond + uncond, the adapter applied) is timed at --size.
Totals for all 1,440 frames are extrapolated from those rates (per-frame work does not
depend on the frame). The VAE decode is not counted. Long clips (2,160 frames at 12 fps,
frames per minute and peak memory of the whole encode and of windowed sampling under
AnimateDiff-Evolved's context options): bench/animation_long.py.
"""
import argparse
import math
import time

import torch
from common import boot, load_adapter, load_unet, summary

SECONDS, FPS, RATE = 180.0, 8.0, 44100


def song(seconds=SECONDS, rate=RATE):
    """A stereo clip whose content changes over time (not a constant tone)."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(seconds * rate)) / rate
    tone = torch.sin(2 * math.pi * (110 + 3 * t) * t) * (0.3 + 0.2 * torch.sin(0.5 * t))
    return torch.stack([tone, tone]) + 0.05 * torch.randn(2, t.shape[0], generator=g)


def time_encoding(encoder, wave, frames, hop_s):
    from sonic_diffusion import animation

    mono = animation.mono_of(wave)
    step = hop_s if hop_s else 1.0 / FPS
    centers = [k * step for k in range(frames)]
    t0 = time.perf_counter()
    animation.encode_windows(encoder, mono, RATE, centers, 10.0)
    return (time.perf_counter() - t0) / frames  # seconds per encoded window


def time_unet_call(fs, size, reps):
    import comfy.model_management as mm

    from testing.unet import apply_adapter, unet_runner

    model = load_unet(fs)
    adapter = load_adapter(fs)
    e = torch.nn.functional.normalize(torch.randn(1, 1024), dim=-1)
    patched = apply_adapter(model, adapter, e)
    mm.load_models_gpu([model, adapter.patcher])
    lat = size // 8
    x = torch.randn(2, 4, lat, lat)
    t = torch.full((2,), 500.0)
    ctx = torch.randn(2, 77, 768)
    run = unet_runner(patched, x, t, ctx)
    times = []
    for _ in range(reps + 1):  # the first call builds the adapter's per-sampling cache
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return summary(times[1:])[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=8, help="frames actually encoded (the rest is extrapolated)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    fs = boot()
    from sonic_diffusion.clap import ClapEncoder, load_clap_file

    encoder = ClapEncoder(load_clap_file(fs.clap()))
    wave = song()
    total_frames = int(SECONDS * FPS)
    encoder.encode(torch.zeros(1, 441000))  # load and warm up
    per_window = time_encoding(encoder, wave, args.frames, 0.0)
    per_window_hop = time_encoding(encoder, wave, args.frames, 0.5)
    hop_windows = int(SECONDS / 0.5) + 1
    print(f"3-minute clip at {FPS:g} fps = {total_frames} frames; encoder batch {encoder.batch_size}, "
          f"{args.frames} windows timed")
    print(f"encoding: {1 / per_window:.2f} embeddings/s  ({per_window:.2f} s per frame; all frames "
          f"{total_frames * per_window / 60:.1f} min)")
    print(f"hop 0.5 s: {hop_windows} windows, {total_frames / (hop_windows * per_window_hop):.2f} frame "
          f"embeddings/s ({hop_windows * per_window_hop / 60:.1f} min)")
    call = time_unet_call(fs, args.size, args.reps)
    per_frame_sampling = call * args.steps
    enc_share = per_window / (per_window + per_frame_sampling)
    print(f"sampling: one UNet call (cond+uncond, adapter on) at {args.size}x{args.size} {call:.2f} s; "
          f"{args.steps} steps = {per_frame_sampling:.1f} s per frame")
    print(f"share of total time (hop 0): encoding {100 * enc_share:.1f}%, sampling {100 * (1 - enc_share):.1f}%")


if __name__ == "__main__":
    main()
