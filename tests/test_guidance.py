"""Sonic Dual Guider: separate text and audio guidance through ComfyUI's own sampling.

References come from the stock CFGGuider only: cfg 1 gives the positive prediction
alone, cfg 0 the negative alone, and a model patched with the null (or negative)
audio as its audio gives e(t,-). A one-step Euler run to sigma 0 returns the guided
prediction itself, so the formula is checked on real model outputs.
"""
import comfy.sample
import comfy.samplers
import comfy.sd
import folder_paths
import pytest
import torch

import nodes
from sonic_diffusion import AUDIO_EMBED_DIM
from testing.graphs import link_audio_graph_files

AUDIO_A = "tone440_mono_44k_3s.wav"
AUDIO_B = "noise_stereo_48k_10s_f32.wav"
PROMPT = "a landscape photograph"


def _run(node_id, **inputs):
    return nodes.NODE_CLASS_MAPPINGS[node_id].execute(**inputs).result


def load_parts(host, fixture_dir, prompts):
    """The loaded stand-ins, run node by node (no sampling: the CPU is slow): model, adapter,
    the two audios' embeddings, one conditioning per entry of `prompts` and the model patched
    with audio A."""
    n = link_audio_graph_files(host, fixture_dir, AUDIO_A, AUDIO_B)
    model, clip, _ = comfy.sd.load_checkpoint_guess_config(
        folder_paths.get_full_path_or_raise("checkpoints", n["ckpt"]), output_vae=False)[:3]
    encoder = _run("SonicAudioEncoderLoader", clap_name=n["clap"])[0]

    def embed(name):
        audio = _run("SonicLoadAudio", audio=name, start_time=0.0, duration=0.0, gain_db=0.0)[0]
        return _run("SonicAudioEncode", audio_encoder=encoder, audio=audio, window="center", offset=0.0)[0]

    parts = {"model": model, "adapter": _run("SonicAdapterLoader", adapter_name=n["gates"], projector_name=n["proj"])[0],
             "audio": embed(n["a"]), "other_audio": embed(n["b"])}
    parts.update({key: nodes.CLIPTextEncode().encode(clip, text)[0] for key, text in prompts.items()})
    parts["patched"] = apply(parts, parts["audio"])
    return parts


@pytest.fixture(scope="module")
def parts(host, fixture_dir):
    return load_parts(host, fixture_dir, {"pos": PROMPT, "neg": ""})


def apply(parts, audio, negative_audio=None):
    node = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
    return node.execute(model=parts["model"], sonic_adapter=parts["adapter"], audio_embeds=audio, strength=1.0,
                        start_percent=0.0, end_percent=1.0, negative_audio_embeds=negative_audio).result[0]


def cfg_guider(model, pos, neg, cfg):
    g = comfy.samplers.CFGGuider(model)
    g.set_conds(pos, neg)
    g.set_cfg(cfg)
    return g


def dual_guider(model, parts, text_cfg, audio_cfg):
    node = nodes.NODE_CLASS_MAPPINGS["SonicDualGuider"]
    return node.execute(model=model, positive=parts["pos"], negative=parts["neg"], text_cfg=text_cfg,
                        audio_cfg=audio_cfg).result[0]


def sample(guider, steps=3, sampler="euler", seed=11, batch=1):
    latent = torch.zeros(batch, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, seed)
    sampling = guider.model_patcher.get_model_object("model_sampling")
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", steps)
    out = guider.sample(noise, latent, comfy.samplers.sampler_object(sampler), sigmas, disable_pbar=True, seed=seed)
    assert out.isfinite().all()
    return out


def spy_calls(model):
    """A clone of model whose UNet calls are recorded (chunk labels per call), from outside."""
    calls = []
    spied = model.clone()

    def wrapper(apply_model, args):
        calls.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    spied.set_model_unet_function_wrapper(wrapper)
    return spied, calls


def one_step(guider):
    """The guided prediction itself: one Euler step to sigma 0 returns the denoised latent."""
    return sample(guider, steps=1)


@pytest.fixture(scope="module")
def predictions(parts):
    """e(t,a), e(-,-), e(t,-) from the stock CFGGuider, for the null and a negative audio."""
    out = {}
    for label, neg_audio in (("null", None), ("negative", parts["other_audio"])):
        patched = parts["patched"] if neg_audio is None else apply(parts, parts["audio"], neg_audio)
        # e(t,-): the prompt with the negative audio as its audio (null audio = projector(0)).
        without = apply(parts, torch.zeros(1, AUDIO_EMBED_DIM) if neg_audio is None else neg_audio, neg_audio)
        out[label] = {"model": patched, "without": without,
                      "ta": one_step(cfg_guider(patched, parts["pos"], parts["neg"], 1.0)),
                      "nn": one_step(cfg_guider(patched, parts["pos"], parts["neg"], 0.0)),
                      "tn": one_step(cfg_guider(without, parts["pos"], parts["neg"], 1.0))}
    return out


def formula(p, s_text, s_audio):
    return p["nn"] + s_text * (p["tn"] - p["nn"]) + s_audio * (p["ta"] - p["tn"])


def close(got, want):
    scale = max(1.0, float(want.abs().max()))
    # measured max |diff| / scale (scale ~280-480 here): 2.2e-6 (7.5, 3), 3.4e-6 (1, 5), 1.9e-6 (4, 0),
    # 2.1e-6 negative audio, 2.2e-6 and ~3e-6 KSampler option (3-row vs 1- and 2-row batches)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5 * scale)


@pytest.mark.parametrize(("scales", "rows"), [
    ((7.5, 3.0), [0, 1, 2]),   # all three predictions in one call
    ((1.0, 5.0), [0, 2]),      # text scale 1: e(-,-) has coefficient 0
    ((4.0, 0.0), [1, 2]),      # audio scale 0: e(t,a) has coefficient 0
])
def test_formula_on_real_predictions_in_one_call(parts, predictions, scales, rows):
    p = predictions["null"]
    assert (p["ta"] - p["tn"]).abs().max() > 1e-3  # the audio really acts
    assert (p["tn"] - p["nn"]).abs().max() > 1e-3  # and so does the prompt
    spied, calls = spy_calls(p["model"])
    close(one_step(dual_guider(spied, parts, *scales)), formula(p, *scales))
    assert [sorted(c) for c in calls] == [rows]


def test_negative_audio_is_the_minus_audio(parts, predictions):
    p = predictions["negative"]
    assert (p["tn"] - predictions["null"]["tn"]).abs().max() > 1e-3  # negative audio != null audio
    close(one_step(dual_guider(p["model"], parts, 7.5, 3.0)), formula(p, 7.5, 3.0))


def test_zero_audio_scale_removes_the_audio(parts, predictions):
    p = predictions["null"]
    dual = one_step(dual_guider(p["model"], parts, 4.0, 0.0))
    text_only = one_step(cfg_guider(p["without"], parts["pos"], parts["neg"], 4.0))
    close(dual, text_only)  # measured: 0 (same rows, batched in another order)
    assert (dual - formula(p, 4.0, 4.0)).abs().max() > 1e-3  # unlike the joint guidance


def test_equal_scales_equal_the_joint_guidance(parts):
    spied, calls = spy_calls(parts["patched"])
    joint = sample(cfg_guider(parts["patched"], parts["pos"], parts["neg"], 6.0), steps=2, sampler="dpmpp_2m")
    dual = sample(dual_guider(spied, parts, 6.0, 6.0), steps=2, sampler="dpmpp_2m")
    # measured: 0 (the same batched call and cfg_function as CFGGuider)
    torch.testing.assert_close(dual, joint, rtol=0, atol=0)
    assert [sorted(c) for c in calls] == [[0, 1]] * 2


@pytest.mark.parametrize("sampler", ["uni_pc", "dpmpp_2m_sde"])
def test_other_samplers_one_call_per_step(parts, sampler):
    spied, calls = spy_calls(parts["patched"])
    out = sample(dual_guider(spied, parts, 7.5, 3.0), steps=2, sampler=sampler)
    assert out.isfinite().all()
    assert len(calls) == 2 and all(sorted(c) == [0, 1, 2] for c in calls), calls


def test_other_patches_see_comfy_labels(parts):
    """Only the Sonic patches see the relabelled chunk; another attn2 output patch
    still sees ComfyUI's own indices."""
    seen = []
    model = parts["patched"].clone()

    def observer(n, extra_options):
        seen.append(tuple(extra_options["cond_or_uncond"]))
        return n

    model.set_model_attn2_output_patch(observer)
    one_step(dual_guider(model, parts, 5.0, 2.0))
    assert seen and all(sorted(s) == [0, 1, 2] for s in seen)


def ratio_model(model, ratio):
    return nodes.NODE_CLASS_MAPPINGS["SonicAudioGuidance"].execute(model=model, audio_ratio=ratio).result[0]


@pytest.mark.parametrize(("ratio", "rows"), [(0.4, [0, 1, 2]), (0.0, [1, 2])])
def test_ksampler_option_gives_the_same_guidance(parts, predictions, ratio, rows):
    """KSampler's path (CFGGuider + sampling_function) on the optioned model: text cfg 7.5,
    audio 7.5 * ratio, one call per step."""
    p = predictions["null"]
    spied, calls = spy_calls(ratio_model(p["model"], ratio))
    close(one_step(cfg_guider(spied, parts["pos"], parts["neg"], 7.5)), formula(p, 7.5, 7.5 * ratio))
    assert [sorted(c) for c in calls] == [rows]


def test_ksampler_option_at_ratio_one_changes_nothing(parts):
    joint = one_step(cfg_guider(parts["patched"], parts["pos"], parts["neg"], 6.0))
    same = one_step(cfg_guider(ratio_model(parts["patched"], 1.0), parts["pos"], parts["neg"], 6.0))
    torch.testing.assert_close(same, joint, rtol=0, atol=0)  # measured: 0 (the stock call)


def test_node_errors_name_the_node_and_the_fix(parts):
    node = nodes.NODE_CLASS_MAPPINGS["SonicDualGuider"]
    with pytest.raises(ValueError, match=r"Sonic Dual Guider.*Apply Sonic Adapter"):
        node.execute(model=parts["model"], positive=parts["pos"], negative=parts["neg"], text_cfg=5.0, audio_cfg=2.0)
    with pytest.raises(ValueError, match=r"Sonic Dual Guider.*audio_cfg.*finite"):
        node.execute(model=parts["patched"], positive=parts["pos"], negative=parts["neg"], text_cfg=5.0,
                     audio_cfg=float("nan"))
    ratio = nodes.NODE_CLASS_MAPPINGS["SonicAudioGuidance"]
    with pytest.raises(ValueError, match=r"Sonic Audio Guidance.*Apply Sonic Adapter"):
        ratio.execute(model=parts["model"], audio_ratio=0.5)
    with pytest.raises(ValueError, match=r"Sonic Audio Guidance.*audio_ratio.*finite"):
        ratio.execute(model=parts["patched"], audio_ratio=float("inf"))
