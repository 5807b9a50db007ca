"""MS-CLAP 2022 audio tower (docs/design.md section 3): loader, converter and runtime wrapper.

waveform [B, 441000] @ 44.1 kHz -> log-mel [B, 1379, 64] -> Cnn14 -> [B, 2048]
-> projection -> [B, 1024], L2-normalised.

BatchNorm folding (done once at load time, eval-mode BN is a per-channel affine):
    bn(conv(x)) = g * (W*x - mu) / sqrt(var + eps) + beta
                = (s * W) * x + (beta - s * mu),      s = g / sqrt(var + eps)
so each conv gets weight ``s[:, None, None, None] * W`` and bias ``beta - s * mu``
(computed in float64, then cast). ``bn0`` normalises the 64 mel bins *before*
conv1, whose zero padding would make folding inexact at the borders, so it stays a
per-bin affine (``scale``, ``shift``) applied right after the log-mel.

Weight files accepted by ``load_clap_state_dict``:
- the official ``CLAP_weights_2022.pth`` dict ``{"model": {...}}`` or that inner
  dict: ``audio_encoder.*`` keys; ``caption_encoder.*`` and ``logit_scale`` ignored;
- our audio-only safetensors (``convert_clap_to_safetensors``): the same
  ``audio_encoder.*`` names, metadata ``format=sonic-clap-audio``, ``format_version=1``;
- either of those with ``module.`` on every key (``torch.nn.DataParallel`` saves
  that way); the prefix is stripped.
"""
import logging
import os

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import torch
import torch.nn.functional as F

from . import AUDIO_EMBED_DIM, CLAP_CLIP_SAMPLES
from .audio_prep import prepare_clip
from .clap_frontend import N_MELS, ClapFrontEnd, dft_kernels
from .files import write_atomic
from .safe_load import load_weights_file

ops = comfy.ops.manual_cast

FORMAT = "sonic-clap-audio"
FORMAT_VERSION = "1"
PREFIX = "audio_encoder."
CHANNELS = (1, 64, 128, 256, 512, 1024, 2048)
BN_EPS = 1e-5  # torch.nn.BatchNorm2d default, used by the official model
LN_EPS = 1e-5
EMBED_IN = 2048


class ClapWeightsError(ValueError):
    """A file is not (a complete) MS-CLAP 2022 audio tower."""


# ---------------------------------------------------------------- key layout

def _bn_keys(name, n):
    return {f"{name}.weight": (n,), f"{name}.bias": (n,), f"{name}.running_mean": (n,), f"{name}.running_var": (n,)}


def audio_tower_shapes():
    """Required ``audio_encoder.*`` keys -> shapes (official names)."""
    b = PREFIX + "base."
    shapes = {
        b + "spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
        b + "spectrogram_extractor.stft.conv_imag.weight": (513, 1, 1024),
        b + "logmel_extractor.melW": (513, N_MELS),
    }
    shapes.update(_bn_keys(b + "bn0", N_MELS))
    for i in range(1, 7):
        cin, cout = CHANNELS[i - 1], CHANNELS[i]
        blk = f"{b}conv_block{i}"
        shapes[f"{blk}.conv1.weight"] = (cout, cin, 3, 3)
        shapes[f"{blk}.conv2.weight"] = (cout, cout, 3, 3)
        shapes.update(_bn_keys(f"{blk}.bn1", cout))
        shapes.update(_bn_keys(f"{blk}.bn2", cout))
    shapes[b + "fc1.weight"] = (EMBED_IN, EMBED_IN)
    shapes[b + "fc1.bias"] = (EMBED_IN,)
    p = PREFIX + "projection."
    shapes[p + "linear1.weight"] = (AUDIO_EMBED_DIM, EMBED_IN)
    shapes[p + "linear2.weight"] = (AUDIO_EMBED_DIM, AUDIO_EMBED_DIM)
    shapes[p + "layer_norm.weight"] = (AUDIO_EMBED_DIM,)
    shapes[p + "layer_norm.bias"] = (AUDIO_EMBED_DIM,)
    return shapes


def _is_optional(key):
    # Unused by the embedding: the AudioSet head and BN step counters.
    return key.startswith(PREFIX + "base.fc_audioset.") or key.endswith(".num_batches_tracked")


def _names(keys, limit=5):
    keys = list(keys)
    head = ", ".join(keys[:limit])
    return head + (f", ... ({len(keys)} in all)" if len(keys) > limit else f" ({len(keys)} in all)")


def _describe(sd):
    """What a state dict looks like, for error messages."""
    groups = {}
    for k in sd:
        top = k.split(".", 1)[0] + ("." if "." in k else "")
        groups[top] = groups.get(top, 0) + 1
    parts = [f"{g}* ({n})" if g.endswith(".") else g for g, n in sorted(groups.items(), key=lambda x: -x[1])[:6]]
    hint = ""
    keys = list(sd)
    if any(k.startswith("base.conv_block1.") or k.startswith("conv_block1.") for k in keys):
        hint = " It looks like a bare Cnn14 state dict without the 'audio_encoder.' prefix; save the full CLAP model instead."
    elif any("audio_emb_projection" in k for k in keys):
        hint = " It looks like a SonicDiffusion audio projector; load it with the projector/adapter loader."
    elif any("attn_adapter" in k or "gate_adapter" in k for k in keys):
        hint = " It looks like SonicDiffusion UNet adapter gates; load it with the adapter loader."
    elif any(k.startswith("model.diffusion_model.") for k in keys):
        hint = " It looks like a Stable Diffusion checkpoint."
    elif any(k.startswith("caption_encoder.") for k in keys):
        hint = " It holds only CLAP's text tower (caption_encoder), not the audio tower."
    return f"{len(sd)} keys: {', '.join(parts) or 'none'}.{hint}"


def normalize_state_dict(sd):
    """Unwrap ``{"model": ...}`` and strip a ``module.`` prefix found on every key."""
    if not isinstance(sd, dict):
        raise ClapWeightsError(f"expected a dict of tensors, got {type(sd).__name__}")
    for wrapper in ("model", "state_dict"):
        if isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]  # the official file keeps its tensors under "model"
            break
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}  # DataParallel wrapper
    return sd


def validate_audio_tower(sd):
    """Raise ClapWeightsError unless every required key is present with its shape."""
    audio = {k: v for k, v in sd.items() if k.startswith(PREFIX)}
    if not audio:
        raise ClapWeightsError(
            "no MS-CLAP audio tower found: expected keys like 'audio_encoder.base.conv_block1.conv1.weight' "
            "(the official CLAP_weights_2022.pth or a sonic-clap-audio .safetensors), but the file has "
            + _describe(sd))
    shapes = audio_tower_shapes()
    missing = [k for k in shapes if k not in audio]
    bad = [(k, shapes[k], tuple(audio[k].shape)) for k in shapes if k in audio and tuple(audio[k].shape) != shapes[k]]
    if missing or bad:
        msg = []
        if any("htsat" in k for k in audio):
            msg.append("this is the MS-CLAP 2023 (HTSAT) audio tower; SonicDiffusion needs CLAP_weights_2022.pth (Cnn14)")
        if missing:
            msg.append(f"missing {len(missing)} audio-tower keys: {_names(missing)}")
        if bad:
            msg.append("shape mismatches: " + "; ".join(f"{k}: expected {list(e)}, got {list(g)}" for k, e, g in bad[:5])
                       + (f" ... ({len(bad)} in all)" if len(bad) > 5 else ""))
        raise ClapWeightsError("not a complete MS-CLAP 2022 audio tower: " + "; ".join(msg))
    for k in (PREFIX + "base.spectrogram_extractor.stft.conv_real.weight",):
        ref = dft_kernels()[0]
        if (audio[k].float() - ref).abs().max() > 1e-3:
            # We compute the STFT with torch.stft; stored kernels are only a consistency check.
            logging.warning("SonicDiffusion: CLAP STFT kernels differ from a periodic-Hann DFT; the file may be altered")
    return audio


# ---------------------------------------------------------------- model

class ClapAudioEncoder(torch.nn.Module):
    """The MS-CLAP 2022 audio tower with BN folded; ``forward(x [B, 441000]) -> [B, 1024]``.

    Conv/Linear/LayerNorm are ``comfy.ops.manual_cast`` layers: weights are cast to the
    activation dtype, so weights may be stored in a smaller dtype than the compute.
    """

    def __init__(self, mel_matrix=None, device=None, dtype=torch.float32):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.frontend = ClapFrontEnd(mel_matrix)
        self.register_buffer("bn0_scale", torch.ones(N_MELS))
        self.register_buffer("bn0_shift", torch.zeros(N_MELS))
        self.convs = torch.nn.ModuleList()
        for i in range(1, 7):
            cin, cout = CHANNELS[i - 1], CHANNELS[i]
            self.convs.append(ops.Conv2d(cin, cout, 3, padding=1, bias=True, **kw))
            self.convs.append(ops.Conv2d(cout, cout, 3, padding=1, bias=True, **kw))
        self.fc1 = ops.Linear(EMBED_IN, EMBED_IN, bias=True, **kw)
        self.linear1 = ops.Linear(EMBED_IN, AUDIO_EMBED_DIM, bias=False, **kw)
        self.linear2 = ops.Linear(AUDIO_EMBED_DIM, AUDIO_EMBED_DIM, bias=False, **kw)
        self.layer_norm = ops.LayerNorm(AUDIO_EMBED_DIM, eps=LN_EPS, **kw)
        # channels_last speeds up the wide early convs on CPU (mkldnn) but slows the
        # late ones (tiny maps, huge weights): use it for the first blocks only.
        self.channels_last_blocks = 3

    def set_weight_dtype(self, dtype):
        """Store Conv/Linear/LayerNorm weights in ``dtype``; front-end and bn0 buffers stay float32."""
        for m in [*self.convs, self.fc1, self.linear1, self.linear2, self.layer_norm]:
            m.to(dtype=dtype)
        return self

    def get_dtype(self):
        return self.fc1.weight.dtype

    def logmel(self, x):
        """[B, T] -> normalised log-mel [B, 1, frames, 64] float32 (bn0 applied)."""
        # .to(x.device): a low-VRAM partial load may leave these small buffers behind.
        scale = self.bn0_scale.to(device=x.device, dtype=torch.float32)
        shift = self.bn0_shift.to(device=x.device, dtype=torch.float32)
        return (self.frontend(x) * scale + shift).unsqueeze(1)

    def embed_unnormalised(self, x, compute_dtype=torch.float32):
        h = self.logmel(x).to(compute_dtype)
        if self.channels_last_blocks > 0:
            h = h.contiguous(memory_format=torch.channels_last)
        for i in range(6):
            if i == self.channels_last_blocks:
                h = h.contiguous()
            h = F.relu(self.convs[2 * i](h), inplace=True)
            h = F.relu(self.convs[2 * i + 1](h), inplace=True)
            if i < 5:
                h = F.avg_pool2d(h, kernel_size=2)
        h = h.mean(dim=3)  # over frequency -> [B, 2048, time]
        h = h.amax(dim=2) + h.mean(dim=2)
        h = F.relu(self.fc1(h))
        e1 = self.linear1(h)
        e2 = self.linear2(F.gelu(e1))
        return self.layer_norm(e1 + e2)

    def forward(self, x, compute_dtype=torch.float32):
        return F.normalize(self.embed_unnormalised(x, compute_dtype).float(), dim=-1)


def _fold(conv_w, bn):
    """Fold eval BatchNorm into the preceding bias-free conv (float64 algebra)."""
    s = bn["weight"].double() / torch.sqrt(bn["running_var"].double() + BN_EPS)
    w = conv_w.double() * s[:, None, None, None]
    b = bn["bias"].double() - bn["running_mean"].double() * s
    return w, b


def load_clap_state_dict(sd, metadata=None, dtype=torch.float32):
    """Build a ClapAudioEncoder from any accepted layout (see module docstring)."""
    if metadata:
        fmt = metadata.get("format")
        if fmt is not None and fmt != FORMAT:
            raise ClapWeightsError(f"the file's metadata says format {fmt!r}, not a CLAP audio tower ({FORMAT!r})")
        ver = metadata.get("format_version")
        if fmt == FORMAT and ver is not None and str(ver) != FORMAT_VERSION:
            raise ClapWeightsError(f"{FORMAT} version {ver} is not supported (this pack reads version {FORMAT_VERSION}); update the pack")
    sd = normalize_state_dict(sd)
    audio = validate_audio_tower(sd)
    b = PREFIX + "base."
    g = {k[len(b):]: v for k, v in audio.items() if k.startswith(b)}
    model = ClapAudioEncoder(mel_matrix=g["logmel_extractor.melW"].float(), dtype=dtype)
    with torch.no_grad():
        s0 = g["bn0.weight"].double() / torch.sqrt(g["bn0.running_var"].double() + BN_EPS)
        model.bn0_scale.copy_(s0.float())
        model.bn0_shift.copy_((g["bn0.bias"].double() - g["bn0.running_mean"].double() * s0).float())
        for i in range(1, 7):
            for j in (1, 2):
                bn = {n: g[f"conv_block{i}.bn{j}.{n}"] for n in ("weight", "bias", "running_mean", "running_var")}
                w, bias = _fold(g[f"conv_block{i}.conv{j}.weight"], bn)
                conv = model.convs[2 * (i - 1) + (j - 1)]
                conv.weight.copy_(w.to(dtype))
                conv.bias.copy_(bias.to(dtype))
        model.fc1.weight.copy_(g["fc1.weight"].to(dtype))
        model.fc1.bias.copy_(g["fc1.bias"].to(dtype))
        p = PREFIX + "projection."
        model.linear1.weight.copy_(audio[p + "linear1.weight"].to(dtype))
        model.linear2.weight.copy_(audio[p + "linear2.weight"].to(dtype))
        model.layer_norm.weight.copy_(audio[p + "layer_norm.weight"].to(dtype))
        model.layer_norm.bias.copy_(audio[p + "layer_norm.bias"].to(dtype))
    return model.eval().requires_grad_(False)


def load_clap_file(path, dtype=torch.float32):
    """Read any accepted file (safe loading) and build the encoder model."""
    sd, meta = load_weights_file(path)
    return load_clap_state_dict(sd, metadata=meta, dtype=dtype)


# ---------------------------------------------------------------- converter

# Kept in float32 even in a float16 file: small, and precision-relevant
# (mel matrix, STFT kernels, BN statistics that get folded).
_KEEP_FP32 = ("spectrogram_extractor.", "logmel_extractor.", ".bn0.", ".bn1.", ".bn2.")


def convert_clap_to_safetensors(src_path, dst_path, dtype=torch.float32, overwrite=False):
    """Write the audio tower of ``src_path`` (any accepted file) to one .safetensors.

    Only required ``audio_encoder.*`` keys are written (no text tower, no AudioSet
    head, no BN counters). With ``dtype=torch.float16`` conv/linear weights are
    halved; front-end and BN tensors stay float32. Returns ``dst_path``.
    """
    from safetensors.torch import save_file

    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    src_path, dst_path = os.fspath(src_path), os.fspath(dst_path)
    if not dst_path.lower().endswith(".safetensors"):
        raise ValueError(f"the destination must end in .safetensors: {dst_path!r}")
    if os.path.exists(dst_path) and not overwrite:
        raise FileExistsError(f"{dst_path!r} already exists; pass overwrite=True to replace it")
    if os.path.exists(dst_path) and os.path.samefile(src_path, dst_path):
        raise ValueError("source and destination are the same file")
    sd, meta = load_weights_file(src_path)
    if meta.get("format") not in (None, FORMAT):
        raise ClapWeightsError(f"{src_path!r} is a {meta.get('format')!r} file, not a CLAP audio tower")
    audio = validate_audio_tower(normalize_state_dict(sd))
    out = {}
    for k in audio_tower_shapes():
        v = audio[k]
        target = torch.float32 if any(s in k for s in _KEEP_FP32) else dtype
        out[k] = v.detach().to(target).contiguous().clone()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": str(dtype).replace("torch.", "")}
    # atomic: a crash never leaves half a file under the real name (files.write_atomic)
    write_atomic(dst_path, lambda tmp: save_file(out, str(tmp), metadata=meta), overwrite=True, make_parents=False)
    return dst_path


# ---------------------------------------------------------------- runtime

def pick_dtypes(device, dtype=None):
    """(storage dtype, compute dtype) for the tower on ``device``.

    ComfyUI's text_encoder_dtype() says float16 on a CPU (a RAM saving for big text
    towers); Cnn14 is 80M parameters and fp16 convolutions on a CPU are slower and
    less exact, so the CPU runs float32. fp8 storage computes in half precision.
    """
    if dtype is not None:
        return dtype, dtype
    mm = comfy.model_management
    if mm.is_device_cpu(device):
        return torch.float32, torch.float32
    storage = mm.text_encoder_dtype(device)
    if storage in (torch.float16, torch.bfloat16, torch.float32):
        return storage, storage
    compute = torch.float16 if mm.should_use_fp16(device) else torch.float32
    return storage, compute


class ClapEncoder:
    """Runtime wrapper: model + ModelPatcher on ComfyUI's text-encoder devices.

    ``encode(clips [B, 441000]) -> [B, 1024]`` float32 on the CPU.
    """

    def __init__(self, model, load_device=None, offload_device=None, dtype=None, batch_size=None):
        mm = comfy.model_management
        self.load_device = load_device if load_device is not None else mm.text_encoder_device()
        offload = offload_device if offload_device is not None else mm.text_encoder_offload_device()
        self.storage_dtype, self.compute_dtype = pick_dtypes(self.load_device, dtype)
        model.set_weight_dtype(self.storage_dtype)
        model.to(offload)
        self.model = model
        self.patcher = comfy.model_patcher.ModelPatcher(model, load_device=self.load_device, offload_device=offload)
        # Items per forward: batching re-uses the big late-block weights; 4 keeps CPU
        # memory (~0.5 GB of activations) and interrupt latency modest.
        self.batch_size = int(batch_size or (4 if mm.is_device_cpu(self.load_device) else 16))

    @classmethod
    def from_file(cls, path, **kwargs):
        return cls(load_clap_file(path), **kwargs)

    def encode(self, clips, progress=None, check_interrupt=None):
        """Embeddings of ``clips [B, 441000]`` (from prepare_clip).

        Items run in chunks of ``batch_size``; ``progress(done)`` gets the number of
        items finished after each chunk and ``check_interrupt()`` runs before each
        chunk; either may raise to stop.
        """
        if clips.ndim == 1:
            clips = clips.unsqueeze(0)
        if clips.ndim != 2 or clips.shape[-1] != CLAP_CLIP_SAMPLES:
            raise ValueError(f"expected clips [B, {CLAP_CLIP_SAMPLES}] (use prepare_clip), got {tuple(clips.shape)}")
        comfy.model_management.load_model_gpu(self.patcher)
        device = self.patcher.load_device
        total = clips.shape[0]
        out = []
        with torch.no_grad():
            for s in range(0, total, self.batch_size):
                if check_interrupt is not None:
                    check_interrupt()
                x = clips[s:s + self.batch_size].to(device=device, dtype=torch.float32)
                out.append(self.model(x, self.compute_dtype).to("cpu", torch.float32))
                if progress is not None:
                    progress(min(s + self.batch_size, total))
        return torch.cat(out, 0) if out else torch.zeros(0, AUDIO_EMBED_DIM)

    def encode_audio(self, waveform, sample_rate):
        """What core ComfyUI's "Audio Encoder Encode" node calls on an AUDIO_ENCODER: the
        official preprocessing (mono, 44.1 kHz, the centre 10 s; shorter clips repeated, as
        Audio Encode (Sonic) with its default window) and the embeddings, in core's
        AUDIO_ENCODER_OUTPUT dict. "encoded_audio" is [B, 1024] (one vector per clip, not
        core's per-frame features); ENCODER_OUTPUT_KIND tells the pack's nodes what it holds."""
        clips = prepare_clip(waveform, sample_rate, window="center")
        embeds = self.encode(clips, check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        return {"encoded_audio": embeds, "audio_samples": clips.shape[-1], "kind": ENCODER_OUTPUT_KIND}


# The "kind" of an AUDIO_ENCODER_OUTPUT made by ClapEncoder.encode_audio.
ENCODER_OUTPUT_KIND = "sonic_diffusion.ms_clap_2022"
