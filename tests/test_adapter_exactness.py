"""The ComfyUI-patched UNet against an independent diffusers reference.

The reference is a diffusers UNet2DConditionModel given the same UNet weights, whose
transformer blocks carry attn_adapter / norm_adapter / gate_adapter so that the
official gate dict loads strictly by its own key names. That proves the mapping from
diffusers block names to ComfyUI's ("middle", 0) / ("output", k) blocks.
"""
import copy

import pytest
import torch
from sonic_reference import sonic_patches, spy_patch_calls

from sonic_diffusion.blocks import ADAPTER_BLOCKS, BLOCKS_BY_COMFY_KEY
from testing.references import diffusers_reference, with_plain_reference
from testing.unet import apply_adapter, unet_call, unet_inputs

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def comfy_model(comfy_model):
    """conftest's stand-in MODEL; the comparisons below assume it runs in float32."""
    assert comfy_model.model.diffusion_model.dtype == torch.float32
    return comfy_model


@pytest.fixture(scope="module")
def reference_unet(fixture_dir):
    """The diffusers UNet with the official adapter modules (testing/references.py) and the
    dict its blocks read the audio tokens from at call time."""
    tokens = {"tokens": None}
    return diffusers_reference(fixture_dir, tokens)[1], tokens


def test_patched_unet_matches_diffusers_reference(comfy_model, adapter, reference_unet):
    unet, tokens = reference_unet
    x, t, ctx, e = unet_inputs(2, audios=2)
    with torch.no_grad():
        base_ref = None
        tokens["tokens"] = adapter.project(e)
        ref = unet(x, t, encoder_hidden_states=ctx).sample
        patched = apply_adapter(comfy_model, adapter, e)
        ours = unet_call(patched, x, t, ctx, [0])
        plain = unet_call(comfy_model, x, t, ctx, [0])
    scale = ref.abs().max()
    # The adapter must matter at this scale, or the comparison proves nothing.
    assert (ours - plain).abs().max() > 20 * 1e-4 * scale
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4 * max(1.0, float(scale)))
    del base_ref


def test_cond_and_uncond_chunks_get_audio_and_null_audio(comfy_model, adapter, reference_unet):
    unet, tokens = reference_unet
    x, t, ctx, e = unet_inputs(1, seed=3)
    patched = apply_adapter(comfy_model, adapter, e)
    with torch.no_grad():
        # ComfyUI batches [uncond, cond] as cond_or_uncond = [1, 0].
        ours = unet_call(patched, torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, ctx]), [1, 0])
        tokens["tokens"] = adapter.null_tokens()
        ref_uncond = unet(x, t, encoder_hidden_states=ctx).sample
        tokens["tokens"] = adapter.project(e)
        ref_cond = unet(x, t, encoder_hidden_states=ctx).sample
    scale = max(1.0, float(ref_cond.abs().max()))
    torch.testing.assert_close(ours[:1], ref_uncond, rtol=0, atol=1e-4 * scale)
    torch.testing.assert_close(ours[1:], ref_cond, rtol=0, atol=1e-4 * scale)


_patch_of = sonic_patches


def test_patch_fires_once_per_block_per_call(comfy_model, adapter, monkeypatch):
    """Observed from outside: a spy on the patch records which calls changed n."""
    x, t, ctx, e = unet_inputs(1)
    patched = apply_adapter(comfy_model, adapter, e)
    with spy_patch_calls(monkeypatch) as calls:
        unet_call(patched, x, t, ctx, [0])
    acted = {}
    for _, block, n_in, n_out, _ in calls:
        if not torch.equal(n_in, n_out):
            acted[block] = acted.get(block, 0) + 1
        else:
            assert block not in BLOCKS_BY_COMFY_KEY, f"adapter block {block} left n unchanged"
    assert acted == {b.comfy_block: 1 for b in ADAPTER_BLOCKS}


def test_strength_zero_and_outside_window_are_bitwise_noops(comfy_model, adapter):
    x, t, ctx, e = unet_inputs(2, seed=5, audios=2)
    plain = unet_call(comfy_model, x, t, ctx, [0])
    zero = unet_call(apply_adapter(comfy_model, adapter, e, strength=0.0), x, t, ctx, [0])
    assert torch.equal(zero, plain)
    # t = 421 is mid-schedule: a window over the last 10% of sampling excludes it.
    late = apply_adapter(comfy_model, adapter, e, start_percent=0.9, end_percent=1.0)
    assert torch.equal(unet_call(late, x, t, ctx, [0]), plain)
    early = apply_adapter(comfy_model, adapter, e, start_percent=0.0, end_percent=0.9)
    assert not torch.equal(unet_call(early, x, t, ctx, [0]), plain)


def test_input_model_is_never_modified(comfy_model, adapter):
    x, t, ctx, e = unet_inputs(1, seed=7)
    before = unet_call(comfy_model, x, t, ctx, [0])
    options_before = copy.deepcopy(comfy_model.model_options)
    patched = apply_adapter(comfy_model, adapter, e)
    unet_call(patched, x, t, ctx, [0])
    assert comfy_model.model_options == options_before
    assert "patches" not in comfy_model.model_options["transformer_options"]
    assert torch.equal(unet_call(comfy_model, x, t, ctx, [0]), before)


def test_fast_path_matches_plain_formula(comfy_model, adapter):
    """The cached path (keys/values once per sampling, folded projections for the wide
    blocks) against the plain formula (tests/sonic_reference.py), within 1e-4 in fp32."""
    x, t, ctx, e = unet_inputs(2, seed=9, audios=2)
    for embeds in (e, e[:1]):
        patched = apply_adapter(comfy_model, adapter, embeds)
        fast = unet_call(patched, x, t, ctx, [0])
        plain = unet_call(with_plain_reference(patched), x, t, ctx, [0])
        torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4 * max(1.0, float(plain.abs().max())))


def _rms(a):
    return float(a.square().mean().sqrt())


# test_stacked_adapters_add_two_terms, measured on this CPU (16x16, one row): the single
# terms move the output by RMS 4.5e-3 (strength 1) and 2.2e-3 (strength 0.5); the stacked
# change misses their sum by 4.3e-5, 0.019 of the smaller. Bound 0.1: 5x the measured miss,
# 10x below a dropped or duplicated term (measured 0.996 with both patches on one audio).
STACK_BOUND = 0.1  # of the smaller single term


def test_stacked_adapters_add_two_terms(comfy_model, adapter):
    """Two Apply Sonic Adapter nodes in a row: each patch adds its own term on the stream
    the previous one left (the plain formula chained, within 1e-4), so the whole UNet's
    change is the sum of the two single-adapter changes up to their small interaction
    through the later blocks. A patch that replaced or dropped the other misses the sum by a
    whole term (>= 1 of the smaller one)."""
    x, t, ctx, e = unet_inputs(1, seed=11, audios=2)
    base = unet_call(comfy_model, x, t, ctx, [0])
    first = apply_adapter(comfy_model, adapter, e[:1])
    stacked = apply_adapter(first, adapter, e[1:], strength=0.5)
    assert len(_patch_of(stacked)) == 2 and len(_patch_of(first)) == 1
    term1 = unet_call(first, x, t, ctx, [0]) - base
    term2 = unet_call(apply_adapter(comfy_model, adapter, e[1:], strength=0.5), x, t, ctx, [0]) - base
    both = unet_call(stacked, x, t, ctx, [0])
    plain = unet_call(with_plain_reference(stacked), x, t, ctx, [0])
    torch.testing.assert_close(both, plain, rtol=0, atol=1e-4 * max(1.0, float(plain.abs().max())))
    miss = _rms(both - base - (term1 + term2))
    smaller = min(_rms(term1), _rms(term2))
    print(f"stacked: single terms RMS {_rms(term1):.3e} / {_rms(term2):.3e}, miss of their sum {miss:.3e} "
          f"({miss / smaller:.3f} of the smaller)")
    assert smaller > 1e-3
    assert miss <= STACK_BOUND * smaller


def test_wrong_batch_count_is_a_clear_error(comfy_model, adapter):
    x, t, ctx, e = unet_inputs(3, seed=13, audios=3)
    patched = apply_adapter(comfy_model, adapter, e[:2])
    with pytest.raises(ValueError, match="2 audio embeddings for a batch of 3 latents"):
        unet_call(patched, x, t, ctx, [0])


def test_negative_strength_negates_the_term(comfy_model, adapter, monkeypatch):
    """strength -f adds exactly minus the term of +f (checked at the middle block, the
    first site, where both runs see the same stream), and the whole UNet matches the
    plain formula at a negative strength."""
    x, t, ctx, e = unet_inputs(1, seed=15)
    terms = {}
    for strength in (1.5, -1.5):
        with spy_patch_calls(monkeypatch) as calls:
            unet_call(apply_adapter(comfy_model, adapter, e, strength=strength), x, t, ctx, [0])
        _, _, n_in, n_out, _ = next(c for c in calls if c[1] == ("middle", 0))
        terms[strength] = (n_in, n_out - n_in)
    assert torch.equal(terms[1.5][0], terms[-1.5][0])  # same stream in
    # (n + t) - n recovers t up to the rounding of n + t, half an fp32 ulp of |n| (6e-8 |n|);
    # bound 1e-6 * |n|.
    torch.testing.assert_close(terms[-1.5][1], -terms[1.5][1], rtol=0,
                               atol=1e-6 * float(terms[1.5][0].abs().max()))
    assert terms[1.5][1].abs().max() > 1e-3
    patched = apply_adapter(comfy_model, adapter, e, strength=-1.5)
    fast = unet_call(patched, x, t, ctx, [0])
    plain = unet_call(with_plain_reference(patched), x, t, ctx, [0])
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4 * max(1.0, float(plain.abs().max())))


def test_negative_audio_embeds_go_to_the_uncond_rows(comfy_model, adapter):
    """With negative_audio_embeds, the uncond rows use that audio (as the cond rows of a
    run with it as audio_embeds would); without, the null audio."""
    x, t, ctx, e = unet_inputs(2, seed=17, audios=2)
    pos, neg = e[:1], e[1:]
    x1, t1, c1 = x[:1], t[:1], ctx[:1]
    batch = (torch.cat([x1, x1]), torch.cat([t1, t1]), torch.cat([c1, c1]))
    with_neg = unet_call(apply_adapter(comfy_model, adapter, pos, negative_audio_embeds=neg), *batch, [1, 0])
    as_cond = unet_call(apply_adapter(comfy_model, adapter, neg), x1, t1, c1, [0])
    with_null = unet_call(apply_adapter(comfy_model, adapter, pos), *batch, [1, 0])
    diff = float((with_neg[:1] - as_cond).abs().max())
    print(f"uncond rows with negative audio vs a cond run with it: {diff:.2e}")
    # Measured 3.7e-6 (batched vs single kernels, |output| ~ 1); bound 1e-5 x max(1, |output|).
    assert diff <= 1e-5 * max(1.0, float(as_cond.abs().max()))
    assert (with_neg[:1] - with_null[:1]).abs().max() > 1e-3       # the negative audio acts
    assert torch.equal(with_neg[1:], with_null[1:])                # the cond rows are untouched
