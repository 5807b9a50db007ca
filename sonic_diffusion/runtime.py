"""A loaded adapter as ComfyUI handles it: weights in a ModelPatcher (so ComfyUI
moves and offloads them with the UNet), projection to audio tokens, null tokens."""
import copy
import itertools

import comfy.model_management as mm
import comfy.model_patcher
import torch

from . import AUDIO_EMBED_DIM
from .blocks import ADAPTER_BLOCKS

_HALF_OR_FULL = (torch.float16, torch.bfloat16, torch.float32)


def resident_dtype(model_patcher):
    """The dtype the adapter's block weights are kept in beside this UNet: the UNet's own
    storage dtype when it is fp16/bf16/fp32; for fp8 (or other) storage the dtype ComfyUI
    computes in (its manual-cast dtype), since the blocks are small and fp8 would only add error."""
    model = model_patcher.model
    dtype = model.get_dtype()
    if dtype in _HALF_OR_FULL:
        return dtype
    cast = getattr(model, "manual_cast_dtype", None)
    return cast if cast in _HALF_OR_FULL else torch.float32


_uids = itertools.count(1)

# Embeddings projected per forward pass (bounds the activation memory, see project()).
PROJECT_CHUNK = 32


class SonicAdapter:
    def __init__(self, model, name="adapter", uid=None):
        self.model = model
        self.name = name
        # Names this adapter in conditionings (Audio Conditioning (Sonic)); its dtype casts share it.
        self.uid = uid or f"sonic-adapter-{next(_uids)}"
        self.patcher = comfy.model_patcher.ModelPatcher(
            model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        self._null_tokens = None
        self._casts = {}

    def with_block_dtype(self, dtype):
        """This adapter with its ten blocks stored in `dtype` (a copy made once per dtype),
        so a half-precision UNet does not carry fp32 blocks. The projector stays fp32 on
        purpose: it runs once per queue, and its tokens feed every block at every step."""
        if dtype == next(self.model.blocks.parameters()).dtype:
            return self
        if dtype not in self._casts:
            model = copy.deepcopy(self.model)
            model.blocks.to(dtype)
            cast = SonicAdapter(model, name=self.name, uid=self.uid)
            cast._null_tokens = self._null_tokens
            self._casts[dtype] = cast
        return self._casts[dtype]

    @torch.no_grad()
    def project(self, embeds):
        """embeds [B,1024] -> tokens [B,77,768], float32 on the CPU (small; cast at use)."""
        if embeds.ndim != 2 or embeds.shape[-1] != AUDIO_EMBED_DIM:
            raise ValueError(f"audio embeddings must be [B, {AUDIO_EMBED_DIM}], got {list(embeds.shape)}")
        mm.load_model_gpu(self.patcher)
        device = self.patcher.load_device
        # In chunks: the projector's activations are ~12 MiB per embedding ([77, 3072] floats
        # and more), so a long frame sequence projected at once would take gigabytes.
        chunks = [self.model.projector(part.to(device=device, dtype=torch.float32)).float().cpu()
                  for part in embeds.split(PROJECT_CHUNK)]
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    def null_tokens(self):
        """Projector(zeros): not zero (biases, LayerNorms); computed once per adapter."""
        if self._null_tokens is None:
            self._null_tokens = self.project(torch.zeros(1, AUDIO_EMBED_DIM))
        return self._null_tokens

    def gates(self):
        return {b.comfy_block: float(self.model.blocks[b.name].gate_adapter) for b in ADAPTER_BLOCKS}
