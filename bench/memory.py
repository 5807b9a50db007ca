"""Memory the pack adds: the adapter (weights + per-sampling cache) on top of a UNet
step, and the CLAP encoder. CPU: resident set size (RSS) deltas and the process peak;
GPU (when available): allocator peaks.

    .build/venv/bin/python bench/memory.py
"""
import copy
import gc
import resource

import psutil
import torch

from common import boot, load_adapter, load_unet

MIB = 2 ** 20


def rss():
    gc.collect()
    return psutil.Process().memory_info().rss


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    fs = boot()
    import comfy.model_management as mm
    import nodes

    gpu = torch.cuda.is_available()
    dtype = torch.float16 if gpu else torch.float32
    device = mm.get_torch_device()
    size = 512 if gpu else 256
    model = load_unet(fs, dtype=dtype)
    mm.load_models_gpu([model])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g).to(device, dtype)
    t = torch.full((2,), 500, device=device)
    ctx = torch.randn(2, 77, 768, generator=g).to(device, dtype)

    def step(m):
        to = copy.copy(m.model_options["transformer_options"])
        to.update(cond_or_uncond=[1, 0], sigmas=t.float())
        with torch.no_grad():
            m.model.diffusion_model(x, timesteps=t, context=ctx, transformer_options=to)

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    step(model)
    base_rss, base_gpu = rss(), torch.cuda.max_memory_allocated() if gpu else 0
    adapter = load_adapter(fs)
    after_load = rss()
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=g), dim=-1)
    patched = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"].execute(
        model=model, sonic_adapter=adapter, audio_embeds=e, strength=1.0, start_percent=0.0,
        end_percent=1.0).result[0]
    mm.load_models_gpu([patched])
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    step(patched)
    after_step = rss()
    gpu_peak = torch.cuda.max_memory_allocated() if gpu else 0
    weights = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    print(f"device: {torch.cuda.get_device_name() if gpu else 'cpu'}, {dtype}, {size}x{size}, batch 2")
    print(f"adapter weights (fp32, projector + 10 blocks): {weights / MIB:.1f} MiB")
    print(f"RSS: UNet step {base_rss / MIB:.0f} MiB; + adapter loaded {(after_load - base_rss) / MIB:+.0f} MiB; "
          f"+ patched step (cache built) {(after_step - base_rss) / MIB:+.0f} MiB")
    if gpu:
        print(f"GPU allocator peak: plain step {base_gpu / MIB:.0f} MiB, patched step {gpu_peak / MIB:.0f} MiB "
              f"({(gpu_peak - base_gpu) / MIB:+.0f} MiB)")

    from sonic_diffusion.audio_prep import prepare_clip
    from sonic_diffusion.clap import ClapEncoder, load_clap_file

    before = rss()
    encoder = ClapEncoder(load_clap_file(fs.clap()))
    loaded = rss()
    encoder.encode(prepare_clip(torch.zeros(1, 44100 * 10), 44100))
    print(f"CLAP encoder: + {(loaded - before) / MIB:.0f} MiB loaded, + {(rss() - before) / MIB:.0f} MiB after "
          f"one encode; process peak RSS {peak_rss() / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
