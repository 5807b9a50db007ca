"""The pack beside AnimateDiff-Evolved (../shared/packs/, linked into the test host by
scripts/comfy_host.py), with its stand-in mm_sd_v15_v2 motion module (testing/fixtures/motion.py):
Gen1 and Gen2 nodes, per-frame audio and loudness strengths under its own context options.

AnimateDiff-Evolved slices every model cond whose `cond` has the latent count on dim 0
(animatediff/sampling.py get_resized_cond), so each window's latents get their own rows of
the pack's SonicAudioCond. A spy reads which audio rows every call used; without a motion
module an SD 1.x UNet treats each latent on its own, so a windowed run must equal the
whole-batch run row by row.
"""
import gc

import comfy.model_management
import pytest
import torch
from comfy_host import beside_pack_module
from test_guidance import cfg_guider, load_parts, sample
from test_guider_roles import close

import nodes
from sonic_diffusion.patch import CALL_AUDIO, SonicAudioPatch

AD_PACK = "ComfyUI-AnimateDiff-Evolved"
FRAMES = 6
STEPS = 1  # each run is a full-size SD1.5 UNet (+ motion module) on the CPU: ~10-20 s
CFG = 5.0

if beside_pack_module(AD_PACK) is None:
    pytest.skip(f"{AD_PACK} is not in ../shared/packs/ (or SONIC_SHARED_PACKS)", allow_module_level=True)


def _node(node_id):
    return nodes.NODE_CLASS_MAPPINGS[node_id]()


def _call(node_id, **inputs):
    node = _node(node_id)
    return getattr(node, node.FUNCTION)(**inputs)[0]


@pytest.fixture(scope="module")
def motion_name(host, fixture_dir):
    """The stand-in, linked into the base folder's models/animatediff_models/ (Host.link_model
    never links into the read-only pack tree, which AnimateDiff-Evolved lists first)."""
    return host.link_model("animatediff_models", fixture_dir.motion_module())


@pytest.fixture(scope="module")
def parts(host, fixture_dir):
    p = load_parts(host, fixture_dir, {"pos": "a landscape photograph", "neg": ""})
    g = torch.Generator().manual_seed(3)
    p["frames"] = torch.nn.functional.normalize(torch.randn(FRAMES, 1024, generator=g), dim=-1)
    p["curve"] = torch.linspace(0.2, 1.6, FRAMES)
    return p


def sonic(model, parts, strength=1.0):
    node = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
    return node.execute(model=model, sonic_adapter=parts["adapter"], audio_embeds=parts["frames"], strength=strength,
                        start_percent=0.0, end_percent=1.0, strength_curve=parts["curve"]).result[0]


def gen1(model, motion_name, context=None):
    return _call("ADE_AnimateDiffLoaderGen1", model=model, model_name=motion_name, beta_schedule="autoselect",
                 context_options=context)


@pytest.fixture(scope="module")
def motion(motion_name):
    """Gen2's loaded motion model (loaded once: 0.9 GB)."""
    return _call("ADE_LoadAnimateDiffModel", model_name=motion_name)


def gen2(model, motion=None, context=None):
    m_models = None
    if motion is not None:
        m_models = _call("ADE_ApplyAnimateDiffModelSimple", motion_model=motion)
    return _call("ADE_UseEvolvedSampling", model=model, beta_schedule="autoselect", m_models=m_models,
                 context_options=context)


def standard_static(length, overlap, equal=False):
    return _call("ADE_StandardStaticContextOptions", context_length=length, context_overlap=overlap,
                 use_on_equal_length=equal)


def looped_uniform(length, overlap):
    return _call("ADE_LoopedUniformContextOptions", context_length=length, context_stride=1,
                 context_overlap=overlap, closed_loop=False)


def release_models():
    """Unload what sampling loaded (motion modules stay loaded beside the UNet otherwise)."""
    gc.collect()
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    gc.collect()


def run(parts, model):
    return sample(cfg_guider(model, parts["pos"], parts["neg"], CFG), steps=STEPS, batch=FRAMES)


@pytest.fixture(scope="module")
def sonic_only(parts):
    """Per-frame audio and strengths without AnimateDiff: the whole-batch reference."""
    return run(parts, sonic(parts["model"], parts))


@pytest.fixture(scope="module")
def gen2_runs(parts, motion):
    """Gen2 (Sonic applied before AnimateDiff): motion only, motion + audio, motion + audio at strength 0."""
    return {"motion": run(parts, gen2(parts["model"], motion)),
            "both": run(parts, gen2(sonic(parts["model"], parts), motion)),
            "strength0": run(parts, gen2(sonic(parts["model"], parts, strength=0.0), motion))}


def _acts(a, b):
    """Two runs differ clearly, not by rounding. Measured (one Euler step from sigma_max, whose
    result is ~1e2 with the random stand-ins, 0.3.75 CPU): the audio moves the motion-module run
    by 5.7e-3 x its scale, the motion module moves the audio-only run by 0.72; rounding between
    equal runs stays under 3e-7 x scale (the windowed rows below)."""
    ratio = float((a - b).abs().max()) / max(1.0, float(b.abs().max()))
    print(f"max |diff| / scale: {ratio:.2e}")
    return ratio > 1e-4


def test_gen1_motion_module_and_audio_both_act(parts, motion_name, sonic_only):
    """Gen1 loader, Apply Sonic Adapter after it: each part moves the result; strength 0 is
    bitwise the AnimateDiff-only output."""
    ad = gen1(parts["model"], motion_name)  # one load of the motion module (1.8 GB in fp32 on the CPU)
    try:
        motion_only = run(parts, ad)
        both = run(parts, sonic(ad, parts))
        assert _acts(both, motion_only), "the audio did not act beside the motion module"
        assert _acts(both, sonic_only), "the motion module did not act beside the audio"
        assert torch.equal(run(parts, sonic(ad, parts, strength=0.0)), motion_only)
    finally:
        del ad
        release_models()


def test_gen2_motion_module_and_audio_both_act(parts, gen2_runs, sonic_only):
    assert _acts(gen2_runs["both"], gen2_runs["motion"]), "the audio did not act beside the motion module"
    assert _acts(gen2_runs["both"], sonic_only), "the motion module did not act beside the audio"
    assert torch.equal(gen2_runs["strength0"], gen2_runs["motion"])


def _spy_rows(monkeypatch):
    """Per Sonic patch call: whether every per-frame table's rows are the window's frames."""
    seen = []
    real = SonicAudioPatch.__call__

    def spy(self, n, extra_options):
        window = (extra_options.get("ad_params") or {}).get("sub_idxs")
        per_frame = [idx for table, idx in extra_options[CALL_AUDIO].parts if table.rows == FRAMES]
        seen.append((tuple(window or ()), per_frame))
        return real(self, n, extra_options)

    monkeypatch.setattr(SonicAudioPatch, "__call__", spy)
    return seen


CONTEXTS = {"standard_static": lambda: standard_static(4, 2), "looped_uniform": lambda: looped_uniform(4, 1)}


@pytest.mark.parametrize("kind", sorted(CONTEXTS))
def test_windows_with_motion_give_each_frame_its_audio(parts, motion, monkeypatch, kind):
    seen = _spy_rows(monkeypatch)
    run(parts, gen2(sonic(parts["model"], parts), motion, CONTEXTS[kind]()))
    windows = {w for w, _ in seen}
    assert len(windows) >= 2 and all(len(w) == 4 for w in windows), windows
    assert all(rows and all(list(r) == list(w) for r in rows) for w, rows in seen)


@pytest.mark.parametrize("kind", sorted(CONTEXTS))
def test_windows_equal_the_whole_batch_row_by_row(parts, sonic_only, kind):
    """Context options without a motion module: each latent is its whole-batch result."""
    got = run(parts, gen2(sonic(parts["model"], parts), context=CONTEXTS[kind]()))
    for i in range(FRAMES):
        close(got[i], sonic_only[i])


def test_one_window_covering_everything_equals_no_context(parts, motion, gen2_runs):
    got = run(parts, gen2(sonic(parts["model"], parts), motion, standard_static(FRAMES, 0, equal=True)))
    close(got, gen2_runs["both"])


def test_stand_in_has_the_published_mm_sd_v15_v2_layout(fixture_dir):
    """Keys and shapes as AnimateDiff-Evolved's own SD1.5 v2 model has them (meta device), and
    its loader's detection reads the file as an SD1.5 AnimateDiff v2 module of 32 positions."""
    from testing.fixtures import motion

    sd = torch.load(str(fixture_dir.motion_module()), map_location="cpu", mmap=True, weights_only=True)
    assert {k: tuple(v.shape) for k, v in sd.items()} == motion.motion_module_layout()
    assert len(sd) == 588 and sum(v.numel() for v in sd.values()) == 454_417_600
    assert {v.dtype for v in sd.values()} == {torch.float16}
    ad = motion._ad_module("motion_module_ad")
    _, info = ad.normalize_ad_state_dict(dict(sd), "mm_sd_v15_v2.ckpt")
    assert (info.sd_type, info.mm_format, info.mm_version) == ("SD1.5", "AnimateDiff", "v2")
    assert ad.get_position_encoding_max_len(sd, info.mm_name, info.mm_format) == motion.MM_V2_POSITIONS
