"""Audio Encode (Sonic) and Audio Embeds Mix (Sonic) inputs: co-prime and absurd
sample rates at bounded memory, out-of-range and NaN offsets, unit-length embeddings
for silence and clipping, the three mix modes and the ratios list, NaN mix inputs
blamed on the mix node, and a CLAP front end that never makes float64 on a device."""
import math
import os

import numpy as np
import pytest
import torch
from test_hardening import _tone, encoder  # noqa: F401  (module fixture reused)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import nodes
from sonic_diffusion import CLAP_CLIP_SAMPLES
from sonic_diffusion.audio_prep import prepare_clip
from sonic_diffusion.clap_frontend import ClapFrontEnd
from sonic_diffusion.resample import kernel_bytes, sinc_resample

ENCODE = nodes.NODE_CLASS_MAPPINGS["SonicAudioEncode"]
MIX = nodes.NODE_CLASS_MAPPINGS["SonicAudioEmbedsMix"]


class _TensorSpy(TorchDispatchMode):
    """Records (device type, dtype, bytes) of every tensor an op returns. A copy from
    the meta device to the CPU (which meta cannot do) returns zeros, so code can run
    with "meta" standing in for an accelerator."""

    def __init__(self):
        super().__init__()
        self.outputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if (func is torch.ops.aten._to_copy.default and src is not None and src.device.type == "meta"
                and kwargs.get("device") == torch.device("cpu")):
            out = torch.zeros(src.shape, dtype=kwargs.get("dtype") or src.dtype)
        else:
            out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.outputs.append((t.device.type, t.dtype, t.numel() * t.element_size()))
        return out


# ------------------------------------------------------------------ sample rates

@pytest.mark.parametrize("rate", [44101, 70001])
def test_coprime_rates_resample_in_bounded_memory(rate):
    """torchaudio's filter bank for 44101 -> 44100 Hz would be 7.8 GB in one tensor."""
    seconds = 10.0
    t = np.arange(int(rate * seconds)) / rate
    wave = torch.from_numpy(0.5 * np.sin(2 * np.pi * 1000.0 * t)).float()[None]
    with _TensorSpy() as spy:
        clip = prepare_clip(wave, rate)
    largest = max(b for _d, _t, b in spy.outputs)
    # Design bound: one chunk of 2**23 int64 tap indices, 64 MiB, whatever the rates
    # (measured 53.8 MiB at 44101 Hz, 64.0 MiB at 70001 Hz).
    assert largest <= 64 << 20, f"largest tensor {largest / 2**20:.1f} MiB"
    assert clip.shape == (1, CLAP_CLIP_SAMPLES)
    expected = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(CLAP_CLIP_SAMPLES) / 44100)
    inner = slice(1000, int(44100 * seconds) - 1000)  # away from the zero-padded edges
    # torchaudio's formula itself (width 6, rolloff 0.99) is this far off a pure tone:
    # measured 1.35e-3 (44101), 1.12e-3 (70001); see the next test for ours == torchaudio's.
    np.testing.assert_allclose(clip[0, inner].numpy(), expected[inner], atol=2e-3)


def test_builtin_resampler_equals_torchaudio_on_a_coprime_pair_that_fits():
    """11027 -> 11025 Hz is co-prime yet small enough for torchaudio (a 487 MB filter
    bank): the built-in resampler used for co-prime rates gives the same samples."""
    taf = pytest.importorskip("torchaudio.functional")
    t = np.arange(11027 * 3) / 11027
    wave = torch.from_numpy(0.5 * np.sin(2 * np.pi * 250.0 * t)).float()[None]
    ours = sinc_resample(wave, 11027, 11025)
    torch.testing.assert_close(ours, taf.resample(wave, 11027, 11025), rtol=0, atol=1e-6)  # measured 1.2e-7
    assert kernel_bytes(44101, 44100) > 7e9 and kernel_bytes(11027, 11025) < 5e8


def test_absurd_rate_is_a_clear_error(encoder):
    audio = {"waveform": torch.zeros(1, 1, 2_000_006), "sample_rate": 1_000_003}
    with pytest.raises(ValueError, match=r"Audio Encode \(Sonic\): sample rate 1000003 Hz is outside the supported"):
        ENCODE.execute(audio_encoder=encoder, audio=audio, window="center", offset=0.0)


# ------------------------------------------------------------------ offsets, NaN

def _clip(seconds, rate=16000):
    return {"waveform": torch.from_numpy(_tone(rate, seconds)).float()[None], "sample_rate": rate}


@pytest.mark.parametrize(("seconds", "offset", "message"), [
    (25.0, 15.5, r"offset 15.5 s is past the last 10 s window of the 25.000 s clip; use an offset between 0 and 15.000 s"),
    (25.0, 1e6, r"offset 1e\+06 s is past the last 10 s window"),
    (3.0, 1.0, r"offset 1 s is past .* the clip is 10 s or shorter and is used whole: set offset to 0"),
])
def test_offsets_past_the_clip_are_refused(seconds, offset, message):
    with pytest.raises(ValueError, match=r"Audio Encode \(Sonic\): " + message):
        ENCODE.execute(audio_encoder=None, audio=_clip(seconds), window="offset", offset=offset)


def test_the_last_window_that_fits_is_accepted_and_exact():
    audio = _clip(25.0)
    last = prepare_clip(audio["waveform"], 16000, window="offset", offset_s=15.0)
    end = prepare_clip(audio["waveform"][..., 15 * 16000:], 16000, window="start")
    inner = slice(1000, None)  # the crop's own start is zero-padded for the filter; 16 samples differ there
    torch.testing.assert_close(last[:, inner], end[:, inner], rtol=0, atol=1e-6)  # measured 0


def test_nan_offset_is_refused_by_name():
    with pytest.raises(ValueError, match=r"Audio Encode \(Sonic\): input 'offset' is nan"):
        ENCODE.execute(audio_encoder=None, audio=_clip(3.0), window="offset", offset=float("nan"))


def test_silence_and_clipping_give_unit_length_embeddings(encoder):
    silence = {"waveform": torch.zeros(1, 2, 44100), "sample_rate": 44100}
    clipped = {"waveform": torch.from_numpy(np.clip(_tone(44100, 2.0, 2, amp=30.0), -1, 1) * 8).float()[None],
               "sample_rate": 44100}
    for audio in (silence, clipped):
        e = ENCODE.execute(audio_encoder=encoder, audio=audio, window="center", offset=0.0).result[0]
        # F.normalize in float32: measured |norm - 1| <= 1.2e-7.
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(1), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ mixing

def _unit(seed, n=1):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, 1024, generator=g)
    return e / e.norm(dim=-1, keepdim=True)


def _mix(**kw):
    args = dict(mode="slerp", ratio=0.5, ratios="", weight_a=1.0, weight_b=1.0)
    args.update(kw)
    return MIX.execute(**args).result[0]


def test_lerp_is_the_normalised_straight_line():
    a, b = _unit(1), _unit(2)
    for t in (0.0, 0.25, 0.7, 1.0):
        line = (1 - t) * a + t * b
        torch.testing.assert_close(_mix(embeds_a=a, embeds_b=b, mode="lerp", ratio=t),
                                   line / line.norm(), rtol=0, atol=1e-6)


def test_weighted_sum_and_cancelling_weights():
    a, b = _unit(3), _unit(4)
    s = 0.3 * a - 1.7 * b
    torch.testing.assert_close(_mix(embeds_a=a, embeds_b=b, mode="weighted_sum", weight_a=0.3, weight_b=-1.7),
                               s / s.norm(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"Audio Embeds Mix \(Sonic\): the weighted sum is zero"):
        _mix(embeds_a=a, embeds_b=a, mode="weighted_sum", weight_a=1.0, weight_b=-1.0)


def test_ratios_list_makes_one_slerp_row_per_ratio():
    a, b = _unit(5), _unit(6)
    ratios = [0.0, 0.25, 0.5, 0.75, 1.0]
    out = _mix(embeds_a=a, embeds_b=b, ratios=" 0, 0.25,0.5 ; 0.75, 1 ")
    omega = math.acos(float((a * b).sum()))
    rows = [(math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega) for t in ratios]
    torch.testing.assert_close(out, torch.cat(rows), rtol=0, atol=1e-5)  # float32 trig: measured 2e-7
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(5), rtol=0, atol=1e-6)
    lerped = _mix(embeds_a=a, embeds_b=b, mode="lerp", ratios="0.25")
    torch.testing.assert_close(lerped, _mix(embeds_a=a, embeds_b=b, mode="lerp", ratio=0.25), rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs single embeddings"):
        _mix(embeds_a=_unit(7, 2), embeds_b=b, ratios="0,1")
    with pytest.raises(ValueError, match=r"'x' in ratios is not a number"):
        _mix(embeds_a=a, embeds_b=b, ratios="0, x")


@pytest.mark.parametrize("field", ["ratio", "weight_a", "weight_b"])
def test_nan_mix_inputs_are_blamed_on_the_mix_input(field):
    with pytest.raises(ValueError, match=rf"Audio Embeds Mix \(Sonic\): input '{field}' is nan"):
        _mix(embeds_a=_unit(1), embeds_b=_unit(2), **{field: float("nan")})
    with pytest.raises(ValueError, match=r"Audio Embeds Mix \(Sonic\): ratio nan in ratios is outside 0..1"):
        _mix(embeds_a=_unit(1), embeds_b=_unit(2), ratios="0.5, nan")


# ------------------------------------------------------------------ front end precision

def test_frontend_stays_on_the_device_in_float32():
    """"meta" stands in for an accelerator (MPS has no float64): the spectrum is computed
    there in float32, with no float64 and no round trip through the CPU (issue 22); the
    float32 error is bounded in tests/test_clap_frontend_precision.py."""
    frontend = ClapFrontEnd()
    x = torch.empty(2, CLAP_CLIP_SAMPLES, device="meta")
    with _TensorSpy() as spy:
        out = frontend(x)
    assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == (2, 1379, 64)
    assert {dev for dev, _dtype, _b in spy.outputs} == {"meta"}  # nothing made on the CPU
    assert {dtype for _dev, dtype, _b in spy.outputs} <= {torch.float32, torch.complex64}


def test_core_load_audio_output_feeds_audio_encode_like_ours(tmp_path):
    """Every audio input of the pack takes core Load Audio's AUDIO: the same file gives
    the same clip through either loader."""
    import folder_paths
    from test_hardening import _write

    if "LoadAudio" not in nodes.NODE_CLASS_MAPPINGS:
        # ComfyUI 0.3.75's core audio nodes import torchaudio; the no-torchaudio job has none.
        pytest.skip("core Load Audio is not registered (core's audio nodes need torchaudio)")
    name = "core_vs_sonic.wav"
    _write(tmp_path / name, _tone(22050, 2.0, 2), 22050)
    os.replace(tmp_path / name, os.path.join(folder_paths.get_input_directory(), name))
    core = nodes.NODE_CLASS_MAPPINGS["LoadAudio"]().load(name)[0]
    ours = nodes.NODE_CLASS_MAPPINGS["SonicLoadAudio"].execute(audio=name, start_time=0.0, duration=0.0,
                                                               gain_db=0.0).result[0]
    assert core["sample_rate"] == ours["sample_rate"] == 22050
    a = prepare_clip(core["waveform"], core["sample_rate"])
    b = prepare_clip(ours["waveform"], ours["sample_rate"])
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)  # both decode int16 with PyAV/FFmpeg: measured 0
