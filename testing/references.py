"""Test-side references for the audio patch, written independently of the pack's cached
path: the paper's formula x += s * tanh(gate) * Attn(LN(x), tokens) after the text
cross-attention, (a) literally from an adapter's raw parameters in float32 (plain_term)
or (b) through the adapter's own modules in the stream's dtype at every call, with no
cache and no folding (module_term, "the straightforward implementation"); and the
authors' layout: a diffusers UNet whose blocks carry the official adapter modules."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from sonic_diffusion.blocks import BLOCKS_BY_COMFY_KEY, HEADS
from sonic_diffusion.patch import SonicAudioPatch, StreamCapture


def plain_term(adapter, block, h, tokens, scale):
    """scale * tanh(gate) * Attn(LayerNorm(h), tokens) for one block, in float32 with
    plain torch ops (no ComfyUI attention, no folding); returned in h's dtype."""
    p = {k: v.detach().float() for k, v in adapter.model.blocks[block.name].named_parameters()}
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


def module_term(adapter, block, h, tokens, scale):
    """The same term through the adapter's own block module, computed in h's dtype."""
    return adapter.model.blocks[block.name].residual(h, tokens.to(device=h.device, dtype=h.dtype), scale)


def chunk_tokens(patch, chunks, batch):
    """The token rows the patch must use for a batch laid out as `chunks` (0 = cond, 1 = uncond)."""
    uncond = patch.uncond_tokens if patch.uncond_tokens is not None else patch.adapter.null_tokens()
    rows = []
    for c in chunks:
        t = patch.cond_tokens if c != 1 else uncond
        if t.shape[0] not in (1, batch):
            raise ValueError(f"{t.shape[0]} audio embeddings for a batch of {batch} latents")
        rows.append(t if t.shape[0] == batch else t.expand(batch, *t.shape[1:]))
    return torch.cat(rows)


def reference_term(patch, block, h, chunks, term=plain_term):
    """The term `patch` must add at `block` for stream h."""
    tokens = chunk_tokens(patch, list(chunks), h.shape[0] // len(chunks))
    return term(patch.adapter, block, h, tokens, patch.site_scales[block.name])


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
    """attn2_output_patch computing `term`, standing in for one SonicAudioPatch (same
    adapter, tokens and per-site factors; no sigma window)."""

    def __init__(self, patch, term=plain_term):
        self.patch, self.term = patch, term
        self.capture = _ReferenceCapture()

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, extra_options):
        block = BLOCKS_BY_COMFY_KEY.get(extra_options.get("block"))
        if block is None or extra_options.get("block_index", 0) != 0 or self.patch.site_scales[block.name] == 0:
            return n
        chunks = list(extra_options.get("cond_or_uncond") or [0])
        return n + reference_term(self.patch, block, self.capture.x + n, chunks, self.term)


def with_plain_reference(patched, term=plain_term):
    """A clone of `patched` whose Sonic patches are replaced by PlainSonicReference
    (their captures appended after every other middle_patch)."""
    clone = patched.clone()
    patches = clone.model_options["transformer_options"]["patches"]
    refs = {}
    out = []
    for p in patches["attn2_output_patch"]:
        if isinstance(p, SonicAudioPatch):
            refs[id(p)] = PlainSonicReference(p, term)
            out.append(refs[id(p)])
        else:
            out.append(p)
    patches["attn2_output_patch"] = out
    middle = [p for p in patches.get("middle_patch", []) if not isinstance(p, StreamCapture)]
    patches["middle_patch"] = middle + [r.capture for r in refs.values()]
    return clone


def plain_formula_model(model, adapter, embeds, strength=1.0):
    """`model` with the adapter applied the straightforward way: module_term at every call."""
    from testing.unet import apply_adapter

    return with_plain_reference(apply_adapter(model, adapter, embeds, strength=strength), module_term)


# The authors' layout ----------------------------------------------------------------------
def install_reference_adapters(unet, audio_tokens):
    """Adds the official adapter modules to each target diffusers block and a forward
    with the paper's formula after the text cross-attention; audio_tokens["tokens"] is
    read at call time. Returns the number of blocks (10)."""
    from diffusers.models.attention_processor import Attention

    targets = [unet.mid_block.attentions[0]] + [unet.up_blocks[i].attentions[j] for i in (1, 2, 3) for j in range(3)]
    for spatial in targets:
        tb = spatial.transformer_blocks[0]
        d = tb.norm1.normalized_shape[0]
        tb.attn_adapter = Attention(query_dim=d, cross_attention_dim=768, heads=8, dim_head=d // 8, bias=False)
        tb.norm_adapter = nn.LayerNorm(d)
        tb.gate_adapter = nn.Parameter(torch.zeros(1))

        def forward(hidden_states, attention_mask=None, encoder_hidden_states=None, *args, _tb=tb, **kwargs):
            hs = _tb.attn1(_tb.norm1(hidden_states)) + hidden_states
            hs = _tb.attn2(_tb.norm2(hs), encoder_hidden_states=encoder_hidden_states) + hs
            hs = hs + torch.tanh(_tb.gate_adapter) * _tb.attn_adapter(
                _tb.norm_adapter(hs), encoder_hidden_states=audio_tokens["tokens"])
            return _tb.ff(_tb.norm3(hs)) + hs

        tb.forward = forward
    return len(targets)


def diffusers_reference(fixture_set, audio_tokens):
    """(plain diffusers UNet, diffusers UNet with the official gate dict loaded strictly:
    every official key name must have a home, and every module must get a tensor)."""
    import comfy.utils
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    from sonic_diffusion.safe_load import load_weights_file

    sd = comfy.utils.load_torch_file(str(fixture_set.full_checkpoint()))
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    converted = convert_ldm_unet_checkpoint(
        {k: v.float() for k, v in sd.items() if k.startswith("model.diffusion_model.")}, dict(unet.config))
    plain = copy.deepcopy(unet)
    plain.load_state_dict(converted, strict=True)
    assert install_reference_adapters(unet, audio_tokens) == 10
    gates, _ = load_weights_file(fixture_set.gates())
    unet.load_state_dict({**converted, **{k: v.float() for k, v in gates.items()}}, strict=True)
    return plain.eval(), unet.eval()
