"""Per-site weights of Apply Sonic Adapter (middle block, output blocks 3-11): a site
at 0 is an exact no-op, all ones is today's output, the folded fast path keeps the
plain formula, bad lists and non-finite floats get a clear error naming the node."""

import pytest
import torch
from sonic_reference import spy_patch_calls

from sonic_diffusion.blocks import ADAPTER_BLOCKS, BLOCK_PRESETS, parse_block_weights
from testing.references import with_plain_reference
from testing.unet import apply_adapter, unet_call, unet_inputs

APPLY = "SonicApplyAdapter"


def test_all_ones_is_todays_output(comfy_model, adapter):
    x, t, ctx, e = unet_inputs(2, seed=1)
    today = unet_call(apply_adapter(comfy_model, adapter, e), x, t, ctx)
    assert torch.equal(unet_call(apply_adapter(comfy_model, adapter, e, block_preset="all"), x, t, ctx), today)
    ones = ", ".join(["1"] * 10)
    assert torch.equal(unet_call(apply_adapter(comfy_model, adapter, e, block_weights=ones), x, t, ctx), today)


def test_zero_weight_sites_are_exact_noops(comfy_model, adapter, monkeypatch):
    """At a site weighted 0 the block's attn2 output leaves the patch bitwise unchanged;
    every other site acts. All zeros equals the unpatched UNet bitwise."""
    x, t, ctx, e = unet_inputs(2, seed=2)
    weights = (1.0, 0.0, 0.5, 1.0, 0.0, 2.0, 1.0, 0.0, 1.0, 0.0)
    patched = apply_adapter(comfy_model, adapter, e, block_weights=" ".join(map(str, weights)))
    with spy_patch_calls(monkeypatch) as calls:
        unet_call(patched, x, t, ctx)
    acted = {key: not torch.equal(n_in, n_out) for _, key, n_in, n_out, _ in calls}
    assert acted == {**acted, **{b.comfy_block: w != 0.0 for b, w in zip(ADAPTER_BLOCKS, weights)}}
    assert all(not v for k, v in acted.items() if k not in {b.comfy_block for b in ADAPTER_BLOCKS})
    zeros = apply_adapter(comfy_model, adapter, e, block_weights="0 " * 10)
    assert torch.equal(unet_call(zeros, x, t, ctx), unet_call(comfy_model, x, t, ctx))


def test_weighted_fast_path_matches_plain_formula(comfy_model, adapter):
    """The weights fold into the output projection with strength and gate; the result
    matches the plain formula with each site's factor, at the 1e-4 bound of the
    unweighted fast-path test (tests/test_adapter_exactness.py)."""
    x, t, ctx, e = unet_inputs(2, seed=3)
    for preset in ("coarse (output 3-5)", "fine (output 9-11)"):
        patched = apply_adapter(comfy_model, adapter, e, block_preset=preset, strength=1.5)
        fast = unet_call(patched, x, t, ctx)
        plain = unet_call(with_plain_reference(patched), x, t, ctx)
        torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4 * max(1.0, float(plain.abs().max())))
        assert not torch.equal(fast, unet_call(comfy_model, x, t, ctx))


def test_presets_name_the_sites_they_enable():
    names = [b.comfy_block for b in ADAPTER_BLOCKS]
    on = {p: [n for n, w in zip(names, ws) if w] for p, ws in BLOCK_PRESETS.items()}
    assert len(on["all"]) == 10
    assert on["middle only"] == [("middle", 0)]
    assert on["coarse (output 3-5)"] == [("output", 3), ("output", 4), ("output", 5)]
    assert on["fine (output 9-11)"] == [("output", 9), ("output", 10), ("output", 11)]
    assert on["middle + coarse (output 3-5)"] == [("middle", 0), ("output", 3), ("output", 4), ("output", 5)]
    assert parse_block_weights("1,0.5 0 ,2,1,1,1,1,1,-1") == (1.0, 0.5, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0)


@pytest.mark.parametrize(("text", "message"), [
    ("1, 1, 1", "block_weights needs 10 numbers"),
    ("1 " * 11, "block_weights needs 10 numbers"),
    ("1, 1, 1, 1, 1, one, 1, 1, 1, 1", "'one' is not a number"),
    ("1, 1, 1, 1, 1, nan, 1, 1, 1, 1", "'nan' is not a finite number"),
    ("1, 1, 1, 1, 1, 1, 1, 1, 1, inf", "'inf' is not a finite number"),
])
def test_malformed_weights_name_the_node(text, message):
    with pytest.raises(ValueError, match=f"Apply Sonic Adapter: .*{message}.*block_preset"):
        apply_adapter(None, None, None, block_weights=text)


@pytest.mark.parametrize("name", ["strength", "start_percent", "end_percent"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused(name, value):
    with pytest.raises(ValueError, match=f"Apply Sonic Adapter: input '{name}' is {value}"):
        apply_adapter(None, None, None, **{name: value})


def test_workflows_saved_before_block_weights_still_convert():
    """Widget values are positional: a workflow saved with the three old values gets the
    defaults (preset 'all', no list) for the two appended inputs, as the frontend does."""
    import json

    import workflow_tools
    from conftest import ROOT

    ui = json.loads((ROOT / "workflows" / "sonic_audio_to_image.json").read_text())
    node = next(n for n in ui["nodes"] if n["type"] == APPLY)
    node["widgets_values"] = [0.8, 0.1, 0.9]
    inputs = workflow_tools.ui_to_api(ui)[str(node["id"])]["inputs"]
    assert (inputs["strength"], inputs["start_percent"], inputs["end_percent"]) == (0.8, 0.1, 0.9)
    assert (inputs["block_preset"], inputs["block_weights"]) == ("all", "")
