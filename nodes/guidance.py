"""Sonic Dual Guider (a GUIDER) and Sonic Audio Guidance (KSampler): separate text and
audio guidance scales."""
from comfy_api.latest import io

from ..sonic_diffusion.audio_call import sonic_patches
from ..sonic_diffusion.guidance import AudioGuidanceRatio, DualGuider
from .common import CATEGORY, NodeInputError, require_finite, schema

DUAL_GUIDER = "Sonic Dual Guider (text / audio)"
AUDIO_GUIDANCE = "Sonic Audio Guidance (KSampler)"


def _require_audio(node, model):
    if not sonic_patches(model.model_options):
        raise NodeInputError(f"{node}: the model carries no audio; connect the MODEL output of "
                             f"Apply Sonic Adapter.")


class SonicDualGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicDualGuider",
            display_name=DUAL_GUIDER,
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
        node = DUAL_GUIDER
        require_finite(node, text_cfg=text_cfg, audio_cfg=audio_cfg)
        _require_audio(node, model)
        guider = DualGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(text_cfg, audio_cfg)
        return io.NodeOutput(guider)


class SonicAudioGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicAudioGuidance",
            display_name=AUDIO_GUIDANCE,
            category=CATEGORY + "/sampling",
            description="Separate audio guidance for KSampler and every sampler node that takes a MODEL: "
                        "KSampler's cfg stays the text scale and the audio scale becomes audio_ratio * cfg, "
                        "with the three predictions in one batched model call per step. Sets the model's "
                        "calc_cond_batch function (another node that sets it replaces this one).",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from Apply Sonic Adapter (the audio must be applied)."),
                io.Float.Input("audio_ratio", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Audio guidance relative to the sampler's cfg: 1 is the joint guidance "
                                       "(no change), 0 removes the sound from the guidance, 2 doubles it."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, audio_ratio):
        node = AUDIO_GUIDANCE
        require_finite(node, audio_ratio=audio_ratio)
        _require_audio(node, model)
        patched = model.clone()
        patched.set_model_sampler_calc_cond_batch_function(AudioGuidanceRatio(audio_ratio))
        return io.NodeOutput(patched)
