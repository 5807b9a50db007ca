"""The gated audio cross-attention adapters and the module that holds a full adapter.

Attribute names follow the official gate files (`attn_adapter.to_q`, `norm_adapter`,
`gate_adapter`), so a block's official tensors load into it by their own suffixes.
"""
import comfy.ldm.modules.attention as comfy_attention
import comfy.ops
import torch
import torch.nn as nn

from . import TOKEN_DIM
from .blocks import ADAPTER_BLOCKS, HEADS
from .projector import AudioProjector


class AdapterAttention(nn.Module):
    def __init__(self, dim, context_dim=TOKEN_DIM, operations=comfy.ops.manual_cast):
        super().__init__()
        self.to_q = operations.Linear(dim, dim, bias=False)
        self.to_k = operations.Linear(context_dim, dim, bias=False)
        self.to_v = operations.Linear(context_dim, dim, bias=False)
        # Index 0 as in diffusers (index 1 there is a Dropout, which holds no weights).
        self.to_out = nn.Sequential(operations.Linear(dim, dim))


class GatedAudioAttention(nn.Module):
    """x + strength * tanh(gate) * Attn(LayerNorm(x), audio_tokens), for one block."""

    def __init__(self, dim, heads=HEADS, operations=comfy.ops.manual_cast):
        super().__init__()
        self.heads = heads
        self.attn_adapter = AdapterAttention(dim, operations=operations)
        self.norm_adapter = operations.LayerNorm(dim, eps=1e-5)
        self.gate_adapter = nn.Parameter(torch.zeros(1))

    def residual(self, h, tokens, strength=1.0):
        """The adapter's term for stream h [N,n,d] and tokens [N,77,768]: the plain
        (differentiable, uncached) formula. The inference patch uses an equivalent
        cached path; tests hold the two together."""
        y = self.norm_adapter(h)
        q = self.attn_adapter.to_q(y)
        k = self.attn_adapter.to_k(tokens)
        v = self.attn_adapter.to_v(tokens)
        o = comfy_attention.optimized_attention(q, k, v, self.heads)
        gate = torch.tanh(self.gate_adapter.to(device=h.device, dtype=h.dtype))
        return (strength * gate) * self.attn_adapter.to_out(o)


class SonicAdapterModel(nn.Module):
    """Projector plus the ten gated blocks of one SonicDiffusion adapter."""

    def __init__(self, operations=comfy.ops.manual_cast):
        super().__init__()
        self.projector = AudioProjector(operations=operations)
        self.blocks = nn.ModuleDict({b.name: GatedAudioAttention(b.dim, operations=operations) for b in ADAPTER_BLOCKS})


def init_adapter_weights(model: SonicAdapterModel, generator=None, gate=0.0):
    """Fresh initial values for training: gates at 0 (Flamingo style), so the frozen
    model's output is unchanged at step 0; comfy.ops layers skip torch's own init."""
    from .projector import init_projector_weights

    init_projector_weights(model.projector, generator)
    with torch.no_grad():
        for block in model.blocks.values():
            for lin in (block.attn_adapter.to_q, block.attn_adapter.to_k, block.attn_adapter.to_v,
                        block.attn_adapter.to_out[0]):
                bound = 1.0 / lin.weight.shape[1] ** 0.5
                lin.weight.uniform_(-bound, bound, generator=generator)
            block.attn_adapter.to_out[0].bias.zero_()
            block.norm_adapter.weight.fill_(1.0)
            block.norm_adapter.bias.zero_()
            block.gate_adapter.fill_(gate)
    return model
