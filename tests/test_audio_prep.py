"""Decoding, resampling and the 10 s / 44.1 kHz / mono preprocessing of spec section 2."""
import tracemalloc
import wave

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sonic_diffusion import audio_prep
from sonic_diffusion import resample as rs
from sonic_diffusion.audio_decode import AudioDecodeError, decode_audio
from sonic_diffusion.audio_prep import prepare_clip

N = 441000
RATE_PAIRS = [(48000, 44100), (22050, 44100), (8000, 44100), (96000, 44100), (16000, 44100),
              (32000, 44100), (11025, 44100), (44100, 16000), (7, 44100)]


def _write_wav16(path, samples, rate):
    """samples float [C, T] -> 16-bit PCM wav with the standard library."""
    data = (np.clip(samples, -1, 1) * 32767).round().astype("<i2").T.copy()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return data.T.astype(np.float32) / 32768.0  # what a decoder must return


# ---------------------------------------------------------------- resample

@pytest.mark.parametrize(("orig", "new"), RATE_PAIRS)
def test_builtin_resampler_matches_torchaudio(orig, new):
    taf = pytest.importorskip("torchaudio.functional")
    g = torch.Generator().manual_seed(orig)
    x = torch.randn(2, 3 * orig // 2 + 17, generator=g)
    ref = taf.resample(x, orig, new)
    got = rs.resample(x, orig, new, backend="sinc")
    assert got.shape == ref.shape == (2, rs.output_length(x.shape[-1], orig, new))
    assert (got - ref).abs().max() < 1e-5


def test_auto_falls_back_to_builtin_without_comfy_audio_or_torchaudio(monkeypatch):
    taf = pytest.importorskip("torchaudio.functional")
    monkeypatch.setattr(rs, "_comfy_resample_fn", lambda: None)
    monkeypatch.setattr(rs, "_torchaudio_resample_fn", lambda: None)
    assert rs._pick_backend("auto")[0] == "sinc"
    x = torch.randn(1, 9000)
    assert (rs.resample(x, 48000, 44100) - taf.resample(x, 48000, 44100)).abs().max() < 1e-5


def test_auto_prefers_comfy_audio_when_present(monkeypatch):
    seen = []

    def fake(waveform, orig, new):
        seen.append((orig, new))
        return waveform[..., :3]

    monkeypatch.setattr(rs, "_comfy_resample_fn", lambda: fake)
    assert rs.resample(torch.zeros(1, 10), 48000, 44100).shape == (1, 3)
    assert seen == [(48000, 44100)]


@pytest.mark.parametrize("backend", ["sinc", "torchaudio"])
def test_resample_window_equals_slice_of_full(backend):
    pytest.importorskip("torchaudio")
    x = torch.randn(2, 40000)
    full = rs.resample(x, 48000, 44100, backend=backend)
    for start, length in [(0, 1000), (12345, 5000), (full.shape[-1] - 700, 700)]:
        win = rs.resample_window(x, 48000, 44100, start, length, backend=backend)
        assert (win - full[:, start:start + length]).abs().max() < 1e-6


# ---------------------------------------------------------------- prepare_clip

def test_short_clip_is_tiled_not_padded():
    x = torch.linspace(-0.9, 0.9, 44100 * 3).reshape(1, -1)  # 3 s at 44.1 kHz: no resampling
    out = prepare_clip(x, 44100)
    assert out.shape == (1, N) and out.dtype == torch.float32
    idx = torch.arange(N) % x.shape[-1]
    assert torch.equal(out[0], x[0, idx])
    # Exactly 10 s is one copy, untouched.
    y = torch.randn(1, N)
    assert torch.equal(prepare_clip(y, 44100)[0], y[0])


def test_single_sample_clip_is_tiled():
    out = prepare_clip(torch.full((2, 1), 0.25), 44100)
    assert torch.equal(out, torch.full((1, N), 0.25))


def test_long_clip_windows_are_exact_crops():
    x = torch.randn(1, 500000)
    assert torch.equal(prepare_clip(x, 44100, "start")[0], x[0, :N])
    c = (500000 - N) // 2
    assert torch.equal(prepare_clip(x, 44100, "center")[0], x[0, c:c + N])
    assert torch.equal(prepare_clip(x, 44100, "offset", offset_s=0.5)[0], x[0, 22050:22050 + N])
    # An offset past the end is clamped so the window still fits.
    assert torch.equal(prepare_clip(x, 44100, "offset", offset_s=999.0)[0], x[0, -N:])
    assert torch.equal(prepare_clip(x, 44100, "offset", offset_s=-3.0)[0], x[0, :N])


def test_windows_are_deterministic_and_match_full_resample():
    pytest.importorskip("torchaudio")
    x = torch.randn(1, 2, 48000 * 12)
    a = prepare_clip(x, 48000, "center")
    b = prepare_clip(x, 48000, "center")
    assert torch.equal(a, b)
    full = rs.resample(x.mean(1), 48000, 44100)
    c = (full.shape[-1] - N) // 2
    assert (a - full[:, c:c + N]).abs().max() < 1e-6
    o = prepare_clip(x, 48000, "offset", offset_s=1.25)
    assert (o - full[:, 55125:55125 + N]).abs().max() < 1e-6


def test_mono_by_mean_before_resampling(monkeypatch):
    x = torch.randn(2, 3, 30000)
    x[:, 1] *= 0.5
    seen = []
    real = audio_prep.resample

    def spy(w, orig, new, *a, **k):
        seen.append(tuple(w.shape))
        return real(w, orig, new, *a, **k)

    monkeypatch.setattr(audio_prep, "resample", spy)
    out = prepare_clip(x, 48000)
    assert seen == [(2, 30000)]  # one mono row per batch item reached the resampler
    expect = prepare_clip(x.mean(1, keepdim=True), 48000)
    assert torch.equal(out, expect)


def test_refuses_nan_inf_and_empty():
    x = torch.zeros(1, 1000)
    x[0, 10] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prepare_clip(x, 44100)
    x[0, 10] = float("inf")
    with pytest.raises(ValueError, match="infinite"):
        prepare_clip(x, 44100)
    with pytest.raises(ValueError, match="empty"):
        prepare_clip(torch.zeros(1, 0), 44100)
    with pytest.raises(ValueError, match="empty"):
        prepare_clip(torch.zeros(0, 1, 10), 44100)
    with pytest.raises(ValueError, match="window"):
        prepare_clip(torch.zeros(1, 10), 44100, window="random")
    with pytest.raises(ValueError, match="waveform must be"):
        prepare_clip(torch.zeros(10), 44100)


def test_float16_input_computes_in_float32():
    x = torch.randn(1, 2, 20000)
    out16 = prepare_clip(x.half(), 48000)
    out32 = prepare_clip(x.half().float(), 48000)
    assert out16.dtype == torch.float32 and torch.equal(out16, out32)


def test_prepare_clip_reads_without_mutating():
    wav = torch.randn(3, 2, 50000)
    before = wav.clone()
    out = prepare_clip(wav, 48000)
    assert out.shape == (3, N) and torch.isfinite(out).all()
    assert torch.equal(wav, before)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]),
       seconds=st.floats(min_value=0.0, max_value=11.5),
       channels=st.integers(1, 3), batch=st.integers(1, 2),
       window=st.sampled_from(["start", "center", "offset"]), offset=st.floats(0.0, 5.0))
def test_property_exact_length_finite(rate, seconds, channels, batch, window, offset):
    length = max(1, int(seconds * rate))
    g = torch.Generator().manual_seed(length)
    x = torch.rand(batch, channels, length, generator=g) * 2 - 1
    out = prepare_clip(x, rate, window=window, offset_s=offset)
    assert out.shape == (batch, N) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    total = rs.output_length(length, rate, 44100)
    if total < N:  # tiled: periodic with the resampled length
        assert torch.equal(out[:, total:2 * total], out[:, :min(total, N - total)])
    if rate == 44100 and total <= N:
        assert (out[:, :length] - x.mean(1)).abs().max() < 1e-6


# ---------------------------------------------------------------- decode

def test_decode_start_duration_gain(tmp_path):
    rate = 16000
    t = np.arange(rate * 4) / rate
    src = np.stack([0.5 * np.sin(2 * np.pi * 300 * t), 0.25 * np.cos(2 * np.pi * 500 * t)])
    exact = _write_wav16(tmp_path / "a.wav", src, rate)
    full, sr = decode_audio(tmp_path / "a.wav")
    assert sr == rate and full.dtype == torch.float32 and full.shape == (2, rate * 4)
    assert np.abs(full.numpy() - exact).max() < 1e-7
    win, _ = decode_audio(tmp_path / "a.wav", start_s=1.5, duration_s=0.75)
    assert win.shape == (2, 12000)
    assert torch.equal(win, full[:, 24000:36000])
    loud, _ = decode_audio(tmp_path / "a.wav", start_s=1.5, duration_s=0.75, gain_db=6.0)
    assert torch.allclose(loud, win * 10 ** (6 / 20), atol=1e-7)
    tail, _ = decode_audio(tmp_path / "a.wav", start_s=3.0)
    assert torch.equal(tail, full[:, 48000:])
    over, _ = decode_audio(tmp_path / "a.wav", start_s=3.5, duration_s=10)
    assert over.shape == (2, 8000)


def test_decode_errors(tmp_path):
    with pytest.raises(AudioDecodeError, match="not found"):
        decode_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty"):
        decode_audio(tmp_path / "empty.wav")
    (tmp_path / "notes.mp3").write_text("these are not the samples you are looking for\n" * 50)
    with pytest.raises(AudioDecodeError, match=r"notes\.mp3"):
        decode_audio(tmp_path / "notes.mp3")
    _write_wav16(tmp_path / "ok.wav", np.zeros((1, 8000)), 8000)
    header_only = (tmp_path / "ok.wav").read_bytes()[:44]
    (tmp_path / "trunc.wav").write_bytes(header_only)
    with pytest.raises(AudioDecodeError, match="truncated"):
        decode_audio(tmp_path / "trunc.wav")
    with pytest.raises(AudioDecodeError, match="beyond the end"):
        decode_audio(tmp_path / "ok.wav", start_s=5.0)
    with pytest.raises(AudioDecodeError):
        decode_audio(tmp_path / "ok.wav", start_s=-1.0)
    assert issubclass(AudioDecodeError, ValueError)


def test_decode_video_without_audio_is_refused(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "silent_film.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 40, np.uint8), format="rgb24")
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        decode_audio(path)


def test_long_file_decodes_only_the_window(tmp_path):
    rate = 8000
    minutes = 10
    path = tmp_path / "long.wav"
    step = rate * 60
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        for m in range(minutes):
            ramp = ((np.arange(step) + m * step) % 30000).astype("<i2")
            w.writeframes(ramp.tobytes())
    tracemalloc.start()
    try:
        win, _sr = decode_audio(path, start_s=400.0, duration_s=2.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert win.shape == (1, 2 * rate)
    expect = ((np.arange(2 * rate) + 400 * rate) % 30000) / 32768.0
    assert np.abs(win[0].numpy() - expect).max() < 1e-7
    full_bytes = minutes * step * 4
    print(f"window decode peak {peak / 1e6:.2f} MB vs {full_bytes / 1e6:.1f} MB for the whole file")
    assert peak < full_bytes / 10


def test_fixture_clips_decode_and_prepare(fixture_dir):
    for name in fixture_dir.audio_names():
        spec = fixture_dir.audio_spec(name)
        wav, sr = decode_audio(fixture_dir.audio(name))
        assert sr == spec["sample_rate"], name
        assert wav.shape[0] == spec["channels"], name
        frames = spec["frames"]
        if spec["encoding"] in ("wav16", "wavf32", "flac"):
            assert wav.shape[1] == frames, name
            ref = fixture_dir.audio_samples(name)
            tol = 1e-6 if spec["encoding"] == "wavf32" else 1.0 / 32000
            assert np.abs(wav.numpy() - ref).max() < tol, name
        else:  # lossy codecs may pad up to a frame or two
            assert abs(wav.shape[1] - frames) <= 4096, (name, wav.shape, frames)
        clip = prepare_clip(wav, sr, "center")
        assert clip.shape == (1, N) and torch.isfinite(clip).all(), name
