"""Which prompt gets which audio, under every guider (docs/design.md section 10.6).

Observed from outside: a spy on calc_cond_batch maps each chunk label to the guider's
role for that cond list, a spy on the patch reads which token set each chunk used.
References come from separately patched models through the stock CFGGuider only (cfg 1
gives one prompt's prediction alone): model_audio gives every prompt the audio,
model_null gives every prompt the null audio. A one-step Euler run to sigma 0 returns
the guided prediction itself, so each guider's formula is checked on real predictions.
"""
import contextlib

import comfy.samplers
import pytest
import test_guidance
import torch
from comfy_extras import nodes_custom_sampler, nodes_perpneg
from test_guidance import apply, cfg_guider, load_parts, one_step, spy_calls

import nodes
from sonic_diffusion import AUDIO_EMBED_DIM
from sonic_diffusion.patch import CALL_AUDIO, SonicAudioPatch


@pytest.fixture(scope="module")
def parts(host, fixture_dir):
    p = load_parts(host, fixture_dir, {"pos": "a landscape photograph", "neg": "blurry", "mid": "a photograph",
                                       "empty": ""})
    # References: every prompt with the audio / every prompt with the null audio (projector of 0).
    p["model_audio"] = apply(p, p["audio"], p["audio"])
    p["model_null"] = apply(p, torch.zeros(1, AUDIO_EMBED_DIM))
    return p


def close(got, want):
    """test_guidance's bound (2e-5 x output scale); prints the measured ratio. Measured here
    (batched three- or two-prompt call vs one prompt per call): Dual CFG 2.9e-6, nested
    5.8e-6, Perp-Neg 3.8e-6, CFG 2.5e-6; regions and context windows in their modules."""
    scale = max(1.0, float(want.abs().max()))
    print(f"max |diff| / scale: {float((got - want).abs().max()) / scale:.2e}")
    test_guidance.close(got, want)


def prediction(parts, model, cond):
    """One prompt's prediction alone (stock CFGGuider at cfg 1)."""
    return one_step(cfg_guider(parts[model], parts[cond], parts["neg"], 1.0))


@contextlib.contextmanager
def observe_roles(monkeypatch, guider):
    """Yields a set filled with (role, token kind) per chunk of every Sonic patch call;
    token kind: "audio" (the adapter's audio), "negative" (its negative/null audio)."""
    seen = set()
    labels = {}
    real_calc, real_call = comfy.samplers.calc_cond_batch, SonicAudioPatch.__call__

    def calc(model, conds, *args, **kwargs):
        roles = {i: next((r for r, lst in guider.conds.items() if lst is c), "?") for i, c in enumerate(conds)}
        labels.clear()
        labels.update(roles)
        return real_calc(model, conds, *args, **kwargs)

    def call(self, n, extra_options):
        audio = extra_options[CALL_AUDIO]
        for label, (rows, _) in zip(extra_options["cond_or_uncond"], audio.rows_of(self.uid)):
            kind = "audio" if rows.tokens is self.cond_tokens else \
                "negative" if rows.tokens is self.uncond_tokens else "other"
            seen.add((labels.get(label, "?"), kind))
        return real_call(self, n, extra_options)

    monkeypatch.setattr(comfy.samplers, "calc_cond_batch", calc)
    monkeypatch.setattr(SonicAudioPatch, "__call__", call)
    yield seen


def dual_cfg(model, parts, cfg1, cfg2, nested):
    g = nodes_custom_sampler.Guider_DualCFG(model)
    g.set_conds(parts["pos"], parts["mid"], parts["neg"])
    g.set_cfg(cfg1, cfg2, nested) if nested else g.set_cfg(cfg1, cfg2)
    return g


def perp_neg_guider(model, parts, cfg, neg_scale):
    g = nodes_perpneg.Guider_PerpNeg(model)
    g.set_conds(parts["pos"], parts["neg"], parts["empty"])
    g.set_cfg(cfg, neg_scale)
    return g


def _nested_supported():
    import inspect

    return "nested" in inspect.signature(nodes_custom_sampler.Guider_DualCFG.set_cfg).parameters


@pytest.mark.parametrize("nested", [False, True])
def test_dual_cfg_guider_gives_audio_to_the_positive_only(parts, monkeypatch, nested):
    if nested and not _nested_supported():
        pytest.skip("this ComfyUI's Dual CFG Guider has no nested mode")
    spied, calls = spy_calls(parts["patched"])
    guider = dual_cfg(spied, parts, 5.0, 3.0, nested)
    with observe_roles(monkeypatch, guider) as seen:
        got = one_step(guider)
    assert seen == {("positive", "audio"), ("middle", "negative"), ("negative", "negative")}
    assert [sorted(c) for c in calls] == [[0, 1, 2]]  # all three prompts in one UNet call
    monkeypatch.undo()
    pos, mid, neg = (prediction(parts, "model_audio", "pos"), prediction(parts, "model_null", "mid"),
                     prediction(parts, "model_null", "neg"))
    want = neg + 3.0 * (mid + 5.0 * (pos - mid) - neg) if nested else neg + 3.0 * (mid - neg) + 5.0 * (pos - mid)
    close(got, want)


def test_perp_neg_guider_keeps_the_audio_out_of_empty_and_negative(parts, monkeypatch):
    spied, calls = spy_calls(parts["patched"])
    guider = perp_neg_guider(spied, parts, 6.0, 1.0)
    with observe_roles(monkeypatch, guider) as seen:
        got = one_step(guider)
    assert seen == {("positive", "audio"), ("negative", "negative"), ("empty_negative_prompt", "negative")}
    assert [sorted(c) for c in calls] == [[0, 1, 2]]
    monkeypatch.undo()
    pos, neg, empty = (prediction(parts, "model_audio", "pos"), prediction(parts, "model_null", "neg"),
                       prediction(parts, "model_null", "empty"))
    x = torch.zeros_like(pos)
    close(got, nodes_perpneg.perp_neg(x, pos, neg, empty, 1.0, 6.0))
    # The audio does not cancel out: the result differs from the audio-free guidance.
    free = [prediction(parts, "model_null", c) for c in ("pos", "neg", "empty")]
    assert (got - nodes_perpneg.perp_neg(x, *free, 1.0, 6.0)).abs().max() > 1e-3


def test_cfg_guider_and_ksampler_batch_stay_one_call(parts, monkeypatch):
    spied, calls = spy_calls(parts["patched"])
    guider = cfg_guider(spied, parts["pos"], parts["neg"], 4.0)
    with observe_roles(monkeypatch, guider) as seen:
        got = one_step(guider)
    assert seen == {("positive", "audio"), ("negative", "negative")}
    assert [sorted(c) for c in calls] == [[0, 1]]
    monkeypatch.undo()
    pos, neg = prediction(parts, "model_audio", "pos"), prediction(parts, "model_null", "neg")
    close(got, neg + 4.0 * (pos - neg))


def test_pack_dual_guider_roles(parts, monkeypatch):
    node = nodes.NODE_CLASS_MAPPINGS["SonicDualGuider"]
    guider = node.execute(model=parts["patched"], positive=parts["pos"], negative=parts["neg"], text_cfg=5.0,
                          audio_cfg=2.0).result[0]
    with observe_roles(monkeypatch, guider) as seen:
        one_step(guider)
    assert seen == {("positive", "audio"), ("negative", "negative"), ("positive_without_audio", "negative")}


def test_negative_audio_goes_to_every_other_role(parts, monkeypatch):
    model = apply(parts, parts["audio"], parts["other_audio"])
    guider = perp_neg_guider(model, parts, 6.0, 1.0)
    with observe_roles(monkeypatch, guider) as seen:
        one_step(guider)
    assert seen == {("positive", "audio"), ("negative", "negative"), ("empty_negative_prompt", "negative")}
