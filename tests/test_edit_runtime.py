"""Audio Edit at run time, observed from outside: its progress bar (ComfyUI's progress
hook), Cancel within a step, and the inversion cache reused or invalidated (UNet calls
counted by wrapping the model's UNet)."""
import contextlib

import comfy.model_management as mm
import comfy.utils
import pytest
import torch
from edit_support import STEPS, inversion_calls, node_edit, unet_calls

import nodes
from sonic_diffusion import edit

pytest_plugins = ("edit_support",)  # its fixtures: names, first_run, parts



@contextlib.contextmanager
def progress_hook(hook):
    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        yield
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)


def fresh_latent(parts, seed):
    """A source nobody inverted yet (the node's cache is shared by the tests)."""
    g = torch.Generator().manual_seed(seed)
    return {"samples": parts["latent"]["samples"] + 0.1 * torch.randn(parts["latent"]["samples"].shape, generator=g)}


def test_progress_bar_counts_both_phases_then_only_the_edit(parts):
    latent = fresh_latent(parts, 11)
    seen = []
    with progress_hook(lambda value, total, preview, node_id=None: seen.append((value, total))):
        node_edit(parts, latent=latent)
        first = list(seen)
        seen.clear()
        node_edit(parts, latent=latent, cfg=3.0)  # the inversion is reused
    assert first == [(i, 2 * STEPS) for i in range(1, 2 * STEPS + 1)]
    assert seen == [(i, STEPS) for i in range(1, STEPS + 1)]


@pytest.mark.parametrize("cancel_after", [1, STEPS + 1])  # during the inversion, during the edit
def test_cancel_stops_within_a_step(parts, cancel_after):
    latent = fresh_latent(parts, 20 + cancel_after)
    state = {"calls_at_cancel": None}

    def hook(value, total, preview, node_id=None):
        if value == cancel_after:
            mm.interrupt_current_processing(True)
            state["calls_at_cancel"] = len(calls)

    try:
        with unet_calls(parts["patched"]) as calls, progress_hook(hook), \
                pytest.raises(mm.InterruptProcessingException):
            node_edit(parts, latent=latent, attention_injection=1.0)
    finally:
        mm.interrupt_current_processing(False)
    assert state["calls_at_cancel"] is not None
    assert len(calls) == state["calls_at_cancel"]  # not one more UNet call after the cancel


def _inversions(parts, **kw):
    with unet_calls(parts["patched"]) as calls:
        out = node_edit(parts, **kw)
    return inversion_calls(calls), out


def test_inversion_cache_reused_for_prompt_cfg_fractions_and_audio(parts):
    latent = fresh_latent(parts, 31)
    first, a = _inversions(parts, latent=latent)
    assert first == STEPS
    clip = parts["clip"]
    other_prompt = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, "a stormy sky")[0]
    embeds = parts["embeds"]
    other_audio = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"].execute(
        model=parts["source"], sonic_adapter=parts["adapter"], audio_embeds=embeds, strength=0.5,
        start_percent=0.0, end_percent=1.0).result[0]
    for change in (dict(positive=other_prompt), dict(cfg=2.0), dict(attention_injection=0.34),
                   dict(feature_injection=1.0), dict(model=other_audio)):
        count, out = _inversions(parts, latent=latent, **change)
        assert count == 0, change
        assert not torch.equal(out, a), change  # the change itself acted
    count, again = _inversions(parts, latent=latent)
    assert count == 0 and torch.equal(again, a)


def test_inversion_cache_invalidated_by_source_negative_steps_and_model(parts):
    latent = fresh_latent(parts, 41)
    assert _inversions(parts, latent=latent)[0] == STEPS
    clip = parts["clip"]
    other_negative = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, "blurry")[0]
    lora_like = parts["patched"].clone()
    key = next(k for k in lora_like.model.state_dict() if k.endswith("output_blocks.4.0.out_layers.3.weight"))
    lora_like.add_patches({key: (torch.full_like(lora_like.model.state_dict()[key], 1e-3),)}, 1.0)
    for change, expected in ((dict(latent=fresh_latent(parts, 42)), STEPS),
                             (dict(latent=latent, negative=other_negative), STEPS),
                             (dict(latent=latent, steps=STEPS + 1), STEPS + 1),
                             (dict(latent=latent, model=lora_like), STEPS)):
        assert _inversions(parts, **change)[0] == expected, sorted(change)


def test_cache_holds_weak_references_only(parts):
    """The cache keeps no model or patch alive: a dropped model's entry is gone."""
    import gc
    import weakref

    cache = edit.InversionCache()
    model = parts["patched"].clone()
    model.set_model_unet_function_wrapper(lambda apply, args: apply(args["input"], args["timestep"], **args["c"]))
    wrapper = weakref.ref(model.model_options["model_function_wrapper"])
    edit.audio_edit(model, parts["pos"], parts["neg"], fresh_latent(parts, 51), steps=2, cfg=5.0,
                    attention_injection=0.5, feature_injection=0.5, inversions=cache)
    assert len(cache) == 1
    del model
    gc.collect()
    assert wrapper() is None


def test_comfyui_unloading_models_frees_the_inversion(parts):
    """The real edit loads its model's inversion cache beside the UNet; ComfyUI's
    unload_all_models (what `/free` runs) empties it, so the next edit inverts again."""
    latent = fresh_latent(parts, 61)
    assert _inversions(parts, latent=latent)[0] == STEPS
    cache = edit.inversions_for(parts["patched"].model)
    assert len(cache) >= 1 and any(m.model is cache.patcher for m in mm.current_loaded_models)
    assert _inversions(parts, latent=latent)[0] == 0  # cached
    mm.unload_all_models()
    assert len(cache) == 0
    assert _inversions(parts, latent=latent)[0] == STEPS
