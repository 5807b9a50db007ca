"""Audio preprocessing for the CLAP audio tower (docs/design.md section 2).

mono (channel mean) -> 44.1 kHz -> exactly 441,000 samples:
clips of 10 s or less are tiled end to end and cut (never zero-padded, as in the
official code); longer clips get a deterministic 10 s window instead of the
official random crop. No loudness normalisation: gain changes the embedding.
"""
import torch

from . import CLAP_CLIP_SAMPLES, CLAP_SAMPLE_RATE
from .resample import output_length, resample, resample_window

WINDOWS = ("start", "center", "offset")


def _as_batch(waveform):
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"waveform must be a torch.Tensor, got {type(waveform).__name__}")
    if waveform.ndim == 2:
        return waveform.unsqueeze(0)
    if waveform.ndim == 3:
        return waveform
    raise ValueError(f"waveform must be [channels, samples] or [batch, channels, samples], got shape {tuple(waveform.shape)}")


def window_start(total, window="start", offset_s=0.0, sample_rate=CLAP_SAMPLE_RATE, length=CLAP_CLIP_SAMPLES):
    """First sample of the ``length``-sample window of a ``total``-sample clip (total > length)."""
    room = total - length
    if window == "start":
        return 0
    if window == "center":
        return room // 2
    if window == "offset":
        start = int(round(float(offset_s) * sample_rate))
        return min(max(start, 0), room)  # clamp so the window fits
    raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")


# Rates outside this range are refused with a clear error (1,000,003 Hz is no audio
# file anyone records; it would only make the resampling filter enormous).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768000


def check_sample_rate(sample_rate):
    """int(sample_rate), or ValueError outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE."""
    rate = int(sample_rate)
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz; "
                         "resample the file to a common rate (e.g. 44100 or 48000 Hz)")
    return rate


def max_window_offset_s(samples, sample_rate):
    """Largest window offset (seconds) that still fits a full 10 s window in a clip of
    ``samples`` at ``sample_rate``; 0 for clips of 10 s or less (used whole)."""
    total = output_length(int(samples), int(sample_rate), CLAP_SAMPLE_RATE)
    return max(total - CLAP_CLIP_SAMPLES, 0) / CLAP_SAMPLE_RATE


def check_window_offset(waveform, sample_rate, window, offset_s):
    """ValueError when ``window`` is "offset" and ``offset_s`` lies past the last 10 s
    window of the clip (window_start would otherwise clamp it silently)."""
    if window != "offset":
        return
    samples = int(waveform.shape[-1])
    limit = max_window_offset_s(samples, check_sample_rate(sample_rate))
    if float(offset_s) > limit + 0.5 / CLAP_SAMPLE_RATE:
        length = samples / int(sample_rate)
        if limit == 0:
            hint = "the clip is 10 s or shorter and is used whole: set offset to 0"
        else:
            hint = f"use an offset between 0 and {limit:.3f} s"
        raise ValueError(f"offset {float(offset_s):g} s is past the last 10 s window of the {length:.3f} s clip; {hint}")


def _tile(x, length):
    reps = -(-length // x.shape[-1])
    return x.repeat(1, reps)[:, :length]


def prepare_clip(waveform, sample_rate, window="start", offset_s=0.0):
    """``waveform [C, T]`` or ``[B, C, T]`` at ``sample_rate`` -> ``[B, 441000]`` float32.

    Computed in float32 on the waveform's device. Raises ValueError for empty
    clips and for NaN/Inf samples.
    """
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    sample_rate = check_sample_rate(sample_rate)
    x = _as_batch(waveform)
    b, c, t = x.shape
    if b == 0 or c == 0 or t == 0:
        raise ValueError(f"the audio is empty (shape {tuple(x.shape)}): nothing to encode")
    if not x.is_floating_point():
        raise TypeError(f"waveform must be floating point, got {x.dtype}")
    x = x.to(torch.float32)  # float16 input: mean/resample in float32
    if not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(f"the audio contains {n_nan} NaN and {n_inf} infinite samples; "
                         "fix or re-decode the source before encoding")
    mono = x.mean(dim=1)  # downmix first: the official code resamples the mono signal

    total = output_length(t, sample_rate, CLAP_SAMPLE_RATE)
    if total <= CLAP_CLIP_SAMPLES:
        y = resample(mono, sample_rate, CLAP_SAMPLE_RATE)
        if y.shape[-1] == 0:
            raise ValueError("the audio is too short to resample to 44.1 kHz")
        y = _tile(y, CLAP_CLIP_SAMPLES)
    else:
        start = window_start(total, window, offset_s)
        # Resample only the window's neighbourhood: same values, bounded cost.
        y = resample_window(mono, sample_rate, CLAP_SAMPLE_RATE, start, CLAP_CLIP_SAMPLES)
    return y.to(torch.float32).contiguous()
