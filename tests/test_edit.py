"""Audio Edit (Sonic): DDIM inversion + Plug-and-Play injection, in the real host.

The references below are written from the formulas of the authors' diffusers code
(VP latents, alphas_cumprod of the SD 1.x "scaled_linear" schedule, raw UNet eps),
independently of the sigma-space implementation in sonic_diffusion/pnp.py.
Latents are 8x8 (64x64 images) and runs use 4-6 steps: CPU time matters.
"""
import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import comfy.model_management
import comfy.samplers
import folder_paths
import nodes

from graphs import audio_graph, link_audio_graph_files
from sonic_diffusion import pnp
from sonic_diffusion.patch import AUDIO_OFF

AUDIO_A = "tone440_mono_44k_3s.wav"
AUDIO_B = "noise_stereo_48k_10s_f32.wav"
SOURCE = "sonic_edit_source.png"
ATOL = 1e-4


def alphas_cumprod():
    """SD 1.x: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2 (diffusers' scaled_linear)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


A = alphas_cumprod()


def unet_eps(model, x_vp, t, context, chunks, audio_off=False):
    """The raw UNet output (eps) for a VP latent at integer timestep t."""
    to = copy.copy(model.model_options["transformer_options"])
    to["cond_or_uncond"] = list(chunks)
    sigma = ((1 - A[t]) / A[t]) ** 0.5
    to["sigmas"] = torch.full((x_vp.shape[0],), float(sigma))
    if audio_off:
        to[AUDIO_OFF] = True
    ts = torch.full((x_vp.shape[0],), float(t))
    with torch.no_grad():
        return model.model.diffusion_model(x_vp, timesteps=ts, context=context, transformer_options=to).float()


def sigma_of(t):
    return float(((1 - A[t]) / A[t]) ** 0.5)


def close(a, b, atol=ATOL):
    scale = max(1.0, float(b.abs().max()))
    torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=atol * scale)


# --- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def names(host, fixture_dir):
    from PIL import Image

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 30, (64, 64, 3))
    path = Path(folder_paths.get_input_directory()) / SOURCE
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return dict(link_audio_graph_files(host, fixture_dir, AUDIO_A, AUDIO_B), image=SOURCE)


def edit_graph(n, audio=None, prompt="", steps=4, cfg=7.5, attn=0.5, feat=0.5, sampler=None):
    """The shared audio graph with its text-to-image tail replaced by an edit of n["image"]."""
    g = audio_graph(n, audio=audio, prompt=prompt)
    del g["latent"], g["ks"]
    g["img"] = {"class_type": "LoadImage", "inputs": {"image": n["image"]}}
    g["venc"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["ckpt", 2]}}
    if sampler is None:
        g["edit"] = {"class_type": "SonicAudioEdit", "inputs": {
            "model": ["apply", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent": ["venc", 0],
            "steps": steps, "cfg": cfg, "attention_injection": attn, "feature_injection": feat}}
        g["dec"]["inputs"]["samples"] = ["edit", 0]
    else:
        g["ks"] = {"class_type": "KSampler", "inputs": {
            "model": ["apply", 0], "seed": 3, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": "normal", "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["venc", 0],
            "denoise": 0.6}}
        g["dec"]["inputs"]["samples"] = ["ks", 0]
    return g


@pytest.fixture(scope="module")
def first_run(host, names):
    """One edit through the executor; its cached node outputs give the loaded models to
    the direct tests (the full UNet is loaded once for the module)."""
    pnp.clear_cache()
    before = pnp.stats["inversions"]
    run = host.run(edit_graph(names))
    return {"run": run, "inversions": pnp.stats["inversions"] - before,
            "image": run.outputs("dec")[0], "latent": run.outputs("edit")[0]}


@pytest.fixture(scope="module")
def parts(first_run):
    run = first_run["run"]
    model, clip, vae = run.outputs("ckpt")[:3]
    assert model.model.diffusion_model.dtype == torch.float32
    return {"source": model, "patched": run.outputs("apply")[0], "pos": run.outputs("pos")[0],
            "neg": run.outputs("neg")[0], "latent": run.outputs("venc")[0]}


# --- schedule ------------------------------------------------------------------------

def test_timesteps_are_the_authors_ddim_and_comfy_ddim_uniform(parts):
    ts = pnp.ddim_timesteps(1000, 50)
    assert ts == list(range(981, 0, -20))
    ms = parts["source"].get_model_object("model_sampling")
    uniform = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 50)
    assert [int(ms.timestep(s)) for s in uniform[:-1]] == ts and float(uniform[-1]) == 0.0
    sched = pnp.DDIMSchedule(ms, 50)
    for t, s in zip(sched.timesteps, sched.sigmas):
        assert abs(s - sigma_of(t)) < 1e-6 * s
    assert abs(sched.final_sigma - sigma_of(0)) < 1e-6  # set_alpha_to_one False: the last level is a_0
    try:
        from diffusers import DDIMScheduler
    except ImportError:
        return
    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                        set_alpha_to_one=False, steps_offset=1)
    for steps in (50, 6, 7):
        ref.set_timesteps(steps)
        assert ref.timesteps.tolist() == pnp.ddim_timesteps(1000, steps)


def test_injection_step_counts():
    assert pnp.injection_steps(50, 0.8) == 40
    assert pnp.injection_steps(10, 0.7) == 7
    assert pnp.injection_steps(5, 0.5) == 2  # int(), as the authors
    assert pnp.injection_steps(5, 0.0) == 0 and pnp.injection_steps(5, 1.0) == 5


# --- single steps against the formulas ----------------------------------------------------

def _ctx(cond):
    return cond[0][0].float()


def test_inversion_step_matches_formula_with_audio_off(parts):
    """x_t = sqrt(a_t) * (x - sqrt(1 - a_p) eps) / sqrt(a_p) + sqrt(1 - a_t) eps, eps = UNet(x, t), on
    the plain UNet: the adapter-patched model inverts exactly like the unpatched one."""
    g = torch.Generator().manual_seed(1)
    x_vp = torch.randn(1, 4, 8, 8, generator=g)
    neg = _ctx(parts["neg"])
    for t_prev, t in ((0, 1), (461, 481)):
        eps = unet_eps(parts["source"], x_vp, t, neg, [1])
        a_p, a_t = float(A[t_prev]), float(A[t])
        ref = a_t ** 0.5 * (x_vp - (1 - a_p) ** 0.5 * eps) / a_p ** 0.5 + (1 - a_t) ** 0.5 * eps
        s_p, s_t = sigma_of(t_prev), sigma_of(t)
        with torch.no_grad():
            ours = pnp.inversion_step(parts["patched"], x_vp / a_p ** 0.5, s_p, s_t, neg,
                                      parts["patched"].model_options["transformer_options"])
        close(ours * a_t ** 0.5, ref)


def test_ddim_step_matches_formula(parts):
    """x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps, x0 = (x - sqrt(1 - a) eps) / sqrt(a)."""
    g = torch.Generator().manual_seed(2)
    x_vp = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.cat([_ctx(parts["neg"]), _ctx(parts["pos"])])
    t, t_prev = 501, 481
    eps = unet_eps(parts["patched"], x_vp, t, ctx, [1, 0])
    a, a_p = float(A[t]), float(A[t_prev])
    x0 = (x_vp - (1 - a) ** 0.5 * eps) / a ** 0.5
    ref = a_p ** 0.5 * x0 + (1 - a_p) ** 0.5 * eps
    s, s_p = sigma_of(t), sigma_of(t_prev)
    with torch.no_grad():
        e = pnp.model_eps(parts["patched"], x_vp / a ** 0.5, s, ctx,
                          parts["patched"].model_options["transformer_options"], [1, 0])
    close(e, eps)
    close(pnp.ddim_step(x_vp / a ** 0.5, e, s, s_p) * a_p ** 0.5, ref)


# --- injection against a hand reference ------------------------------------------------

def _attention(q, k, v, heads):
    b, n, d = q.shape
    dh = d // heads
    q, k, v = (t.view(b, -1, heads, dh).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, d)


def test_attention_injection_matches_hand_reference():
    g = torch.Generator().manual_seed(3)
    B, heads = 2, 4
    q, k, v = (torch.randn(3 * B, 6, 16, generator=g) for _ in range(3))
    state = pnp.InjectionState()
    patch = pnp.AttentionInjection(state, 7)
    opts = {"n_heads": heads}
    close(patch(q, k, v, opts), _attention(q, k, v, heads))  # idle: plain attention
    state.attention, state.batch, state.step = True, B, 0
    src_q, src_k = q[:B].repeat(3, 1, 1), k[:B].repeat(3, 1, 1)
    ref = _attention(src_q, src_k, v, heads)  # rows keep their own V
    out = patch(q, k, v, opts)
    close(out, ref)
    close(out[:B], _attention(q, k, v, heads)[:B])  # the source row itself is unchanged
    assert state.calls == {("attention", 7, 0): 1}


def test_feature_injection_matches_hand_reference():
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(0)
    layers = nn.Sequential(nn.GroupNorm(2, 4), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(4, 4, 3, padding=1))
    state = pnp.InjectionState()
    wrapped = pnp.FeatureInjection(layers, state, 4)
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in layers.named_parameters()]
    h = torch.randn(3, 4, 5, 5, generator=g)
    with torch.no_grad():
        plain = layers(h)
        assert torch.equal(wrapped(h), plain)
        state.features, state.batch, state.step = True, 1, 2
        out = wrapped(h)
    close(out, plain[:1].repeat(3, 1, 1, 1))
    assert state.calls == {("features", 4, 2): 1}


# --- whole edits -----------------------------------------------------------------------

def _unet_of(model):
    return model.model.diffusion_model


def test_injection_happens_at_the_right_blocks_and_steps_only(parts, first_run):
    state = pnp.InjectionState()
    pnp.audio_edit(parts["patched"], parts["pos"], parts["neg"], parts["latent"], steps=4, cfg=5.0,
                   attention_injection=0.75, feature_injection=0.5, state=state)
    expected = {("attention", k, i): 1 for k in range(4, 12) for i in range(3)}
    expected.update({("features", k, i): 1 for k in (4, 5) for i in range(2)})
    assert dict(state.calls) == expected


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
    out, state = pnp.audio_edit(parts["patched"], parts["pos"], parts["neg"], parts["latent"], steps=3, cfg=6.0,
                                attention_injection=0.0, feature_injection=0.0)
    assert not state.calls
    return out["samples"]


def test_zero_fractions_equal_plain_ddim_from_the_inverted_noise(parts, plain_edit):
    close(plain_edit, _reference_edit(parts, 3, 6.0), atol=1e-4)


def test_each_injection_changes_the_result(parts, plain_edit):
    kw = dict(steps=3, cfg=6.0)
    attn, _ = pnp.audio_edit(parts["patched"], parts["pos"], parts["neg"], parts["latent"],
                             attention_injection=0.34, feature_injection=0.0, **kw)
    feat, _ = pnp.audio_edit(parts["patched"], parts["pos"], parts["neg"], parts["latent"],
                             attention_injection=0.0, feature_injection=0.34, **kw)
    assert (plain_edit - attn["samples"]).abs().max() > 1e-3
    assert (plain_edit - feat["samples"]).abs().max() > 1e-3


def test_batch_of_two_latents_edits_each_like_alone(parts):
    lat = parts["latent"]["samples"]
    two = {"samples": torch.cat([lat, lat.flip(-1)])}
    kw = dict(steps=3, cfg=5.0, attention_injection=0.67, feature_injection=0.34)
    both, _ = pnp.audio_edit(parts["patched"], parts["pos"], parts["neg"], two, **kw)
    one, _ = pnp.audio_edit(parts["patched"], parts["pos"], parts["neg"], {"samples": lat.flip(-1)}, **kw)
    close(both["samples"][1:], one["samples"], atol=1e-4)


def test_source_model_is_untouched(parts, first_run):
    source, patched = parts["source"], parts["patched"]
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = _ctx(parts["neg"])
    before_src = unet_eps(source, x, 301, ctx, [0])
    before_patched = unet_eps(patched, x, 301, ctx, [0])
    opts_before = (copy.copy(source.model_options), copy.copy(patched.model_options))
    pnp.audio_edit(patched, parts["pos"], parts["neg"], parts["latent"], steps=4, attention_injection=1.0,
                   feature_injection=1.0)
    for m in (source, patched):
        assert m.object_patches == {}
        assert "patches_replace" not in m.model_options["transformer_options"]
    assert (source.model_options, patched.model_options) == opts_before
    # The modules left in the shared UNet until ComfyUI's next load are exact pass-throughs...
    assert torch.equal(unet_eps(source, x, 301, ctx, [0]), before_src)
    assert torch.equal(unet_eps(patched, x, 301, ctx, [0]), before_patched)
    # ...and loading the input model puts the original ones back.
    comfy.model_management.load_models_gpu([source])
    for k in (4, 5):
        assert type(_unet_of(source).output_blocks[k][0].out_layers) is nn.Sequential
    assert torch.equal(unet_eps(source, x, 301, ctx, [0]), before_src)


def test_input_errors_name_the_node_and_the_fix(parts):
    node = nodes.NODE_CLASS_MAPPINGS["SonicAudioEdit"]
    ok = dict(model=parts["patched"], positive=parts["pos"], negative=parts["neg"], latent=parts["latent"],
              steps=4, cfg=7.5, attention_injection=0.8, feature_injection=0.8)
    bad = [
        (dict(latent={"samples": torch.zeros(1, 16, 8, 8)}), "not an SD 1.x VAE latent.*VAE Encode"),
        (dict(cfg=-1.0), "cfg is -1.0"),
        (dict(attention_injection=1.5), "attention_injection is 1.5.*from 0 to 1"),
        (dict(feature_injection=-0.1), "feature_injection is -0.1"),
        (dict(latent={"samples": torch.zeros(3, 4, 8, 8)},
              positive=[[_ctx(parts["pos"]).repeat(2, 1, 1), {}]]), "positive has a batch of 2 for 3 latents"),
        (dict(negative=[[torch.zeros(1, 77, 1024), {}]]), "negative is .*SD 1.x text embeddings"),
        (dict(positive=parts["pos"] + parts["pos"]), "positive holds 2 conditionings"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=r"^Audio Edit \(Sonic\): .*" + message):
            node.execute(**{**ok, **change})


# --- through the executor --------------------------------------------------------------

def test_edit_graph_audio_changes_the_edit_and_inversion_is_cached(host, names, first_run):
    assert first_run["inversions"] == 1
    a1 = first_run["image"]
    assert a1.shape == (1, 64, 64, 3) and a1.isfinite().all()
    before = dict(pnp.stats)
    # Another audio re-runs Apply Sonic Adapter and the edit, but not the inversion (audio is off there).
    b = host.run(edit_graph(names, audio=names["b"])).outputs("dec")[0]
    # The same edit again (the executor re-runs Apply Sonic Adapter and the edit after the B run).
    a2 = host.run(edit_graph(names)).outputs("dec")[0]
    assert pnp.stats["inversions"] == before["inversions"]
    assert pnp.stats["inversion_cache_hits"] == before.get("inversion_cache_hits", 0) + 2
    assert torch.equal(a1, a2)
    assert (a1 - b).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["sonic_audio_edit.json", "sonic_audio_img2img.json"])
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
    assert ("KSampler" if "img2img" in name else "SonicAudioEdit") in types
    if "img2img" in name:
        (ks,) = [n for n in prompt.values() if n["class_type"] == "KSampler"]
        assert ks["inputs"]["denoise"] == 0.6
    run = host.run(prompt)
    (save,) = [k for k, n in prompt.items() if n["class_type"] == "SaveImage"]
    assert run.ui(save)["images"]
    (dec,) = [k for k, n in prompt.items() if n["class_type"] == "VAEDecode"]
    assert run.outputs(dec)[0].isfinite().all()
