"""Shared parts of the combination tests: one loaded SD1.5 stand-in, the adapter,
conditioning, a stand-in GLIGEN file built with ComfyUI's own gligen module, and a
middle_patch that shifts the stream and records what it saw."""
import comfy.gligen
import comfy.utils
import torch

import nodes
from sonic_diffusion.blocks import ADAPTER_BLOCKS

# The SD1.x transformer blocks in ComfyUI's transformer_index order, with widths.
SD15_TRANSFORMERS = ([("input_blocks", b, w) for b, w in ((1, 320), (2, 320), (4, 640), (5, 640), (7, 1280), (8, 1280))]
                     + [("middle_block", 1, 1280)]
                     + [("output_blocks", b, {1: 1280, 2: 640, 3: 320}[b // 3]) for b in range(3, 12)])


def gligen_state_dict(seed=0, alpha=1.5):
    """A GLIGEN (position) checkpoint for SD1.x with random weights: ComfyUI's own
    GatedSelfAttentionDense per transformer block plus its PositionNet. comfy.ops
    layers skip torch's init, so every tensor is filled here."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for container, index, width in SD15_TRANSFORMERS:
        fuser = comfy.gligen.GatedSelfAttentionDense(width, 768, 8, width // 8)
        prefix = f"model.diffusion_model.{container}.{index}.1.transformer_blocks.0.fuser."
        for name, p in fuser.state_dict().items():
            sd[prefix + name] = _fill(name, p, g, alpha)
    net = comfy.gligen.PositionNet(768, 768)
    for name, p in net.state_dict().items():
        sd["position_net." + name] = _fill(name, p, g, alpha)
    return sd


def _fill(name, p, g, alpha):
    if name.startswith("alpha"):
        return torch.full(p.shape, alpha)
    if "norm" in name:
        return torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape)
    if p.ndim >= 2:
        return torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5
    return torch.randn(p.shape, generator=g) * 0.02


def write_gligen(path, seed=0):
    comfy.utils.save_torch_file({k: v.to(torch.float16).contiguous() for k, v in gligen_state_dict(seed).items()},
                                str(path))
    return path


class ShiftStream:
    """Another pack's middle_patch: x -> a * x + b * pattern, a channel-varying offset
    (LayerNorm would cancel a plain scale and shift), recording its input per adapter block."""

    def __init__(self, a=1.1, b=0.5):
        self.a, self.b = a, b
        self.seen = {blk.comfy_block: [] for blk in ADAPTER_BLOCKS}

    def __call__(self, x, extra_options):
        key = extra_options.get("block")
        if key in self.seen and extra_options.get("block_index", 0) == 0:
            self.seen[key].append(x.detach().clone())
        pattern = torch.cos(torch.arange(x.shape[-1], device=x.device, dtype=x.dtype) * 0.37)
        return x * self.a + self.b * pattern

    def __deepcopy__(self, memo):
        return self


def ksample(model, positive, negative, seed=3, steps=2, cfg=5.0, size=64):
    """The KSampler node itself on an empty latent; returns the latent samples."""
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    (out,) = nodes.KSampler().sample(model, seed, steps, cfg, "euler", "normal", positive, negative, latent)
    return out["samples"]


def apply_adapter(model, adapter, embeds, **kw):
    node = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
    args = dict(strength=1.0, start_percent=0.0, end_percent=1.0)
    args.update(kw)
    return node.execute(model=model, sonic_adapter=adapter, audio_embeds=embeds, **args).result[0]
