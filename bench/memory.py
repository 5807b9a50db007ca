"""Memory the pack adds: the adapter (weights + per-sampling cache) on top of a UNet
step, and the CLAP encoder. CPU: resident set size (RSS) deltas and the process peak;
GPU (when available): allocator peaks. Also the adapter's resident size once applied to
a fp32 and to a fp16 UNet (its weights follow the UNet's dtype).

    .build/venv/bin/python bench/memory.py
"""
import gc
import resource

import psutil
import torch
from common import boot, device_name, load_adapter, load_unet, peak_allocated, reset_peak

MIB = 2 ** 20


def rss():
    gc.collect()
    return psutil.Process().memory_info().rss


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resident_adapter_mib(fs, adapter, dtype):
    """Bytes of the adapter's weights as they sit once applied to a UNet of `dtype` and
    loaded by ComfyUI (the adapter's weights follow the UNet's dtype)."""
    import comfy.model_management as mm

    from testing.unet import apply_adapter

    unet = load_unet(fs, dtype=dtype)
    e = torch.nn.functional.normalize(torch.randn(1, 1024), dim=-1)
    patched = apply_adapter(unet, adapter, e)
    mm.load_models_gpu([patched])
    # What ComfyUI loads beside the UNet for this model: the patches' own ModelPatchers.
    side = patched.model_patches_models()
    tensors = [t for p in side for t in list(p.model.parameters()) + list(p.model.buffers())]
    size = sum(t.numel() * t.element_size() for t in tensors) / MIB
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors})
    del patched, unet
    mm.unload_all_models()
    gc.collect()
    return size, dtypes


def main():
    fs = boot()
    import comfy.model_management as mm

    device = mm.get_torch_device()
    gpu = device.type != "cpu"
    dtype = torch.float16 if gpu else torch.float32
    size = 512 if gpu else 256
    model = load_unet(fs, dtype=dtype)
    mm.load_models_gpu([model])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g).to(device, dtype)
    t = torch.full((2,), 500, device=device)
    ctx = torch.randn(2, 77, 768, generator=g).to(device, dtype)

    from testing.unet import apply_adapter, unet_call

    reset_peak(device)
    unet_call(model, x, t, ctx)
    base_rss, base_gpu = rss(), peak_allocated(device) or 0
    adapter = load_adapter(fs)
    after_load = rss()
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=g), dim=-1)
    patched = apply_adapter(model, adapter, e)
    mm.load_models_gpu([patched])
    reset_peak(device)
    unet_call(patched, x, t, ctx)
    after_step = rss()
    gpu_peak = peak_allocated(device) or 0
    weights = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    print(f"device: {device_name(device)}, {dtype}, {size}x{size}, batch 2")
    print(f"adapter weights as loaded (projector + 10 blocks): {weights / MIB:.1f} MiB")
    print(f"RSS: UNet step {base_rss / MIB:.0f} MiB; + adapter loaded {(after_load - base_rss) / MIB:+.0f} MiB; "
          f"+ patched step (cache built) {(after_step - base_rss) / MIB:+.0f} MiB")
    if gpu:
        print(f"GPU allocator peak: plain step {base_gpu / MIB:.0f} MiB, patched step {gpu_peak / MIB:.0f} MiB "
              f"({(gpu_peak - base_gpu) / MIB:+.0f} MiB)")

    del patched, model
    mm.unload_all_models()
    for label, unet_dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        size, dtypes = resident_adapter_mib(fs, load_adapter(fs), unet_dtype)
        print(f"adapter resident with a {label} UNet: {size:.1f} MiB ({', '.join(dtypes)})")

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
