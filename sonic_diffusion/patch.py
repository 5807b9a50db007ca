"""The ComfyUI patch that adds SonicDiffusion's gated audio attention to a UNet.

SonicDiffusion's term needs the stream after the text cross-attention residual,
x + attn2(norm2(x)), which no single ComfyUI hook receives whole. So a middle_patch
keeps x, and the attn2_output_patch (which receives n = attn2(...)) returns
n + f * tanh(gate) * Attn(LN(x + n), audio_tokens); ComfyUI then adds x
(docs/design.md, sections 5 and 10.3).

The x attn2 sees is the stream after *every* middle_patch, and ComfyUI appends
conditioning-level middle patches (GLIGEN) after the model's own at call time. So a
diffusion-model wrapper moves the captures to the end of the middle_patch list on
every UNet call, and marks the call; the patch refuses to run on an unmarked call
rather than compute on a stream that may be stale.

Audio keys and values do not depend on the latent, so they (and everything else
derived from tokens and weights) are computed once per sampling per device/dtype,
not at every step.
"""
import torch
import torch.nn.functional as F

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension

from .batching import rows_for_batch
from .blocks import ADAPTER_BLOCKS, BLOCKS_BY_COMFY_KEY, HEADS


# transformer_options key: when true, every Sonic patch returns its input unchanged.
AUDIO_OFF = "sonic_audio_off"
# transformer_options key set by captures_last(): the captures run after every middle_patch.
STREAM_ORDERED = "sonic_stream_ordered"
# Key of the per-row strength factors in a cache entry (beside the blocks' names).
ROW_SCALE = "row_scale"
WRAPPER_KEY = "sonic_diffusion_stream_order"


class AudioBatchError(ValueError):
    """The audio embeddings cannot be matched to the latent batch."""


class StreamCapture:
    """middle_patch: remembers the block's stream x (returned unchanged)."""

    def __init__(self):
        self.x = None

    def __call__(self, x, extra_options):
        self.x = x
        return x

    def __deepcopy__(self, memo):
        # ComfyUI 0.3.75 deep-copies model_options on clone; the patch is immutable
        # apart from transient state, so clones share it (as newer ComfyUI does).
        return self


def captures_last(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: runs the UNet with every StreamCapture moved behind the
    other middle patches (order among the rest kept), so each capture sees the stream
    attn2 receives. The list is rebuilt only when a capture is not already last."""
    args = list(args)
    in_args = len(args) > 5
    to = dict(args[5] if in_args else kwargs.get("transformer_options", {}))
    patches = to.get("patches", {})
    middle = patches.get("middle_patch", [])
    captures = [p for p in middle if isinstance(p, StreamCapture)]
    others = [p for p in middle if not isinstance(p, StreamCapture)]
    if any(a is not b for a, b in zip(middle, others + captures)):
        to["patches"] = {**patches, "middle_patch": others + captures}
    to[STREAM_ORDERED] = True
    if in_args:
        args[5] = to
    else:
        kwargs["transformer_options"] = to
    return executor(*args, **kwargs)


def register_capture(model_patcher, capture):
    """Adds the middle_patch and, once per model, the wrapper that keeps it last."""
    model_patcher.set_model_patch(capture, "middle_patch")
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    present = comfy.patcher_extension.get_all_wrappers(kind, model_patcher.model_options, is_model_options=True)
    if captures_last not in present:
        comfy.patcher_extension.add_wrapper_with_key(kind, WRAPPER_KEY, captures_last, model_patcher.model_options,
                                                     is_model_options=True)


def _rows_for_chunk(tokens, batch):
    """Tokens [E,77,768] for one chunk of `batch` latents (the pack's batch rule)."""
    return rows_for_batch(tokens, batch, lambda n, b: AudioBatchError(
        f"Apply Sonic Adapter: {n} audio embeddings for a batch of {b} latents. "
        f"Give one audio (it serves every latent) or exactly {b} (one per latent)."))


def absorbs_projections(dim, heads=HEADS, tokens=77):
    """Whether folding to_q/to_out into the audio side is cheaper for this width:
    per query row, 2*d*d + 2*d*77 MACs plainly vs 2*d*heads*77 folded."""
    return dim * dim + dim * tokens > dim * heads * tokens


class SonicAudioPatch:
    """attn2_output_patch of one Apply Sonic Adapter node.

    Parameters
    - adapter: runtime SonicAdapter (model + ModelPatcher, null tokens)
    - cond_tokens / uncond_tokens: [E,77,768] float32 projector outputs
    - strength: the paper's f; 0 makes the patch an exact no-op
    - sigma_start / sigma_end: active while sigma_end <= sigma <= sigma_start (None = always)
    - block_weights: one factor per ADAPTER_BLOCKS site (middle, output 3..11), folded
      into the output projection with strength and gate; a site at 0 is skipped
    - differentiable: the plain formula through the adapter's modules (training)
    - row_strengths: optional [N] factors on the term per latent (a loudness curve), under
      the batch rule: one value serves every latent, N values map one-to-one
    """

    def __init__(self, adapter, cond_tokens, uncond_tokens, strength=1.0, sigma_start=None, sigma_end=None,
                 differentiable=False, block_weights=None, row_strengths=None):
        self.adapter = adapter
        self.cond_tokens = cond_tokens
        self.uncond_tokens = uncond_tokens
        self.strength = float(strength)
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.differentiable = differentiable
        weights = (1.0,) * len(ADAPTER_BLOCKS) if block_weights is None else tuple(float(w) for w in block_weights)
        if len(weights) != len(ADAPTER_BLOCKS):
            raise ValueError(f"block_weights needs {len(ADAPTER_BLOCKS)} values, got {len(weights)}")
        self.block_weights = weights
        # strength x site weight per block: the factor the gate's tanh is multiplied by.
        self.site_scales = {b.name: self.strength * w for b, w in zip(ADAPTER_BLOCKS, weights)}
        self.row_strengths = None if row_strengths is None else \
            torch.as_tensor(row_strengths, dtype=torch.float32).detach().reshape(-1).cpu()
        self.capture = StreamCapture()
        self._cache = {}
        self._window_sigmas = None
        self._window_active = True

    # ComfyUI plumbing -------------------------------------------------------------
    def models(self):
        """Lets ComfyUI load, offload and cast the adapter with the UNet."""
        return [self.adapter.patcher]

    def to(self, device_or_dtype):
        """ComfyUI moves patches with the model (a device, or the UNet's dtype); cached
        tensors for another device are dropped. Cache keys carry the dtype, so a dtype
        needs no action: tensors are built for the dtype the UNet computes in."""
        if isinstance(device_or_dtype, (torch.device, str)):
            device = torch.device(device_or_dtype)
            self._cache = {k: v for k, v in self._cache.items() if k[0] == device}
        return self

    def cleanup(self):
        """Called by newer ComfyUI after each sampling run: free per-sampling tensors."""
        self._cache = {}
        self.capture.x = None

    def __deepcopy__(self, memo):
        return self

    def register(self, model_patcher):
        """Adds this patch to a (cloned) ModelPatcher."""
        register_capture(model_patcher, self.capture)
        model_patcher.set_model_attn2_output_patch(self)
        return model_patcher

    # The patch ----------------------------------------------------------------------
    def _in_window(self, extra_options):
        if self.sigma_start is None and self.sigma_end is None:
            return True
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return True
        # Every block of one model call gets the same tensor: sync once per step.
        if sigmas is not self._window_sigmas:
            s = float(sigmas.reshape(-1)[0])
            hi = self.sigma_start if self.sigma_start is not None else float("inf")
            lo = self.sigma_end if self.sigma_end is not None else 0.0
            self._window_sigmas = sigmas
            self._window_active = lo <= s <= hi
        return self._window_active

    def __call__(self, n, extra_options):
        block = BLOCKS_BY_COMFY_KEY.get(extra_options.get("block"))
        if block is None or extra_options.get("block_index", 0) != 0:
            return n
        # AUDIO_OFF lets callers (DDIM inversion) run the plain UNet through a patched model.
        if self.site_scales[block.name] == 0.0 or extra_options.get(AUDIO_OFF) or not self._in_window(extra_options):
            return n
        x = self.capture.x
        if not extra_options.get(STREAM_ORDERED) or x is None or x.shape != n.shape:
            raise RuntimeError("Apply Sonic Adapter: the block stream was not captured after the other middle "
                               "patches (another node removed the pack's middle_patch or its diffusion_model "
                               "wrapper). Re-apply the adapter after that node.")
        h = x + n
        chunks = list(extra_options.get("cond_or_uncond") or [0])
        if self.differentiable:
            return n + self._plain_term(block, h, chunks)
        return n + self._fast_term(block, h, chunks)

    # Token rows per chunk -----------------------------------------------------------
    def _chunk_tokens(self, chunks, batch):
        uncond = self.uncond_tokens if self.uncond_tokens is not None else self.adapter.null_tokens()
        return [self.cond_tokens if c != 1 else uncond for c in chunks]

    def _plain_term(self, block, h, chunks):
        """The formula as written, through the adapter's own modules (differentiable)."""
        batch = h.shape[0] // len(chunks)
        tokens = torch.cat([_rows_for_chunk(t, batch) for t in self._chunk_tokens(chunks, batch)])
        tokens = tokens.to(device=h.device, dtype=h.dtype)
        term = self.adapter.model.blocks[block.name].residual(h, tokens, self.site_scales[block.name])
        row_scale = self._row_scale(len(chunks), batch, h.device, h.dtype)
        return term if row_scale is None else term * row_scale

    def _row_scale(self, n_chunks, batch, device, dtype):
        """[chunks*batch, 1, 1] per-row factors of row_strengths (the same for every chunk), or None."""
        if self.row_strengths is None:
            return None
        per_latent = rows_for_batch(self.row_strengths, batch, lambda n, b: AudioBatchError(
            f"Apply Sonic Adapter: a strength curve of {n} values for a batch of {b} latents. "
            f"Give one value per latent ({b}), e.g. from Loudness Strength Curve (Sonic) at the fps "
            f"of Audio Encode Frames (Sonic)."))
        return per_latent.repeat(n_chunks).view(-1, 1, 1).to(device=device, dtype=dtype)

    # Cached fast path -----------------------------------------------------------------
    def _fast_term(self, block, h, chunks):
        batch = h.shape[0] // len(chunks)
        key = (h.device, h.dtype, tuple(chunks), batch)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._build(h.device, h.dtype, chunks, batch)
            self._cache[key] = entry
        t = entry[block.name]
        y = F.layer_norm(h, (block.dim,), t["ln_w"], t["ln_b"], 1e-5)
        if "A" in t:
            # Folded projections: scores = LN(h) @ A, out = softmax(scores) @ B (+ bias).
            n_chunks = len(chunks)
            rows = y.reshape(n_chunks, -1, block.dim)
            scores = torch.bmm(rows, t["A"])
            probs = scores.view(n_chunks, rows.shape[1], HEADS, -1).softmax(dim=-1)
            out = torch.baddbmm(t["bias"], probs.view(n_chunks, rows.shape[1], -1), t["B"])
            out = out.view_as(h)
        else:
            q = F.linear(y, t["wq"])
            o = comfy_attention.optimized_attention(q, t["k"], t["v"], HEADS)
            out = F.linear(o, t["wo"], t["bias"])
        row_scale = entry.get(ROW_SCALE)
        return out if row_scale is None else out * row_scale

    @torch.no_grad()
    def _build(self, device, dtype, chunks, batch):
        """Everything the blocks need that depends only on tokens and weights."""
        chunk_tokens = [t.to(device=device, dtype=torch.float32) for t in self._chunk_tokens(chunks, batch)]
        # The folded path needs one token set per chunk; batches of distinct audios use the plain one.
        single = all(t.shape[0] == 1 for t in chunk_tokens)
        rows = torch.cat([_rows_for_chunk(t, batch) for t in chunk_tokens])
        entry = {ROW_SCALE: self._row_scale(len(chunks), batch, device, dtype)}
        for block in ADAPTER_BLOCKS:
            if self.site_scales[block.name] == 0.0:
                continue  # never called: __call__ skips the site
            mod = self.adapter.model.blocks[block.name]
            w = {name: p.detach().to(device=device, dtype=torch.float32) for name, p in mod.named_parameters()}
            scale = self.site_scales[block.name] * torch.tanh(w["gate_adapter"])
            wo = w["attn_adapter.to_out.0.weight"] * scale
            bias = w["attn_adapter.to_out.0.bias"] * scale
            t = {"ln_w": w["norm_adapter.weight"].to(dtype), "ln_b": w["norm_adapter.bias"].to(dtype)}
            d, dh = block.dim, block.dim_head
            if single and absorbs_projections(d):
                tok = torch.cat(chunk_tokens)                                  # [chunks, 77, 768]
                k = F.linear(tok, w["attn_adapter.to_k.weight"]).view(len(chunks), -1, HEADS, dh)
                v = F.linear(tok, w["attn_adapter.to_v.weight"]).view(len(chunks), -1, HEADS, dh)
                wq = w["attn_adapter.to_q.weight"].view(HEADS, dh, d)
                # A[c, i, h*77+j] = scale_attn * sum_e Wq[h*dh+e, i] K[c, j, h*dh+e]
                a = torch.einsum("hei,cjhe->cihj", wq, k) * dh ** -0.5
                # B[c, h*77+j, o] = sum_e V[c, j, h*dh+e] Wo'[o, h*dh+e]
                b = torch.einsum("cjhe,ohe->chjo", v, wo.view(d, HEADS, dh))
                t["A"] = a.reshape(len(chunks), d, -1).to(dtype)
                t["B"] = b.reshape(len(chunks), -1, d).to(dtype)
                t["bias"] = bias.to(dtype).expand(len(chunks), 1, d)
            else:
                t["wq"] = w["attn_adapter.to_q.weight"].to(dtype)
                t["k"] = F.linear(rows, w["attn_adapter.to_k.weight"]).to(dtype)
                t["v"] = F.linear(rows, w["attn_adapter.to_v.weight"]).to(dtype)
                t["wo"] = wo.to(dtype)
                t["bias"] = bias.to(dtype)
            entry[block.name] = t
        return entry
