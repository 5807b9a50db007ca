"""Seeded, deterministic stand-in weights and audio for tests and benchmarks.

Nothing here is trained: every file has the key names, shapes and dtypes of the
real thing, filled with seeded random values scaled so that forward passes stay
finite. Files are cached under ``root/<GENERATOR_VERSION>/`` and rebuilt only
when missing; bump GENERATOR_VERSION whenever the bytes a builder writes change.

CLI (from the repository root):
    python -m sonic_diffusion.fixtures --out DIR [--only NAME ...] [--seed N] [--list]
NAME is a target (reduced_checkpoint, full_checkpoint, full_unet, projector,
projector_gh, gates, gates_ldm, gates_gh, clap, lora, controlnet,
controlnet_reduced, audio) or one audio clip name. The CLI finds the ComfyUI
tree itself ($SONIC_COMFYUI_DIR, else $SONIC_BUILD_DIR/comfyui, else
<repo>/.build/comfyui) and sets args.cpu without CUDA before importing comfy.

ComfyUI modules are imported lazily (checkpoint, LoRA and ControlNet builders
only), so audio, projector, gate and CLAP files need no host.
"""
import argparse
import contextlib
import hashlib
import math
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from . import AUDIO_EMBED_DIM, AUDIO_TOKENS, CLAP_SAMPLE_RATE, TOKEN_DIM

GENERATOR_VERSION = "v1"
DEFAULT_SEED = 20240501

# SD1.5 UNet as model_detection reports it (SD15 in unet_config_from_diffusers_unet).
SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# One level, one res block, a single transformer: still detected as SD15 because
# detection only checks widths and flags. The transformer must sit in the input
# path (input_blocks.1): model_detection reads context_dim only from there.
REDUCED_UNET_CONFIG = dict(
    SD15_UNET_CONFIG, num_res_blocks=[1], channel_mult=[1], transformer_depth=[1],
    transformer_depth_middle=-1, transformer_depth_output=[0, 0])

# Official adapter placement (docs/design.md section 5): diffusers prefix, LDM prefix, width.
GATE_BLOCKS = [("mid_block.attentions.0.transformer_blocks.0",
                "model.diffusion_model.middle_block.1.transformer_blocks.0", 1280)]
for _i, _d in ((1, 1280), (2, 640), (3, 320)):
    for _j in range(3):
        GATE_BLOCKS.append((f"up_blocks.{_i}.attentions.{_j}.transformer_blocks.0",
                            f"model.diffusion_model.output_blocks.{3 * _i + _j}.1.transformer_blocks.0", _d))

# (name, content, channels, rate, seconds, encoding). Covers every container,
# rate, channel count, length and content at least once (not the cross product).
# mp3 is limited to <= 48 kHz and 2 channels; FFmpeg's native vorbis encoder
# (no libvorbis in PyAV wheels) only does stereo, so ogg clips are stereo.
AUDIO_CLIPS = [
    ("tone440_mono_44k_3s.wav", "tone440", 1, 44100, 3.0, "wav16"),
    ("noise_stereo_48k_10s_f32.wav", "noise", 2, 48000, 10.0, "wavf32"),
    ("tone880_6ch_96k_0.5s.flac", "tone880", 6, 96000, 0.5, "flac"),
    ("silence_mono_22k_3s.mp3", "silence", 1, 22050, 3.0, "mp3"),
    ("tone220_stereo_8k_25s.ogg", "tone220", 2, 8000, 25.0, "ogg"),
    ("tone440_stereo_44k_10s.flac", "tone440", 2, 44100, 10.0, "flac"),
    ("tone220_mono_22k_0.5s.wav", "tone220", 1, 22050, 0.5, "wav16"),
    ("noise_mono_8k_25s.flac", "noise", 1, 8000, 25.0, "flac"),
    ("tone880_stereo_48k_3s.mp3", "tone880", 2, 48000, 3.0, "mp3"),
    ("tone440_mono_8k_10s.mp3", "tone440", 1, 8000, 10.0, "mp3"),
    ("noise_stereo_96k_0.5s.ogg", "noise", 2, 96000, 0.5, "ogg"),
    ("silence_6ch_48k_3s_f32.wav", "silence", 6, 48000, 3.0, "wavf32"),
    ("tone220_6ch_22k_10s.wav", "tone220", 6, 22050, 10.0, "wav16"),
    ("noise_stereo_44k_25s.mp3", "noise", 2, 44100, 25.0, "mp3"),
    ("silence_stereo_44k_0.5s.ogg", "silence", 2, 44100, 0.5, "ogg"),
    ("tone440_mono_96k_3s_f32.wav", "tone440", 1, 96000, 3.0, "wavf32"),
]
_AUDIO_BY_NAME = {c[0]: c for c in AUDIO_CLIPS}
# encoding -> (codec, container format, sample format)
_AUDIO_CODECS = {
    "wav16": ("pcm_s16le", "wav", "s16"),
    "wavf32": ("pcm_f32le", "wav", "flt"),
    "flac": ("flac", "flac", "s16"),
    "mp3": ("libmp3lame", "mp3", "fltp"),
    "ogg": ("vorbis", "ogg", "fltp"),
}
_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}

# Cnn14 channel plan of the MS-CLAP 2022 audio tower (docs/design.md section 3).
_CNN14_CHANNELS = [(1, 64), (64, 128), (128, 256), (256, 512), (512, 1024), (1024, 2048)]
CLAP_N_FFT = 1024
CLAP_N_MELS = 64


# ---------------------------------------------------------------- host bootstrap

def locate_host():
    """The ComfyUI tree to import comfy from: env override, else the build folder."""
    env = os.environ.get("SONIC_COMFYUI_DIR")
    if env:
        return Path(env)
    build = os.environ.get("SONIC_BUILD_DIR")
    if build:
        return Path(build) / "comfyui"
    return Path(__file__).resolve().parents[1] / ".build" / "comfyui"


def bootstrap_host():
    """Makes ``comfy`` importable for the CLI. Must run before any comfy import,
    because model_management probes the GPU at import unless args.cpu is set."""
    if "comfy" in sys.modules:
        return True
    host = locate_host()
    if (host / "comfy").is_dir() and str(host) not in sys.path:
        sys.path.insert(0, str(host))
    try:
        from comfy.cli_args import args
    except ImportError:
        return False  # only checkpoint/LoRA/ControlNet targets need the host
    if not torch.cuda.is_available():
        args.cpu = True
    return True


# ---------------------------------------------------------------- random helpers

def _derive_seed(seed, *parts):
    # Per-tensor seeds from names: values do not depend on build order, and the
    # same key gets the same tensor in every file that holds it.
    h = hashlib.sha256(("%d|" % seed + "|".join(str(p) for p in parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _uniform(shape, std, seed, *parts, mean=0.0, dtype=torch.float32):
    """Seeded uniform noise with the given std (uniform is ~4x faster than randn
    on the CPU, which matters for an 860M-parameter UNet)."""
    g = torch.Generator().manual_seed(_derive_seed(seed, *parts))
    a = std * math.sqrt(3.0)
    t = torch.empty(tuple(shape), dtype=torch.float32).uniform_(-a, a, generator=g)
    if mean:
        t += mean
    return t.to(dtype)


def _fan_in(shape):
    return int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])


def _init_module_state(module, seed, tag, dtype, gain=1.0, small=()):
    """Values for every parameter and buffer of ``module`` (which may live on the
    meta device: only shapes and layer types are read). comfy.ops layers skip
    torch's init, so nothing can be left to the constructor.

    Linear/conv: uniform, std gain/sqrt(fan_in) (keeps activations O(1));
    norms: weight 1, bias 0; embeddings: std 0.02; biases: std 0.01.
    Keys whose module name contains an entry of ``small`` get std x0.1."""
    out = {}
    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    for mname, mod in module.named_modules():
        tensors = list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False))
        for pname, p in tensors:
            key = f"{mname}.{pname}" if mname else pname
            shape = tuple(p.shape)
            if isinstance(mod, norm_types):
                val = torch.ones(shape) if pname == "weight" else torch.zeros(shape)
            elif isinstance(mod, torch.nn.Embedding):
                val = _uniform(shape, 0.02, seed, tag, key)
            elif pname == "weight" and len(shape) >= 2:
                g = gain * (0.1 if any(s in mname for s in small) else 1.0)
                val = _uniform(shape, g / math.sqrt(_fan_in(shape)), seed, tag, key)
            elif pname == "bias":
                val = _uniform(shape, 0.01, seed, tag, key)
            elif pname == "vae_scale":
                val = torch.ones(shape)
            elif pname == "vae_shift":
                val = torch.zeros(shape)
            else:
                raise ValueError(f"no init rule for {tag}:{key} {shape} in {type(mod).__name__}")
            out[key] = val.to(dtype).contiguous()
    return out


# ---------------------------------------------------------------- model builders

def _meta_unet(config):
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return UNetModel(**config, dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init)


def unet_state_dict(config, seed, dtype=torch.float16):
    """Random UNet weights keyed as in the UNet module (no prefix)."""
    return _init_module_state(_meta_unet(config), seed, "unet", dtype)


def clip_l_state_dict(seed, dtype=torch.float16):
    """Random CLIP-L text tower keyed ``text_model.*`` (SD1.5 checkpoints carry no
    text_projection; ComfyUI fills it itself)."""
    import json
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip
    cfg_path = Path(comfy.sd1_clip.__file__).with_name("sd1_clip_config.json")
    config = json.loads(cfg_path.read_text())
    with torch.device("meta"):
        m = comfy.clip_model.CLIPTextModel(config, torch.float16, "meta", comfy.ops.disable_weight_init)
    sd = _init_module_state(m, seed, "clip_l", dtype)
    return {k: v for k, v in sd.items() if k.startswith("text_model.")}


def taesd_state_dict(seed, dtype=torch.float16):
    import comfy.taesd.taesd
    with torch.device("meta"):
        m = comfy.taesd.taesd.TAESD()
    # Blocks add a skip to every residual branch: gain < 1 stops growth over ~12
    # blocks (0.9 gives image std ~0.15 for unit latents, no clipping).
    sd = _init_module_state(m, seed, "taesd", dtype, gain=0.9)
    # Last decoder conv: centre images on mid-grey instead of half-clipped black.
    sd["taesd_decoder.19.bias"] = torch.full_like(sd["taesd_decoder.19.bias"], 0.5)
    return sd


def controlnet_state_dict(config, seed, dtype=torch.float16):
    import comfy.ops
    from comfy.cldm.cldm import ControlNet
    cfg = {k: v for k, v in config.items() if k != "out_channels"}
    m = ControlNet(**cfg, hint_channels=3, dtype=torch.float16, device="meta",
                   operations=comfy.ops.disable_weight_init)
    # zero_convs / middle_block_out are zero-initialised in real training; small
    # but non-zero here so the control signal visibly changes the UNet output.
    return _init_module_state(m, seed, "controlnet", dtype, small=("zero_convs", "middle_block_out"))


# ---------------------------------------------------------------- CLAP front end

def stft_kernels(n_fft=CLAP_N_FFT):
    """conv_real / conv_imag [n_fft//2+1, 1, n_fft] exactly as torchlibrosa's STFT
    builds them: periodic Hann (scipy's formula) times the DFT matrix computed as
    np.power(exp(-2 pi i / N), n k), then cast to float32."""
    fac = np.linspace(-np.pi, np.pi, n_fft + 1)
    window = (0.5 * np.cos(0 * fac) + 0.5 * np.cos(1 * fac))[:-1]
    x, y = np.meshgrid(np.arange(n_fft), np.arange(n_fft))
    omega = np.exp(-2 * np.pi * 1j / n_fft)
    w = np.power(omega, x * y)
    bins = n_fft // 2 + 1
    real = np.real(w[:, :bins] * window[:, None]).T
    imag = np.imag(w[:, :bins] * window[:, None]).T
    return (torch.tensor(real, dtype=torch.float32)[:, None, :],
            torch.tensor(imag, dtype=torch.float32)[:, None, :])


def _hz_to_mel(f):
    # Slaney scale as librosa computes it (htk=False).
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    if f.ndim:
        log_t = f >= min_log_hz
        mels[log_t] = min_log_mel + np.log(f[log_t] / min_log_hz) / logstep
    elif f >= min_log_hz:
        mels = min_log_mel + np.log(f / min_log_hz) / logstep
    return mels


def _mel_to_hz(m):
    m = np.asanyarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    log_t = m >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (m[log_t] - min_log_mel))
    return freqs


def slaney_mel(sr=CLAP_SAMPLE_RATE, n_fft=CLAP_N_FFT, n_mels=CLAP_N_MELS, fmin=50.0, fmax=14000.0):
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) (Slaney, norm='slaney'),
    [n_mels, n_fft//2+1] float32, re-implemented step for step (same float32
    intermediate) so the file does not depend on librosa being installed."""
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


# ---------------------------------------------------------------- official-format dicts

def projector_state_dict(seed, tag="audio_projector_landscape.pth"):
    """46 tensors of the Audio Projector (docs/design.md section 4), float32, PyTorch-default-like
    init (uniform +-1/sqrt(fan_in)); LayerNorms near identity."""
    T, D, E = AUDIO_TOKENS, TOKEN_DIM, AUDIO_EMBED_DIM
    sd = {}

    def lin(key, shape, fan_in, bias=True):
        std = 1.0 / math.sqrt(3.0 * fan_in)  # uniform bound 1/sqrt(fan_in)
        sd[key + ".weight"] = _uniform(shape, std, seed, tag, key + ".weight")
        if bias:
            sd[key + ".bias"] = _uniform(shape[:1], std, seed, tag, key + ".bias")

    def ln(key, shape):
        sd[key + ".weight"] = _uniform(shape, 0.02, seed, tag, key + ".weight", mean=1.0)
        sd[key + ".bias"] = _uniform(shape, 0.02, seed, tag, key + ".bias")

    p = "audio_emb_projection"
    lin(f"{p}.0", (T, 1, 17), 17)
    lin(f"{p}.2", (T, T, 17), T * 17)
    ln(f"{p}.4", (T, E))
    lin(f"{p}.5", (T, T, 17), T * 17)
    ln(f"{p}.7", (T, E))
    # ConvTranspose1d weight is [in, out, k]; torch's fan_in for it is out*k.
    lin(f"{p}.8", (T, T, 17), T * 17)
    ln(f"{p}.10", (T, 3 * E))
    lin(f"{p}.12", (T, T, 17), T * 17)
    for i in range(4):
        for n in ("to_q_adapter", "to_k_adapter", "to_v_adapter"):
            lin(f"cross_attention.{i}.{n}", (320, D), D, bias=False)
        lin(f"between_attention.{i}.0", (320, 320), 320)
        lin(f"between_attention.{i}.2", (D, 320), 320)
    lin("to_out_adapter.0", (D, D), D)
    return sd


def gates_state_dict(seed, tag="landscape.pt", spelling="diffusers"):
    """80 tensors of the gated audio cross-attention (docs/design.md section 5), float32.
    Values are keyed by the diffusers name, so both spellings hold equal tensors.
    Gates uniform in [0.3, 1.0] (non-zero: the adapter must have an effect),
    projections std 0.02 so the added term stays small."""
    if spelling not in ("diffusers", "ldm"):
        raise ValueError(f"spelling must be 'diffusers' or 'ldm', not {spelling!r}")
    sd = {}
    for dprefix, lprefix, d in GATE_BLOCKS:
        prefix = dprefix if spelling == "diffusers" else lprefix
        shapes = [("attn_adapter.to_q.weight", (d, d)), ("attn_adapter.to_k.weight", (d, TOKEN_DIM)),
                  ("attn_adapter.to_v.weight", (d, TOKEN_DIM)), ("attn_adapter.to_out.0.weight", (d, d)),
                  ("attn_adapter.to_out.0.bias", (d,)), ("norm_adapter.weight", (d,)),
                  ("norm_adapter.bias", (d,)), ("gate_adapter", (1,))]
        for suffix, shape in shapes:
            vkey = f"{dprefix}.{suffix}"
            if suffix == "gate_adapter":
                val = _uniform(shape, 0.35 / math.sqrt(3.0), seed, tag, vkey, mean=0.65)
            elif suffix == "norm_adapter.weight":
                val = _uniform(shape, 0.02, seed, tag, vkey, mean=1.0)
            elif suffix.endswith("bias"):
                val = _uniform(shape, 0.01, seed, tag, vkey)
            else:
                val = _uniform(shape, 0.02, seed, tag, vkey)
            sd[f"{prefix}.{suffix}"] = val
    return sd


def clap_state_dict(seed, tag="CLAP_weights_2022.pth"):
    """MS-CLAP 2022 audio tower (every ``audio_encoder.*`` key of docs/design.md section 3) plus a
    few ``caption_encoder.*`` keys and ``logit_scale``, float32 like the original.
    STFT kernels and the mel matrix are the real ones; the rest is random:
    He-init convs, BN near identity (bn0 normalises log-mel dB to O(1))."""
    sd = {}
    p = "audio_encoder.base."
    real, imag = stft_kernels()
    sd[p + "spectrogram_extractor.stft.conv_real.weight"] = real
    sd[p + "spectrogram_extractor.stft.conv_imag.weight"] = imag
    sd[p + "logmel_extractor.melW"] = torch.from_numpy(slaney_mel().T.copy())

    def bn(key, n, mean=0.0, var=1.0):
        sd[key + ".weight"] = _uniform((n,), 0.05, seed, tag, key + ".weight", mean=1.0)
        sd[key + ".bias"] = _uniform((n,), 0.05, seed, tag, key + ".bias")
        sd[key + ".running_mean"] = _uniform((n,), 0.05 * math.sqrt(var), seed, tag, key + ".rm", mean=mean)
        sd[key + ".running_var"] = _uniform((n,), 0.1 * var, seed, tag, key + ".rv", mean=var)
        sd[key + ".num_batches_tracked"] = torch.tensor(1000 + _derive_seed(seed, tag, key) % 100000,
                                                        dtype=torch.int64)

    # log-mel dB of typical clips is roughly -60 .. +10: centre and scale it.
    bn(p + "bn0", CLAP_N_MELS, mean=-25.0, var=400.0)
    for i, (cin, cout) in enumerate(_CNN14_CHANNELS, start=1):
        blk = f"{p}conv_block{i}"
        for conv, fan_in, c_in in (("conv1", cin * 9, cin), ("conv2", cout * 9, cout)):
            key = f"{blk}.{conv}.weight"
            sd[key] = _uniform((cout, c_in, 3, 3), math.sqrt(2.0 / fan_in), seed, tag, key)
        bn(f"{blk}.bn1", cout)
        bn(f"{blk}.bn2", cout)
    for key, shape, std in ((p + "fc1", (2048, 2048), math.sqrt(2.0 / 2048)),
                            (p + "fc_audioset", (527, 2048), math.sqrt(1.0 / 2048))):
        sd[key + ".weight"] = _uniform(shape, std, seed, tag, key + ".weight")
        sd[key + ".bias"] = _uniform(shape[:1], 0.01, seed, tag, key + ".bias")
    q = "audio_encoder.projection."
    sd[q + "linear1.weight"] = _uniform((1024, 2048), math.sqrt(1.0 / 2048), seed, tag, q + "linear1")
    sd[q + "linear2.weight"] = _uniform((1024, 1024), math.sqrt(1.0 / 1024), seed, tag, q + "linear2")
    sd[q + "layer_norm.weight"] = torch.ones(1024)
    sd[q + "layer_norm.bias"] = torch.zeros(1024)
    # Text tower: present in the real file, ignored by audio-only use; a few
    # truncated stand-ins keep the file small.
    c = "caption_encoder."
    for key, shape in ((c + "base.embeddings.word_embeddings.weight", (1024, 768)),
                       (c + "base.embeddings.position_embeddings.weight", (512, 768)),
                       (c + "projection.linear1.weight", (1024, 768)),
                       (c + "projection.linear2.weight", (1024, 1024))):
        sd[key] = _uniform(shape, 0.02, seed, tag, key)
    sd[c + "projection.layer_norm.weight"] = torch.ones(1024)
    sd[c + "projection.layer_norm.bias"] = torch.zeros(1024)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=torch.float32)
    return {k: v.contiguous() for k, v in sd.items()}


def lora_state_dict(seed, rank=4, te=True):
    """Kohya-format SD1.5 LoRA (``lora_unet_<diffusers name>`` / ``lora_te_...``) on
    every attention projection of the full UNet and the CLIP-L q/k/v/out layers.
    delta = up @ down * alpha/rank has ~20% of the base weight's std."""
    import comfy.utils
    shapes = {k: tuple(v.shape) for k, v in _meta_unet(SD15_UNET_CONFIG).state_dict().items()}
    dmap = comfy.utils.unet_to_diffusers(SD15_UNET_CONFIG)
    targets = []
    for dkey in sorted(dmap):
        if ".transformer_blocks." in dkey and any(
                dkey.endswith(s) for s in (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")):
            out_f, in_f = shapes[dmap[dkey]][:2]
            targets.append(("lora_unet_" + dkey[:-len(".weight")].replace(".", "_"), out_f, in_f))
    if te:
        for layer in range(12):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                targets.append((f"lora_te_text_model_encoder_layers_{layer}_self_attn_{proj}", 768, 768))
    sd = {}
    for name, out_f, in_f in targets:
        sd[name + ".lora_down.weight"] = _uniform((rank, in_f), 1.0 / math.sqrt(in_f), seed, "lora", name, "down",
                                                  dtype=torch.float16)
        sd[name + ".lora_up.weight"] = _uniform((out_f, rank), 0.2 / math.sqrt(rank), seed, "lora", name, "up",
                                                dtype=torch.float16)
        sd[name + ".alpha"] = torch.tensor(float(rank), dtype=torch.float16)
    return sd


# ---------------------------------------------------------------- audio

def _clip_samples(spec, seed):
    name, content, channels, rate, seconds, _ = spec
    n = int(round(rate * seconds))
    if content == "silence":
        return np.zeros((channels, n), dtype=np.float32)
    if content == "noise":
        rng = np.random.default_rng(_derive_seed(seed, "audio", name))
        return rng.uniform(-0.5, 0.5, size=(channels, n)).astype(np.float32)
    freq = float(content[len("tone"):])
    t = np.arange(n, dtype=np.float64) / rate
    tone = np.sin(2 * np.pi * freq * t)
    # Channel c is quieter by 10% per index: downmixing is checkable, never cancels.
    gains = 0.5 * (1.0 - 0.1 * np.arange(channels))[:, None]
    return (gains * tone[None, :]).astype(np.float32)


def write_audio(path, samples, rate, encoding):
    """Encodes float32 [C, T] samples with PyAV; bitexact flags keep the bytes
    reproducible (the ogg muxer otherwise picks a random stream serial)."""
    import av
    codec, fmt, sfmt = _AUDIO_CODECS[encoding]
    channels, n = samples.shape
    layout = _LAYOUTS[channels]
    opts = {"flags": "+bitexact"}
    if codec == "vorbis":
        opts["strict"] = "experimental"
    with av.open(str(path), "w", format=fmt, container_options={"fflags": "+bitexact"}) as out:
        st = out.add_stream(codec, rate=rate, layout=layout, format=sfmt, options=opts)
        if codec == "libmp3lame":
            st.bit_rate = 128000
        step = 4096
        for s in range(0, n, step):
            chunk = samples[:, s:s + step]
            if sfmt == "s16":
                arr = (np.clip(chunk, -1.0, 1.0) * 32767.0).round().astype(np.int16).T.reshape(1, -1)
            elif sfmt == "flt":
                arr = np.ascontiguousarray(chunk.T).reshape(1, -1)
            else:
                arr = np.ascontiguousarray(chunk)
            frame = av.AudioFrame.from_ndarray(arr, format=sfmt, layout=layout)
            frame.sample_rate = rate
            frame.pts = s
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode(None):
            out.mux(pkt)


# ---------------------------------------------------------------- the cache

_ST_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}


def _save_safetensors(sd, path, metadata=None):
    """Writes a .safetensors file with a byte-stable layout. The safetensors
    library keeps __metadata__ in a Rust HashMap, so its key order (and the file
    hash) changes from process to process; this writer sorts everything and
    streams tensors one by one (no second in-memory copy of 2 GB)."""
    import json
    header = {"__metadata__": dict(sorted((metadata or {}).items()))} if metadata else {}
    offset = 0
    names = sorted(sd)
    for k in names:
        t = sd[k]
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
    with open(path, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for k in names:
            fh.write(sd[k].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


class FixtureSet:
    """Generated files under ``root/<GENERATOR_VERSION>/`` (another seed gets its own
    folder). Each accessor returns the path, building the file once; writes go to
    a temp file renamed into place under a lock, so concurrent users are safe."""

    def __init__(self, root, seed=DEFAULT_SEED):
        self.seed = int(seed)
        sub = GENERATOR_VERSION if self.seed == DEFAULT_SEED else f"{GENERATOR_VERSION}-seed{self.seed}"
        self.root = Path(root)
        self.dir = self.root / sub
        self.timings = {}

    # -- plumbing
    def _cached(self, name, build):
        path = self.dir / name
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(path):
            if path.exists():  # built by another process while we waited
                return path
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            t0 = time.perf_counter()
            try:
                build(tmp)
                os.chmod(tmp, 0o644)  # caches are shared between users of the build folder
                os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
            self.timings[name] = time.perf_counter() - t0
        return path

    @contextlib.contextmanager
    def _lock(self, path):
        try:
            import fcntl
        except ImportError:  # no flock (Windows): rely on the atomic rename alone
            yield
            return
        locks = self.dir / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        rel = path.relative_to(self.dir).as_posix().replace("/", "__")
        with open(locks / f"{rel}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _meta(self, kind):
        return {"sonic_fixture": kind, "generator_version": GENERATOR_VERSION, "seed": str(self.seed)}

    # -- checkpoints
    def _checkpoint(self, name, config, clip, vae, kind):
        def build(tmp):
            sd = {"model.diffusion_model." + k: v for k, v in unet_state_dict(config, self.seed).items()}
            if clip:
                sd.update({"cond_stage_model.transformer." + k: v for k, v in clip_l_state_dict(self.seed).items()})
            if vae:
                sd.update({"first_stage_model." + k: v for k, v in taesd_state_dict(self.seed).items()})
            _save_safetensors(sd, tmp, self._meta(kind))
        return self._cached(name, build)

    def reduced_checkpoint(self):
        """Tiny SD1.5 UNet + full CLIP-L + TAESD as VAE, fp16; loads as SD15."""
        return self._checkpoint("sd15_reduced.safetensors", REDUCED_UNET_CONFIG, True, True, "reduced_checkpoint")

    def full_checkpoint(self, clip=True, vae=True):
        """Full SD1.5 topology UNet (860M) fp16 with optional CLIP-L and TAESD VAE."""
        name = "sd15_full_unet" + ("_clip" if clip else "") + ("_vae" if vae else "") + ".safetensors"
        return self._checkpoint(name, SD15_UNET_CONFIG, clip, vae, "full_checkpoint")

    # -- official formats (pickles, as the authors ship them)
    def projector(self, name="audio_projector_landscape.pth"):
        return self._cached(name, lambda tmp: torch.save(projector_state_dict(self.seed, name), tmp))

    def gates(self, name="landscape.pt", spelling="diffusers"):
        """Gate file; the 'ldm' spelling is stored as <stem>_ldm<suffix> with the
        same values as the diffusers file of the same name."""
        base = Path(name)
        if spelling == "ldm" and not base.stem.endswith("_ldm"):
            name = f"{base.stem}_ldm{base.suffix}"
        tag = name.replace("_ldm", "") if spelling == "ldm" else name
        return self._cached(name, lambda tmp: torch.save(gates_state_dict(self.seed, tag, spelling), tmp))

    def clap(self, name="CLAP_weights_2022.pth"):
        return self._cached(name, lambda tmp: torch.save({"model": clap_state_dict(self.seed, name)}, tmp))

    # -- add-ons for core loaders
    def lora(self):
        """Kohya-format SD1.5 LoRA for the full UNet (+ CLIP-L), fp16."""
        return self._cached("sd15_lora_rank4.safetensors", lambda tmp: _save_safetensors(
            lora_state_dict(self.seed), tmp, dict(self._meta("lora"), ss_network_module="networks.lora",
                                                  ss_network_dim="4", ss_network_alpha="4.0")))

    def controlnet(self, reduced=False):
        """SD1.5 ControlNet in the original ``control_model.*`` layout, fp16. With
        reduced=True it matches reduced_checkpoint()'s UNet instead (fast graphs)."""
        config = REDUCED_UNET_CONFIG if reduced else SD15_UNET_CONFIG
        name = "sd15_controlnet_reduced.safetensors" if reduced else "sd15_controlnet.safetensors"

        def build(tmp):
            sd = {"control_model." + k: v for k, v in controlnet_state_dict(config, self.seed).items()}
            _save_safetensors(sd, tmp, self._meta("controlnet"))
        return self._cached(name, build)

    # -- audio
    def audio_names(self):
        return [c[0] for c in AUDIO_CLIPS]

    @staticmethod
    def audio_spec(name):
        """What a clip declares: container, codec, rate, channels, seconds, frames, content."""
        spec = _AUDIO_BY_NAME.get(name)
        if spec is None:
            raise KeyError(f"unknown audio fixture {name!r}; known: {sorted(_AUDIO_BY_NAME)}")
        _, content, channels, rate, seconds, enc = spec
        codec, fmt, _ = _AUDIO_CODECS[enc]
        return {"name": name, "content": content, "channels": channels, "sample_rate": rate,
                "seconds": seconds, "frames": int(round(rate * seconds)), "encoding": enc,
                "codec": codec, "container": fmt,
                "frequency": float(content[4:]) if content.startswith("tone") else None}

    def audio_samples(self, name):
        """The float32 [C, T] samples a clip was encoded from (before quantisation)."""
        return _clip_samples(_AUDIO_BY_NAME[name], self.seed)

    def audio(self, name):
        spec = self.audio_spec(name)
        samples = self.audio_samples(name)
        return self._cached(f"audio/{name}", lambda tmp: write_audio(
            tmp, samples, spec["sample_rate"], spec["encoding"]))

    # -- everything
    def targets(self):
        """CLI names -> builders."""
        t = {
            "reduced_checkpoint": self.reduced_checkpoint,
            "full_checkpoint": self.full_checkpoint,
            "full_unet": lambda: self.full_checkpoint(clip=False, vae=False),
            "projector": self.projector,
            "projector_gh": lambda: self.projector("audio_projector_gh.pth"),
            "gates": self.gates,
            "gates_ldm": lambda: self.gates(spelling="ldm"),
            "gates_gh": lambda: self.gates("greatest_hits.pt"),
            "clap": self.clap,
            "lora": self.lora,
            "controlnet": self.controlnet,
            "controlnet_reduced": lambda: self.controlnet(reduced=True),
            "audio": lambda: [self.audio(n) for n in self.audio_names()],
        }
        for n in self.audio_names():
            t[n] = (lambda n=n: self.audio(n))
        return t


# CLI targets built from ComfyUI's own classes.
_HOST_TARGETS = ("reduced_checkpoint", "full_checkpoint", "full_unet", "lora", "controlnet", "controlnet_reduced")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m sonic_diffusion.fixtures", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="cache root (files go to OUT/%s/)" % GENERATOR_VERSION)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="build only these targets (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--list", action="store_true", help="list target names and exit")
    ns = parser.parse_args(argv)
    fs = FixtureSet(ns.out, seed=ns.seed)
    targets = fs.targets()
    if ns.list:
        print("\n".join(targets))
        return 0
    names = ns.only or [n for n in targets if n not in fs.audio_names()]
    unknown = [n for n in names if n not in targets]
    if unknown:
        parser.error(f"unknown target(s) {unknown}; use --list")
    needs_host = [n for n in names if n in _HOST_TARGETS]
    if not bootstrap_host() and needs_host:
        parser.error(f"{needs_host} need ComfyUI: no comfy package under {locate_host()} "
                     "(set SONIC_COMFYUI_DIR)")
    for n in names:
        t0 = time.perf_counter()
        res = targets[n]()
        paths = res if isinstance(res, list) else [res]
        size = sum(p.stat().st_size for p in paths)
        print(f"{n}: {paths[0] if len(paths) == 1 else paths[0].parent} "
              f"({size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
