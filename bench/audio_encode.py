"""Audio encoding speed: a 10 s clip -> CLAP embedding, single and batch 16, as a
real-time factor (seconds of audio encoded per second of wall time).

    .build/venv/bin/python bench/audio_encode.py [--reps 3]

Targets: >= 50x real time on the 2-core CPU, >= 1000x on a GPU. Also prints the
FLOP-counted cost of one clip, which bounds what a given machine can reach.
"""
import argparse
import time

import torch

from common import boot, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    fs = boot()
    from sonic_diffusion.audio_decode import decode_audio
    from sonic_diffusion.audio_prep import prepare_clip
    from sonic_diffusion.clap import ClapEncoder, load_clap_file

    encoder = ClapEncoder(load_clap_file(fs.clap()))
    wave, rate = decode_audio(fs.audio("noise_stereo_48k_10s_f32.wav"))
    t0 = time.perf_counter()
    clip = prepare_clip(wave, rate)
    prep = time.perf_counter() - t0
    encoder.encode(clip)  # warm-up and load
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        encoder.encode(clip)
    gflop = counter.get_total_flops() / 1e9
    device = encoder.patcher.load_device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} "
          f"({encoder.compute_dtype}), one 10 s clip = {gflop:.1f} GFLOP; preprocessing {1e3 * prep:.0f} ms")
    for batch in (1, args.batch):
        clips = clip.expand(batch, -1).contiguous()
        times = []
        for _ in range(args.reps):
            sync()
            t0 = time.perf_counter()
            encoder.encode(clips)
            sync()
            times.append(time.perf_counter() - t0)
        med, q1, q3 = summary(times)
        print(f"batch {batch:3d}: {1e3 * med / batch:8.1f} ms per clip  real-time factor {10.0 * batch / med:7.1f}x  "
              f"(IQR {10.0 * batch / q3:.1f}x..{10.0 * batch / q1:.1f}x)  {gflop * batch / med:.0f} GFLOP/s")
    print("targets: >= 50x real time on a 2-core CPU, >= 1000x on a GPU")


if __name__ == "__main__":
    main()
