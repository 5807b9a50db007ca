"""Fast unit checks of the Plug-and-Play hooks' bookkeeping (edit/injection.py): which hooks
are active in which mode, how the source rows are laid out and cropped to an area, and what
each hook hands on (scripts/mutation.sh)."""
import comfy.ldm.modules.attention as comfy_attention
import pytest
import torch
import torch.nn as nn

from sonic_diffusion.edit import injection
from sonic_diffusion.edit.schedule import EditInputError


def test_state_modes_gate_each_kind():
    st = injection.InjectionState()
    assert st.mode == injection.IDLE and st.source == {} and st.call is None and st.areas == {}
    assert st.latent_hw is None
    st.attention = st.features = True
    assert not st.active("q") and not st.active("features")  # idle: nothing, whatever the switches
    st.mode = injection.RECORD
    assert st.active("q") and st.active("k") and st.active("features")
    st.attention = False
    assert not st.active("q") and not st.active("k") and st.active("features")
    st.attention, st.features = True, False
    assert st.active("k") and not st.active("features")
    st.source[("q", 4)] = 1
    st.call = {}
    st.reset()
    assert (st.mode, st.attention, st.features, st.source, st.call) == (injection.IDLE, False, False, {}, None)
    import copy
    assert copy.deepcopy(st) is st


def test_crop_maps_the_area_offset_to_the_block_resolution():
    src = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8)
    # Offset (y, x) = (4, 2) latent units of a 16 x 16 latent: at this 8 x 8 block, (2, 1).
    out = injection._crop(src, (8, 8), (3, 4), (4, 2, 16, 16), tokens=False)
    assert torch.equal(out, src[:, :, 2:5, 1:5])
    # Offsets past the edge are clamped so the crop stays inside the source.
    assert torch.equal(injection._crop(src, (8, 8), (3, 4), (30, 30, 16, 16), tokens=False), src[:, :, 5:8, 4:8])
    assert torch.equal(injection._crop(src, (8, 8), (3, 4), (-4, -4, 16, 16), tokens=False), src[:, :, 0:3, 0:4])
    tokens = src.flatten(2).transpose(1, 2)  # [1, 64, 2]
    tok = injection._crop(tokens, (8, 8), (3, 4), (4, 2, 16, 16), tokens=True)
    assert torch.equal(tok, src[:, :, 2:5, 1:5].flatten(2).transpose(1, 2))
    non_square = torch.arange(4 * 6, dtype=torch.float32).view(1, 1, 4, 6)
    assert torch.equal(injection._crop(non_square, (4, 6), (2, 3), (4, 6, 8, 12), tokens=False),
                       non_square[:, :, 2:4, 3:6])
    with pytest.raises(EditInputError, match="a 3x4 feature map where the source has 8x8"):
        injection._crop(src, (8, 8), (3, 4), None, tokens=False)


def test_source_rows_repeat_per_chunk_or_crop_per_area():
    st = injection.InjectionState()
    src = torch.randn(2, 5, 3)
    st.source[("q", 6)] = (src, (1, 5))
    out = injection.source_rows(st, ("q", 6), [1, 5], 3, None, tokens=True)
    assert torch.equal(out, src.repeat(3, 1, 1))
    with pytest.raises(EditInputError, match="no source k recorded for output block 6"):
        injection.source_rows(st, ("k", 6), (1, 5), 1, None, tokens=True)
    feats = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    st.source[("features", 4)] = (feats, (4, 4))
    st.latent_hw, st.areas = (8, 8), {"a": (0, 4), "b": (4, 0)}
    out = injection.source_rows(st, ("features", 4), (2, 2), 2, {"uuids": ["a", "b"]}, tokens=False)
    assert torch.equal(out, torch.cat([feats[:, :, 0:2, 2:4], feats[:, :, 2:4, 0:2]]))
    for options in ({"uuids": ["a"]}, {}, None):
        with pytest.raises(EditInputError, match="cannot be matched to their conditionings"):
            injection.source_rows(st, ("features", 4), (2, 2), 2, options, tokens=False)


def _qkv(rows, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, 6, 8, generator=g) for _ in range(3)]


def test_attention_hook_records_injects_and_hands_on():
    st = injection.InjectionState()
    seen = []

    def previous(q, k, v, extra):
        seen.append((q, k, v))
        return q + k + v

    hook = injection.AttentionInjection(st, 5, previous)
    opts = {"n_heads": 2, "activations_shape": [1, 8, 2, 3], "cond_or_uncond": [1, 0]}
    src = _qkv(1, 0)
    q, k, v = _qkv(2, 1)
    out = hook(q, k, v, opts)  # idle: q, k, v as given
    assert torch.equal(out, q + k + v)
    st.attention, st.mode = True, injection.RECORD
    hook(*src, opts)
    assert st.source[("q", 5)][1] == (2, 3) and st.source[("q", 5)][0] is src[0] and st.source[("k", 5)][0] is src[1]
    st.mode = injection.INJECT
    out = hook(q, k, v, opts)
    assert torch.equal(out, src[0].repeat(2, 1, 1) + src[1].repeat(2, 1, 1) + v)  # V stays the row's own
    st.attention = False
    assert torch.equal(hook(q, k, v, opts), q + k + v)


def test_attention_hook_without_previous_calls_comfy_attention(monkeypatch):
    calls = []

    def fake(q, k, v, heads, **kw):
        calls.append((heads, kw))
        return v

    monkeypatch.setattr(comfy_attention, "optimized_attention", fake)
    hook = injection.AttentionInjection(injection.InjectionState(), 4)
    q, k, v = _qkv(1, 2)
    opts = {"n_heads": 3, "activations_shape": [1, 8, 2, 3], "cond_or_uncond": [0]}
    assert hook(q, k, v, opts) is v and calls == [(3, {})]
    opts["attn_precision"] = torch.float32
    hook(q, k, v, opts)
    assert calls[-1] == (3, {"attn_precision": torch.float32, "transformer_options": opts})


def test_call_context_remembers_the_call_only_when_injecting():
    st = injection.InjectionState()
    ctx = injection.CallContext(st)
    h, hsp = torch.zeros(1), torch.ones(1)
    assert ctx(h, hsp, {"x": 1}) == (h, hsp) and st.call is None
    st.mode = injection.RECORD
    ctx(h, hsp, {"x": 2})
    assert st.call is None
    st.mode = injection.INJECT
    opts = {"x": 3}
    ctx(h, hsp, opts)
    assert st.call is opts


def test_feature_hook_records_and_injects_per_chunk():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Identity(), nn.Conv2d(2, 2, 1))
    st = injection.InjectionState()
    hook = injection.FeatureInjection(layers, st, 5)
    assert hook.sonic_block == 5 and list(hook._modules) == ["0", "1"]
    plain = injection.FeatureInjection(layers)
    x = torch.randn(3, 2, 2, 2)
    with torch.no_grad():
        assert torch.equal(plain(x), layers(x))
        st.features, st.mode = True, injection.RECORD
        src = torch.randn(1, 2, 2, 2)
        assert torch.equal(hook(src), layers(src))
        assert torch.equal(st.source[("features", 5)][0], layers(src)) and st.source[("features", 5)][1] == (2, 2)
        st.mode = injection.INJECT
        assert torch.equal(hook(x), layers(src).repeat(3, 1, 1, 1))
        st.source[("features", 5)] = (layers(src).repeat(3, 1, 1, 1), (2, 2))  # three source rows: one chunk
        assert hook(x).shape == (3, 2, 2, 2)
        st.features = False
        assert torch.equal(hook(x), layers(x))


def test_hooks_crop_the_source_to_an_area_chunk():
    st = injection.InjectionState()
    st.latent_hw, st.areas = (8, 8), {"a": (4, 2)}
    src_q, src_k = torch.randn(1, 16, 2), torch.randn(1, 16, 2)  # 4 x 4 tokens
    st.source[("q", 7)], st.source[("k", 7)] = (src_q, (4, 4)), (src_k, (4, 4))
    st.attention, st.mode = True, injection.INJECT
    handed = []
    hook = injection.AttentionInjection(st, 7, lambda q, k, v, extra: handed.append((q, k, extra)) or v)
    opts = {"n_heads": 1, "activations_shape": [1, 2, 2, 3], "cond_or_uncond": [0], "uuids": ["a"]}
    v = torch.randn(1, 6, 2)
    assert hook(torch.zeros(1, 6, 2), torch.zeros(1, 6, 2), v, opts) is v
    crop = lambda t: t.view(1, 4, 4, 2)[:, 2:4, 1:4].reshape(1, 6, 2)
    q, k, extra = handed[0]
    assert torch.equal(q, crop(src_q)) and torch.equal(k, crop(src_k)) and extra is opts
    # The feature hook reads the call's areas from the CallContext of the same state.
    feats = torch.arange(32, dtype=torch.float32).view(1, 2, 4, 4)
    st.source[("features", 4)] = (feats, (4, 4))
    st.features, st.call = True, {"uuids": ["a"]}
    hook = injection.FeatureInjection(nn.Sequential(nn.Identity()), st, 4)
    assert torch.equal(hook(torch.zeros(1, 2, 2, 3)), feats[:, :, 2:4, 1:4])
    del st.source[("features", 4)]
    with pytest.raises(EditInputError, match="no source features recorded for output block 4"):
        hook(torch.zeros(1, 2, 2, 3))


def test_token_crop_keeps_the_width_asked():
    src = torch.arange(64, dtype=torch.float32).view(1, 64, 1)  # 8 x 8 tokens
    out = injection._crop(src, (8, 8), (2, 3), (0, 4, 8, 8), tokens=True)
    assert torch.equal(out, src.view(1, 8, 8, 1)[:, 0:2, 4:7].reshape(1, 6, 1))
    st = injection.InjectionState()
    st.source[("q", 4)] = (src, (8, 8))
    with pytest.raises(EditInputError, match=r"^a model call's chunks cannot be matched to their conditionings$"):
        injection.source_rows(st, ("q", 4), (2, 3), 2, {"uuids": ["a"]}, tokens=True)


class FakePatcher:
    """The ModelPatcher calls install_injection makes, recorded."""

    def __init__(self, replace=None, out_layers=None):
        self.model_options = {"transformer_options": {"patches_replace": {"attn1": dict(replace or {})}}}
        self.out_layers = out_layers
        self.attn1, self.output_patches, self.objects = {}, [], {}
        self.cloned = None

    def clone(self):
        self.cloned = FakePatcher(out_layers=self.out_layers)
        self.cloned.model_options = self.model_options
        return self.cloned

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.attn1[(block_name, number, transformer_index)] = patch

    def set_model_output_block_patch(self, patch):
        self.output_patches.append(patch)

    def get_model_object(self, name):
        return self.out_layers

    def add_object_patch(self, name, obj):
        self.objects[name] = obj


def test_install_injection_wires_every_hook_on_a_clone():
    layers = nn.Sequential(nn.Identity(), nn.SiLU())
    other, own = object(), object()
    model = FakePatcher(replace={("output", 5, 0): other, ("output", 6): own}, out_layers=layers)
    st = injection.InjectionState()
    clone = injection.install_injection(model, st)
    assert clone is model.cloned and model.attn1 == {} and model.objects == {}
    keys = {("output", k, 0 if k == 5 else None) for k in range(4, 12)}
    assert set(clone.attn1) == keys
    for (_, k, _), hook in clone.attn1.items():
        assert isinstance(hook, injection.AttentionInjection) and hook.state is st and hook.block == k
        assert hook.previous is {5: other, 6: own}.get(k)
    assert len(clone.output_patches) == 1 and clone.output_patches[0].state is st
    assert set(clone.objects) == {f"diffusion_model.output_blocks.{k}.0.out_layers" for k in (4, 5)}
    for k in (4, 5):
        hook = clone.objects[f"diffusion_model.output_blocks.{k}.0.out_layers"]
        assert isinstance(hook, injection.FeatureInjection) and hook.sonic_state is st and hook.sonic_block == k
        assert list(hook._modules.values()) == list(layers._modules.values())
    # A leftover hook of an earlier edit is unwrapped, not wrapped twice.
    again = injection.install_injection(FakePatcher(out_layers=clone.objects[
        "diffusion_model.output_blocks.4.0.out_layers"]), st)
    hook = again.objects["diffusion_model.output_blocks.4.0.out_layers"]
    assert type(hook) is injection.FeatureInjection
    assert all(not isinstance(m, injection.FeatureInjection) for m in hook._modules.values())
    assert list(hook._modules.values()) == list(layers._modules.values())
    with pytest.raises(EditInputError, match=r"^output block 4 has no ResBlock with out_layers; use an SD 1.x "
                                             r"checkpoint$"):
        injection.install_injection(FakePatcher(out_layers=nn.Identity()), st)
    bare = FakePatcher(out_layers=layers)
    bare.model_options = {}
    assert set(injection.install_injection(bare, st).attn1) == {("output", k, None) for k in range(4, 12)}
