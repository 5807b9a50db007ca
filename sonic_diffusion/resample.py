"""Band-limited resampling that matches torchaudio's default.

The official SonicDiffusion code resamples with ``torchaudio.transforms.Resample``
at its defaults (``sinc_interp_hann``, ``lowpass_filter_width=6``,
``rolloff=0.99``). Newer ComfyUI dropped torchaudio and ships a port of that
resampler as ``comfy.audio.resample``, so we pick, in order:

1. ``comfy.audio.resample`` when the running ComfyUI has it,
2. ``torchaudio.functional.resample`` when torchaudio imports,
3. our own implementation of the same formula (``sinc_resample``),

except that a rate pair whose filter bank would exceed ``KERNEL_BUDGET_BYTES``
(co-prime rates such as 44101 Hz) always uses ours, which costs bounded memory.

All three give the same numbers up to float32 rounding (about 1e-6).

The formula (torchaudio's, written out): after dividing both rates by their
gcd to ``o`` (input) and ``n`` (output), with ``base = min(o, n) * rolloff`` and
``width = ceil(lpw * o / base)``, output sample ``j`` is

    y[j] = sum_i x[i] * k(base * (i / o - j / n)),   x[i] = 0 outside [0, L)
    k(t) = (base / o) * sinc(pi * t) * cos(pi * t / (2 * lpw))**2,  t clamped to [-lpw, lpw]

and the output has ``ceil(n * L / o)`` samples. Only ``|t| < lpw`` contributes
(the clamped window is ~1e-33 beyond), i.e. inputs within ``width`` of ``j*o/n``.
"""
import inspect
import logging
import math

import torch

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99

BACKENDS = ("auto", "comfy", "torchaudio", "sinc")


def _comfy_resample_fn():
    """comfy.audio.resample, or None on cores that do not have it (0.3.75)."""
    try:
        import comfy.audio as comfy_audio  # newest ComfyUI only
    except Exception:
        return None
    fn = getattr(comfy_audio, "resample", None)
    if not callable(fn):
        return None
    try:
        # Expect (waveform, orig_sr, new_sr, ...); refuse anything we cannot call positionally.
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
        if len(params) < 3 and not any(p.kind == p.VAR_POSITIONAL for p in params):
            return None
    except (TypeError, ValueError):
        pass  # builtins without a signature: try it anyway
    return fn


def _torchaudio_resample_fn():
    try:
        import torchaudio.functional as taf
    except Exception:
        return None
    return getattr(taf, "resample", None)


def _reduced(orig_sr, new_sr):
    g = math.gcd(int(orig_sr), int(new_sr))
    return int(orig_sr) // g, int(new_sr) // g


def output_length(length, orig_sr, new_sr):
    """Number of samples a full resample of ``length`` samples yields (torchaudio's rule)."""
    if int(orig_sr) == int(new_sr):
        return int(length)
    o, n = _reduced(orig_sr, new_sr)
    return -(-int(length) * n // o)  # exact integer ceil


def _filter_width(o, n):
    base = min(o, n) * ROLLOFF
    return base, int(math.ceil(LOWPASS_FILTER_WIDTH * o / base))


def _kernel(p, m, o, n, base, width, dtype):
    """k(.) for phase p = j mod n and tap position m = i - (j // n) * o + width.

    The arithmetic follows torchaudio's order of operations in ``dtype`` so the
    float32 rounding of the filter matches too (float64 here would differ by ~3e-5).
    """
    t = (-p.to(dtype)) / n + (m - width).to(dtype) / o
    t = t * base
    t = t.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t = t * math.pi
    scale = base / o
    k = torch.where(t == 0, torch.ones_like(t), t.sin() / t)
    return k * (window * scale)


def sinc_resample(waveform, orig_sr, new_sr, out_start=0, out_len=None, chunk_elems=1 << 23):
    """Our own torchaudio-equivalent resampler (see module docstring).

    Returns outputs ``[out_start, out_start + out_len)`` of the full resample of
    ``waveform [..., L]``; only the inputs those outputs need are touched, so a
    10 s window of an hour-long clip costs the same as a 10 s clip.
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    x = waveform
    if not x.is_floating_point():
        raise TypeError(f"resample needs a floating point waveform, got {x.dtype}")
    length = x.shape[-1]
    total = output_length(length, orig_sr, new_sr)
    if out_len is None:
        out_len = total - out_start
    lead = x.shape[:-1]
    x2 = x.reshape(-1, length)
    rows = x2.shape[0]
    if orig_sr == new_sr:
        return x2[:, out_start:out_start + out_len].reshape(*lead, -1)

    o, n = _reduced(orig_sr, new_sr)
    base, width = _filter_width(o, n)
    taps = 2 * width + 2
    dev = x.device
    tap = torch.arange(taps, dtype=torch.int64, device=dev)
    kdtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    # Kernel rows depend only on the phase j mod n: build a table when it is small;
    # otherwise weights are computed per chunk (memory bounded by chunk_elems).
    table = None
    if n * taps <= chunk_elems:
        p = torch.arange(n, dtype=torch.int64, device=dev)
        table = _kernel(p[:, None], (p * o // n)[:, None] + tap[None], o, n, base, width, kdtype).to(x.dtype)

    # Zero padding on both sides turns out-of-range inputs into plain gathers.
    pad = width + 2
    xp = torch.nn.functional.pad(x2, (pad, pad))
    out = torch.empty(rows, out_len, dtype=x.dtype, device=dev)
    step = max(1, chunk_elems // (taps * max(rows, 1)))
    for s in range(0, out_len, step):
        j = torch.arange(out_start + s, out_start + min(s + step, out_len), dtype=torch.int64, device=dev)
        first = (j * o) // n - width
        idx = first[:, None] + tap[None]  # [J, taps] input indices
        if table is not None:
            w = table[j % n]
        else:
            p = j % n
            w = _kernel(p[:, None], (p * o // n)[:, None] + tap[None], o, n, base, width, kdtype).to(x.dtype)
        idx = (idx + pad).clamp_(0, xp.shape[-1] - 1)  # beyond the pad the kernel is ~0 anyway
        g = xp[:, idx]  # [rows, J, taps]
        out[:, s:s + j.shape[0]] = (g * w[None]).sum(-1)
    return out.reshape(*lead, out_len)


def kernel_bytes(orig_sr, new_sr):
    """Bytes of the float32 filter bank torchaudio (and comfy.audio, its port) builds
    for one rate pair: [n, 1, o + 2 * width] after reducing the rates by their gcd.
    Co-prime rates make it huge: 44101 -> 44100 Hz needs about 7.8 GB."""
    o, n = _reduced(orig_sr, new_sr)
    _, width = _filter_width(o, n)
    return 4 * n * (o + 2 * width)


# Above this the built-in resampler is used instead: it builds at most one phase
# table of n * (2 * width + 2) weights, or computes the weights chunk by chunk.
KERNEL_BUDGET_BYTES = 64 << 20


def _pick_backend(backend, orig_sr=None, new_sr=None):
    if backend not in BACKENDS:
        raise ValueError(f"unknown resample backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto" and orig_sr is not None and kernel_bytes(orig_sr, new_sr) > KERNEL_BUDGET_BYTES:
        return "sinc", None
    if backend in ("auto", "comfy"):
        fn = _comfy_resample_fn()
        if fn is not None:
            return "comfy", fn
        if backend == "comfy":
            raise RuntimeError("comfy.audio.resample is not available in this ComfyUI")
    if backend in ("auto", "torchaudio"):
        fn = _torchaudio_resample_fn()
        if fn is not None:
            return "torchaudio", fn
        if backend == "torchaudio":
            raise RuntimeError("torchaudio is not importable")
    return "sinc", None


def resample(waveform, orig_sr, new_sr, backend="auto"):
    """Resample ``waveform [..., T]`` from ``orig_sr`` to ``new_sr`` (torchaudio defaults).

    ``backend``: "auto" (comfy.audio, then torchaudio, then ours), or force one.
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr == new_sr:
        return waveform
    name, fn = _pick_backend(backend, orig_sr, new_sr)
    if name != "sinc":
        try:
            return fn(waveform, orig_sr, new_sr)
        except TypeError as e:
            if backend != "auto":
                raise
            logging.warning("SonicDiffusion: %s resample failed (%s); using the built-in resampler", name, e)
    return sinc_resample(waveform, orig_sr, new_sr)


def resample_window(waveform, orig_sr, new_sr, out_start, out_len, backend="auto"):
    """Outputs ``[out_start, out_start + out_len)`` of ``resample(waveform)``, computed
    from the part of the input they depend on only (bounded memory for long clips).

    The crop starts at a multiple of the reduced input rate, so its output grid
    coincides with the full one; the margin exceeds the filter reach, so the
    values equal those of the full resample.
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    length = waveform.shape[-1]
    if orig_sr == new_sr:
        return waveform[..., out_start:out_start + out_len]
    name, _ = _pick_backend(backend, orig_sr, new_sr)
    if name == "sinc":
        return sinc_resample(waveform, orig_sr, new_sr, out_start, out_len)
    o, n = _reduced(orig_sr, new_sr)
    _, width = _filter_width(o, n)
    margin = width + 2
    lo = max(0, (out_start * o) // n - margin)
    lo = (lo // o) * o  # align: output index lo*n/o is then an integer
    hi = min(length, -(-(out_start + out_len) * o // n) + margin)
    y = resample(waveform[..., lo:hi], orig_sr, new_sr, backend=backend)
    first = lo // o * n
    return y[..., out_start - first:out_start - first + out_len]
