"""Audio Edit (Sonic): DDIM inversion + Plug-and-Play editing of an encoded image."""
from comfy_api.latest import io

from ..sonic_diffusion import pnp
from .common import CATEGORY, NodeInputError, schema

NODE = "Audio Edit (Sonic)"


class SonicAudioEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicAudioEdit",
            display_name=NODE,
            category=CATEGORY,
            description="Changes an existing image by the sound while keeping its layout (SonicDiffusion's editing, "
                        "Plug-and-Play over DDIM inversion): the source latent is inverted to noise with the empty "
                        "prompt and the audio off, then sampled again with DDIM (eta 0) and guidance, while the "
                        "self-attention queries/keys (output blocks 4-11) and the ResBlock features (output blocks "
                        "4-5) of the source are injected during the first steps. The inversion is cached: queueing "
                        "the same image and model again only re-runs the sampling. Deterministic: no seed.",
            inputs=[
                io.Model.Input("model", tooltip="An SD 1.x MODEL, normally from Apply Sonic Adapter (the audio "
                                                "acts on the edit). Without the adapter this is plain text-driven "
                                                "Plug-and-Play editing."),
                io.Conditioning.Input("positive", tooltip="The edit prompt from CLIP Text Encode; may be empty "
                                                          "(audio-only edit, as in the paper)."),
                io.Conditioning.Input("negative", tooltip="CLIP Text Encode of the empty prompt \"\": it is the "
                                                          "unconditional branch and also the inversion prompt."),
                io.Latent.Input("latent", tooltip="The source image, encoded by VAE Encode with the SD 1.x "
                                                  "checkpoint's VAE."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps for the inversion and for the edit (50 as in the paper)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance scale for text and audio together (7.5 in the authors' demo)."),
                io.Float.Input("attention_injection", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps, from the start, in which the source's self-attention "
                                       "queries and keys are injected (output blocks 4-11). Higher keeps more of "
                                       "the source layout."),
                io.Float.Input("feature_injection", default=0.8, min=0.0, max=1.0, step=0.05,
                               tooltip="Fraction of the steps, from the start, in which the source's ResBlock "
                                       "features are injected (output blocks 4 and 5). Higher keeps more of the "
                                       "source structure."),
            ],
            outputs=[io.Latent.Output(tooltip="The edited latent; decode it with VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, cfg, attention_injection, feature_injection):
        try:
            out, _state = pnp.audio_edit(model, positive, negative, latent, steps=steps, cfg=cfg,
                                         attention_injection=attention_injection,
                                         feature_injection=feature_injection)
        except pnp.EditInputError as e:
            raise NodeInputError(f"{NODE}: {e}") from None
        return io.NodeOutput(out)
