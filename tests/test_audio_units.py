"""Fast unit checks of the window and rate arithmetic in audio_prep.py and resample.py
(window starts, offset limits, output lengths, filter sizes, backend choice), against values
computed by hand, so a wrong bound or rounding fails (scripts/mutation.sh)."""
import logging
import math
import sys
import types

import pytest
import torch

from sonic_diffusion import CLAP_CLIP_SAMPLES, audio_prep
from sonic_diffusion import resample as rs

N = CLAP_CLIP_SAMPLES


def test_window_start_per_mode():
    assert audio_prep.window_start(N + 1001) == 0
    assert audio_prep.window_start(N + 1001, "center") == 500
    assert audio_prep.window_start(N + 1001, "offset", 0.01) == 441
    assert audio_prep.window_start(N + 1001, "offset", 0.0114) == 503  # round(502.74)
    assert audio_prep.window_start(N + 1001, "offset", 1.0) == 1001  # clamped to the last window
    assert audio_prep.window_start(N + 1001, "offset", -1.0) == 0
    assert audio_prep.window_start(3000, "offset", 0.5, sample_rate=1000, length=1000) == 500
    assert audio_prep.window_start(N + 1001, "offset") == 0  # no offset given: the start
    with pytest.raises(ValueError, match="window must be one of"):
        audio_prep.window_start(N + 10, "end")


def test_sample_rate_rule_bounds():
    assert audio_prep.check_sample_rate(1000) == 1000 and audio_prep.check_sample_rate(768000.0) == 768000
    for bad in (999, 768001, 0, -44100):
        with pytest.raises(ValueError, match=rf"^sample rate {bad} Hz is outside the supported 1000-768000 Hz; "
                                             r"resample the file to a common rate \(e.g. 44100 or 48000 Hz\)$"):
            audio_prep.check_sample_rate(bad)


def test_max_window_offset_and_its_check():
    assert audio_prep.max_window_offset_s(44100 * 12, 44100) == pytest.approx(2.0)
    assert audio_prep.max_window_offset_s(48000 * 12, 48000) == pytest.approx(2.0)
    assert audio_prep.max_window_offset_s(44100 * 5, 44100) == 0.0
    wave = torch.zeros(1, 44100 * 12)
    audio_prep.check_window_offset(wave, 44100, "offset", 2.0)  # the last window: allowed
    audio_prep.check_window_offset(wave, 44100, "center", 99.0)  # only "offset" reads the offset
    with pytest.raises(ValueError, match=r"offset 2.01 s is past the last 10 s window of the 12.000 s clip; "
                                         r"use an offset between 0 and 2.000 s"):
        audio_prep.check_window_offset(wave, 44100, "offset", 2.01)
    audio_prep.check_window_offset(torch.zeros(1, 2, 44100 * 12), 44100, "offset", 2.0)  # [B, C, T]: T counts
    audio_prep.check_window_offset(wave, 44100, "offset", 2.0 + 0.5 / 44100)  # half a sample over: rounding
    with pytest.raises(ValueError, match="past the last 10 s window"):
        audio_prep.check_window_offset(wave, 44100, "offset", 2.0 + 1.0 / 44100)
    with pytest.raises(ValueError, match=r"; the clip is 10 s or shorter and is used whole: set offset to 0$"):
        audio_prep.check_window_offset(torch.zeros(1, 44100 * 5), 44100, "offset", 0.1)
    audio_prep.check_window_offset(torch.zeros(1, 44100 * 5), 44100, "offset", 0.4 / 44100)  # within half a sample


def test_prepare_clip_shapes_tiles_and_refusals():
    ramp = torch.arange(1, 4, dtype=torch.float32).view(1, 3)
    out = audio_prep.prepare_clip(ramp, 44100)
    assert out.shape == (1, N) and out[0, :6].tolist() == [1, 2, 3, 1, 2, 3] and out[0, -1] == (N - 1) % 3 + 1
    stereo = torch.stack([torch.ones(5), 3 * torch.ones(5)]).unsqueeze(0).repeat(2, 1, 1)  # [2, 2, 5]
    assert torch.equal(audio_prep.prepare_clip(stereo, 44100), torch.full((2, N), 2.0))
    long = torch.arange(N + 1000, dtype=torch.float32).view(1, -1)
    assert audio_prep.prepare_clip(long, 44100, "center")[0, 0] == 500
    assert audio_prep.prepare_clip(long, 44100, "offset", 0.01)[0, 0] == 441
    assert audio_prep.prepare_clip(long, 44100, "offset")[0, 0] == 0
    assert audio_prep.prepare_clip(long, 44100)[0, -1] == N - 1
    with pytest.raises(TypeError, match=r"must be a torch.Tensor, got list"):
        audio_prep.prepare_clip([0.0], 44100)
    with pytest.raises(ValueError, match=r"\[channels, samples\] or \[batch, channels, samples\]"):
        audio_prep.prepare_clip(torch.zeros(5), 44100)
    for empty in (torch.zeros(0, 1, 5), torch.zeros(1, 0, 5), torch.zeros(1, 1, 0)):
        with pytest.raises(ValueError, match="the audio is empty"):
            audio_prep.prepare_clip(empty, 44100)
    with pytest.raises(TypeError, match="floating point"):
        audio_prep.prepare_clip(torch.ones(1, 5, dtype=torch.int16), 44100)
    with pytest.raises(ValueError, match=r"^the audio contains 1 NaN and 2 infinite samples; fix or re-decode the "
                                         r"source before encoding$"):
        audio_prep.prepare_clip(torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.0]]), 44100)
    with pytest.raises(ValueError, match="window must be one of"):
        audio_prep.prepare_clip(ramp, 44100, "end")


def test_resample_output_length_and_filter_sizes():
    assert rs.output_length(48000, 48000, 44100) == 44100
    assert rs.output_length(48001, 48000, 44100) == 44101  # ceil(48001 * 147 / 160) = 44100.9...
    assert rs.output_length(1, 8000, 44100) == 6  # ceil(441 / 80)
    assert rs.output_length(7, 44100, 44100) == 7
    assert rs._reduced(48000, 44100) == (160, 147)
    base, width = rs._filter_width(160, 147)
    assert base == pytest.approx(147 * 0.99) and width == math.ceil(6 * 160 / (147 * 0.99)) == 7
    base, width = rs._filter_width(80, 441)
    assert base == pytest.approx(80 * 0.99) and width == math.ceil(6 * 80 / (80 * 0.99)) == 7
    assert rs.kernel_bytes(48000, 44100) == 4 * 147 * (160 + 2 * 7)
    assert rs.kernel_bytes(44101, 44100) > rs.KERNEL_BUDGET_BYTES  # co-prime: gigabytes


def test_resample_backend_choice(monkeypatch):
    comfy_fn, ta_fn = (lambda w, o, n: w), (lambda w, o, n: w)
    monkeypatch.setattr(rs, "_comfy_resample_fn", lambda: comfy_fn)
    monkeypatch.setattr(rs, "_torchaudio_resample_fn", lambda: ta_fn)
    assert rs._pick_backend("auto", 48000, 44100) == ("comfy", comfy_fn)
    assert rs._pick_backend("auto", 44101, 44100) == ("sinc", None)  # over the budget: ours
    assert rs._pick_backend("torchaudio", 44101, 44100) == ("torchaudio", ta_fn)  # forced: as asked
    assert rs._pick_backend("sinc") == ("sinc", None)
    monkeypatch.setattr(rs, "_comfy_resample_fn", lambda: None)
    assert rs._pick_backend("auto", 48000, 44100) == ("torchaudio", ta_fn)
    with pytest.raises(RuntimeError, match=r"comfy.audio.resample is not available"):
        rs._pick_backend("comfy")
    monkeypatch.setattr(rs, "_torchaudio_resample_fn", lambda: None)
    with pytest.raises(RuntimeError, match="torchaudio is not importable"):
        rs._pick_backend("torchaudio")
    with pytest.raises(ValueError, match="unknown resample backend 'fast'"):
        rs._pick_backend("fast")


def test_resample_falls_back_on_a_type_error_only_under_auto(monkeypatch):
    def broken(w, o, n):
        raise TypeError("new signature")

    monkeypatch.setattr(rs, "_comfy_resample_fn", lambda: broken)
    x = torch.randn(1, 480, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rs.resample(x, 48000, 44100), rs.sinc_resample(x, 48000, 44100))
    with pytest.raises(TypeError, match="new signature"):
        rs.resample(x, 48000, 44100, backend="comfy")
    assert rs.resample(x, 44100, 44100) is x


def _direct_resample(x, o, n):
    """y[j] = sum_i x[i] k(base * (i / o - j / n)) written out in float64 (resample.py's docstring)."""
    base = min(o, n) * rs.ROLLOFF
    lpw = rs.LOWPASS_FILTER_WIDTH
    out = []
    for j in range(-(-len(x) * n // o)):
        acc = 0.0
        for i in range(len(x)):
            t = max(-lpw, min(lpw, base * (i / o - j / n)))
            k = 1.0 if t == 0 else math.sin(math.pi * t) / (math.pi * t)
            acc += float(x[i]) * (base / o) * k * math.cos(math.pi * t / (2 * lpw)) ** 2
        out.append(acc)
    return torch.tensor(out)


@pytest.mark.parametrize(("o", "n"), [(3, 2), (2, 3), (5, 7)])
def test_sinc_resample_is_the_written_formula(o, n):
    x = torch.randn(2, 40, generator=torch.Generator().manual_seed(o * 10 + n), dtype=torch.float64)
    got = rs.sinc_resample(x, o * 1000, n * 1000)
    assert got.shape == (2, -(-40 * n // o)) and got.dtype == torch.float64
    # Measured: at most 6e-8 apart (the taps past the filter reach that sinc_resample skips).
    for row in range(2):
        torch.testing.assert_close(got[row], _direct_resample(x[row], o, n).double(), rtol=0, atol=1e-6)
    # A window of the outputs, and the per-chunk weights (no phase table), give the same values.
    part = rs.sinc_resample(x, o * 1000, n * 1000, out_start=5, out_len=9, chunk_elems=7)
    torch.testing.assert_close(part, got[:, 5:14], rtol=0, atol=1e-12)
    torch.testing.assert_close(rs.sinc_resample(x[0], o * 1000, n * 1000, out_start=3), got[0, 3:])


def test_sinc_resample_refusals_and_identity():
    x = torch.randn(3, 10)
    assert torch.equal(rs.sinc_resample(x, 8000, 8000, out_start=2, out_len=4), x[:, 2:6])
    with pytest.raises(ValueError, match="sample rates must be positive, got 0 -> 8000"):
        rs.sinc_resample(x, 0, 8000)
    with pytest.raises(ValueError, match="got 8000 -> -1"):
        rs.sinc_resample(x, 8000, -1)
    with pytest.raises(TypeError, match="floating point waveform"):
        rs.sinc_resample(torch.ones(1, 4, dtype=torch.int32), 8000, 16000)
    half = rs.sinc_resample(x.half(), 3000, 2000)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), rs.sinc_resample(x.half().float(), 3000, 2000), rtol=0, atol=2e-3)


def test_resample_window_through_another_backend_equals_the_full_slice(monkeypatch):
    calls = []

    def ours(w, o, n):
        calls.append(w.shape[-1])
        return rs.sinc_resample(w, o, n)

    monkeypatch.setattr(rs, "_comfy_resample_fn", lambda: ours)
    x = torch.randn(1, 4800, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    full = rs.sinc_resample(x, 48000, 44100)
    for start, length in ((0, 50), (1000, 300), (full.shape[-1] - 40, 40)):
        calls.clear()
        win = rs.resample_window(x, 48000, 44100, start, length)
        torch.testing.assert_close(win, full[:, start:start + length], rtol=0, atol=1e-12)
        assert calls and calls[0] < 1000  # only the neighbourhood was resampled
    assert torch.equal(rs.resample_window(x, 48000, 48000, 7, 5), x[:, 7:12])


def _fake_comfy_audio(monkeypatch, fn):
    module = types.ModuleType("comfy.audio")
    if fn is not None:
        module.resample = fn
    monkeypatch.setitem(sys.modules, "comfy.audio", module)


def test_comfy_resample_is_used_only_when_callable_with_three_positional_arguments(monkeypatch):
    def three(waveform, orig_sr, new_sr, extra=0):
        return waveform

    def star(*args):
        return args[0]

    def two(waveform, rate):
        return waveform

    for fn, usable in ((three, True), (star, True), (two, False), (max, True), ("not callable", False),
                       (None, False)):
        _fake_comfy_audio(monkeypatch, fn)
        assert rs._comfy_resample_fn() is (fn if usable else None), fn
    monkeypatch.setitem(sys.modules, "comfy.audio", None)  # not importable (ComfyUI 0.3.75)
    assert rs._comfy_resample_fn() is None


def test_the_budget_rule_holds_for_every_entry_point(monkeypatch):
    calls = []
    monkeypatch.setattr(rs, "_comfy_resample_fn", lambda: lambda w, o, n: calls.append("comfy") or w)
    x = torch.randn(1, 200, generator=torch.Generator().manual_seed(2))
    rs.resample(x, 44101, 44100)  # co-prime rates: ours, never the big filter bank
    rs.resample_window(x, 44101, 44100, 0, 50)
    assert calls == []
    rs.resample(x, 48000, 44100)
    assert calls == ["comfy"]


def test_resample_window_keeps_the_backend_asked_and_the_batch_layout(monkeypatch):
    calls = []
    monkeypatch.setattr(rs, "_comfy_resample_fn", lambda: lambda w, o, n: calls.append("comfy") or w)
    monkeypatch.setattr(rs, "_torchaudio_resample_fn",
                        lambda: lambda w, o, n: calls.append("torchaudio") or rs.sinc_resample(w, o, n))
    x = torch.randn(2, 3, 4800, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    full = rs.sinc_resample(x, 48000, 44100)
    win = rs.resample_window(x, 48000, 44100, 1000, 300, backend="torchaudio")
    assert set(calls) == {"torchaudio"} and win.shape == (2, 3, 300)
    torch.testing.assert_close(win, full[..., 1000:1300], rtol=0, atol=1e-12)


def test_resample_fallback_is_logged_with_the_backend_and_error(monkeypatch, caplog):
    def broken(w, o, n):
        raise TypeError("new signature")

    monkeypatch.setattr(rs, "_comfy_resample_fn", lambda: broken)
    with caplog.at_level(logging.WARNING):
        rs.resample(torch.zeros(1, 48), 48000, 44100)
    assert "SonicDiffusion: comfy resample failed (new signature); using the built-in resampler" in caplog.text


def test_backend_errors_read_in_full(monkeypatch):
    monkeypatch.setattr(rs, "_comfy_resample_fn", lambda: None)
    monkeypatch.setattr(rs, "_torchaudio_resample_fn", lambda: None)
    with pytest.raises(RuntimeError, match=r"^comfy.audio.resample is not available in this ComfyUI$"):
        rs._pick_backend("comfy")
    with pytest.raises(RuntimeError, match=r"^torchaudio is not importable$"):
        rs._pick_backend("torchaudio")


def test_sinc_resample_accepts_rates_down_to_one_hertz():
    x = torch.randn(1, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert rs.sinc_resample(x, 1, 2).shape == (1, 24)
    assert rs.sinc_resample(x, 2, 1).shape == (1, 6)
    with pytest.raises(ValueError, match="got 8000 -> 0"):
        rs.sinc_resample(x, 8000, 0)
