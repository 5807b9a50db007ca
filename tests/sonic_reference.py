"""Test-side references for the audio patch: the paper's formula written literally
from an adapter's raw parameters, and a spy that records what the production patch
received and returned. Nothing here is imported by the pack."""
import contextlib

import torch
import torch.nn.functional as F

from sonic_diffusion.blocks import ADAPTER_BLOCKS, BLOCKS_BY_COMFY_KEY, HEADS
from sonic_diffusion.patch import SonicAudioPatch, StreamCapture


def plain_term(block_params, h, tokens, scale):
    """scale * tanh(gate) * Attn(LayerNorm(h), tokens) for one block, in float32 with
    plain torch ops (no ComfyUI attention, no folding); returned in h's dtype."""
    p = {k: v.detach().float() for k, v in block_params.items()}
    hf, t = h.float(), tokens.float().to(h.device)
    d = hf.shape[-1]
    y = F.layer_norm(hf, (d,), p["norm_adapter.weight"], p["norm_adapter.bias"], 1e-5)
    q = y @ p["attn_adapter.to_q.weight"].T
    k = t @ p["attn_adapter.to_k.weight"].T
    v = t @ p["attn_adapter.to_v.weight"].T

    def heads(z):
        return z.view(z.shape[0], z.shape[1], HEADS, d // HEADS).transpose(1, 2)

    att = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / (d // HEADS) ** 0.5, dim=-1) @ heads(v)
    att = att.transpose(1, 2).reshape(hf.shape)
    out = att @ p["attn_adapter.to_out.0.weight"].T + p["attn_adapter.to_out.0.bias"]
    return (scale * torch.tanh(p["gate_adapter"]) * out).to(h.dtype)


def block_params(adapter, block):
    return dict(adapter.model.blocks[block.name].named_parameters())


def chunk_tokens(patch, chunks, batch):
    """The token rows the patch must use for a batch laid out as `chunks` (0 = cond, 1 = uncond)."""
    uncond = patch.uncond_tokens if patch.uncond_tokens is not None else patch.adapter.null_tokens()
    rows = []
    for c in chunks:
        t = patch.cond_tokens if c != 1 else uncond
        rows.append(t if t.shape[0] == batch else t.expand(batch, *t.shape[1:]))
    return torch.cat(rows)


def reference_term(patch, block, h, chunks):
    """The term `patch` must add at `block` for stream h, from the plain formula."""
    tokens = chunk_tokens(patch, list(chunks), h.shape[0] // len(chunks))
    return plain_term(block_params(patch.adapter, block), h, tokens, patch.site_scales[block.name])


class _ReferenceCapture:
    """A middle_patch of the reference (not a StreamCapture: the pack's wrapper leaves it alone)."""

    def __init__(self):
        self.x = None

    def __call__(self, x, extra_options):
        self.x = x
        return x

    def __deepcopy__(self, memo):
        return self


class PlainSonicReference:
    """attn2_output_patch with the plain formula, standing in for one SonicAudioPatch
    (same adapter, tokens and per-site factors; no sigma window)."""

    def __init__(self, patch):
        self.patch = patch
        self.capture = _ReferenceCapture()

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, extra_options):
        block = BLOCKS_BY_COMFY_KEY.get(extra_options.get("block"))
        if block is None or extra_options.get("block_index", 0) != 0 or self.patch.site_scales[block.name] == 0:
            return n
        chunks = list(extra_options.get("cond_or_uncond") or [0])
        return n + reference_term(self.patch, block, self.capture.x + n, chunks)


def with_plain_reference(patched):
    """A clone of `patched` whose Sonic patches are replaced by PlainSonicReference
    (their captures appended after every other middle_patch)."""
    clone = patched.clone()
    patches = clone.model_options["transformer_options"]["patches"]
    refs = {}
    out = []
    for p in patches["attn2_output_patch"]:
        if isinstance(p, SonicAudioPatch):
            refs[id(p)] = PlainSonicReference(p)
            out.append(refs[id(p)])
        else:
            out.append(p)
    patches["attn2_output_patch"] = out
    middle = [p for p in patches.get("middle_patch", []) if not isinstance(p, StreamCapture)]
    patches["middle_patch"] = middle + [r.capture for r in refs.values()]
    return clone


def sonic_patches(model):
    from sonic_diffusion.audio_call import sonic_patches as of_options

    return of_options(model.model_options)


@contextlib.contextmanager
def spy_patch_calls(monkeypatch):
    """Records every SonicAudioPatch call: (patch, block key, n in, n out, extra_options)."""
    calls = []
    original = SonicAudioPatch.__call__

    def spy(self, n, extra_options):
        out = original(self, n, extra_options)
        calls.append((self, extra_options.get("block"), n.detach().clone(), out.detach().clone(),
                      dict(extra_options)))
        return out

    monkeypatch.setattr(SonicAudioPatch, "__call__", spy)
    try:
        yield calls
    finally:
        monkeypatch.setattr(SonicAudioPatch, "__call__", original)


def transformer_of(unet, block):
    kind, index = block.comfy_block
    container = unet.middle_block if kind == "middle" else unet.output_blocks[index]
    return next(m for m in container if hasattr(m, "transformer_blocks")).transformer_blocks[0]


@contextlib.contextmanager
def record_attn2_streams(unet):
    """The stream x each adapter block's attn2 really received (the input of norm2,
    after every middle_patch), per block key, in call order."""
    seen = {b.comfy_block: [] for b in ADAPTER_BLOCKS}
    handles = []
    for b in ADAPTER_BLOCKS:
        norm2 = transformer_of(unet, b).norm2
        handles.append(norm2.register_forward_pre_hook(
            lambda mod, args, key=b.comfy_block: seen[key].append(args[0].detach().clone())))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def unet_call(model, x, t, ctx, chunks=(1, 0)):
    """One call of a (patched) MODEL's UNet as sampling makes it: rows in `chunks` order
    (1 = uncond, 0 = cond), sigmas given as the timesteps."""
    import copy

    from sonic_diffusion.audio_call import labelled_call_audio

    to = copy.copy(model.model_options["transformer_options"])
    to["cond_or_uncond"] = list(chunks)
    to["sigmas"] = t.float()
    extra = {}
    if sonic_patches(model):
        extra["sonic_audio"] = labelled_call_audio(model, chunks, x.shape[0] // len(chunks))
    with torch.no_grad():
        return model.model.diffusion_model(x, timesteps=t, context=ctx, transformer_options=to, **extra)


def unet_inputs(rows, seed=0, audios=1):
    """Random UNet inputs for `rows` rows of 16x16 latents at timestep 421, and `audios`
    unit-length audio embeddings."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, 16, 16, generator=g)
    ctx = torch.randn(rows, 77, 768, generator=g)
    t = torch.full((rows,), 421, dtype=torch.long)
    e = F.normalize(torch.randn(audios, 1024, generator=g), dim=-1)
    return x, t, ctx, e


def apply_adapter(model, adapter, embeds, **inputs):
    """Apply Sonic Adapter as a graph runs it: strength 1 over all steps unless given."""
    import nodes

    args = {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, **inputs}
    node = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
    return node.execute(model=model, sonic_adapter=adapter, audio_embeds=embeds, **args).result[0]


def block_call(patch, block, x, chunks):
    """extra_options of one block call of `patch` as the pack's wrapper and capture fill them:
    the stream x, the call's audio by chunk label (1 = negative prompt) and the ordering mark."""
    from sonic_diffusion.audio_rows import direct_batch
    from sonic_diffusion.patch import CALL_AUDIO, STREAM, STREAM_ORDERED

    audio = direct_batch([patch], list(chunks), x.shape[0] // len(chunks))
    return {"block": block.comfy_block, "cond_or_uncond": list(chunks), STREAM_ORDERED: True, STREAM: x,
            CALL_AUDIO: audio}
