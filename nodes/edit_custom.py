"""The edit as a GUIDER/SAMPLER pair for SamplerCustomAdvanced: Sonic Edit Guider and
Sonic DDIM Edit Sampler."""
from comfy_api.latest import io

from ..sonic_diffusion import edit
from .common import CATEGORY, NodeInputError, require_finite, schema

GUIDER = "Sonic Edit Guider"
SAMPLER = "Sonic DDIM Edit Sampler"


class _EditSamplerObject(edit.PnPDDIMSampler):
    """Names the node in the errors the sampler raises while SamplerCustomAdvanced runs it."""

    def sample(self, *args, **kwargs):
        try:
            return super().sample(*args, **kwargs)
        except edit.EditInputError as e:
            raise NodeInputError(f"{SAMPLER}: {e}") from None


class SonicEditGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicEditGuider",
            display_name=GUIDER,
            category=CATEGORY,
            description="The GUIDER of SonicDiffusion's editing for SamplerCustomAdvanced: ComfyUI's CFG guider "
                        "(cond and uncond through ComfyUI's own sampling, so ControlNet, area and GLIGEN "
                        "conditioning and model patches act as in KSampler) on a copy of the model that carries "
                        "the Plug-and-Play injection hooks. Use it with Sonic DDIM Edit Sampler; with any other "
                        "sampler the hooks stay idle and it is a plain CFG guider.",
            inputs=[
                io.Model.Input("model", tooltip="An SD 1.x MODEL, normally from Apply Sonic Adapter."),
                io.Conditioning.Input("positive", tooltip="The edit prompt from CLIP Text Encode (may be empty), "
                                                          "with any ControlNet, area or GLIGEN conditioning."),
                io.Conditioning.Input("negative", tooltip="CLIP Text Encode of the empty prompt \"\": the "
                                                          "unconditional branch and the inversion prompt."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance scale for text and audio together (7.5 in the authors' demo)."),
            ],
            outputs=[io.Guider.Output(tooltip="Connect to SamplerCustomAdvanced's guider.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg):
        require_finite(GUIDER, cfg=cfg)
        try:
            edit.check_numbers(cfg, 0.0, 0.0)
            return io.NodeOutput(edit.edit_guider(model, positive, negative, cfg))
        except edit.EditInputError as e:
            raise NodeInputError(f"{GUIDER}: {e}") from None


class SonicDDIMEditSampler(io.ComfyNode):
    # The node's inversion cache: weak references only, latents of the last two inversions.
    inversions = edit.InversionCache(2)

    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicDDIMEditSampler",
            display_name=SAMPLER,
            category=CATEGORY,
            description="The SAMPLER of SonicDiffusion's editing for SamplerCustomAdvanced: DDIM inversion of the "
                        "latent_image along the SIGMAS (empty prompt, audio off; cached), then DDIM (eta 0) back "
                        "down with the source's self-attention queries/keys and ResBlock features injected during "
                        "the first steps. Needs Sonic Edit Guider. The noise input is not used (connect Disable "
                        "Noise); use BasicScheduler with ddim_uniform and denoise 1.0 for the paper's schedule.",
            inputs=[
                io.Float.Input("attention_injection", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps, from the start, in which the source's self-attention "
                                       "queries and keys are injected (output blocks 4-11)."),
                io.Float.Input("feature_injection", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps, from the start, in which the source's ResBlock "
                                       "features are injected (output blocks 4 and 5)."),
            ],
            outputs=[io.Sampler.Output(tooltip="Connect to SamplerCustomAdvanced's sampler.")],
        )

    @classmethod
    def execute(cls, attention_injection, feature_injection):
        require_finite(SAMPLER, attention_injection=attention_injection, feature_injection=feature_injection)
        try:
            edit.check_numbers(0.0, attention_injection, feature_injection)
        except edit.EditInputError as e:
            raise NodeInputError(f"{SAMPLER}: {e}") from None
        return io.NodeOutput(_EditSamplerObject(attention_injection, feature_injection, cls.inversions))
