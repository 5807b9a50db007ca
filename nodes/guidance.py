"""Sonic Dual Guider: separate text and audio guidance scales (a GUIDER)."""
from comfy_api.latest import io

from ..sonic_diffusion.guidance import DualGuider, sonic_patches
from .common import CATEGORY, NodeInputError, require_finite, schema


class SonicDualGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicDualGuider",
            display_name="Sonic Dual Guider (text / audio)",
            category=CATEGORY + "/sampling",
            description="A GUIDER for SamplerCustomAdvanced with separate text and audio guidance: "
                        "e(-,-) + text_cfg * (e(t,-) - e(-,-)) + audio_cfg * (e(t,a) - e(t,-)). "
                        "With text_cfg = audio_cfg it is the paper's joint guidance (CFG Guider). The three "
                        "predictions share one batched model call per step; two when a scale makes one "
                        "unnecessary (audio_cfg = text_cfg, audio_cfg = 0 or text_cfg = 1).",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from Apply Sonic Adapter (the audio must be applied)."),
                io.Conditioning.Input("positive", tooltip="The prompt (t); may be empty for audio-only images."),
                io.Conditioning.Input("negative", tooltip="The negative prompt (-); it gets the negative audio."),
                io.Float.Input("text_cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="s_text: how strongly the prompt is followed (the usual CFG scale)."),
                io.Float.Input("audio_cfg", default=7.5, min=-100.0, max=100.0, step=0.1, round=0.01,
                               tooltip="s_audio: how strongly the sound is followed. Equal to text_cfg gives the "
                                       "joint guidance, 0 removes the sound from the guidance, larger turns it up."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, text_cfg, audio_cfg):
        node = "Sonic Dual Guider (text / audio)"
        require_finite(node, text_cfg=text_cfg, audio_cfg=audio_cfg)
        if not sonic_patches(model.model_options):
            raise NodeInputError(f"{node}: the model carries no audio; connect the MODEL output of "
                                 f"Apply Sonic Adapter, or use the core CFG Guider for text only.")
        guider = DualGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(text_cfg, audio_cfg)
        return io.NodeOutput(guider)
