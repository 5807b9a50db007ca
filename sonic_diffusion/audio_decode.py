"""Decode a window of an audio file with PyAV (FFmpeg), memory-bounded.

``decode_audio`` seeks near the start of the window and stops once the
requested duration is decoded, so a 10 s window of a one-hour file only holds
about 10 s of samples. Any format FFmpeg reads (wav, flac, mp3, ogg, m4a, ...),
integer or float PCM, any channel count.
"""
import logging
import math
import os

import numpy as np
import torch


class AudioDecodeError(ValueError):
    """The file cannot give the requested audio; the message names the file and the fix."""


# Seek this far before the window: containers seek to a packet boundary at or
# before the target, and some land late; the surplus is dropped by sample count.
_SEEK_MARGIN_S = 0.5

_INT_SCALE = {"u8": None, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


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


def decode_audio(path, start_s=0.0, duration_s=0.0, gain_db=0.0):
    """Decode ``[start_s, start_s + duration_s)`` of ``path`` (duration 0: to the end).

    Returns ``(waveform, sample_rate)``: float32 CPU tensor ``[channels, samples]``
    at the file's own rate, multiplied by ``10 ** (gain_db / 20)`` (no normalisation).
    Raises AudioDecodeError for a missing, empty, non-audio or truncated file, and
    for a start beyond the end.
    """
    import av  # PyAV; imported lazily so the package imports without it

    start_s = _check_number("start_s", start_s)
    duration_s = _check_number("duration_s", duration_s)
    gain_db = float(gain_db)
    if not math.isfinite(gain_db):
        raise AudioDecodeError(f"gain_db must be finite, got {gain_db}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioDecodeError(f"audio file not found: {path!r}; check the name and that it is in ComfyUI's input folder")
    if os.path.isdir(path):
        raise AudioDecodeError(f"{path!r} is a folder, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioDecodeError(f"audio file {path!r} is empty (0 bytes); re-export or re-download it")

    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as e:
        raise AudioDecodeError(
            f"{path!r} is not a readable audio file ({e}); use wav, flac, mp3, ogg or m4a") from e
    with container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise AudioDecodeError(
                f"{path!r} has no audio stream (streams found: {', '.join(kinds)}); pick a file that contains sound")
        stream = container.streams.audio[0]
        sr = int(stream.codec_context.sample_rate or stream.rate or 0)
        if sr <= 0:
            raise AudioDecodeError(f"{path!r}: the audio stream reports no sample rate; the file looks damaged")
        start_sample = int(round(start_s * sr))
        need = int(round(duration_s * sr)) if duration_s > 0 else None
        if need == 0:
            need = 1  # a positive duration shorter than one sample still asks for audio
        chunks, pos, err = _decode_window(container, stream, sr, start_s, start_sample, need)

    got = sum(c.shape[1] for c in chunks)
    if got == 0:
        if err is not None and pos == 0:
            raise AudioDecodeError(f"{path!r} could not be decoded ({err}); the file is damaged or truncated")
        if start_sample > 0 and pos > 0:
            raise AudioDecodeError(
                f"start {start_s:.3f} s is beyond the end of {path!r} (about {pos / sr:.3f} s long); use a smaller start")
        raise AudioDecodeError(f"{path!r} holds no audio samples: it is empty or truncated; re-export it")
    if err is not None:
        logging.warning("SonicDiffusion: %s: decoding stopped early (%s); using the %.3f s decoded", path, err, got / sr)
    wave = np.concatenate(chunks, axis=1) if len(chunks) > 1 else chunks[0]
    out = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if gain_db != 0.0:
        out.mul_(10.0 ** (gain_db / 20.0))
    return out, sr


def _decode_window(container, stream, sr, start_s, start_sample, need):
    """Returns (chunks [C, n] float32, samples seen up to where decoding stopped, error or None)."""
    import av

    seek_to = start_s - _SEEK_MARGIN_S
    # Timestamps count from the stream's start time (mp3 encoder delay, for example),
    # while sample 0 is the first decoded sample.
    origin = int(stream.start_time or 0)
    for attempt in range(2):
        seeked = False
        if seek_to > 0 and attempt == 0 and stream.time_base:
            try:
                container.seek(origin + int(seek_to / stream.time_base), stream=stream, backward=True, any_frame=False)
                seeked = True
            except av.error.FFmpegError:
                seeked = False  # unseekable: decode from the start and drop samples
        elif attempt == 1:
            container.seek(0, stream=stream, backward=True, any_frame=False)
        chunks, got, pos, channels, err = [], 0, None, None, None
        restart = False
        try:
            for frame in container.decode(stream):
                n = frame.samples
                if n == 0:
                    continue
                if pos is None:
                    # Position of the first frame from its timestamp, then by counting samples.
                    pos = 0
                    if seeked and frame.pts is not None:
                        pos = int(round(float((frame.pts - origin) * frame.time_base) * sr))
                    pos = max(pos, 0)
                    if seeked and pos > start_sample:
                        restart = True  # the seek overshot: decode again from the beginning
                        break
                    channels = frame.layout.nb_channels
                if frame.layout.nb_channels != channels:
                    raise AudioDecodeError(f"the channel count changes inside the file ({channels} -> {frame.layout.nb_channels})")
                end = pos + n
                if end > start_sample:
                    lo = max(0, start_sample - pos)
                    hi = n if need is None else min(n, lo + need - got)
                    data = _frame_to_float(frame, channels)[:, lo:hi]
                    chunks.append(np.array(data, dtype=np.float32, copy=True))
                    got += hi - lo
                pos = end
                if need is not None and got >= need:
                    break
        except av.error.FFmpegError as e:
            err = e
        if seeked and pos is None and err is None:
            restart = True  # nothing after the seek point: count from the start to report the length
        if restart:
            seek_to = 0.0
            continue
        return chunks, pos or 0, err
    return [], 0, None
