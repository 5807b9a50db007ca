"""The range of every float folded into the adapter's weights (blocks.FACTOR_LIMIT):
strength, each block weight and each strength_curve value within -10..10, refused
outside it with the node's name (Apply Sonic Adapter, Loudness Strength Curve (Sonic));
at the limits the fp16 fast path stays finite and close to the fp32 formula."""
import pytest
import torch
from sonic_reference import block_call

import nodes
from sonic_diffusion.blocks import BLOCKS_BY_COMFY_KEY, FACTOR_LIMIT, BlockWeightsError, parse_block_weights
from sonic_diffusion.patch import SonicAudioPatch
from testing.references import reference_term

APPLY = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
CURVE = nodes.NODE_CLASS_MAPPINGS["SonicLoudnessCurve"]
# fp16 fast path at strength 10 x weight 10 x curve 10 against the fp32 plain formula,
# relative to the term's largest value. Measured on the stand-in adapter (max |term| 41.5
# middle, 20.7 output 9, far from fp16's 65504): middle (folded) 6.5e-4, output 9
# (unfolded) 7.0e-4, either sign; bound about 3x that.
REL_TOL = 2e-3


def test_the_limit_is_ten():
    assert FACTOR_LIMIT == 10.0
    assert parse_block_weights(" ".join(["10", "-10"] * 5)) == (10.0, -10.0) * 5


@pytest.mark.parametrize("bad", ["1e5", "10.01", "-11", "65504"])
def test_block_weights_outside_the_range_are_refused(bad):
    with pytest.raises(BlockWeightsError, match=rf"{bad!r} is outside the supported range -10..10"):
        parse_block_weights(" ".join(["1"] * 9 + [bad]))


def _apply(**kw):
    args = dict(model=None, sonic_adapter=None, audio_embeds=None, strength=1.0, start_percent=0.0,
                end_percent=1.0)
    args.update(kw)
    return APPLY.execute(**args)


@pytest.mark.parametrize(("kw", "message"), [
    ({"block_weights": "1 1 1 1 1 1 1 1 1 1e5"}, r"block_weights: '1e5' is outside the supported range -10..10"),
    ({"strength": 10.5}, r"strength 10.5 is outside the supported range -10..10"),
    ({"strength": -1e4}, r"strength -10000.0 is outside the supported range"),
    ({"strength_curve": torch.tensor([1.0, -12.0])}, r"strength_curve's largest value .* 12.0 is outside"),
])
def test_apply_sonic_adapter_refuses_factors_outside_the_range(kw, message):
    with pytest.raises(ValueError, match=r"^Apply Sonic Adapter: " + message):
        _apply(**kw)


@pytest.mark.parametrize("field", ["min_strength", "max_strength"])
def test_loudness_curve_refuses_factors_outside_the_range(field):
    kw = {"audio": {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}, "fps": 8.0,
          "min_strength": 0.5, "max_strength": 1.5, "range_db": 40.0, field: 10.5}
    with pytest.raises(ValueError, match=rf"^Loudness Strength Curve \(Sonic\): {field} 10.5 is outside"):
        CURVE.execute(**kw)


@pytest.mark.parametrize("key", [("middle", 0), ("output", 9)])  # folded (1280 wide) and unfolded (320)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fp16_folding_at_the_limits_stays_finite_and_close(adapter, key, sign):
    block = BLOCKS_BY_COMFY_KEY[key]
    cast = adapter.with_block_dtype(torch.float16)
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=torch.Generator().manual_seed(5)), dim=-1)
    limit = sign * FACTOR_LIMIT
    patch = SonicAudioPatch(cast, cast.project(e), None, strength=limit, block_weights=(FACTOR_LIMIT,) * 10,
                            row_strengths=[FACTOR_LIMIT])
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(2, 64, block.dim, generator=g) * 4.0).to(torch.float16)
    n = torch.zeros_like(x)  # the output is the term itself
    chunks = [1, 0]
    out = patch(n, block_call(patch, block, x, chunks))
    assert out.dtype == torch.float16 and bool(out.isfinite().all())
    reference = FACTOR_LIMIT * reference_term(patch, block, x.float(), chunks).float()
    rel = float((out.float() - reference).abs().max() / reference.abs().max())
    print(f"{key} sign {sign}: max |term| {float(reference.abs().max()):.1f}, fp16 relative error {rel:.2e}")
    assert rel <= REL_TOL
