"""A loaded adapter as ComfyUI handles it: weights in a ModelPatcher (so ComfyUI
moves and offloads them with the UNet), projection to audio tokens, null tokens."""
import torch

import comfy.model_management as mm
import comfy.model_patcher

from . import AUDIO_EMBED_DIM
from .blocks import ADAPTER_BLOCKS


class SonicAdapter:
    def __init__(self, model, name="adapter"):
        self.model = model
        self.name = name
        self.patcher = comfy.model_patcher.ModelPatcher(
            model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        self._null_tokens = None
        self.projections = 0  # projector runs, counted for the requeue benchmark and tests

    @torch.no_grad()
    def project(self, embeds):
        """embeds [B,1024] -> tokens [B,77,768], float32 on the CPU (small; cast at use)."""
        if embeds.ndim != 2 or embeds.shape[-1] != AUDIO_EMBED_DIM:
            raise ValueError(f"audio embeddings must be [B, {AUDIO_EMBED_DIM}], got {list(embeds.shape)}")
        mm.load_model_gpu(self.patcher)
        device = self.patcher.load_device
        self.projections += 1
        tokens = self.model.projector(embeds.to(device=device, dtype=torch.float32))
        return tokens.float().cpu()

    def null_tokens(self):
        """Projector(zeros): not zero (biases, LayerNorms); computed once per adapter."""
        if self._null_tokens is None:
            self._null_tokens = self.project(torch.zeros(1, AUDIO_EMBED_DIM))
        return self._null_tokens

    def gates(self):
        return {b.comfy_block: float(self.model.blocks[b.name].gate_adapter) for b in ADAPTER_BLOCKS}
