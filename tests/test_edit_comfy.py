"""Audio Edit through ComfyUI's own sampling: ControlNet and other conditioning, model
wrappers and patches act on the edited rows as in KSampler; the GUIDER/SAMPLER pair in
SamplerCustomAdvanced equals the one-node edit; errors surface; Cancel, progress and the
inversion cache, all observed from outside."""
import pytest
import torch
from edit_support import STEPS, node_edit

import nodes
from sonic_diffusion import edit

pytest_plugins = ("edit_support",)  # its fixtures: names, first_run, parts



@pytest.fixture(scope="module")
def controlnet(host, fixture_dir, parts):
    name = host.link_model("controlnet", fixture_dir.controlnet())
    net = nodes.NODE_CLASS_MAPPINGS["ControlNetLoader"]().load_controlnet(name)[0]
    g = torch.Generator().manual_seed(5)
    hint = torch.rand(1, 64, 64, 3, generator=g)
    return net, hint


def with_control(parts, controlnet, strength):
    """What Apply ControlNet does, without its shortcut for strength 0 (the net still runs)."""
    net, hint = controlnet
    c_net = net.copy().set_cond_hint(hint.movedim(-1, 1), strength, (0.0, 1.0))
    return [[[t[0], {**t[1], "control": c_net, "control_apply_to_uncond": False}] for t in cond]
            for cond in (parts["pos"], parts["neg"])]


@pytest.fixture(scope="module")
def plain(parts):
    return node_edit(parts)


def test_controlnet_changes_the_edit(parts, controlnet, plain):
    pos, neg = with_control(parts, controlnet, 1.0)
    assert (node_edit(parts, positive=pos, negative=neg) - plain).abs().max() > 1e-3


def test_controlnet_at_strength_zero_equals_none(parts, controlnet, plain):
    pos, neg = with_control(parts, controlnet, 0.0)
    assert torch.equal(node_edit(parts, positive=pos, negative=neg), plain)


def test_area_conditioning_acts_on_the_edit(parts, plain):
    """ConditioningSetArea: a second positive prompt on a 32x32-pixel area at (16, 16), i.e.
    latent rows and columns 2..5 of the 8x8 latent. ComfyUI's calc_cond_batch averages its
    prediction into the positive one inside the area only (weight 0 outside), and a DDIM
    step is pointwise: so in a one-step edit the area changes the edit inside the area and
    leaves it as it was outside. Over several steps the UNet spreads the change; the area
    version then still differs both from the edit without it and from the same prompt
    applied to the whole frame (an edit that ignored the area would equal that one)."""
    set_area, combine = (nodes.NODE_CLASS_MAPPINGS[n]() for n in ("ConditioningSetArea", "ConditioningCombine"))
    area = set_area.append(parts["neg"], 32, 32, 16, 16, 1.0)[0]
    combined = combine.combine(parts["pos"], area)[0]
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:6, 2:6] = True
    diff = (node_edit(parts, positive=combined, steps=1) - node_edit(parts, steps=1)).abs()
    assert diff.shape[-2:] == inside.shape
    outside_gap, inside_gap = float(diff[..., ~inside].max()), float(diff[..., inside].max())
    print(f"one-step edit with the area vs without: outside {outside_gap:.2e}, inside {inside_gap:.2e}")
    # Measured on this CPU: outside 0 (bitwise equal), inside 4.8e-2.
    assert outside_gap == 0.0
    assert inside_gap > 1e-3
    out = node_edit(parts, positive=combined)
    whole_frame = node_edit(parts, positive=combine.combine(parts["pos"], parts["neg"])[0])
    assert out.isfinite().all() and (out - plain).abs().max() > 1e-4 and (out - whole_frame).abs().max() > 1e-4


def test_wrappers_and_cfg_functions_act_on_the_edited_rows(parts, plain):
    model = parts["patched"].clone()
    chunks, post = [], []

    def wrapper(apply_model, args):
        chunks.append(tuple(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    def post_cfg(args):
        post.append(float(args["sigma"][0]))
        return args["denoised"]

    model.set_model_unet_function_wrapper(wrapper)
    model.set_model_sampler_post_cfg_function(post_cfg)
    out = node_edit(parts, model=model)
    assert len(post) == STEPS  # once per sampling step, as in KSampler
    assert chunks.count((1,)) == STEPS + 2  # the inversion and the two injecting steps' source rows
    assert sum(1 for c in chunks if 0 in c) == STEPS  # the guided rows, through calc_cond_batch
    assert torch.equal(out, plain)  # both pass through unchanged


def test_errors_in_the_guided_rows_surface(parts):
    model = parts["patched"].clone()

    def failing_cfg(args):
        raise RuntimeError("a cfg function failed")

    model.set_model_sampler_cfg_function(failing_cfg)
    with pytest.raises(RuntimeError, match="a cfg function failed"):
        node_edit(parts, model=model)


def _custom(parts, guider_model=None, sampler=None, sigmas=None):
    guider = nodes.NODE_CLASS_MAPPINGS["SonicEditGuider"].execute(
        model=guider_model or parts["patched"], positive=parts["pos"], negative=parts["neg"], cfg=6.0).result[0]
    sampler = sampler or nodes.NODE_CLASS_MAPPINGS["SonicDDIMEditSampler"].execute(
        attention_injection=0.67, feature_injection=0.34).result[0]
    if sigmas is None:
        sigmas = nodes.NODE_CLASS_MAPPINGS["BasicScheduler"].execute(
            model=parts["patched"], scheduler="ddim_uniform", steps=STEPS, denoise=1.0).result[0]
    noise = nodes.NODE_CLASS_MAPPINGS["DisableNoise"].execute().result[0]
    advanced = nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]
    return advanced.execute(noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                            latent_image=parts["latent"]).result[0]["samples"]


def test_guider_and_sampler_in_sampler_custom_advanced_equal_the_node(parts, plain):
    assert torch.equal(_custom(parts), plain)


def test_edit_sampler_refuses_another_guider(parts):
    sampler = nodes.NODE_CLASS_MAPPINGS["SonicDDIMEditSampler"].execute(
        attention_injection=0.5, feature_injection=0.5).result[0]
    guider = nodes.NODE_CLASS_MAPPINGS["CFGGuider"].execute(
        model=parts["patched"], positive=parts["pos"], negative=parts["neg"], cfg=6.0).result[0]
    sigmas = edit.ddim_sigmas(parts["patched"].get_model_object("model_sampling"), 2)
    noise = nodes.NODE_CLASS_MAPPINGS["DisableNoise"].execute().result[0]
    with pytest.raises(ValueError, match=r"^Sonic DDIM Edit Sampler: the GUIDER is not from Sonic Edit Guider"):
        nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"].execute(
            noise=noise, guider=guider, sampler=sampler, sigmas=sigmas, latent_image=parts["latent"])


def test_new_nodes_refuse_nan(parts):
    with pytest.raises(ValueError, match=r"^Sonic Edit Guider: input 'cfg' is nan"):
        nodes.NODE_CLASS_MAPPINGS["SonicEditGuider"].execute(
            model=parts["patched"], positive=parts["pos"], negative=parts["neg"], cfg=float("nan"))
    for name in ("attention_injection", "feature_injection"):
        kw = {"attention_injection": 0.5, "feature_injection": 0.5, name: float("inf")}
        with pytest.raises(ValueError, match=rf"^Sonic DDIM Edit Sampler: input '{name}' is inf"):
            nodes.NODE_CLASS_MAPPINGS["SonicDDIMEditSampler"].execute(**kw)
