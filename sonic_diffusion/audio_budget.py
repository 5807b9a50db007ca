"""The memory budget of one decode: samples x channels x 4 bytes (float32) of decoded
audio, checked from the container's header before decoding and again while decoding
(a header may lie about the length, or declare none).

The server owner sets it with the environment variable ``SONIC_AUDIO_BUDGET_MB``
(MiB, default 512): 512 MiB hold about 23 minutes of 48 kHz stereo. While the frames
are joined into one waveform at the end, the decoder holds up to twice the budget.
"""
import math
import os

BUDGET_ENV = "SONIC_AUDIO_BUDGET_MB"
DEFAULT_BUDGET_MB = 512
BYTES_PER_SAMPLE = 4  # float32


def budget_bytes():
    """The budget in bytes, read from the environment on every decode (a server owner
    may change it without restarting the pack's import)."""
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return DEFAULT_BUDGET_MB << 20
    try:
        mb = float(text)
    except ValueError:
        mb = float("nan")
    if not math.isfinite(mb) or mb <= 0:
        raise ValueError(f"the environment variable {BUDGET_ENV}={text!r} is not a positive number of MiB; "
                         f"the server owner should fix or unset it (default {DEFAULT_BUDGET_MB})")
    return int(mb * (1 << 20))


def decoded_bytes(samples, channels):
    return int(samples) * int(channels) * BYTES_PER_SAMPLE


def _size(nbytes):
    return f"{nbytes / (1 << 30):.2f} GiB" if nbytes >= 1 << 30 else f"{nbytes / (1 << 20):.1f} MiB"


def over_budget_message(rate, channels, seconds, budget, how):
    """The refusal: the file's rate, channels and length (``how``: declared by the header,
    requested by duration, or decoded so far), what that needs, and the limit."""
    need = decoded_bytes(round(seconds * rate), channels)
    length = f"{seconds:.1f} s {how}"
    return (f"{rate} Hz, {channels} channel(s), {length}: that needs {_size(need)} decoded (samples x channels x "
            f"4 bytes), more than the budget of {_size(budget)} per decode ({BUDGET_ENV}); load a shorter part "
            f"(duration and start_time), or convert the file to fewer channels or a lower rate "
            f"(about {budget / (rate * channels * BYTES_PER_SAMPLE):.3g} s fit at this rate and channel count)")

