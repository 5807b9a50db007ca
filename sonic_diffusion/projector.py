"""Audio Projector: one MS-CLAP embedding [B,1024] -> 77 audio tokens [B,77,768].

Module and key names follow the official `audio_projector_*.pth` files, so they
load strictly (46 tensors, 6.13M parameters).
"""
import comfy.ldm.modules.attention as comfy_attention
import comfy.ops
import torch
import torch.nn as nn

from . import AUDIO_EMBED_DIM, AUDIO_TOKENS, TOKEN_DIM

_INNER = 320
_HEADS = 8
_LAYERS = 4


class TokenSelfAttention(nn.Module):
    """Self-attention over the 77 tokens; no output projection (official layout)."""

    def __init__(self, dim=TOKEN_DIM, inner=_INNER, heads=_HEADS, operations=comfy.ops.manual_cast):
        super().__init__()
        self.heads = heads
        self.to_q_adapter = operations.Linear(dim, inner, bias=False)
        self.to_k_adapter = operations.Linear(dim, inner, bias=False)
        self.to_v_adapter = operations.Linear(dim, inner, bias=False)

    def forward(self, x):
        q = self.to_q_adapter(x)
        k = self.to_k_adapter(x)
        v = self.to_v_adapter(x)
        # Looked up at call time so ComfyUI's attention backend choice applies.
        return comfy_attention.optimized_attention(q, k, v, self.heads)


class AudioProjector(nn.Module):
    def __init__(self, operations=comfy.ops.manual_cast):
        super().__init__()
        t, e = AUDIO_TOKENS, AUDIO_EMBED_DIM
        ops = operations
        # Indices matter: they are the official state_dict keys (GELUs fill the gaps).
        self.audio_emb_projection = nn.Sequential(
            ops.Conv1d(1, t, 17, stride=1, padding=8), nn.GELU(),            # 0, 1
            ops.Conv1d(t, t, 17, stride=1, padding=8), nn.GELU(),            # 2, 3
            ops.LayerNorm([t, e]),                                           # 4
            ops.Conv1d(t, t, 17, stride=1, padding=8), nn.GELU(),            # 5, 6
            ops.LayerNorm([t, e]),                                           # 7
            ops.ConvTranspose1d(t, t, 17, stride=3, padding=7), nn.GELU(),   # 8, 9
            ops.LayerNorm([t, 3 * e]), nn.GELU(),                            # 10, 11
            ops.Conv1d(t, t, 17, stride=4, padding=7),                       # 12
        )
        self.cross_attention = nn.ModuleList([TokenSelfAttention(operations=ops) for _ in range(_LAYERS)])
        self.between_attention = nn.ModuleList([
            nn.Sequential(ops.Linear(_INNER, _INNER), nn.GELU(), ops.Linear(_INNER, TOKEN_DIM))
            for _ in range(_LAYERS)
        ])
        self.to_out_adapter = nn.Sequential(ops.Linear(TOKEN_DIM, TOKEN_DIM))

    def forward(self, embeds):
        """embeds [B,1024] -> tokens [B,77,768]."""
        p = self.audio_emb_projection(embeds.unsqueeze(1))
        # Official quirk kept on purpose: every layer reads the conv output p, not the
        # previous layer's output, and only the last layer's result is used. Layers 0-2
        # therefore cannot change the result, so they are not evaluated.
        last = _LAYERS - 1
        out = self.between_attention[last](self.cross_attention[last](p)) + p
        return self.to_out_adapter(out)


def init_projector_weights(module: AudioProjector, generator=None):
    """Fresh initial values for training (comfy.ops layers skip torch's own init)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, (nn.Linear, nn.Conv1d, nn.ConvTranspose1d)):
                fan_in = m.weight[0].numel() if not isinstance(m, nn.ConvTranspose1d) else m.weight.shape[0] * m.weight.shape[2]
                bound = 1.0 / max(fan_in, 1) ** 0.5
                m.weight.uniform_(-bound, bound, generator=generator)
                if m.bias is not None:
                    m.bias.uniform_(-bound, bound, generator=generator)
    return module
