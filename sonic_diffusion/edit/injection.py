"""Plug-and-Play injection (docs/design.md section 7) as ComfyUI patches of a model clone.

The source row runs in its own model call before the edited rows of each step (the
"record" pass); the hooks keep its self-attention Q/K (output blocks 4-11) and ResBlock
residual-branch output (output blocks 4-5). The edited rows then run through ComfyUI's
sampling (calc_cond_batch: ControlNet, area, GLIGEN, wrappers), and the hooks put the
source's tensors in place of theirs (the "inject" pass). This equals the authors' 3-row
batch [source, uncond, cond]: there every row is computed on its own and injection only
copies from the source row. An idle state makes every hook an exact pass-through.
"""
import collections

import comfy.ldm.modules.attention as comfy_attention
import torch
import torch.nn as nn

from .schedule import EditInputError

ATTENTION_BLOCKS = tuple(range(4, 12))   # output blocks whose attn1 Q/K come from the source
FEATURE_BLOCKS = (4, 5)                   # output blocks whose ResBlock residual branch comes from the source
IDLE, RECORD, INJECT = "idle", "record", "inject"


class InjectionState:
    """Shared by the hooks of one edit guider; the sampler drives it step by step."""

    def __init__(self):
        self.areas = {}  # cond uuid -> (y, x) offset in latent units, for area conditioning
        self.latent_hw = None
        self.reset()

    def reset(self):
        self.mode, self.attention, self.features = IDLE, False, False
        self.source = {}  # (kind, block) -> (tensor of the source rows, spatial size)
        self.call = None  # transformer_options of the model call running now (inject pass)

    def active(self, kind):
        return self.mode != IDLE and (self.attention if kind in ("q", "k") else self.features)

    def __deepcopy__(self, memo):
        return self  # ComfyUI deep-copies model_options on clone; the hooks must share one state


def _crop(src, src_hw, hw, offset, tokens):
    """The part of the source at the chunk's area (offset in latent units)."""
    (hs, ws), (h, w) = src_hw, hw
    if offset is None:
        raise EditInputError(f"a model call has a {h}x{w} feature map where the source has {hs}x{ws}, "
                             f"and no area conditioning explains it")
    y = min(max(0, round(offset[0] * hs / offset[2])), hs - h)
    x = min(max(0, round(offset[1] * ws / offset[3])), ws - w)
    if tokens:
        b, _, d = src.shape
        return src.view(b, hs, ws, d)[:, y:y + h, x:x + w].reshape(b, h * w, d)
    return src[:, :, y:y + h, x:x + w]


def source_rows(state, key, hw, nchunks, options, tokens):
    """The recorded source tensor laid out like the call's batch (nchunks chunks of the
    source's rows), cropped to each chunk's area where the chunk is an area crop."""
    if key not in state.source:
        raise EditInputError(f"no source {key[0]} recorded for output block {key[1]} in this step")
    src, src_hw = state.source[key]
    if tuple(hw) == tuple(src_hw):
        return src.repeat(nchunks, *([1] * (src.ndim - 1)))
    uuids = list((options or {}).get("uuids") or [])
    if len(uuids) != nchunks:
        raise EditInputError("a model call's chunks cannot be matched to their conditionings")
    chunks = []
    for uuid in uuids:
        area = state.areas.get(uuid)
        offset = None if area is None else (area[0], area[1], *state.latent_hw)
        chunks.append(_crop(src, src_hw, hw, offset, tokens))
    return torch.cat(chunks, dim=0)


class AttentionInjection:
    """attn1 replace patch of one output block: receives q, k, v after projection."""

    def __init__(self, state, block, previous=None):
        self.state = state
        self.block = block
        self.previous = previous  # another node's attn1 replace on this block, called with our q/k

    def __call__(self, q, k, v, extra_options):
        st = self.state
        if st.active("q"):
            hw = tuple(extra_options["activations_shape"][2:])
            if st.mode == RECORD:
                st.source[("q", self.block)], st.source[("k", self.block)] = (q, hw), (k, hw)
            else:
                n = len(extra_options["cond_or_uncond"])
                q = source_rows(st, ("q", self.block), hw, n, extra_options, tokens=True)
                k = source_rows(st, ("k", self.block), hw, n, extra_options, tokens=True)
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        kwargs = {}
        if "attn_precision" in extra_options:  # cores that pass it also accept these keywords
            kwargs = {"attn_precision": extra_options["attn_precision"], "transformer_options": extra_options}
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"], **kwargs)

    def __deepcopy__(self, memo):
        return self


class CallContext:
    """output_block_patch: tells the feature hooks which model call (chunks, areas) runs."""

    def __init__(self, state):
        self.state = state

    def __call__(self, h, hsp, transformer_options):
        if self.state.mode == INJECT:
            self.state.call = transformer_options
        return h, hsp

    def __deepcopy__(self, memo):
        return self


class FeatureInjection(nn.Sequential):
    """Stands in for a ResBlock's out_layers (norm, SiLU, dropout, conv2): the same child
    modules under the same names (weights, LoRA keys and offloading are unaffected).
    Installed as an object patch of a clone, so the original module comes back when
    ComfyUI unpatches."""

    def __init__(self, original, state=None, block=None):
        if isinstance(original, nn.Sequential):
            original = collections.OrderedDict(original._modules)
        super().__init__(original)
        self.sonic_state = state
        self.sonic_block = block

    def forward(self, h):
        out = super().forward(h)
        st = self.sonic_state
        if st is None or not st.active("features"):
            return out
        key, hw = ("features", self.sonic_block), tuple(out.shape[2:])
        if st.mode == RECORD:
            st.source[key] = (out, hw)
            return out
        rows = st.source[key][0].shape[0] if key in st.source else 1
        return source_rows(st, key, hw, out.shape[0] // rows, st.call, tokens=False)


def install_injection(model, state):
    """A clone of the ModelPatcher with the (idle) injection hooks; the input is untouched."""
    clone = model.clone()
    to = clone.model_options.get("transformer_options", {})
    replace = to.get("patches_replace", {}).get("attn1", {})
    for k in ATTENTION_BLOCKS:
        key3 = ("output", k, 0)
        if key3 in replace:
            clone.set_model_attn1_replace(AttentionInjection(state, k, replace[key3]), "output", k, 0)
        else:
            clone.set_model_attn1_replace(AttentionInjection(state, k, replace.get(("output", k))), "output", k)
    clone.set_model_output_block_patch(CallContext(state))
    for k in FEATURE_BLOCKS:
        name = f"diffusion_model.output_blocks.{k}.0.out_layers"
        original = clone.get_model_object(name)
        if not isinstance(original, nn.Sequential):
            raise EditInputError(f"output block {k} has no ResBlock with out_layers; use an SD 1.x checkpoint")
        if isinstance(original, FeatureInjection):  # a leftover of an earlier edit: wrap what it wraps
            original = nn.Sequential(collections.OrderedDict(original._modules))
        clone.add_object_patch(name, FeatureInjection(original, state, k))
    return clone
