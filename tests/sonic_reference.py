"""Test-side spies on the audio patch: what the production patch received and returned,
the stream each adapter block's attn2 saw, and one block call's extra_options. The
references themselves are in testing/references.py. Nothing here is imported by the pack."""
import contextlib

from sonic_diffusion.blocks import ADAPTER_BLOCKS
from sonic_diffusion.patch import SonicAudioPatch


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


def block_call(patch, block, x, chunks):
    """extra_options of one block call of `patch` as the pack's wrapper and capture fill them:
    the stream x, the call's audio by chunk label (1 = negative prompt) and the ordering mark."""
    from sonic_diffusion.audio_rows import direct_batch
    from sonic_diffusion.patch import CALL_AUDIO, STREAM, STREAM_ORDERED

    audio = direct_batch([patch], list(chunks), x.shape[0] // len(chunks))
    return {"block": block.comfy_block, "cond_or_uncond": list(chunks), STREAM_ORDERED: True, STREAM: x,
            CALL_AUDIO: audio}
