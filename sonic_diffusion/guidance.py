"""Separate text and audio guidance, for SamplerCustomAdvanced and KSampler:

    e(-,-) + s_text * (e(t,-) - e(-,-)) + s_audio * (e(t,a) - e(t,-))

e(-,-): negative prompt with the negative audio; e(t,a): positive prompt with the
audio; e(t,-): positive prompt with the negative audio. "Negative audio" is what the
joint guidance gives the negative prompt (docs/design.md section 1): the null audio
tokens, or the tokens of Apply Sonic Adapter's negative_audio_embeds.

Which audio a prompt gets follows its role in the guider (audio_call.attach_audio): the
Dual Guider hands the positive prompt a second time under the role
"positive_without_audio", which gets the negative audio, so all three predictions go
through one calc_cond_batch call (one model call per step when memory allows).
"""
import math

import comfy.samplers

from .audio_call import WITHOUT_AUDIO_ROLES
from .audio_rows import MODEL_COND_KEY

# Indices into the conds list handed to calc_cond_batch.
WITH_AUDIO, NEGATIVE, WITHOUT_AUDIO = 0, 1, 2
COND_KEYS = ("positive", "negative", WITHOUT_AUDIO_ROLES[0])


def without_audio(conds):
    """Copies of processed cond dicts whose audio is the negative audio (same prompt)."""
    out = []
    for c in conds:
        audio = c.get("model_conds", {}).get(MODEL_COND_KEY)
        if audio is not None:
            c = {**c, "model_conds": {**c["model_conds"], MODEL_COND_KEY: audio.without_audio()}}
        out.append(c)
    return out


def predictions_needed(text_scale, audio_scale, cfg1_optimization=True):
    """Which of e(t,a), e(-,-), e(t,-) the formula needs (a zero coefficient drops one):
    e(t,a) has coefficient s_audio, e(t,-) s_text - s_audio, e(-,-) 1 - s_text
    (kept at s_text = 1 when ComfyUI's cfg-1 optimization is disabled)."""
    return {
        "positive": audio_scale != 0.0,
        "negative": not (cfg1_optimization and math.isclose(text_scale, 1.0)),
        "positive_without_audio": text_scale != audio_scale,
    }


class DualGuider(comfy.samplers.CFGGuider):
    """CFGGuider with separate text (s_text) and audio (s_audio) scales.

    With s_text == s_audio the call and the formula are CFGGuider's own.
    """

    def set_conds(self, positive, negative):
        self.inner_set_conds(dict(zip(COND_KEYS, (positive, negative, positive))))

    def set_cfg(self, text_scale, audio_scale=None):
        self.text_scale = float(text_scale)
        self.audio_scale = float(text_scale if audio_scale is None else audio_scale)
        self.cfg = self.text_scale  # read by code that expects a CFGGuider

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        if model_options is None:
            model_options = {}
        s_text, s_audio = self.text_scale, self.audio_scale
        need = predictions_needed(s_text, s_audio, not model_options.get("disable_cfg1_optimization", False))
        conds = [self.conds.get(k) if need[k] else None for k in COND_KEYS]
        e_ta, e_nn, e_tn = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
        # Text part through cfg_function, so sampler_cfg_function / post-cfg patches
        # (RescaleCFG and the like) apply as they do with CFGGuider. At s_text == s_audio
        # e(t,-) cancels and this is the joint guidance; at s_text == 1 cfg(c, c, 1) == c.
        text_cond = e_tn if need["positive_without_audio"] else e_ta
        text_uncond = e_nn if need["negative"] else text_cond
        out = comfy.samplers.cfg_function(self.inner_model, text_cond, text_uncond, s_text, x, timestep,
                                          model_options=model_options, cond=conds[WITH_AUDIO] or conds[WITHOUT_AUDIO],
                                          uncond=conds[NEGATIVE])
        if need["positive_without_audio"] and need["positive"]:
            out = out + (e_ta - e_tn) * s_audio
        return out


class AudioGuidanceRatio:
    """The same guidance for KSampler, as model_options["sampler_calc_cond_batch_function"]:
    with KSampler's cfg s it gives s_text = s and s_audio = ratio * s.

    CFG computes e(-,-) + s * (c - e(-,-)); handing it c = e(t,-) + ratio * (e(t,a) - e(t,-))
    instead of e(t,a) yields the separate formula, from one calc_cond_batch call.
    """

    def __init__(self, ratio):
        self.ratio = float(ratio)

    def __call__(self, args):
        positive, negative = args["conds"][0], args["conds"][1]
        model, x, sigma, options = args["model"], args["input"], args["sigma"], args["model_options"]
        r = self.ratio
        if r == 1.0 or positive is None:
            return comfy.samplers.calc_cond_batch(model, [positive, negative], x, sigma, options)
        conds = [positive if r != 0.0 else None, negative, without_audio(positive)]
        e_ta, e_nn, e_tn = comfy.samplers.calc_cond_batch(model, conds, x, sigma, options)
        cond = e_tn if r == 0.0 else e_tn + (e_ta - e_tn) * r
        return [cond, e_nn]
