"""The edit as a GUIDER/SAMPLER pair for SamplerCustomAdvanced: Sonic Edit Guider and
Sonic DDIM Edit Sampler."""
from comfy_api.latest import io

from ..sonic_diffusion import edit
from .common import CATEGORY, node_errors, require_finite, schema
from .edit_inputs import cfg_input, injection_inputs

GUIDER = "Sonic Edit Guider"
SAMPLER = "Sonic DDIM Edit Sampler"


class _EditSamplerObject(edit.PnPDDIMSampler):
    """Names the node in the errors the sampler raises while SamplerCustomAdvanced runs it."""

    def sample(self, *args, **kwargs):
        with node_errors(SAMPLER, edit.EditInputError):
            return super().sample(*args, **kwargs)


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
                cfg_input(),
            ],
            outputs=[io.Guider.Output(tooltip="Connect to SamplerCustomAdvanced's guider.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg):
        require_finite(GUIDER, cfg=cfg)
        with node_errors(GUIDER, edit.EditInputError):
            edit.check_numbers(cfg, 0.0, 0.0)
            return io.NodeOutput(edit.edit_guider(model, positive, negative, cfg))


class SonicDDIMEditSampler(io.ComfyNode):
    # Inversions are cached per model (sonic_diffusion/edit/cache.py), freed with it.

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
            inputs=injection_inputs(),
            outputs=[io.Sampler.Output(tooltip="Connect to SamplerCustomAdvanced's sampler.")],
        )

    @classmethod
    def execute(cls, attention_injection, feature_injection):
        require_finite(SAMPLER, attention_injection=attention_injection, feature_injection=feature_injection)
        with node_errors(SAMPLER, edit.EditInputError):
            edit.check_numbers(0.0, attention_injection, feature_injection)
        return io.NodeOutput(_EditSamplerObject(attention_injection, feature_injection))
