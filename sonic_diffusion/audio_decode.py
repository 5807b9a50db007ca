"""Decode a window of an audio file with PyAV (FFmpeg), bounded in memory and time.

``decode_audio`` seeks before the start of the window, places every decoded frame
on the sample grid of a full decode by its timestamp, trims to the window and stops
once it is decoded: a 10 s window of a one-hour file only holds about 10 s of
samples, and equals the full decode sliced at the same sample. Containers whose
timestamps are coarser than one sample (Matroska/WebM count milliseconds) are
decoded from the start instead, counting samples (exact, slower for late windows).

Bounds: regular files only (never a device or FIFO), rates within the pack's one
sample-rate rule (audio_prep.check_sample_rate, checked before decoding), at most
``MAX_DECODE_SECONDS`` of audio and at most the memory budget (audio_budget.py:
samples x channels x 4 bytes, checked from the header before decoding and counted
while decoding) per decode, at most ``DECODE_TIME_LIMIT_S`` of wall time, and the
caller's ``check_interrupt`` (ComfyUI's Cancel) is called after every decoded frame.
"""
import logging
import math
import os
import time
from fractions import Fraction

import numpy as np
import torch

from .audio_budget import budget_bytes, decoded_bytes, over_budget_message
from .audio_declared import declared_seconds
from .audio_prep import check_sample_rate
from .paths import check_regular_file


class AudioDecodeError(ValueError):
    """The file cannot give the requested audio; the message names the file and the fix."""


MAX_DECODE_SECONDS = 30 * 60  # documented in the README (Load Audio (Sonic))
DECODE_TIME_LIMIT_S = 600.0
# A decoded length may fall short of the declared one by codec delay (Opus pre-skip
# 6.5 ms, WebM 8 ms measured); more than this is a truncated file.
TRUNCATION_TOLERANCE_S = 0.1
TRUNCATION_TOLERANCE_REL = 0.005
# Seek this far before the window: containers seek to a packet at or before the
# target, and lossy decoders need pre-roll (Opus asks for 80 ms) to converge.
_SEEK_MARGIN_S = 0.5

_INT_SCALE = {"s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def _frame_to_float(frame, channels):
    """One decoded frame -> float32 array [channels, samples] in [-1, 1] for integer PCM."""
    arr = frame.to_ndarray()
    fmt = frame.format.name.rstrip("p")
    if not frame.format.is_planar:
        arr = arr.reshape(-1, channels).T  # packed: [1, n*C] interleaved
    if fmt == "u8":
        return (arr.astype(np.float32) - 128.0) / 128.0
    if fmt in _INT_SCALE:
        return (arr.astype(np.float64) / _INT_SCALE[fmt]).astype(np.float32)
    return arr.astype(np.float32, copy=False)  # flt / dbl


def _check_number(name, value, minimum=0.0):
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise AudioDecodeError(f"{name} must be a finite number >= {minimum}, got {value}")
    return value


class _Window:
    """Collects samples [start, start + need) of the full decode (need None: to the end,
    capped at ``cap`` samples) from frames placed at absolute sample positions."""

    def __init__(self, start, need, cap, budget):
        self.start, self.need, self.cap, self.budget = start, need, cap, budget
        self.chunks, self.got, self.channels = [], 0, None
        self.end = 0  # one past the last sample position seen

    def full(self):
        return self.need is not None and self.got >= self.need

    def add(self, pos, frame):
        n = frame.samples
        channels = frame.layout.nb_channels
        if self.channels is None:
            self.channels = channels
        elif channels != self.channels:
            raise AudioDecodeError(f"the channel count changes inside the file ({self.channels} -> {channels})")
        self.end = max(self.end, pos + n)
        lo = max(0, self.start - pos)
        if lo >= n:
            return
        hi = n if self.need is None else min(n, lo + self.need - self.got)
        if self.need is None and self.got + hi - lo > self.cap:
            raise _TooLong()
        if decoded_bytes(self.got + hi - lo, channels) > self.budget:
            raise _OverBudget(self.got + hi - lo, channels)  # before the frame's samples are copied
        self.chunks.append(np.array(_frame_to_float(frame, channels)[:, lo:hi], dtype=np.float32, copy=True))
        self.got += hi - lo


class _TooLong(Exception):
    pass


class _OverBudget(Exception):
    def __init__(self, samples, channels):
        super().__init__(samples, channels)
        self.samples, self.channels = samples, channels


class _Guard:
    """Called after every frame: Cancel, then the wall-time bound."""

    def __init__(self, check_interrupt, limit_s):
        self.check_interrupt, self.limit_s = check_interrupt, limit_s
        self.t0 = time.monotonic()

    def __call__(self):
        if self.check_interrupt is not None:
            self.check_interrupt()
        if time.monotonic() - self.t0 > self.limit_s:
            raise AudioDecodeError(f"decoding took longer than {self.limit_s:.0f} s and was stopped; "
                                   "load a shorter part (start_time and duration)")


def _open(av, path):
    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as e:
        raise AudioDecodeError(
            f"{path!r} is not a readable audio file ({e}); use wav, flac, mp3, ogg or m4a") from e
    if not container.streams.audio:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise AudioDecodeError(
            f"{path!r} has no audio stream (streams found: {', '.join(kinds)}); pick a file that contains sound")
    return container


def _sample_exact_timestamps(stream, sr):
    """True when a timestamp tick is a whole fraction of one sample (1/48000 s, or the
    MP3 demuxer's 1/14112000 s), so pts -> sample index is exact."""
    if not stream.time_base:
        return False
    return (Fraction(stream.time_base) * sr).numerator == 1


def _pts_position(frame, stream, origin, sr):
    if frame.pts is None:
        return None
    return int((frame.pts - origin) * Fraction(frame.time_base or stream.time_base) * sr)


def _run_pass(container, stream, sr, window, guard, seek_s):
    """Decodes into ``window``. With ``seek_s`` every frame is placed by its timestamp
    (relative to the stream's start time, the pts of sample 0), which must continue
    the previous frame once samples are kept: after a seek some demuxers misplace the
    first packets (Ogg/Vorbis by a block-size overlap, 448 samples), and later ones
    correct it. Without ``seek_s`` samples are counted from the first decoded one.
    Returns (status, error): "ok" (window full or end reached), "overshoot" (the seek
    landed after the window start, or the timestamps jumped once samples were kept:
    decode from the start instead) or "empty" (nothing after the seek point)."""
    import av

    origin = int(stream.start_time or 0)
    if seek_s is not None:
        try:
            container.seek(origin + int(seek_s / stream.time_base), stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            return "overshoot", None  # unseekable: decode from the start instead
    pos, err = None, None
    try:
        for frame in container.decode(stream):
            guard()
            if frame.samples == 0:
                continue
            if seek_s is not None:
                placed = _pts_position(frame, stream, origin, sr)
                if placed is None and pos is None:
                    return "overshoot", None
                if placed is not None and placed != pos:
                    if window.got > 0 or placed > window.start:
                        return "overshoot", None
                    pos = placed  # nothing kept yet: re-anchor on the newer timestamp
            elif pos is None:
                pos = 0
            window.add(pos, frame)
            pos += frame.samples
            if window.full():
                return "ok", None
    except av.error.FFmpegError as e:
        err = e
    if pos is None and seek_s is not None and err is None:
        return "empty", None
    return "ok", err


def decode_audio(path, start_s=0.0, duration_s=0.0, gain_db=0.0, *, check_interrupt=None,
                 max_seconds=MAX_DECODE_SECONDS, time_limit_s=DECODE_TIME_LIMIT_S):
    """Decode ``[start_s, start_s + duration_s)`` of ``path`` (duration 0: to the end).

    Returns ``(waveform, sample_rate)``: float32 CPU tensor ``[channels, samples]``
    at the file's own rate, multiplied by ``10 ** (gain_db / 20)`` (no normalisation).
    Raises AudioDecodeError for a missing, empty, non-regular, non-audio or truncated
    file, for a start beyond the end, for more than ``max_seconds`` of audio, for a rate
    outside the pack's rule and for more decoded audio than the memory budget
    (audio_budget.budget_bytes, from ``SONIC_AUDIO_BUDGET_MB``).
    ``check_interrupt`` is called after every frame (it raises to cancel).
    """
    import av  # PyAV; imported lazily so the package imports without it

    start_s = _check_number("start_s", start_s)
    duration_s = _check_number("duration_s", duration_s)
    gain_db = float(gain_db)
    if not math.isfinite(gain_db):
        raise AudioDecodeError(f"gain_db must be finite, got {gain_db}")
    if duration_s > max_seconds:
        raise AudioDecodeError(f"duration {duration_s:g} s is longer than the maximum of one decode "
                               f"({max_seconds:g} s); load the file in parts")
    path = os.fspath(path)
    check_regular_file(path, AudioDecodeError, what="audio file",
                       missing_fix="check the name and that it is in ComfyUI's input folder",
                       empty_fix="re-export or re-download it")
    guard = _Guard(check_interrupt, time_limit_s)
    window, sr, declared, err = _decode(av, path, start_s, duration_s, max_seconds, guard)
    _check_result(path, window, sr, declared, err, start_s)
    wave = np.concatenate(window.chunks, axis=1) if len(window.chunks) > 1 else window.chunks[0]
    out = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if gain_db != 0.0:
        out.mul_(10.0 ** (gain_db / 20.0))
    return out, sr


def _decode(av, path, start_s, duration_s, max_seconds, guard):
    """Returns (window, sample rate, declared seconds or None, decoder error or None)."""
    container = _open(av, path)
    with container:
        stream = container.streams.audio[0]
        sr = int(stream.codec_context.sample_rate or stream.rate or 0)
        if sr <= 0:
            raise AudioDecodeError(f"{path!r}: the audio stream reports no sample rate; the file looks damaged")
        declared = declared_seconds(path, container, stream)
        budget = _check_before_decoding(path, stream, sr, declared, start_s, duration_s)
        if duration_s == 0 and declared and declared - start_s > max_seconds + TRUNCATION_TOLERANCE_S:
            _refuse_too_long(path, max_seconds)
        start = int(round(start_s * sr))
        need = max(1, int(round(duration_s * sr))) if duration_s > 0 else None
        window = _Window(start, need, int(max_seconds * sr), budget)
        status, err = "overshoot", None
        try:
            if start_s > _SEEK_MARGIN_S and _sample_exact_timestamps(stream, sr):
                status, err = _run_pass(container, stream, sr, window, guard, start_s - _SEEK_MARGIN_S)
            if status != "ok":
                window = _Window(start, need, window.cap, budget)
                with _open(av, path) as fresh:  # fresh demuxer and decoder: the same state as a full decode
                    status, err = _run_pass(fresh, fresh.streams.audio[0], sr, window, guard, None)
        except _TooLong:
            _refuse_too_long(path, max_seconds)
        except _OverBudget as e:
            window.chunks.clear()
            raise AudioDecodeError(f"{path!r}: " + over_budget_message(
                sr, e.channels, e.samples / sr, budget, "decoded so far (the header declares less or nothing)")) from None
    return window, sr, declared, err


def _check_before_decoding(path, stream, sr, declared, start_s, duration_s):
    """The rate rule and the memory budget from the header alone; returns the budget."""
    try:
        check_sample_rate(sr)
        budget = budget_bytes()
    except ValueError as e:
        raise AudioDecodeError(f"{path!r}: {e}") from None
    channels = int(stream.codec_context.channels or 0)
    if duration_s > 0 and not (declared and declared - start_s < duration_s):
        seconds, how = duration_s, "requested (duration)"
    elif declared:
        seconds, how = max(declared - start_s, 0.0), "declared by the header"
    else:
        return budget  # no length known before decoding: counted while decoding
    if channels and decoded_bytes(math.ceil(seconds * sr), channels) > budget:
        raise AudioDecodeError(f"{path!r}: " + over_budget_message(sr, channels, seconds, budget, how))
    return budget


def _refuse_too_long(path, max_seconds):
    raise AudioDecodeError(
        f"{path!r} is longer than {max_seconds / 60:g} minutes, the most one decode loads; "
        f"set duration (and start_time) to load the part you need")


def _check_result(path, window, sr, declared, err, start_s):
    """Refuses empty, truncated and past-the-end results; warns on a late decoder error."""
    end_s = window.end / sr
    reached_end = not window.full()
    if (reached_end and declared is not None
            and declared - end_s > TRUNCATION_TOLERANCE_S + TRUNCATION_TOLERANCE_REL * declared):
        raise AudioDecodeError(
            f"{path!r} is truncated: its header declares {declared:.3f} s of audio but it holds only "
            f"{end_s:.3f} s; re-export or re-download the file")
    if window.got == 0:
        if err is not None and window.end == 0:
            raise AudioDecodeError(f"{path!r} could not be decoded ({err}); the file is damaged or truncated")
        if start_s > 0 and window.end > 0:
            raise AudioDecodeError(
                f"start {start_s:.3f} s is beyond the end of {path!r} (about {end_s:.3f} s long); use a smaller start")
        raise AudioDecodeError(f"{path!r} holds no audio samples: it is empty or truncated; re-export it")
    if err is not None:
        logging.warning("SonicDiffusion: %s: decoding stopped early (%s); using the %.3f s decoded",
                        path, err, window.got / sr)
