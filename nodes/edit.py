"""Audio Edit (Sonic): DDIM inversion + Plug-and-Play editing of an encoded image, in one node
(the same guider and sampler as Sonic Edit Guider + Sonic DDIM Edit Sampler)."""
import comfy.model_management
import latent_preview
from comfy_api.latest import io

from ..sonic_diffusion import edit
from .common import CATEGORY, node_errors, require_finite, schema
from .edit_inputs import cfg_input, injection_inputs

NODE = "Audio Edit (Sonic)"


class SonicAudioEdit(io.ComfyNode):
    # Inversions are cached per model (sonic_diffusion/edit/cache.py), freed with it.

    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicAudioEdit",
            display_name=NODE,
            category=CATEGORY,
            description="Changes an existing image by the sound while keeping its layout (SonicDiffusion's editing, "
                        "Plug-and-Play over DDIM inversion): the source latent is inverted to noise with the empty "
                        "prompt and the audio off, then sampled again with DDIM (eta 0) and guidance through "
                        "ComfyUI's own sampling (ControlNet and other conditioning act as in KSampler), while the "
                        "self-attention queries/keys (output blocks 4-11) and the ResBlock features (output blocks "
                        "4-5) of the source are injected during the first steps. The inversion is cached: queueing "
                        "the same image and model again only re-runs the sampling. Deterministic: no seed.",
            inputs=[
                io.Model.Input("model", tooltip="An SD 1.x MODEL, normally from Apply Sonic Adapter (the audio "
                                                "acts on the edit). Without the adapter this is plain text-driven "
                                                "Plug-and-Play editing."),
                io.Conditioning.Input("positive", tooltip="The edit prompt from CLIP Text Encode; may be empty "
                                                          "(audio-only edit, as in the paper). ControlNet, area "
                                                          "and GLIGEN conditioning act on the edit as in KSampler."),
                io.Conditioning.Input("negative", tooltip="CLIP Text Encode of the empty prompt \"\": it is the "
                                                          "unconditional branch and also the inversion prompt."),
                io.Latent.Input("latent", tooltip="The source image, encoded by VAE Encode with the SD 1.x "
                                                  "checkpoint's VAE."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps for the inversion and for the edit (50 as in the paper)."),
                cfg_input(),
                *injection_inputs(),
            ],
            outputs=[io.Latent.Output(tooltip="The edited latent; decode it with VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, cfg, attention_injection, feature_injection):
        require_finite(NODE, cfg=cfg, attention_injection=attention_injection, feature_injection=feature_injection)
        callback = latent_preview.prepare_callback(model, 2 * int(steps))
        with node_errors(NODE, edit.EditInputError):
            out = edit.audio_edit(model, positive, negative, latent, steps=steps, cfg=cfg,
                                  attention_injection=attention_injection, feature_injection=feature_injection,
                                  callback=callback)
        out["samples"] = out["samples"].to(comfy.model_management.intermediate_device())
        return io.NodeOutput(out)
