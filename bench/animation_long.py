"""Long clips: a 3-minute clip at 12 fps (2,160 frames) encoded by Audio Encode Frames
(Sonic) with a hop, and sampled window by window under AnimateDiff-Evolved's context
options with the motion module and per-frame audio (CPU). Reports frames per minute and
the peak resident memory above the start of each phase (sampled every 10 ms).

    .build/venv/bin/python bench/animation_long.py [--hop 0.5] [--sample-frames 32] [--size 64]

The encode is whole (every frame of the 3 minutes); sampling runs --sample-frames frames
(windows of 16, overlap 4, one step, cond + uncond) at --size; its frames per minute hold
for any length, as each window costs the same. Needs ../shared/packs/ComfyUI-AnimateDiff-Evolved
for the sampling part.
"""
import argparse
import gc
import threading
import time

import psutil
import torch
from animation import song
from common import boot, comfy_host, load_adapter, load_unet

SECONDS, FPS, RATE = 180.0, 12.0, 44100
MIB = 2 ** 20


class PeakRss:
    """Peak RSS above the level at entry, sampled in a thread."""

    def __init__(self, every_s=0.01):
        self.every_s = every_s
        self.peak = 0

    def __enter__(self):
        gc.collect()
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(self.every_s)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss - self.base)


def bench_encode(fs, hop_s):
    from sonic_diffusion.animation import encode_frames
    from sonic_diffusion.clap import ClapEncoder, load_clap_file

    encoder = ClapEncoder(load_clap_file(fs.clap()))
    encoder.encode(torch.zeros(1, 441000))  # load and warm up
    wave = song(SECONDS, RATE)
    with PeakRss() as mem:
        t0 = time.perf_counter()
        embeds = encode_frames(encoder, wave, RATE, FPS, hop_s=hop_s)
        seconds = time.perf_counter() - t0
    frames = embeds.shape[0]
    print(f"encode: {SECONDS:g} s clip at {FPS:g} fps = {frames} frames, hop {hop_s:g} s, encoder batch "
          f"{encoder.batch_size}: {seconds:.1f} s = {60 * frames / seconds:.0f} frames/min; peak RSS above the "
          f"start {mem.peak / MIB:.0f} MiB (the clip itself: {wave.numel() * 4 / MIB:.0f} MiB)")
    return embeds


def bench_sampling(fs, embeds, frames, size):
    import comfy.sample
    import comfy.samplers

    import nodes

    if comfy_host.beside_pack_module("ComfyUI-AnimateDiff-Evolved") is None:
        print("sampling: skipped (AnimateDiff-Evolved is not in ../shared/packs)")
        return
    from comfy_host import Host

    name = Host().link_model("animatediff_models", fs.motion_module())

    def call(node_id, **inputs):
        node = nodes.NODE_CLASS_MAPPINGS[node_id]()
        return getattr(node, node.FUNCTION)(**inputs)[0]

    model = load_unet(fs)
    patched = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"].execute(
        model=model, sonic_adapter=load_adapter(fs), audio_embeds=embeds[:frames], strength=1.0,
        start_percent=0.0, end_percent=1.0).result[0]
    motion = call("ADE_ApplyAnimateDiffModelSimple", motion_model=call("ADE_LoadAnimateDiffModel", model_name=name))
    context = call("ADE_StandardStaticContextOptions", context_length=16, context_overlap=4)
    evolved = call("ADE_UseEvolvedSampling", model=patched, beta_schedule="autoselect", m_models=motion,
                   context_options=context)
    cond = [[torch.zeros(1, 77, 768), {}]]
    guider = comfy.samplers.CFGGuider(evolved)
    guider.set_conds(cond, cond)
    guider.set_cfg(5.0)
    latent = torch.zeros(frames, 4, size // 8, size // 8)
    sigmas = comfy.samplers.calculate_sigmas(evolved.get_model_object("model_sampling"), "normal", 1)
    noise = comfy.sample.prepare_noise(latent, 0)
    run = lambda: guider.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas,
                                disable_pbar=True, seed=0)
    run()  # loads the UNet and the motion module
    with PeakRss() as mem:
        t0 = time.perf_counter()
        run()
        seconds = time.perf_counter() - t0
    print(f"sampling: {frames} frames at {size}x{size}, windows of 16 (overlap 4), 1 step, cond + uncond, "
          f"motion module + per-frame audio: {seconds:.1f} s = {60 * frames / seconds:.1f} frames/min per step; "
          f"peak RSS above the loaded models {mem.peak / MIB:.0f} MiB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hop", type=float, default=0.5, help="hop_seconds of the encode (0: one window per frame)")
    ap.add_argument("--sample-frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--skip-sampling", action="store_true")
    args = ap.parse_args()
    fs = boot()
    embeds = bench_encode(fs, args.hop)
    if not args.skip_sampling:
        bench_sampling(fs, embeds, args.sample_frames, args.size)


if __name__ == "__main__":
    main()
