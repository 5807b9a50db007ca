"""Audio encoding speed, side by side in one run: a 10 s clip -> CLAP embedding with the
pack's encoder and with the `msclap` package's own Cnn14 audio encoder on the same
weights and threads, at batch 1 and 16, as a real-time factor (seconds of audio per
second of wall time); the machine's measured fp32 convolution throughput as the ceiling;
decoding and resampling in their own column.

    .build/venv/bin/python bench/audio_encode.py [--reps 3] [--batch 16] [--profile]

--profile adds the share of the pack's encode time (batch 8) per kind of operator.
The front end line says where the log-mel runs and in which precision (float64 on the
CPU, float32 on the device otherwise) and its time per clip in both precisions.

Targets: the pack >= 1.5x faster than msclap, >= 60% of the measured conv throughput;
>= 1000x real time on a GPU (bench/gpu_check.py).
"""
import argparse
import time

import torch
from common import boot, device_name, profile_shares, summary, synchronize


def msclap_encoder(clap_path):
    """msclap's AudioEncoder (Cnn14 + projection) with the official file's audio tower."""
    from msclap.models.clap import AudioEncoder

    from sonic_diffusion.safe_load import load_weights_file

    enc = AudioEncoder("Cnn14", d_in=2048, d_out=1024, sample_rate=44100, window_size=1024, hop_size=320,
                       mel_bins=64, fmin=50, fmax=14000, classes_num=527)
    sd, _ = load_weights_file(clap_path)
    sd = sd.get("model", sd)
    tower = {k[len("audio_encoder."):]: v for k, v in sd.items() if k.startswith("audio_encoder.")}
    missing, _ = enc.load_state_dict(tower, strict=False)
    # The AudioSet head (fc_audioset) is not part of the embedding path.
    assert all("fc_audioset" in k for k in missing), missing
    return enc.eval()


def conv_throughput(reps=3):
    """GFLOP/s of fp32 3x3 convolutions shaped like Cnn14's middle blocks, this machine, these threads."""
    rates = []
    for cin, cout, h, w in ((64, 128, 688, 32), (128, 256, 344, 16), (256, 512, 172, 8)):
        x = torch.randn(4, cin, h, w)
        wt = torch.randn(cout, cin, 3, 3)
        torch.nn.functional.conv2d(x, wt, padding=1)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.nn.functional.conv2d(x, wt, padding=1)
        rates.append(2 * 4 * cout * cin * 9 * h * w * reps / (time.perf_counter() - t0) / 1e9)
    return max(rates)


def timed(fn, reps, device):
    times = []
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def frontend_line(encoder, clip, device, reps):
    """Where the log-mel front end runs, in which precision, and its time per clip."""
    from sonic_diffusion.clap_frontend import frontend_dtype

    frontend = encoder.model.frontend
    x = clip.to(device)
    ms = {}
    with torch.no_grad():
        for dtype in (frontend_dtype(device), torch.float32):
            frontend(x, dtype=dtype)  # warm-up
            ms[dtype] = 1e3 * summary(timed(lambda d=dtype: frontend(x, dtype=d), reps, device))[0]
    chosen = frontend_dtype(device)
    return (f"front end (log-mel): on {device_name(device)} in {chosen}, {ms[chosen]:.1f} ms per clip"
            + (f" (float32 there: {ms[torch.float32]:.1f} ms)" if chosen != torch.float32 else "")
            + "; no CPU round trip")


def batch_rows(encoder, peer, clip, batch, gflop, ceiling, reps, device):
    """Per-clip time and real-time factor of the pack's encode (and msclap's on the CPU) at
    one batch size, interleaved repetitions."""
    clips = clip.expand(batch, -1).contiguous()
    variants = {"pack": lambda: encoder.encode(clips)}
    if peer is not None:
        variants["msclap"] = lambda: peer(clips)
    times = {k: [] for k in variants}
    with torch.no_grad():
        for _ in range(reps):  # interleaved
            for k, fn in variants.items():
                times[k] += timed(fn, 1, device)
    for k, v in times.items():
        med, q1, q3 = summary(v)
        rate = gflop * batch / med
        extra = f"  {100 * rate / ceiling:.0f}% of conv throughput" if ceiling and k == "pack" else ""
        print(f"batch {batch:3d} {k:7s}: {1e3 * med / batch:8.1f} ms per clip  real-time factor "
              f"{10.0 * batch / med:6.1f}x (IQR {10.0 * batch / q3:.1f}..{10.0 * batch / q1:.1f})  "
              f"{rate:.0f} GFLOP/s{extra}")
    if peer is not None:
        ratios = sorted(a / b for a, b in zip(times["msclap"], times["pack"]))
        print(f"batch {batch:3d}: the pack is {summary(ratios)[0]:.2f}x msclap's speed (target >= 1.5x)")


def input_times(path, reps):
    """(decode seconds, resample + window seconds, the prepared clip) of one file, on the CPU."""
    from sonic_diffusion.audio_decode import decode_audio
    from sonic_diffusion.audio_prep import prepare_clip

    cpu = torch.device("cpu")
    decode = summary(timed(lambda: decode_audio(path), reps, cpu))[0]
    wave, rate = decode_audio(path)
    prep = summary(timed(lambda: prepare_clip(wave, rate), reps, cpu))[0]
    return decode, prep, prepare_clip(wave, rate)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    fs = boot()
    from torch.utils.flop_counter import FlopCounterMode

    from sonic_diffusion.clap import ClapEncoder, load_clap_file

    decode, prep, clip = input_times(fs.audio("noise_stereo_48k_10s_f32.wav"), args.reps)
    encoder = ClapEncoder(load_clap_file(fs.clap()))
    device = encoder.patcher.load_device
    encoder.encode(clip)  # warm-up and load
    with FlopCounterMode(display=False) as counter:
        encoder.encode(clip)
    gflop = counter.get_total_flops() / 1e9
    peer = msclap_encoder(fs.clap()) if device.type == "cpu" else None
    if peer is not None:
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(peer(clip)[0], encoder.encode(clip), dim=-1)
    ceiling = conv_throughput() if device.type == "cpu" else None
    print(f"device: {device_name(device)} ({encoder.compute_dtype}), {torch.get_num_threads()} threads; one 10 s clip "
          f"= {gflop:.1f} GFLOP; decode (48 kHz stereo wav) {1e3 * decode:.0f} ms, resample + 10 s window "
          f"{1e3 * prep:.0f} ms" + (f"; msclap agrees: cos {float(cos.min()):.6f}" if peer is not None else ""))
    print(frontend_line(encoder, clip, device, args.reps))
    if ceiling:
        print(f"measured fp32 3x3 conv throughput (Cnn14 shapes): {ceiling:.0f} GFLOP/s")
    for batch in (1, args.batch):
        batch_rows(encoder, peer, clip, batch, gflop, ceiling, args.reps, device)
    if args.profile:
        clips = clip.expand(8, -1).contiguous()
        with torch.no_grad():
            shares, ms = profile_shares(lambda: encoder.encode(clips))
        print(f"profile of the pack's encode, batch 8 (self CPU {ms:.0f} ms): "
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items()))


if __name__ == "__main__":
    main()
