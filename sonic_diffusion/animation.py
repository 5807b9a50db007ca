"""Audio-reactive animation: one CLAP embedding per video frame.

Frame k sits at t_k = k / fps. Its window is the window_s seconds centred on t_k,
cut to the clip; a window shorter than 10 s is tiled to 10 s, the official rule for
short clips (docs/design.md section 2). With hop_s > 0 windows are encoded every hop_s
seconds and the frames interpolate between them (fewer encoder runs); smoothing_s
applies a Gaussian over time. Interpolated or smoothed embeddings are re-normalised,
as CLAP's own output is.

Memory: the clip is downmixed once; windows are built (resampled to 44.1 kHz and
tiled) per encoder batch, so at most one batch of 441,000-sample windows exists.
"""
import math

import comfy.sample
import torch

from . import CLAP_SAMPLE_RATE
from .audio_prep import check_sample_rate, prepare_clip
from .frame_timing import frame_count
from .resample import output_length, resample_window

MAX_WINDOW_S = 10.0


def window_bounds(center_s, window_s, duration_s):
    """[start, end) seconds of the window centred on center_s, cut to the clip."""
    start = max(0.0, center_s - window_s / 2)
    end = min(duration_s, center_s + window_s / 2)
    if end <= start:  # a centre at the very end of the clip: keep a minimal window
        start = max(0.0, min(start, duration_s - window_s))
        end = duration_s
    return start, end


def mono_of(waveform):
    """[C, T] or [1, C, T] -> [T] float32 (channel mean, as prepare_clip downmixes)."""
    x = waveform
    if x.ndim == 3:
        if x.shape[0] != 1:
            raise ValueError(f"one clip at a time: got a batch of {x.shape[0]} clips")
        x = x[0]
    if x.ndim != 2 or x.shape[-1] == 0:
        raise ValueError(f"waveform must be [channels, samples] with samples, got shape {tuple(waveform.shape)}")
    return x.to(torch.float32).mean(dim=0)


def checked_mono(waveform, sample_rate):
    """(mono [T] float32, int sample_rate) of one clip, refusing a bad rate or NaN/Inf samples."""
    sample_rate = check_sample_rate(sample_rate)  # the pack's one rate rule (audio_prep)
    mono = mono_of(waveform)
    if not bool(torch.isfinite(mono).all()):
        raise ValueError("the audio contains NaN or infinite samples; fix or re-decode the source")
    return mono, sample_rate


def build_window(mono, sample_rate, start_s, end_s):
    """The 10 s encoder input [441000] for seconds [start_s, end_s) of mono."""
    total = output_length(mono.shape[-1], sample_rate, CLAP_SAMPLE_RATE)
    first = min(int(round(start_s * CLAP_SAMPLE_RATE)), total - 1)
    length = max(1, min(int(round((end_s - start_s) * CLAP_SAMPLE_RATE)), total - first))
    piece = resample_window(mono.unsqueeze(0), sample_rate, CLAP_SAMPLE_RATE, first, length)
    return prepare_clip(piece, CLAP_SAMPLE_RATE)[0]  # tiles a short window to 10 s


def encode_windows(encoder, mono, sample_rate, centers_s, window_s, progress=None, check_interrupt=None):
    """Embeddings [len(centers_s), 1024] of the windows centred on centers_s, built and
    encoded one encoder batch at a time."""
    duration = mono.shape[-1] / sample_rate
    out = []
    step = max(1, int(encoder.batch_size))
    for s in range(0, len(centers_s), step):
        if check_interrupt is not None:
            check_interrupt()
        batch = torch.stack([build_window(mono, sample_rate, *window_bounds(c, window_s, duration))
                             for c in centers_s[s:s + step]])
        out.append(encoder.encode(batch))
        del batch
        if progress is not None:
            progress(min(s + step, len(centers_s)))
    return torch.cat(out, 0)


def _normalize(e):
    return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def interpolate(embeds, times_s, frame_times_s):
    """Linear interpolation of embeds (at increasing times_s) to frame_times_s, re-normalised."""
    if len(times_s) == 1:
        return embeds.expand(len(frame_times_s), -1).clone()
    grid = torch.as_tensor(times_s, dtype=torch.float64)
    t = torch.as_tensor(frame_times_s, dtype=torch.float64).clamp(grid[0], grid[-1])
    hi = torch.searchsorted(grid, t).clamp(1, len(times_s) - 1)
    lo = hi - 1
    w = ((t - grid[lo]) / (grid[hi] - grid[lo])).to(embeds.dtype).unsqueeze(-1)
    return _normalize(torch.lerp(embeds[lo], embeds[hi], w))


def smooth(embeds, sigma_frames):
    """Gaussian smoothing over the frame axis (edge-renormalised weights), re-normalised."""
    if sigma_frames <= 0 or embeds.shape[0] < 2:
        return embeds
    radius = max(1, int(math.ceil(3 * sigma_frames)))
    offsets = torch.arange(-radius, radius + 1, dtype=embeds.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma_frames) ** 2)
    n = embeds.shape[0]
    x = embeds.t().unsqueeze(1)  # [1024, 1, n]
    ones = torch.ones(1, 1, n, dtype=embeds.dtype)
    k = kernel.view(1, 1, -1)
    num = torch.nn.functional.conv1d(torch.nn.functional.pad(x, (radius, radius)), k)
    den = torch.nn.functional.conv1d(torch.nn.functional.pad(ones, (radius, radius)), k)
    return _normalize((num / den).squeeze(1).t())


def encode_frames(encoder, waveform, sample_rate, fps, window_s=MAX_WINDOW_S, hop_s=0.0, smoothing_s=0.0,
                  progress=None, check_interrupt=None):
    """[frames, 1024] embeddings, one per frame at fps, for one clip.

    progress(done, total) counts encoded windows; check_interrupt() runs before each batch.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if not 0 < window_s <= MAX_WINDOW_S:
        raise ValueError(f"window_seconds must be in (0, {MAX_WINDOW_S:g}], got {window_s}")
    if hop_s < 0 or smoothing_s < 0:
        raise ValueError("hop_seconds and smoothing_seconds must not be negative")
    mono, sample_rate = checked_mono(waveform, sample_rate)
    duration = mono.shape[-1] / sample_rate
    frames = [k / fps for k in range(frame_count(duration, fps))]
    centers = frames if hop_s == 0 else [k * hop_s for k in range(int(math.floor(duration / hop_s + 1e-9)) + 1)]
    if hop_s and centers[-1] < frames[-1]:
        centers.append(frames[-1])
    report = None if progress is None else (lambda done: progress(done, len(centers)))
    embeds = encode_windows(encoder, mono, sample_rate, centers, window_s, report, check_interrupt)
    if hop_s:
        embeds = interpolate(embeds, centers, frames)
    return smooth(embeds, smoothing_s * fps)


def frame_loudness_db(waveform, sample_rate, fps):
    """[frames] loudness of each frame's own slice of the clip (the 1/fps seconds centred on
    t_k = k / fps, cut to the clip): RMS of the mono mix in dB re full scale. Frames as in
    encode_frames, so the k-th value belongs to the k-th embedding."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    mono, sample_rate = checked_mono(waveform, sample_rate)
    n = mono.shape[-1]
    out = []
    for k in range(frame_count(n / sample_rate, fps)):
        first = max(0, int(round((k - 0.5) / fps * sample_rate)))
        last = min(n, max(first + 1, int(round((k + 0.5) / fps * sample_rate))))
        rms = mono[first:last].square().mean().sqrt()
        out.append(20.0 * torch.log10(rms.clamp_min(1e-10)))  # -200 dB floor for digital silence
    return torch.stack(out)


def loudness_strengths(loudness_db, min_strength, max_strength, range_db):
    """Per-frame strength factors: the loudest frame gets max_strength, frames range_db or
    more below it min_strength, linear in dB between."""
    if not range_db > 0:
        raise ValueError(f"range_db must be positive, got {range_db}")
    relative = loudness_db - loudness_db.max()
    level = ((relative + range_db) / range_db).clamp(0.0, 1.0)
    return min_strength + (max_strength - min_strength) * level


class SharedNoise:
    """NOISE for SamplerCustomAdvanced: every latent of the batch starts from the noise
    that the core Random Noise gives its first latent, so the frames differ only
    through their audio."""

    def __init__(self, seed):
        self.seed = int(seed)

    def generate_noise(self, input_latent):
        samples = input_latent["samples"]
        first = comfy.sample.prepare_noise(samples[:1], self.seed)
        return first.expand(samples.shape[0], *first.shape[1:]).clone()
