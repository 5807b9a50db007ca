"""The adapter beside a half-precision UNet: its ten blocks are kept in the UNet's
dtype (a fp16 UNet does not carry fp32 blocks), the projector stays fp32 on purpose,
and the folded fast path is as accurate in fp16/bf16 as the plain formula evaluated
in the same dtype. The patch keeps no device or dtype state: it follows each call's."""
import types

import pytest
import torch

from sonic_diffusion.blocks import BLOCKS_BY_COMFY_KEY
from sonic_diffusion.patch import SonicAudioPatch
from sonic_diffusion.runtime import resident_dtype
from sonic_reference import block_call
from testing.references import reference_term

HALF = (torch.float16, torch.bfloat16)


def _bytes(module):
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.mark.parametrize("dtype", HALF)
def test_blocks_take_the_unet_dtype_and_the_projector_stays_fp32(adapter, dtype):
    cast = adapter.with_block_dtype(dtype)
    assert cast is adapter.with_block_dtype(dtype)  # one copy per dtype
    assert {p.dtype for p in cast.model.blocks.parameters()} == {dtype}
    assert {p.dtype for p in cast.model.projector.parameters()} == {torch.float32}
    assert _bytes(cast.model.blocks) * 2 == _bytes(adapter.model.blocks)
    assert {p.dtype for p in adapter.model.blocks.parameters()} == {torch.float32}  # the loaded one is untouched
    assert adapter.with_block_dtype(torch.float32) is adapter
    e = torch.nn.functional.normalize(torch.randn(2, 1024, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.equal(cast.project(e), adapter.project(e))  # same fp32 projector


def _fake_patcher(storage, cast=None):
    return types.SimpleNamespace(model=types.SimpleNamespace(get_dtype=lambda: storage, manual_cast_dtype=cast))


def test_resident_dtype_follows_comfyui_storage_and_manual_cast():
    assert resident_dtype(_fake_patcher(torch.float16)) == torch.float16
    assert resident_dtype(_fake_patcher(torch.bfloat16, torch.float32)) == torch.bfloat16
    assert resident_dtype(_fake_patcher(torch.float32)) == torch.float32
    # fp8 storage: the blocks use the dtype ComfyUI computes in.
    assert resident_dtype(_fake_patcher(torch.float8_e4m3fn, torch.float16)) == torch.float16
    assert resident_dtype(_fake_patcher(torch.float8_e4m3fn, None)) == torch.float32


def _stream(block, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, 64, block.dim, generator=g) * 2.0).to(dtype)
    n = (torch.randn(2, 64, block.dim, generator=g) * 0.5).to(dtype)
    return x, n


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("key", [("middle", 0), ("output", 9)])  # folded (1280 wide) and unfolded (320)
def test_fast_path_in_half_precision(adapter, dtype, key):
    """Against the plain formula in fp32 on the same (half-stored) weights and the same
    half inputs, the fast path's error stays within 1.5x the error of the plain formula
    evaluated in the half dtype itself (the adapter's own modules, manual cast).
    Measured (fast / plain, max abs): fp16 2.1e-5 / 3.4e-5 (middle), 1.4e-5 / 1.3e-5
    (output 9); bf16 1.8e-4 / 3.1e-4, 9.8e-5 / 1.4e-4: ratio <= 1.1, bound 1.5."""
    block = BLOCKS_BY_COMFY_KEY[key]
    cast = adapter.with_block_dtype(dtype)
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=torch.Generator().manual_seed(1)), dim=-1)
    patch = SonicAudioPatch(cast, cast.project(e), None, strength=1.0)
    x, _ = _stream(block, dtype, seed=2)
    # n = 0: the output is the term itself, so the comparison is not drowned by the
    # rounding of n + term to the half dtype (which hides any difference at |n| ~ 1).
    n = torch.zeros_like(x)
    chunks = [1, 0]
    out = patch(n, block_call(patch, block, x, chunks))
    assert out.dtype == dtype
    reference = n.float() + reference_term(patch, block, x.float() + n.float(), chunks).float()
    tokens = torch.cat([cast.null_tokens(), patch.cond_tokens]).to(dtype)
    with torch.no_grad():
        plain_half = n + cast.model.blocks[block.name].residual(x + n, tokens, 1.0)
    fast_err = float((out.float() - reference).abs().max())
    plain_err = float((plain_half.float() - reference).abs().max())
    print(f"{dtype} {key}: fast path error {fast_err:.3e}, plain formula in {dtype} {plain_err:.3e}")
    assert fast_err <= 1.5 * plain_err


def test_patch_follows_each_calls_dtype(adapter):
    """No .to()/cleanup state: the same patch serves an fp32 call and an fp16 call, each
    in its own dtype, and an fp32 call after the fp16 one gives the first result again."""
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=torch.Generator().manual_seed(3)), dim=-1)
    patch = SonicAudioPatch(adapter, adapter.project(e), None)
    assert not hasattr(patch, "to") and not hasattr(patch, "cleanup")
    block = BLOCKS_BY_COMFY_KEY[("output", 9)]
    x, n = _stream(block, torch.float32, seed=4)
    first = patch(n, block_call(patch, block, x, [0]))
    half = patch(n.half(), block_call(patch, block, x.half(), [0]))
    assert half.dtype == torch.float16
    # measured max |fp16 - fp32| 1.06e-3 at max |out| 2.34 (fp16 rounding of stream and term); bound ~10x
    torch.testing.assert_close(half.float(), first, rtol=0, atol=1e-2)
    assert torch.equal(patch(n, block_call(patch, block, x, [0])), first)


def test_production_objects_carry_no_test_switches(adapter):
    """Tests observe the patch from outside (tests/sonic_reference.py); the product has
    no mode flags, counters or test-only methods for them."""
    from sonic_diffusion.projector import AudioProjector

    patch = SonicAudioPatch(adapter, adapter.null_tokens(), None)
    for name in ("fast", "calls", "count_calls"):
        assert not hasattr(patch, name)
    assert not hasattr(adapter, "projections")
    assert not hasattr(AudioProjector, "forward_all_layers")
