"""The ComfyUI patch that adds SonicDiffusion's gated audio attention to a UNet.

SonicDiffusion's term needs the stream after the text cross-attention residual,
x + attn2(norm2(x)), which no single ComfyUI hook receives whole. So a middle_patch
puts x into the block's extra_options (one dict per block call, handed to the
middle_patch and then to the attn2_output_patch), and the attn2_output_patch (which
receives n = attn2(...)) returns n + f * tanh(gate) * Attn(LN(x + n), audio_tokens);
ComfyUI then adds x (docs/design.md, sections 5 and 10.3).

The x attn2 sees is the stream after *every* middle_patch, and ComfyUI appends
conditioning-level middle patches (GLIGEN) after the model's own at call time. So a
diffusion-model wrapper (audio_call.route_audio) moves the capture to the end of the
middle_patch list on every UNet call and marks the call; the patch refuses to run on
an unmarked call rather than compute on a stream that may be missing.

A patch holds weights and settings only. Which audio each row gets, the sigma window
and the derived keys/values reach it through the call (docs/design.md section 10.6).
"""
import itertools

import comfy.ldm.modules.attention as comfy_attention
import torch
import torch.nn.functional as F

from .audio_rows import AudioBatchError, PatchRows
from .batching import rows_for_batch
from .blocks import ADAPTER_BLOCKS, BLOCKS_BY_COMFY_KEY, HEADS

# transformer_options key: when true, every Sonic patch returns its input unchanged.
AUDIO_OFF = "sonic_audio_off"
# transformer_options key set by route_audio: the capture runs after every middle_patch.
STREAM_ORDERED = "sonic_stream_ordered"
# transformer_options key: the SonicAudioBatch of this call.
CALL_AUDIO = "sonic_call_audio"
# transformer_options key: this call's sigma as a float (one device sync per call, not per block).
CALL_SIGMA = "sonic_call_sigma"
# extra_options key the capture writes the block's stream to (that dict lives for one block call).
STREAM = "sonic_stream"
_uids = itertools.count(1)


class StreamCapture:
    """middle_patch: hands the block's stream x to the attn2_output_patch through the
    block call's own extra_options (returned unchanged)."""

    def __call__(self, x, extra_options):
        extra_options[STREAM] = x
        return x

    def __deepcopy__(self, memo):
        # ComfyUI 0.3.75 deep-copies model_options on clone; the capture is stateless.
        return self


def absorbs_projections(dim, heads=HEADS, tokens=77):
    """Whether folding to_q/to_out into the audio side is cheaper for this width:
    per query row, 2*d*d + 2*d*77 MACs plainly vs 2*d*heads*77 folded."""
    return dim * dim + dim * tokens > dim * heads * tokens


def _as_factors(values):
    return None if values is None else torch.as_tensor(values, dtype=torch.float32).detach().reshape(-1).cpu()


class SonicAudioPatch:
    """attn2_output_patch of one Apply Sonic Adapter node.

    Parameters
    - adapter: runtime SonicAdapter (model + ModelPatcher)
    - cond_tokens / uncond_tokens: [E,77,768] float32 projector outputs of the audio and of the
      negative audio (the null audio when none is given)
    - strength: the paper's f; 0 makes the patch an exact no-op
    - start_percent / end_percent: the window, turned into sigmas at the start of each
      sampling run with the model sampling then in force
    - block_weights: one factor per ADAPTER_BLOCKS site (middle, output 3..11), folded
      into the output projection with strength and gate; a site at 0 is skipped
    - differentiable: the plain formula through the adapter's modules (training)
    - row_strengths: optional [N] factors on the term per latent (a loudness curve)
    - source: who applied the patch, named in the errors raised while sampling (the node
      layer gives its node's name)
    """

    def __init__(self, adapter, cond_tokens, uncond_tokens, strength=1.0, start_percent=0.0, end_percent=1.0,
                 differentiable=False, block_weights=None, row_strengths=None, source="the Sonic audio patch"):
        self.uid = f"sonic-patch-{next(_uids)}"
        self.adapter = adapter
        self.cond_tokens = cond_tokens
        # No negative audio given: the null audio, projected now (never inside a UNet call).
        self.uncond_tokens = uncond_tokens if uncond_tokens is not None or cond_tokens is None \
            else adapter.null_tokens()
        self.strength = float(strength)
        self.start_percent = float(start_percent)
        self.end_percent = float(end_percent)
        self.differentiable = differentiable
        weights = (1.0,) * len(ADAPTER_BLOCKS) if block_weights is None else tuple(float(w) for w in block_weights)
        if len(weights) != len(ADAPTER_BLOCKS):
            raise ValueError(f"block_weights needs {len(ADAPTER_BLOCKS)} values, got {len(weights)}")
        self.block_weights = weights
        # strength x site weight per block: the factor the gate's tanh is multiplied by.
        self.site_scales = {b.name: self.strength * w for b, w in zip(ADAPTER_BLOCKS, weights)}
        self.row_strengths = _as_factors(row_strengths)
        self.source = source

    # ComfyUI plumbing -------------------------------------------------------------
    def models(self):
        """Lets ComfyUI load, offload and cast the adapter with the UNet."""
        return [self.adapter.patcher]

    def __deepcopy__(self, memo):
        # Immutable: every copy of the model shares it (as newer ComfyUI does without copying).
        return self

    @property
    def adapter_uid(self):
        return self.adapter.uid

    def rows_for_role(self, role):
        """This patch's own audio for a prompt of `role`: the audio for "positive", the
        negative audio for every other role."""
        tokens = self.cond_tokens if role == "positive" else self.uncond_tokens
        return PatchRows(tokens, self.row_strengths, self.source)

    def window(self, model_sampling):
        """(sigma_end, sigma_start) for this run, or None when the window is everything."""
        if self.start_percent <= 0.0 and self.end_percent >= 1.0:
            return None
        hi = float(model_sampling.percent_to_sigma(self.start_percent))
        lo = float(model_sampling.percent_to_sigma(self.end_percent))
        return lo, hi

    # The patch ----------------------------------------------------------------------
    def __call__(self, n, extra_options):
        block = BLOCKS_BY_COMFY_KEY.get(extra_options.get("block"))
        if block is None or extra_options.get("block_index", 0) != 0:
            return n
        # AUDIO_OFF lets callers (DDIM inversion) run the plain UNet through a patched model.
        if self.site_scales[block.name] == 0.0 or extra_options.get(AUDIO_OFF):
            return n
        audio = extra_options.get(CALL_AUDIO)
        x = extra_options.get(STREAM)
        if not extra_options.get(STREAM_ORDERED) or audio is None or x is None or x.shape != n.shape:
            raise RuntimeError(f"{self.source}: the block stream or the call's audio did not reach the patch (another "
                               f"node removed the pack's middle_patch or its diffusion_model wrapper). "
                               f"Re-apply the adapter after that node.")
        if not self._in_window(audio, extra_options):
            return n
        h = x + n
        if self.differentiable:
            return n + self._plain_term(block, h, audio)
        return n + self._fast_term(block, h, audio)

    def _in_window(self, audio, extra_options):
        window = audio.run.windows.get(self.uid)
        sigma = extra_options.get(CALL_SIGMA)
        if window is None or sigma is None:
            return True
        return window[0] <= sigma <= window[1]

    # Rows of this call ----------------------------------------------------------------
    def _call_rows(self, audio, batch):
        """Per chunk: token rows [batch,77,768] (or [1,...] for one audio) and factors or None."""
        out = []
        for rows, idx in audio.rows_of(self.uid):
            if rows is None:
                raise RuntimeError(f"{self.source}: a prompt reached the UNet without this adapter's audio (the "
                                   f"sampling run started before the adapter was applied?). Re-queue the graph.")
            if len(idx) != batch:
                raise AudioBatchError(f"{rows.source}: {len(idx)} audio rows for a chunk of {batch} latents.")
            out.append((_gather(rows.tokens, idx), _gather(rows.factors, idx)))
        return out

    def _row_scale(self, call_rows, batch, device, dtype):
        """[chunks*batch, 1, 1] per-row factors, or None when every factor is 1."""
        if all(f is None for _, f in call_rows):
            return None
        parts = [torch.ones(batch) if f is None else f.expand(batch) for _, f in call_rows]
        return torch.cat(parts).view(-1, 1, 1).to(device=device, dtype=dtype)

    def _plain_term(self, block, h, audio):
        """The formula as written, through the adapter's own modules (differentiable)."""
        batch = h.shape[0] // len(audio.parts)
        call_rows = self._call_rows(audio, batch)
        tokens = torch.cat([_rows_for_chunk(t, batch, self.source) for t, _ in call_rows])
        tokens = tokens.to(device=h.device, dtype=h.dtype)
        term = self.adapter.model.blocks[block.name].residual(h, tokens, self.site_scales[block.name])
        row_scale = self._row_scale(call_rows, batch, h.device, h.dtype)
        return term if row_scale is None else term * row_scale

    # Fast path: derived tensors built once per run and call signature ------------------
    def _fast_term(self, block, h, audio):
        n_chunks = len(audio.parts)
        batch = h.shape[0] // n_chunks
        key = (self.uid, block.name, h.device, h.dtype, batch, audio.signature)
        t = audio.run.derived(key, lambda: self._build(block, h.device, h.dtype, audio, batch))
        y = F.layer_norm(h, (block.dim,), t["ln_w"], t["ln_b"], 1e-5)
        if "A" in t:
            # Folded projections: scores = LN(h) @ A, out = softmax(scores) @ B (+ bias).
            rows = y.reshape(n_chunks, -1, block.dim)
            scores = torch.bmm(rows, t["A"])
            probs = scores.view(n_chunks, rows.shape[1], HEADS, -1).softmax(dim=-1)
            out = torch.baddbmm(t["bias"], probs.view(n_chunks, rows.shape[1], -1), t["B"])
            out = out.view_as(h)
        else:
            q = F.linear(y, t["wq"])
            o = comfy_attention.optimized_attention(q, t["k"], t["v"], HEADS)
            out = F.linear(o, t["wo"], t["bias"])
        row_scale = t.get("row_scale")
        return out if row_scale is None else out * row_scale

    @torch.no_grad()
    def _build(self, block, device, dtype, audio, batch):
        """Everything one block needs that depends only on tokens and weights."""
        call_rows = self._call_rows(audio, batch)
        chunk_tokens = [t.to(device=device, dtype=torch.float32) for t, _ in call_rows]
        # The folded path needs one token set per chunk; chunks of distinct audios use the plain one.
        single = all(t.shape[0] == 1 for t in chunk_tokens)
        mod = self.adapter.model.blocks[block.name]
        w = {name: p.detach().to(device=device, dtype=torch.float32) for name, p in mod.named_parameters()}
        scale = self.site_scales[block.name] * torch.tanh(w["gate_adapter"])
        wo = w["attn_adapter.to_out.0.weight"] * scale
        bias = w["attn_adapter.to_out.0.bias"] * scale
        t = {"ln_w": w["norm_adapter.weight"].to(dtype), "ln_b": w["norm_adapter.bias"].to(dtype),
             "row_scale": self._row_scale(call_rows, batch, device, dtype)}
        d, dh, n_chunks = block.dim, block.dim_head, len(chunk_tokens)
        if single and absorbs_projections(d):
            tok = torch.cat(chunk_tokens)                                  # [chunks, 77, 768]
            k = F.linear(tok, w["attn_adapter.to_k.weight"]).view(n_chunks, -1, HEADS, dh)
            v = F.linear(tok, w["attn_adapter.to_v.weight"]).view(n_chunks, -1, HEADS, dh)
            wq = w["attn_adapter.to_q.weight"].view(HEADS, dh, d)
            # A[c, i, h*77+j] = scale_attn * sum_e Wq[h*dh+e, i] K[c, j, h*dh+e]
            a = torch.einsum("hei,cjhe->cihj", wq, k) * dh ** -0.5
            # B[c, h*77+j, o] = sum_e V[c, j, h*dh+e] Wo'[o, h*dh+e]
            b = torch.einsum("cjhe,ohe->chjo", v, wo.view(d, HEADS, dh))
            t["A"] = a.reshape(n_chunks, d, -1).to(dtype)
            t["B"] = b.reshape(n_chunks, -1, d).to(dtype)
            t["bias"] = bias.to(dtype).expand(n_chunks, 1, d)
        else:
            rows = torch.cat([_rows_for_chunk(tok, batch, self.source) for tok in chunk_tokens])
            t["wq"] = w["attn_adapter.to_q.weight"].to(dtype)
            t["k"] = F.linear(rows, w["attn_adapter.to_k.weight"]).to(dtype)
            t["v"] = F.linear(rows, w["attn_adapter.to_v.weight"]).to(dtype)
            t["wo"] = wo.to(dtype)
            t["bias"] = bias.to(dtype)
        return t


def _gather(values, idx):
    """values [N, ...] picked by the row indices of one chunk; a single row stays single."""
    if values is None or values.shape[0] == 1:
        return values
    return values[list(idx)]


def _rows_for_chunk(tokens, batch, source):
    """Tokens [E,77,768] for one chunk of `batch` latents (one row serves every latent)."""
    return rows_for_batch(tokens, batch, lambda n, b: AudioBatchError(
        f"{source}: {n} audio embeddings for a batch of {b} latents. "
        f"Give one audio (it serves every latent) or exactly {b} (one per latent)."))
