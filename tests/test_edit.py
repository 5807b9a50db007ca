"""Audio Edit (Sonic): DDIM inversion + Plug-and-Play injection, in the real host.

The references below are written from the formulas of the authors' diffusers code
(tests/edit_support.py), independently of the sigma-space code in sonic_diffusion/edit/.
Latents are 8x8 (64x64 images) and runs use 3-4 steps: CPU time matters.
"""
import copy
import math

import comfy.model_management
import comfy.samplers
import pytest
import torch
import torch.nn as nn
from edit_support import A, close, edit_graph, sigma_of, unet_eps

import nodes
from sonic_diffusion import edit

pytest_plugins = ("edit_support",)  # its fixtures: names, first_run, parts

NODE = nodes.NODE_CLASS_MAPPINGS["SonicAudioEdit"]


def run_edit(parts, positive=None, latent=None, **kw):
    """The node's edit with a private inversion cache (no state shared between tests)."""
    args = dict(steps=3, cfg=6.0, attention_injection=0.0, feature_injection=0.0)
    args.update(kw)
    inversions = args.pop("inversions", None) or edit.InversionCache()
    return edit.audio_edit(parts["patched"], positive or parts["pos"], parts["neg"], latent or parts["latent"],
                           inversions=inversions, **args)["samples"].cpu()


# --- schedule ------------------------------------------------------------------------

def test_timesteps_are_the_authors_ddim_and_comfy_ddim_uniform(parts):
    assert edit.ddim_timesteps(1000, 50) == list(range(981, 0, -20))
    ms = parts["source"].get_model_object("model_sampling")
    uniform = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 50)
    assert [int(ms.timestep(s)) for s in uniform[:-1]] == edit.ddim_timesteps(1000, 50) and float(uniform[-1]) == 0
    sigmas = edit.ddim_sigmas(ms, 50)
    for t, s in zip(edit.ddim_timesteps(1000, 50), sigmas[:-1].tolist()):
        assert abs(s - sigma_of(t)) < 1e-6 * s
    assert abs(float(sigmas[-1]) - sigma_of(0)) < 1e-6  # set_alpha_to_one False: the last level is a_0
    # ComfyUI's ddim_uniform SIGMAS (ending in 0) describe the same schedule.
    a, b = edit.EditSchedule(uniform, ms), edit.EditSchedule(sigmas, ms)
    assert a.sampling_pairs() == pytest.approx(b.sampling_pairs(), rel=1e-6)


def test_timesteps_equal_diffusers_ddim_scheduler():
    from diffusers import DDIMScheduler  # installed in the test venv: a missing one is a failure

    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                        set_alpha_to_one=False, steps_offset=1)
    for steps in (50, 6, 7, 333, 999):
        ref.set_timesteps(steps)
        assert ref.timesteps.tolist() == edit.ddim_timesteps(1000, steps)


def test_every_step_count_runs_each_timestep_once():
    """1000 steps used to run timestep 999 twice (the offset pushed the top past 999)."""
    for steps in range(1, 1001):
        ts = edit.ddim_timesteps(1000, steps)
        assert len(ts) == steps and len(set(ts)) == steps and ts == sorted(ts, reverse=True)
        assert ts[-1] >= 0 and ts[0] <= 999
    assert edit.ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    with pytest.raises(edit.EditInputError, match="1001 steps exceed"):
        edit.ddim_timesteps(1000, 1001)


def test_1000_step_schedule_levels_never_repeat(parts):
    ms = parts["source"].get_model_object("model_sampling")
    sched = edit.EditSchedule(edit.ddim_sigmas(ms, 1000), ms)
    assert len(set(sched.sigmas)) == 1000 == sched.steps
    assert len(sched.inversion_pairs()) == len(sched.sampling_pairs()) == 1000


def test_injection_step_counts():
    assert edit.injection_steps(50, 0.8) == 40
    assert edit.injection_steps(10, 0.7) == 7
    assert edit.injection_steps(5, 0.5) == 2  # int(), as the authors
    assert edit.injection_steps(5, 0.0) == 0 and edit.injection_steps(5, 1.0) == 5


# --- single steps against the formulas ----------------------------------------------------

def _ctx(cond):
    return cond[0][0].float()


def test_inversion_step_matches_formula_with_audio_off(parts):
    """x_t = sqrt(a_t) * (x - sqrt(1 - a_p) eps) / sqrt(a_p) + sqrt(1 - a_t) eps, eps = UNet(x, t), on
    the plain UNet: the adapter-patched model inverts exactly like the unpatched one."""
    g = torch.Generator().manual_seed(1)
    x_vp = torch.randn(1, 4, 8, 8, generator=g)
    neg = _ctx(parts["neg"])
    patched = parts["patched"]
    for t_prev, t in ((0, 1), (461, 481)):
        eps = unet_eps(parts["source"], x_vp, t, neg, [1])
        a_p, a_t = float(A[t_prev]), float(A[t])
        ref = a_t ** 0.5 * (x_vp - (1 - a_p) ** 0.5 * eps) / a_p ** 0.5 + (1 - a_t) ** 0.5 * eps
        with torch.no_grad():
            ours, _ = edit.inversion_step(patched.model, patched.model_options, x_vp / a_p ** 0.5,
                                          sigma_of(t_prev), sigma_of(t), neg)
        close(ours * a_t ** 0.5, ref)


def test_ddim_step_matches_formula(parts):
    """x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps, x0 = (x - sqrt(1 - a) eps) / sqrt(a)."""
    g = torch.Generator().manual_seed(2)
    x_vp = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.cat([_ctx(parts["neg"]), _ctx(parts["pos"])])
    t, t_prev = 501, 481
    eps = unet_eps(parts["patched"], x_vp, t, ctx, [1, 0])
    a, a_p = float(A[t]), float(A[t_prev])
    ref = a_p ** 0.5 * (x_vp - (1 - a) ** 0.5 * eps) / a ** 0.5 + (1 - a_p) ** 0.5 * eps
    s, s_p = sigma_of(t), sigma_of(t_prev)
    patched = parts["patched"]
    with torch.no_grad():
        denoised = edit.call_model(patched.model, patched.model_options, x_vp / a ** 0.5, s, ctx, [1, 0])
    close((x_vp / a ** 0.5 - denoised) / s, eps)
    close(edit.ddim_step(x_vp / a ** 0.5, denoised, s, s_p) * a_p ** 0.5, ref)


# --- injection hooks against a hand reference ---------------------------------------------

def _attention(q, k, v, heads):
    b, n, d = q.shape
    dh = d // heads
    q, k, v = (t.view(b, -1, heads, dh).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, d)


def test_attention_injection_matches_hand_reference():
    g = torch.Generator().manual_seed(3)
    B, heads = 2, 4
    src_q, src_k, src_v = (torch.randn(B, 6, 16, generator=g) for _ in range(3))
    q, k, v = (torch.randn(2 * B, 6, 16, generator=g) for _ in range(3))
    state = edit.InjectionState()
    patch = edit.AttentionInjection(state, 7)
    opts = {"n_heads": heads, "activations_shape": [B, 16, 2, 3], "cond_or_uncond": [1, 0]}
    close(patch(q, k, v, opts), _attention(q, k, v, heads))  # idle: plain attention
    state.attention, state.mode = True, "record"
    close(patch(src_q, src_k, src_v, {**opts, "cond_or_uncond": [1]}), _attention(src_q, src_k, src_v, heads))
    state.mode = "inject"
    ref = _attention(src_q.repeat(2, 1, 1), src_k.repeat(2, 1, 1), v, heads)  # rows keep their own V
    close(patch(q, k, v, opts), ref)


def test_feature_injection_matches_hand_reference():
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(0)
    layers = nn.Sequential(nn.GroupNorm(2, 4), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(4, 4, 3, padding=1))
    state = edit.InjectionState()
    wrapped = edit.FeatureInjection(layers, state, 4)
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in layers.named_parameters()]
    src, h = torch.randn(1, 4, 5, 5, generator=g), torch.randn(2, 4, 5, 5, generator=g)
    with torch.no_grad():
        assert torch.equal(wrapped(h), layers(h))  # idle: exact pass-through
        state.features, state.mode = True, "record"
        assert torch.equal(wrapped(src), layers(src))
        state.mode = "inject"
        out = wrapped(h)
    close(out, layers(src).repeat(2, 1, 1, 1))


def test_area_chunks_get_the_source_cropped_to_their_area():
    state = edit.InjectionState()
    state.latent_hw, state.areas = (8, 8), {"u1": (4, 2)}  # an area at y=4, x=2 (latent units)
    src = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)  # a block at half resolution
    state.source[("features", 4)] = (src, (4, 4))
    out = edit.injection.source_rows(state, ("features", 4), (2, 2), 1, {"uuids": ["u1"]}, tokens=False)
    assert torch.equal(out, src[:, :, 2:4, 1:3])
    with pytest.raises(edit.EditInputError, match="no area conditioning explains it"):
        edit.injection.source_rows(state, ("features", 4), (2, 2), 1, {"uuids": ["other"]}, tokens=False)


# --- whole edits -----------------------------------------------------------------------

def test_injection_happens_at_the_right_blocks_and_steps_only(parts, monkeypatch):
    """Observed from outside: a spy on the source pass counts steps, a spy on the
    injection records which hook injected in which step."""
    seen, step = set(), [-1]
    real_call, real_rows = edit.sampler.call_model, edit.injection.source_rows

    def call_spy(*args, **kwargs):
        if not (len(args) > 6 and args[6]):  # not an inversion call (those switch the audio off)
            step[0] += 1
        return real_call(*args, **kwargs)

    def rows_spy(state, key, *args, **kwargs):
        seen.add((key[0], key[1], step[0]))
        return real_rows(state, key, *args, **kwargs)

    monkeypatch.setattr(edit.sampler, "call_model", call_spy)
    monkeypatch.setattr(edit.injection, "source_rows", rows_spy)
    run_edit(parts, steps=4, cfg=5.0, attention_injection=0.75, feature_injection=0.5)
    expected = {(kind, k, i) for kind in ("q", "k") for k in range(4, 12) for i in range(3)}
    expected |= {("features", k, i) for k in (4, 5) for i in range(2)}
    assert seen == expected


def _reference_edit(parts, steps, cfg):
    """Plain DDIM with the adapter from the inverted noise, both loops written from the
    authors' formulas on VP latents and the raw UNet."""
    ts = list(range(1, 1000, 1000 // steps))[:steps]  # ascending: 1, 1 + r, ...
    x0 = parts["source"].model.process_latent_in(parts["latent"]["samples"].float())
    neg, pos = _ctx(parts["neg"]), _ctx(parts["pos"])
    latent, prev = x0, 0
    for t in ts:  # inversion: audio off, empty prompt, eps evaluated at the next timestep
        eps = unet_eps(parts["patched"], latent, t, neg, [1], audio_off=True)
        a, a_p = float(A[t]), float(A[prev])
        latent = a ** 0.5 * (latent - (1 - a_p) ** 0.5 * eps) / a_p ** 0.5 + (1 - a) ** 0.5 * eps
        prev = t
    x = latent
    desc = ts[::-1]
    for i, t in enumerate(desc):
        e = unet_eps(parts["patched"], torch.cat([x, x]), t, torch.cat([neg, pos]), [1, 0])
        e = e[:1] + cfg * (e[1:] - e[:1])
        a = float(A[t])
        a_p = float(A[desc[i + 1]]) if i + 1 < len(desc) else float(A[0])
        x = a_p ** 0.5 * (x - (1 - a) ** 0.5 * e) / a ** 0.5 + (1 - a_p) ** 0.5 * e
    return parts["source"].model.process_latent_out(x)


@pytest.fixture(scope="module")
def plain_edit(parts):
    return run_edit(parts)


def test_zero_fractions_equal_plain_ddim_from_the_inverted_noise(parts, plain_edit):
    close(plain_edit, _reference_edit(parts, 3, 6.0), atol=1e-4)


def test_each_injection_changes_the_result(parts, plain_edit):
    attn = run_edit(parts, attention_injection=0.34)
    feat = run_edit(parts, feature_injection=0.34)
    assert (plain_edit - attn).abs().max() > 1e-3
    assert (plain_edit - feat).abs().max() > 1e-3


def test_batch_of_two_latents_edits_each_like_alone(parts):
    lat = parts["latent"]["samples"]
    kw = dict(steps=3, cfg=5.0, attention_injection=0.67, feature_injection=0.34)
    both = run_edit(parts, latent={"samples": torch.cat([lat, lat.flip(-1)])}, **kw)
    one = run_edit(parts, latent={"samples": lat.flip(-1)}, **kw)
    close(both[1:], one, atol=1e-4)


def test_source_model_is_untouched(parts):
    source, patched = parts["source"], parts["patched"]
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = _ctx(parts["neg"])
    before_src = unet_eps(source, x, 301, ctx, [0])
    before_patched = unet_eps(patched, x, 301, ctx, [0])
    opts_before = (copy.copy(source.model_options), copy.copy(patched.model_options))
    run_edit(parts, steps=4, attention_injection=1.0, feature_injection=1.0)
    for m in (source, patched):
        assert m.object_patches == {}
        assert "patches_replace" not in m.model_options["transformer_options"]
    assert (source.model_options, patched.model_options) == opts_before
    assert torch.equal(unet_eps(source, x, 301, ctx, [0]), before_src)
    assert torch.equal(unet_eps(patched, x, 301, ctx, [0]), before_patched)
    comfy.model_management.load_models_gpu([source])
    for k in (4, 5):
        assert type(source.model.diffusion_model.output_blocks[k][0].out_layers) is nn.Sequential
    assert torch.equal(unet_eps(source, x, 301, ctx, [0]), before_src)


def test_input_errors_name_the_node_and_the_fix(parts):
    ok = dict(model=parts["patched"], positive=parts["pos"], negative=parts["neg"], latent=parts["latent"],
              steps=4, cfg=7.5, attention_injection=0.8, feature_injection=0.8)
    bad = [
        (dict(latent={"samples": torch.zeros(1, 16, 8, 8)}), "not an SD 1.x VAE latent.*VAE Encode"),
        (dict(latent={**parts["latent"], "noise_mask": torch.ones(1, 1, 8, 8)}), "noise mask.*remove"),
        (dict(cfg=-1.0), "cfg is -1.0"),
        (dict(attention_injection=1.5), "attention_injection is 1.5.*from 0 to 1"),
        (dict(feature_injection=-0.1), "feature_injection is -0.1"),
        (dict(latent={"samples": torch.zeros(3, 4, 8, 8)},
              negative=[[_ctx(parts["neg"]).repeat(2, 1, 1), {}]]), "negative has a batch of 2 for 3 latents"),
        (dict(negative=[[torch.zeros(1, 77, 1024), {}]]), "negative is .*SD 1.x text embeddings"),
        (dict(negative=parts["neg"] + parts["neg"]), "negative holds 2 conditionings"),
    ]
    for name in ("cfg", "attention_injection", "feature_injection"):
        for value in (float("nan"), float("inf")):
            bad.append((dict({name: value}), f"input '{name}' is {value}; enter a finite number"))
    for change, message in bad:
        with pytest.raises(ValueError, match=r"^Audio Edit \(Sonic\): .*" + message):
            NODE.execute(**{**ok, **change})


# --- through the executor --------------------------------------------------------------

def test_edit_graph_audio_changes_the_edit(host, names, first_run):
    a1 = first_run["image"]
    assert a1.shape == (1, 64, 64, 3) and a1.isfinite().all()
    b = host.run(edit_graph(names, audio=names["b"])).outputs("dec")[0]
    a2 = host.run(edit_graph(names)).outputs("dec")[0]
    assert torch.equal(a1, a2)
    assert (a1 - b).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["sonic_audio_edit.json", "sonic_audio_img2img.json",
                                  "sonic_audio_edit_custom_sampler.json"])
def test_example_workflows_load_and_execute(host, names, first_run, name):
    import workflow_tools
    from conftest import ROOT

    ui = workflow_tools.load(ROOT / "workflows" / name)
    assert workflow_tools.validate_ui(ui) == []
    prompt = workflow_tools.ui_to_api(ui)
    swap = {"ckpt_name": names["ckpt"], "clap_name": names["clap"], "adapter_name": names["gates"],
            "projector_name": names["proj"], "audio": names["a"], "image": names["image"],
            "width": 64, "height": 64, "steps": 4}
    types = set()
    for node in prompt.values():
        types.add(node["class_type"])
        for key, value in swap.items():
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value
    assert {"LoadImage", "VAEEncode", "SonicApplyAdapter", "VAEDecode", "SaveImage"} <= types
    expected = {"sonic_audio_img2img.json": {"KSampler"}, "sonic_audio_edit.json": {"SonicAudioEdit"},
                "sonic_audio_edit_custom_sampler.json": {"SamplerCustomAdvanced", "SonicEditGuider",
                                                         "SonicDDIMEditSampler", "DisableNoise", "BasicScheduler"}}
    assert expected[name] <= types
    run = host.run(prompt)
    (save,) = [k for k, n in prompt.items() if n["class_type"] == "SaveImage"]
    assert run.ui(save)["images"]
    (dec,) = [k for k, n in prompt.items() if n["class_type"] == "VAEDecode"]
    assert run.outputs(dec)[0].isfinite().all()
