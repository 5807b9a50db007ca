"""Fast unit checks of the block table and weight parsing (blocks.py) and of the guidance
arithmetic (guidance.py), written so a wrong index, width or sign fails (scripts/mutation.sh)."""
import comfy.samplers
import pytest
import torch

from sonic_diffusion import blocks, guidance
from sonic_diffusion.blocks import BlockWeightsError


def test_block_table_matches_the_sd15_layout():
    names = [b.name for b in blocks.ADAPTER_BLOCKS]
    assert names == ["middle_0"] + [f"output_{k}" for k in range(3, 12)]
    assert [b.dim for b in blocks.ADAPTER_BLOCKS] == [1280] + [1280] * 3 + [640] * 3 + [320] * 3
    assert [b.dim_head for b in blocks.ADAPTER_BLOCKS] == [160] * 4 + [80] * 3 + [40] * 3
    mid, o7 = blocks.ADAPTER_BLOCKS[0], blocks.BLOCKS_BY_COMFY_KEY[("output", 7)]
    assert mid.comfy_block == ("middle", 0)
    assert mid.diffusers == "mid_block.attentions.0.transformer_blocks.0"
    assert mid.ldm == "middle_block.1.transformer_blocks.0"
    assert (o7.name, o7.comfy_block, o7.dim) == ("output_7", ("output", 7), 640)
    assert o7.diffusers == "up_blocks.2.attentions.1.transformer_blocks.0"
    assert o7.ldm == "output_blocks.7.1.transformer_blocks.0"
    assert blocks.BLOCKS_BY_COMFY_KEY[("output", 3)].diffusers == "up_blocks.1.attentions.0.transformer_blocks.0"
    assert blocks.BLOCKS_BY_COMFY_KEY[("output", 11)].diffusers == "up_blocks.3.attentions.2.transformer_blocks.0"
    assert set(blocks.BLOCKS_BY_COMFY_KEY) == {b.comfy_block for b in blocks.ADAPTER_BLOCKS}
    assert blocks.BLOCK_SITE_NAMES.startswith("middle, output 3, output 4") and blocks.BLOCK_SITE_NAMES.endswith(
        "output 11")
    shapes = {k: f(320) for k, f in blocks.BLOCK_TENSOR_SHAPES.items()}
    assert shapes == {"attn_adapter.to_q.weight": (320, 320), "attn_adapter.to_k.weight": (320, 768),
                      "attn_adapter.to_v.weight": (320, 768), "attn_adapter.to_out.0.weight": (320, 320),
                      "attn_adapter.to_out.0.bias": (320,), "norm_adapter.weight": (320,),
                      "norm_adapter.bias": (320,), "gate_adapter": (1,)}


def test_output_block_entries_are_built_from_their_index():
    """The table is built at import; building each entry again at test time checks the builder
    itself (a mutation tool switches code per call, not at import)."""
    for k in range(3, 12):
        assert blocks._output_block(k) == blocks.BLOCKS_BY_COMFY_KEY[("output", k)]
    assert blocks._output_block(5) == blocks.AdapterBlock(
        "output_5", ("output", 5), "up_blocks.1.attentions.2.transformer_blocks.0",
        "output_blocks.5.1.transformer_blocks.0", 1280)
    assert blocks._output_block(9).dim == 320 and blocks._output_block(6).dim == 640


def test_check_factor_keeps_the_limits_and_refuses_past_them():
    assert blocks.check_factor("strength", "2.5") == 2.5
    assert blocks.check_factor("strength", 10) == 10.0 and blocks.check_factor("strength", -10) == -10.0
    for bad in (10.001, -10.001, float("nan"), float("inf")):
        with pytest.raises(BlockWeightsError, match=r"strength .* is outside the supported range -10..10"):
            blocks.check_factor("strength", bad)


def test_parse_block_weights_reads_ten_numbers_within_the_limit():
    assert blocks.parse_block_weights("1, 0.5 0 -10,10,2 3 4 5 6") == (1.0, 0.5, 0.0, -10.0, 10.0, 2.0, 3.0, 4.0,
                                                                        5.0, 6.0)
    with pytest.raises(BlockWeightsError, match=r"needs 10 numbers \(middle, output 3.*got 9"):
        blocks.parse_block_weights("1 " * 9)
    with pytest.raises(BlockWeightsError, match="got 11"):
        blocks.parse_block_weights("1 " * 11)
    with pytest.raises(BlockWeightsError, match="'x' is not a number"):
        blocks.parse_block_weights("x" + " 1" * 9)
    for bad in ("nan", "inf", "-inf"):
        with pytest.raises(BlockWeightsError, match="is not a finite number"):
            blocks.parse_block_weights(bad + " 1" * 9)
    for bad in ("10.5", "-10.5"):
        with pytest.raises(BlockWeightsError, match=f"'{bad}' is outside the supported range -10..10"):
            blocks.parse_block_weights(bad + " 1" * 9)


def test_presets_enable_the_sites_they_name():
    on = {name: [b.comfy_block for b, w in zip(blocks.ADAPTER_BLOCKS, ws) if w] for name, ws in
          blocks.BLOCK_PRESETS.items()}
    assert on["middle only"] == [("middle", 0)]
    assert on["coarse (output 3-5)"] == [("output", k) for k in (3, 4, 5)]
    assert on["middle + coarse (output 3-5)"] == [("middle", 0)] + [("output", k) for k in (3, 4, 5)]
    assert on["medium (output 6-8)"] == [("output", k) for k in (6, 7, 8)]
    assert on["fine (output 9-11)"] == [("output", k) for k in (9, 10, 11)]
    assert len(on["all"]) == 10 and all(len(w) == 10 for w in blocks.BLOCK_PRESETS.values())


def test_predictions_needed_drops_zero_coefficients():
    assert guidance.predictions_needed(7.0, 3.0) == {"positive": True, "negative": True,
                                                     "positive_without_audio": True}
    assert guidance.predictions_needed(7.0, 7.0)["positive_without_audio"] is False
    assert guidance.predictions_needed(7.0, 0.0)["positive"] is False
    assert guidance.predictions_needed(1.0, 3.0)["negative"] is False
    assert guidance.predictions_needed(1.0 + 1e-12, 3.0)["negative"] is False  # isclose, as ComfyUI
    assert guidance.predictions_needed(1.0, 3.0, cfg1_optimization=False)["negative"] is True


class Recorder:
    """calc_cond_batch stand-in: a distinct prediction per cond (None stays None)."""

    def __init__(self):
        self.calls = []
        self.args = []

    def __call__(self, model, conds, x, sigma, options):
        self.calls.append(list(conds))
        self.args.append((model, x, sigma, options))
        return [None if c is None else torch.full((1,), float(c[0]["value"])) for c in conds]


def _cond(value, audio=None):
    model_conds = {} if audio is None else {guidance.MODEL_COND_KEY: audio}
    return {"value": value, "model_conds": model_conds}


class Audio:
    def __init__(self, name):
        self.name = name

    def without_audio(self):
        return Audio(self.name + "-without")


def test_without_audio_swaps_only_the_audio():
    audio = Audio("a")
    plain, with_audio, bare = _cond(1.0), _cond(2.0, audio), {"value": 3.0}
    out = guidance.without_audio([plain, with_audio, bare])
    assert out[0] is plain and out[2] is bare
    assert out[1]["model_conds"][guidance.MODEL_COND_KEY].name == "a-without" and out[1]["value"] == 2.0
    assert with_audio["model_conds"][guidance.MODEL_COND_KEY] is audio  # the input is untouched


@pytest.mark.parametrize("ratio", [0.0, 0.4, 1.0, 2.5])
def test_audio_guidance_ratio_hands_cfg_the_separate_formula(monkeypatch, ratio):
    calc = Recorder()
    monkeypatch.setattr(comfy.samplers, "calc_cond_batch", calc)
    # e(t,a) = 5 (positive with audio), e(-,-) = 1; e(t,-) comes from the same positive with the
    # negative audio, which the stand-in tells apart by value through without_audio's copy.
    positive, negative = [_cond(5.0, Audio("a"))], [_cond(1.0)]
    swapped = []
    monkeypatch.setattr(guidance, "without_audio", lambda conds: swapped.append(conds) or [_cond(3.0)])
    model, x, sigma, options = object(), torch.zeros(1), torch.ones(1), {"o": 1}
    out = guidance.AudioGuidanceRatio(ratio)({"conds": [positive, negative], "model": model, "input": x,
                                              "sigma": sigma, "model_options": options})
    assert len(calc.calls) == 1 and calc.args == [(model, x, sigma, options)]
    assert swapped == ([] if ratio == 1.0 else [positive])
    cond, uncond = out
    assert float(uncond) == 1.0
    if ratio == 1.0:
        assert calc.calls[0] == [positive, negative] and float(cond) == 5.0
    else:
        assert float(cond) == pytest.approx(3.0 + ratio * (5.0 - 3.0))
        assert (calc.calls[0][0] is None) == (ratio == 0.0)


def test_audio_guidance_ratio_passes_through_without_a_positive(monkeypatch):
    calc = Recorder()
    monkeypatch.setattr(comfy.samplers, "calc_cond_batch", calc)
    negative = [_cond(1.0)]
    guidance.AudioGuidanceRatio(0.5)({"conds": [None, negative], "model": None, "input": None, "sigma": None,
                                      "model_options": {}})
    assert calc.calls == [[None, negative]]


def _dual(text_scale, audio_scale, monkeypatch):
    """A DualGuider over stand-in predictions e(t,a) = 5, e(-,-) = 1, e(t,-) = 3."""
    calc = Recorder()
    monkeypatch.setattr(comfy.samplers, "calc_cond_batch", calc)
    g = guidance.DualGuider.__new__(guidance.DualGuider)
    recorded = {}
    g.inner_set_conds = recorded.update
    g.set_conds([_cond(5.0)], [_cond(1.0)])
    g.conds = {"positive": [_cond(5.0)], "negative": [_cond(1.0)], "positive_without_audio": [_cond(3.0)]}
    g.inner_model = object()
    g.set_cfg(text_scale, audio_scale)
    return g, calc, recorded


class CfgRecorder:
    """cfg_function stand-in: checks what the guider hands on, computes CFG's formula."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, cond_pred, uncond_pred, scale, x, timestep, model_options=None, cond=None,
                 uncond=None):
        self.calls.append((model, x, timestep, model_options, cond, uncond))
        return uncond_pred + (cond_pred - uncond_pred) * scale


@pytest.mark.parametrize(("s_text", "s_audio", "expected"), [
    (7.0, 3.0, 1 + 7 * (3 - 1) + 3 * (5 - 3)),
    (7.0, 7.0, 1 + 7 * (5 - 1)),       # joint guidance: e(t,-) is never computed
    (7.0, 0.0, 1 + 7 * (3 - 1)),       # no audio guidance: e(t,a) is never computed
    (1.0, 3.0, 3 + 3 * (5 - 3)),       # s_text 1: e(-,-) is never computed
    (1.0, 1.0, 5),
])
def test_dual_guider_predicts_the_separate_formula(monkeypatch, s_text, s_audio, expected):
    g, calc, recorded = _dual(s_text, s_audio, monkeypatch)
    cfg = CfgRecorder()
    monkeypatch.setattr(comfy.samplers, "cfg_function", cfg)
    assert [v[0]["value"] for v in (recorded["positive"], recorded["negative"],
                                    recorded["positive_without_audio"])] == [5.0, 1.0, 5.0]
    assert g.cfg == s_text and g.text_scale == s_text and g.audio_scale == s_audio
    x, t, options = torch.zeros(1), torch.ones(1), {"o": 1}
    out = g.predict_noise(x, t, model_options=options)
    assert float(out) == pytest.approx(expected)
    need = guidance.predictions_needed(s_text, s_audio)
    assert [c is not None for c in calc.calls[0]] == [need[k] for k in guidance.COND_KEYS]
    assert calc.args == [(g.inner_model, x, t, options)]
    conds = calc.calls[0]
    # The cond handed on is the audio prompt, or the prompt without audio when that one is not computed.
    assert cfg.calls == [(g.inner_model, x, t, options, conds[0] or conds[2], conds[1])]


def test_dual_guider_default_audio_scale_is_the_text_scale(monkeypatch):
    g, calc, _ = _dual(4.0, None, monkeypatch)
    assert g.audio_scale == 4.0
    g.set_cfg(1.0, None)
    out = g.predict_noise(torch.zeros(1), torch.ones(1), model_options={"disable_cfg1_optimization": True})
    assert float(out) == 5.0 and calc.calls[-1][1] is not None  # e(-,-) computed as ComfyUI asks
    g.predict_noise(torch.zeros(1), torch.ones(1), model_options={})
    assert calc.calls[-1][1] is None
