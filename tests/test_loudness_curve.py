"""Loudness Strength Curve (Sonic) and Apply Sonic Adapter's strength_curve: one factor per
latent on the audio term. A factor of 1 is bitwise the curve-less output, 0 bitwise the
unpatched UNet for that latent, other factors equal that strength; bad curves get clear
errors naming the node."""
import math

import pytest
import torch

import nodes
from sonic_diffusion.animation import frame_count, frame_loudness_db, loudness_strengths
from sonic_diffusion.patch import AudioBatchError
from testing.unet import apply_adapter, unet_call, unet_inputs

APPLY = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
CURVE = nodes.NODE_CLASS_MAPPINGS["SonicLoudnessCurve"]


def _silence_then_tone(rate=8000, seconds=2.0, amplitude=0.5):
    """Mono [1, 1, T]: the first half silent, the second a 440 Hz tone."""
    t = torch.arange(int(rate * seconds)) / rate
    wave = amplitude * torch.sin(2 * math.pi * 440 * t)
    wave[: int(rate * seconds / 2)] = 0.0
    return {"waveform": wave.view(1, 1, -1), "sample_rate": rate}


def test_curve_follows_the_loudness_frame_by_frame():
    audio = _silence_then_tone()
    curve = CURVE.execute(audio=audio, fps=4.0, min_strength=0.5, max_strength=1.5, range_db=40.0).result[0]
    assert curve.shape == (frame_count(2.0, 4.0),) == (8,)
    # Frames 0-3 hear silence, 5-7 the tone; frame 4 (t = 1.0 s) half of each: 3.01 dB
    # below the loudest, so 0.5 + (40 - 3.01) / 40.
    assert torch.equal(curve[:4], torch.full((4,), 0.5))
    torch.testing.assert_close(curve[5:], torch.full((3,), 1.5), rtol=0, atol=1e-5)
    assert float(curve[4]) == pytest.approx(0.5 + (40 - 10 * math.log10(2)) / 40, abs=2e-3)
    levels = frame_loudness_db(audio["waveform"], audio["sample_rate"], 4.0)
    assert float(levels[6]) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)
    # Linear in dB between: 20 dB below the loudest sits halfway.
    mid = loudness_strengths(torch.tensor([0.0, -20.0, -80.0]), 0.0, 2.0, 40.0)
    assert torch.equal(mid, torch.tensor([2.0, 1.0, 0.0]))


@pytest.mark.parametrize(("kw", "match"), [
    (dict(fps=0.0), "fps must be positive"),
    (dict(range_db=float("nan")), "input .range_db. is nan; enter a finite number"),
])
def test_curve_node_errors_name_the_node(kw, match):
    args = dict(audio=_silence_then_tone(), fps=4.0, min_strength=0.5, max_strength=1.5, range_db=40.0)
    with pytest.raises(Exception, match=r"Loudness Strength Curve \(Sonic\): the audio input is not an AUDIO"):
        CURVE.execute(**{**args, "audio": "thunder.wav"})
    with pytest.raises(Exception, match=rf"Loudness Strength Curve \(Sonic\): .*{match}"):
        CURVE.execute(**{**args, **kw})


def test_curve_factors_act_per_latent(comfy_model, adapter):
    x, t, ctx, e = unet_inputs(4, seed=3)
    plain = unet_call(comfy_model, x, t, ctx)
    full = unet_call(apply_adapter(comfy_model, adapter, e), x, t, ctx)
    assert not torch.equal(full, plain)
    assert torch.equal(unet_call(apply_adapter(comfy_model, adapter, e, strength_curve=torch.ones(2)), x, t, ctx), full)
    off_first = unet_call(apply_adapter(comfy_model, adapter, e, strength_curve=torch.tensor([0.0, 1.0])), x, t, ctx)
    latent0, latent1 = [0, 2], [1, 3]  # the uncond and cond rows of each latent
    assert torch.equal(off_first[latent0], plain[latent0])
    assert torch.equal(off_first[latent1], full[latent1])
    # A factor equals that strength: the curve multiplies the term, strength folds into the
    # output weights, so they differ by rounding only. Measured (relative to the output
    # scale): 1.3e-6 at 0.3 and 1.3e-6 at 1.7; bound 1e-5. The factor's own effect measured
    # 4.0e-3 (0.3) and 4.9e-3 (1.7) on these stand-in weights: required > 1e-3, 100x the bound.
    scaled = unet_call(apply_adapter(comfy_model, adapter, e, strength_curve=torch.tensor([0.3, 1.7])), x, t, ctx)
    scale = float(full.abs().max())
    for rows, strength in ((latent0, 0.3), (latent1, 1.7)):
        ref = unet_call(apply_adapter(comfy_model, adapter, e, strength=strength), x, t, ctx)
        assert float((scaled[rows] - ref[rows]).abs().max()) <= 1e-5 * scale
        assert float((ref[rows] - full[rows]).abs().max()) > 1e-3 * scale  # the factor matters


def test_curve_of_the_wrong_length_or_with_nan_is_refused(comfy_model, adapter):
    x, t, ctx, e = unet_inputs(4, seed=3)
    patched = apply_adapter(comfy_model, adapter, e, strength_curve=torch.ones(3))
    with pytest.raises(AudioBatchError, match=r"Apply Sonic Adapter: a strength curve of 3 values for a batch of 2"):
        unet_call(patched, x, t, ctx)
    with pytest.raises(Exception, match=r"Apply Sonic Adapter: strength_curve holds NaN"):
        apply_adapter(comfy_model, adapter, e, strength_curve=torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("half", ["fp16", "bf16"])
def test_curve_in_half_precision(host, fixture_dir, adapter, half):
    """With the UNet in half precision (ComfyUI's own switches, as on an accelerator; see
    tests/test_precision.py) the factors are cast to the UNet's dtype: 1 is still bitwise
    the curve-less output, 0 bitwise the unpatched UNet for that latent."""
    from test_precision import HALF, load_checkpoint

    model = load_checkpoint(host.link_model("checkpoints", fixture_dir.full_checkpoint()),
                           HALF[half])
    x, t, ctx, e = (v.to(HALF[half]) if v.is_floating_point() else v for v in unet_inputs(4, seed=3))
    plain = unet_call(model, x, t, ctx)
    full = unet_call(apply_adapter(model, adapter, e.float()), x, t, ctx)
    assert full.dtype == HALF[half] and not torch.equal(full, plain)
    assert torch.equal(unet_call(apply_adapter(model, adapter, e.float(), strength_curve=torch.ones(2)), x, t, ctx), full)
    off_first = unet_call(apply_adapter(model, adapter, e.float(), strength_curve=torch.tensor([0.0, 1.0])), x, t, ctx)
    assert torch.equal(off_first[[0, 2]], plain[[0, 2]])
    assert torch.equal(off_first[[1, 3]], full[[1, 3]])
