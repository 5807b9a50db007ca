"""Fast unit checks of the audio patch (patch.py) on two real adapter blocks with random
weights, without a UNet: the fast (folded and unfolded) and the plain path against the
formula written out, n + f * w * tanh(gate) * Attn(LN(x + n), tokens) * row factor, and the
patch's pass-through, refusal and window rules (scripts/mutation.sh)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sonic_diffusion import patch as sp
from sonic_diffusion.adapter import GatedAudioAttention
from sonic_diffusion.audio_rows import AudioBatchError, RunContext, direct_batch
from sonic_diffusion.blocks import ADAPTER_BLOCKS, BLOCKS_BY_COMFY_KEY, HEADS

MIDDLE, FINE = ("middle", 0), ("output", 9)  # widths 1280 (folded fast path) and 320 (unfolded)


class Adapter:
    """The parts of a SonicAdapter the patch reads: model.blocks, patcher, uid, null_tokens."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.model = nn.Module()
        self.model.blocks = nn.ModuleDict()
        for key in (MIDDLE, FINE):
            block = BLOCKS_BY_COMFY_KEY[key]
            mod = GatedAudioAttention(block.dim)
            with torch.no_grad():
                for p in mod.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
                mod.gate_adapter.fill_(0.7)
            self.model.blocks[block.name] = mod
        self.patcher = object()
        self.uid = "adapter-1"
        self.null = torch.randn(1, 77, 768, generator=g)

    def null_tokens(self):
        return self.null


def _tokens(n, seed):
    return torch.randn(n, 77, 768, generator=torch.Generator().manual_seed(seed))


def _reference(adapter, key, h, tokens, scale, factors=None):
    """The formula written out for one block: rows of h [B, n, d] with tokens [B, 77, 768]."""
    mod = adapter.model.blocks[BLOCKS_BY_COMFY_KEY[key].name]
    w = {k: p.detach().to(h.dtype) for k, p in mod.named_parameters()}
    d = h.shape[-1]
    y = F.layer_norm(h, (d,), w["norm_adapter.weight"], w["norm_adapter.bias"], 1e-5)
    q = y @ w["attn_adapter.to_q.weight"].T
    k = tokens @ w["attn_adapter.to_k.weight"].T
    v = tokens @ w["attn_adapter.to_v.weight"].T
    split = lambda t: t.view(t.shape[0], t.shape[1], HEADS, -1).transpose(1, 2)
    att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // HEADS), dim=-1)
    o = (att @ split(v)).transpose(1, 2).reshape(h.shape)
    out = (o @ w["attn_adapter.to_out.0.weight"].T + w["attn_adapter.to_out.0.bias"]) * scale * math.tanh(0.7)
    return out if factors is None else out * factors.view(-1, 1, 1)


def _options(patch, chunks, batch, key, x, run=None, **extra):
    audio = direct_batch([patch], chunks, batch, run=run)
    return {"block": key, "block_index": 0, sp.STREAM: x, sp.STREAM_ORDERED: True, sp.CALL_AUDIO: audio, **extra}


def _stream(rows, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 7, d, generator=g), torch.randn(rows, 7, d, generator=g)


@pytest.mark.parametrize("key", [MIDDLE, FINE])
@pytest.mark.parametrize("differentiable", [False, True])
def test_patch_adds_the_written_formula(key, differentiable):
    adapter = Adapter()
    cond, uncond = _tokens(1, 1), _tokens(1, 2)
    weights = [1.0] * 10
    idx = [b.comfy_block for b in ADAPTER_BLOCKS].index(key)
    weights[idx] = 0.5
    patch = sp.SonicAudioPatch(adapter, cond, uncond, strength=1.5, block_weights=weights,
                               differentiable=differentiable)
    d = BLOCKS_BY_COMFY_KEY[key].dim
    x, n = _stream(4, d, 3)  # chunks [uncond, cond] of two latents each
    out = patch(n, _options(patch, [1, 0], 2, key, x))
    tokens = torch.cat([uncond.expand(2, -1, -1), cond.expand(2, -1, -1)])
    torch.testing.assert_close(out, n + _reference(adapter, key, x + n, tokens, 0.75), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("key", [MIDDLE, FINE])
@pytest.mark.parametrize("differentiable", [False, True])
def test_per_latent_audio_and_row_factors_reach_their_rows(key, differentiable):
    adapter = Adapter(1)
    cond, uncond = _tokens(2, 4), _tokens(1, 5)
    factors = torch.tensor([0.5, 2.0])
    patch = sp.SonicAudioPatch(adapter, cond, uncond, strength=1.0, row_strengths=factors,
                               differentiable=differentiable)
    d = BLOCKS_BY_COMFY_KEY[key].dim
    x, n = _stream(4, d, 6)
    out = patch(n, _options(patch, [0, 1], 2, key, x))
    tokens = torch.cat([cond, uncond.expand(2, -1, -1)])
    ref = _reference(adapter, key, x + n, tokens, 1.0, torch.cat([factors, factors]))
    torch.testing.assert_close(out, n + ref, rtol=1e-4, atol=1e-5)


def test_fast_path_builds_once_per_run_and_signature():
    adapter = Adapter()
    patch = sp.SonicAudioPatch(adapter, _tokens(1, 1), _tokens(1, 2))
    x, n = _stream(2, 320, 7)
    run = RunContext()
    builds = []
    real = patch._build
    patch._build = lambda *a: builds.append(1) or real(*a)
    opts = _options(patch, [0, 1], 1, FINE, x, run=run)
    first = patch(n, opts)
    assert torch.equal(patch(n, opts), first) and len(builds) == 1
    # Another block in the same run gets its own tensors.
    wide_x, wide_n = _stream(2, 1280, 8)
    out = patch(wide_n, _options(patch, [0, 1], 1, MIDDLE, wide_x, run=run))
    ref = _reference(adapter, MIDDLE, wide_x + wide_n, torch.cat([patch.cond_tokens, patch.uncond_tokens]), 1.0)
    torch.testing.assert_close(out, wide_n + ref, rtol=1e-4, atol=1e-5)
    assert len(builds) == 2


@pytest.mark.parametrize("differentiable", [False, True])
def test_patch_computes_in_the_streams_dtype(differentiable):
    adapter = Adapter(2)
    cond, uncond = _tokens(1, 1), _tokens(1, 2)
    patch = sp.SonicAudioPatch(adapter, cond, uncond, row_strengths=[0.5, 2.0], differentiable=differentiable)
    x, n = (t.double() for t in _stream(4, 320, 12))
    out = patch(n, _options(patch, [0, 1], 2, FINE, x))
    assert out.dtype == torch.float64
    tokens = torch.cat([cond.expand(2, -1, -1), uncond.expand(2, -1, -1)]).double()
    ref = _reference(adapter, FINE, x + n, tokens, 1.0, torch.tensor([0.5, 2.0, 0.5, 2.0], dtype=torch.float64))
    torch.testing.assert_close(out, n + ref, rtol=1e-5, atol=1e-6)


def test_row_scale_fills_ones_for_chunks_without_factors():
    patch = sp.SonicAudioPatch(Adapter(), _tokens(1, 1), None)
    rows = [(None, None), (None, torch.tensor([2.0]))]
    scale = patch._row_scale(rows, 2, torch.device("cpu"), torch.float64)
    assert scale.dtype == torch.float64 and scale.flatten().tolist() == [1.0, 1.0, 2.0, 2.0]
    assert patch._row_scale([(None, None)], 2, torch.device("cpu"), torch.float32) is None


def test_defaults_and_a_window_that_runs_to_the_end():
    adapter = Adapter()
    patch = sp.SonicAudioPatch(adapter, _tokens(1, 1), None)
    assert patch.strength == 1.0 and patch.start_percent == 0.0 and patch.end_percent == 1.0
    assert patch.block_weights == (1.0,) * 10 and patch.site_scales == {b.name: 1.0 for b in ADAPTER_BLOCKS}
    late = sp.SonicAudioPatch(adapter, _tokens(1, 1), None, start_percent=0.5)
    assert late.window(Sampling()) == pytest.approx((0.0, 5.0))
    x, n = _stream(2, 320, 13)
    opts = _options(patch, [0], 2, FINE, x)
    del opts["block_index"]  # cores that do not set it: the first transformer
    assert not torch.equal(patch(n, opts), n)


def test_a_chunk_of_the_wrong_size_is_refused():
    patch = sp.SonicAudioPatch(Adapter(), _tokens(1, 1), None)
    x, n = _stream(2, 320, 14)
    with pytest.raises(AudioBatchError, match=r"^the Sonic audio patch: 2 audio rows for a chunk of 1 latents\.$"):
        patch(n, _options(patch, [0, 1], 2, FINE, x))  # two chunks of two rows, but a stream of two rows


def test_patch_passes_through_where_it_does_not_act():
    adapter = Adapter()
    patch = sp.SonicAudioPatch(adapter, _tokens(1, 1), None, block_weights=[0.0] + [1.0] * 9)
    assert patch.uncond_tokens is adapter.null  # no negative audio: the null audio
    x, n = _stream(2, 1280, 8)
    assert patch(n, _options(patch, [0], 2, MIDDLE, x)) is n  # a site at 0 is skipped
    y, m = _stream(2, 320, 9)
    assert patch(m, _options(patch, [0], 2, ("output", 2), y)) is m  # no adapter at this block
    assert patch(m, _options(patch, [0], 2, FINE, y, block_index=1)) is m  # second transformer of a block
    assert patch(m, _options(patch, [0], 2, FINE, y, **{sp.AUDIO_OFF: True})) is m
    assert not torch.equal(patch(m, _options(patch, [0], 2, FINE, y)), m)
    zero = sp.SonicAudioPatch(adapter, _tokens(1, 1), None, strength=0.0)
    assert zero.site_scales == {b.name: 0.0 for b in ADAPTER_BLOCKS}
    assert zero(m, _options(zero, [0], 2, FINE, y)) is m


def test_patch_refuses_a_call_without_its_stream_or_audio():
    patch = sp.SonicAudioPatch(Adapter(), _tokens(1, 1), None)
    x, n = _stream(2, 320, 10)
    good = _options(patch, [0], 2, FINE, x)
    for change in ({sp.STREAM_ORDERED: False}, {sp.CALL_AUDIO: None}, {sp.STREAM: None},
                   {sp.STREAM: x[:1]}):
        with pytest.raises(RuntimeError, match="did not reach the patch"):
            patch(n, {**good, **change})
    other = sp.SonicAudioPatch(Adapter(), _tokens(1, 1), None)  # audio of another patch only
    with pytest.raises(RuntimeError, match="reached the UNet without this adapter's audio"):
        patch(n, _options(other, [0], 2, FINE, x))
    wrong = sp.SonicAudioPatch(Adapter(), _tokens(3, 1), None)
    with pytest.raises(AudioBatchError, match="3 audio embeddings for a batch of 2 latents"):
        wrong(n, _options(wrong, [0], 2, FINE, x))


class Sampling:
    def percent_to_sigma(self, p):
        return torch.tensor(10.0 * (1.0 - p))


def test_window_in_sigmas_and_the_calls_it_skips():
    adapter = Adapter()
    full = sp.SonicAudioPatch(adapter, _tokens(1, 1), None)
    assert full.window(Sampling()) is None
    assert sp.SonicAudioPatch(adapter, _tokens(1, 1), None, start_percent=-0.5, end_percent=1.5).window(
        Sampling()) is None
    part = sp.SonicAudioPatch(adapter, _tokens(1, 1), None, start_percent=0.2, end_percent=0.6)
    assert part.window(Sampling()) == pytest.approx((4.0, 8.0))
    assert sp.SonicAudioPatch(adapter, _tokens(1, 1), None, end_percent=0.5).window(Sampling()) == \
        pytest.approx((5.0, 10.0))
    x, n = _stream(2, 320, 11)
    run = RunContext({part.uid: (4.0, 8.0)})
    for sigma, acts in ((3.9, False), (4.0, True), (6.0, True), (8.0, True), (8.1, False), (None, True)):
        out = part(n, _options(part, [0], 2, FINE, x, run=run, **{sp.CALL_SIGMA: sigma}))
        assert (out is not n) == acts, sigma


def test_rows_for_role_and_plumbing():
    adapter = Adapter()
    cond, uncond = _tokens(1, 1), _tokens(1, 2)
    patch = sp.SonicAudioPatch(adapter, cond, uncond, row_strengths=[1.0, 2.0], source="Some Node")
    assert patch.rows_for_role("positive").tokens is cond
    for role in ("negative", "positive_without_audio"):
        assert patch.rows_for_role(role).tokens is uncond
    assert patch.rows_for_role("positive").factors.tolist() == [1.0, 2.0]
    assert patch.rows_for_role("positive").source == "Some Node"
    assert patch.models() == [adapter.patcher] and patch.adapter_uid == "adapter-1"
    import copy
    assert copy.deepcopy(patch) is patch
    capture = sp.StreamCapture()
    opts, x = {}, torch.zeros(1)
    assert capture(x, opts) is x and opts[sp.STREAM] is x and copy.deepcopy(capture) is capture
    with pytest.raises(ValueError, match="block_weights needs 10 values, got 9"):
        sp.SonicAudioPatch(adapter, cond, uncond, block_weights=[1.0] * 9)
    assert sp.SonicAudioPatch(adapter, None, None).uncond_tokens is None
    assert sp.SonicAudioPatch(adapter, cond, None).uid != patch.uid


def test_absorbs_projections_only_for_wide_blocks():
    assert [sp.absorbs_projections(b.dim) for b in ADAPTER_BLOCKS] == [True] * 7 + [False] * 3
    assert sp.absorbs_projections(539) is False and sp.absorbs_projections(540) is True  # d + 77 > 616
    f = sp._as_factors([[1, 2], [3, 4]])
    assert f.dtype == torch.float32 and f.tolist() == [1, 2, 3, 4] and sp._as_factors(None) is None
    rows = torch.arange(3.0)
    assert torch.equal(sp._gather(rows, (2, 0)), torch.tensor([2.0, 0.0]))
    assert sp._gather(rows[:1], (2, 0)) is not None and sp._gather(None, (1,)) is None
