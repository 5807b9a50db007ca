"""Audio Conditioning (Sonic): audio that travels with a prompt, area or mask."""
import torch
from comfy_api.latest import io

from ..sonic_diffusion.audio_rows import COND_KEY, AttachedAudio
from ..sonic_diffusion.blocks import FACTOR_LIMIT, BlockWeightsError, check_factor
from .common import (
    CATEGORY,
    EMBEDS_TYPES,
    NodeInputError,
    SonicAdapterType,
    SonicStrengthCurve,
    audio_embeds_value,
    check_curve,
    check_embeds,
    node_errors,
    require_finite,
    schema,
)

NODE = "Audio Conditioning (Sonic)"


def _factors(strength, curve):
    """Per-row factors strength x curve, or None when every factor is exactly 1. They take the
    place of Apply Sonic Adapter's strength_curve for this prompt and are multiplied into the
    term in the UNet's dtype, so each lies in the folded factors' range (blocks.FACTOR_LIMIT)."""
    if curve is None:
        factors = None if strength == 1.0 else torch.tensor([float(strength)])
    else:
        factors = torch.as_tensor(curve, dtype=torch.float32).detach().reshape(-1).cpu() * float(strength)
    if factors is not None and factors.numel():
        with node_errors(NODE, BlockWeightsError, suffix="; lower strength or the curve."):
            check_factor("strength x strength_curve (largest in magnitude)", float(factors.abs().max()))
    return factors


class SonicAudioConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicAudioConditioning",
            display_name=NODE,
            category=CATEGORY,
            description="Attaches audio to a CONDITIONING, so each prompt, area (Conditioning Set Area) or mask "
                        "(Conditioning Set Mask) carries its own sound through ComfyUI's own cond machinery "
                        "(guiders, areas, masks, context windows). Takes effect on a MODEL patched by Apply Sonic "
                        "Adapter with the same adapter; it overrides the adapter's own audio_embeds for this prompt.",
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The prompt (or area/mask conditioning) to carry the "
                                                              "audio; it is copied, never changed."),
                SonicAdapterType.Input("sonic_adapter", tooltip="The adapter of the Apply Sonic Adapter node that "
                                                                "patches the model (its projector makes the tokens)."),
                io.MultiType.Input("audio_embeds", EMBEDS_TYPES,
                                   tooltip="From Audio Encode (Sonic) or Audio Encode Frames (Sonic), or core Audio "
                                           "Encoder Encode fed by Audio Encoder Loader (Sonic): one embedding serves "
                                           "every latent, B map one-to-one onto B latents."),
                io.Float.Input("strength", default=1.0, min=-FACTOR_LIMIT, max=FACTOR_LIMIT, step=0.05,
                               tooltip="Multiplies Apply Sonic Adapter's strength for this prompt only."),
                SonicStrengthCurve.Input("strength_curve", optional=True,
                                         tooltip="One factor per latent for this prompt's audio, e.g. from Loudness "
                                                 "Strength Curve (Sonic); it replaces Apply Sonic Adapter's "
                                                 "strength_curve for this prompt. strength x curve stays within "
                                                 f"-{FACTOR_LIMIT:g}..{FACTOR_LIMIT:g}."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, conditioning, sonic_adapter, audio_embeds, strength=1.0, strength_curve=None):
        require_finite(NODE, strength=strength)
        audio_embeds = audio_embeds_value(NODE, "audio_embeds", audio_embeds)
        check_embeds(NODE, audio_embeds=audio_embeds)
        check_curve(NODE, strength_curve)
        if not isinstance(conditioning, list) or not all(isinstance(c, (list, tuple)) and len(c) == 2
                                                         for c in conditioning):
            raise NodeInputError(f"{NODE}: the conditioning input is not a CONDITIONING; connect a CLIP Text "
                                 f"Encode (or Conditioning) node.")
        factors = _factors(strength, strength_curve)
        with node_errors(NODE, suffix=". Connect Audio Encode (Sonic)."):
            tokens = sonic_adapter.project(audio_embeds)
        audio = AttachedAudio(tokens, factors, NODE)
        out = []
        for embedding, options in conditioning:
            attached = {**(options.get(COND_KEY) or {}), sonic_adapter.uid: audio}
            out.append([embedding, {**options, COND_KEY: attached}])
        return io.NodeOutput(out)
