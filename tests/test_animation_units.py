"""Fast unit checks of the frame arithmetic in animation.py (frame counts, window bounds,
interpolation and smoothing weights, per-frame loudness), against values computed by hand,
so a wrong bound, sign or index fails (scripts/mutation.sh)."""
import math

import comfy.sample
import pytest
import torch

from sonic_diffusion import CLAP_CLIP_SAMPLES, animation
from sonic_diffusion.resample import resample


def test_frame_count_floors_and_keeps_one():
    assert animation.frame_count(6.0, 2.0) == 12
    assert animation.frame_count(0.7 * 10, 1.0) == 7
    assert animation.frame_count(2.99, 1.0) == 2
    assert animation.frame_count(0.1, 1.0) == 1 and animation.frame_count(0.0, 5.0) == 1
    assert animation.frame_count(0.3 * 3, 10.0) == 9  # 8.999... frames is nine


def test_window_bounds_at_the_end_keep_a_minimal_window():
    assert animation.window_bounds(5.0, 4.0, 10.0) == (3.0, 7.0)
    assert animation.window_bounds(1.0, 4.0, 10.0) == (0.0, 3.0)
    assert animation.window_bounds(9.0, 4.0, 10.0) == (7.0, 10.0)
    # A centre past the end: the window is the clip's last window_s seconds.
    assert animation.window_bounds(14.0, 4.0, 10.0) == (6.0, 10.0)
    assert animation.window_bounds(12.0, 4.0, 10.0) == (6.0, 10.0)  # end == start: still the last window
    assert animation.window_bounds(30.0, 40.0, 10.0) == (0.0, 10.0)


def test_mono_of_averages_channels_and_refuses_shapes():
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=torch.float64)
    out = animation.mono_of(x)
    assert out.dtype == torch.float32 and out.tolist() == [2.0, 2.0, 2.0]
    assert animation.mono_of(x.unsqueeze(0)).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="one clip at a time: got a batch of 2 clips"):
        animation.mono_of(torch.zeros(2, 1, 4))
    for bad in (torch.zeros(4), torch.zeros(1, 2, 3, 4), torch.zeros(2, 0)):
        with pytest.raises(ValueError, match=r"must be \[channels, samples\] with samples"):
            animation.mono_of(bad)


def test_checked_mono_refuses_bad_rates_and_non_finite_samples():
    mono, rate = animation.checked_mono(torch.ones(1, 8), 8000.0)
    assert rate == 8000 and isinstance(rate, int) and mono.tolist() == [1.0] * 8
    with pytest.raises(ValueError, match="sample rate 10 Hz is outside"):
        animation.checked_mono(torch.ones(1, 8), 10)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^the audio contains NaN or infinite samples; fix or re-decode the "
                                             r"source$"):
            animation.checked_mono(torch.tensor([[0.0, bad]]), 8000)


def test_build_window_takes_the_seconds_asked_and_tiles_them():
    rate = 44100
    mono = torch.arange(3 * rate, dtype=torch.float32) / rate  # a ramp: sample value = its time
    win = animation.build_window(mono, rate, 1.0, 2.0)
    assert win.shape == (CLAP_CLIP_SAMPLES,)
    assert torch.equal(win[:rate], mono[rate:2 * rate])
    assert torch.equal(win[rate:2 * rate], mono[rate:2 * rate])  # tiled, not padded
    tail = animation.build_window(mono, rate, 2.5, 10.0)  # cut at the end of the clip
    assert torch.equal(tail[:rate // 2], mono[int(2.5 * rate):])
    assert torch.equal(tail[rate // 2:rate], mono[int(2.5 * rate):])
    last = animation.build_window(mono, rate, 3.0, 3.0)  # past the end: the last sample, tiled
    assert torch.equal(last, mono[-1:].expand(CLAP_CLIP_SAMPLES))
    low = torch.randn(8000 * 2, generator=torch.Generator().manual_seed(0))
    up_last = resample(low.unsqueeze(0), 8000, rate)[0]
    end = animation.build_window(low, 8000, 2.0, 2.0)  # past the end: the last resampled sample, tiled
    torch.testing.assert_close(end, up_last[-1:].expand(CLAP_CLIP_SAMPLES), rtol=0, atol=1e-6)
    tail = animation.build_window(low, 8000, 1.5, 9.0)  # cut at the clip's end, then tiled
    n_tail = up_last.shape[0] - int(1.5 * rate)
    torch.testing.assert_close(tail[:2 * n_tail], up_last[-n_tail:].repeat(2), rtol=0, atol=1e-5)
    up = resample(low.unsqueeze(0), 8000, rate)[0]
    torch.testing.assert_close(animation.build_window(low, 8000, 0.5, 1.0)[:rate // 2],
                               up[rate // 2:rate], rtol=0, atol=1e-5)


def _unit_rows(n, d=16, seed=0):
    e = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return e / e.norm(dim=-1, keepdim=True)


def test_interpolate_weights_between_the_two_nearest_windows():
    e = _unit_rows(3)
    out = animation.interpolate(e, [0.0, 1.0, 3.0], [0.0, 0.25, 1.0, 2.5, 3.0, 4.0, -1.0])
    def mix(i, j, w):
        v = (1 - w) * e[i] + w * e[j]
        return v / v.norm()
    ref = torch.stack([e[0], mix(0, 1, 0.25), e[1], mix(1, 2, 0.75), e[2], e[2], e[0]])
    torch.testing.assert_close(out, ref)
    # An hour into a clip: frame times need float64 (float32 is 2e-4 s coarse there).
    late = animation.interpolate(e[:2], [3600.0, 3601.0], [3600.1])
    v = 0.9 * e[0] + 0.1 * e[1]
    torch.testing.assert_close(late[0], v / v.norm(), rtol=0, atol=1e-6)
    one = animation.interpolate(e[:1], [2.0], [0.0, 1.0])
    assert torch.equal(one, e[:1].repeat(2, 1))
    one[0, 0] = 5.0
    assert e[0, 0] != 5.0  # a copy, not a view of the input


def _smoothed(e, sigma):
    """Gaussian weights cut at ceil(3 sigma) frames, each row re-normalised (written out)."""
    radius = math.ceil(3 * sigma)
    rows = []
    for i in range(e.shape[0]):
        w = torch.tensor([math.exp(-0.5 * ((j - i) / sigma) ** 2) if abs(j - i) <= radius else 0.0
                          for j in range(e.shape[0])], dtype=e.dtype)
        v = (w[:, None] * e).sum(0)
        rows.append(v / v.norm())
    return torch.stack(rows)


def test_smooth_is_a_gaussian_cut_at_three_sigma():
    e = _unit_rows(5, seed=1)
    torch.testing.assert_close(animation.smooth(e, 0.8), _smoothed(e, 0.8))
    wide = _unit_rows(16, seed=2)
    torch.testing.assert_close(animation.smooth(wide, 2.0), _smoothed(wide, 2.0))
    two = _unit_rows(2, seed=3)
    torch.testing.assert_close(animation.smooth(two, 1.0), _smoothed(two, 1.0))  # two frames are smoothed
    double = _unit_rows(6, seed=4).double()
    out = animation.smooth(double, 1.0)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _smoothed(double, 1.0))
    assert animation.smooth(e, 0.0) is e and animation.smooth(e, -1.0) is e
    assert animation.smooth(e[:1], 2.0) is e[:1] or torch.equal(animation.smooth(e[:1], 2.0), e[:1])
    tiny = animation.smooth(e, 0.1)  # radius at least one frame; weights 1 : e^-50 keep each row
    torch.testing.assert_close(tiny, e)


def test_frame_loudness_is_the_rms_of_each_frames_own_slice():
    rate, fps = 1000, 4
    wave = torch.cat([torch.full((250,), v) for v in (0.1, 0.2, 0.4, 0.8)]).view(1, -1)  # 1 s, 4 frames
    out = animation.frame_loudness_db(wave, rate, fps)
    assert out.shape == (4,)
    # Frame k covers samples round((k - 0.5) * 250) .. round((k + 0.5) * 250), cut to the clip.
    for k in range(4):
        first, last = max(0, round((k - 0.5) * 250)), min(1000, round((k + 0.5) * 250))
        ref = 20 * math.log10(math.sqrt(float(wave[0, first:last].square().mean())))
        assert float(out[k]) == pytest.approx(ref, abs=1e-4)
    ramp = (torch.arange(1, 11, dtype=torch.float32) / 10).view(1, -1)
    out = animation.frame_loudness_db(ramp, 1000, 200)  # frames of 5 samples; frame 0: 0 .. round(2.5) = 2
    assert float(out[0]) == pytest.approx(20 * math.log10(math.sqrt((0.01 + 0.04) / 2)), abs=1e-4)
    fine = animation.frame_loudness_db(ramp, 1000, 2000)  # frames of half a sample: one sample each
    assert fine.shape == (20,) and bool(torch.isfinite(fine).all())
    for k in (0, 1, 2, 3, 18, 19):
        first = max(0, round((k - 0.5) / 2))
        assert float(fine[k]) == pytest.approx(20 * math.log10(float(ramp[0, first])), abs=1e-4), k
    silent = animation.frame_loudness_db(torch.zeros(1, 1000), rate, 1)
    assert silent.tolist() == [-200.0]
    with pytest.raises(ValueError, match="fps must be positive, got 0"):
        animation.frame_loudness_db(wave, rate, 0)


def test_loudness_strengths_are_linear_in_db_between_the_limits():
    db = torch.tensor([-10.0, -20.0, -25.0, -40.0, -10.0])
    out = animation.loudness_strengths(db, 0.5, 2.0, 20.0)
    torch.testing.assert_close(out, torch.tensor([2.0, 1.25, 0.875, 0.5, 2.0]))
    narrow = animation.loudness_strengths(torch.tensor([0.0, -0.25]), 0.0, 1.0, 0.5)  # under 1 dB is a range
    torch.testing.assert_close(narrow, torch.tensor([1.0, 0.5]))
    for bad in (0.0, -3.0):
        with pytest.raises(ValueError, match=f"range_db must be positive, got {bad}"):
            animation.loudness_strengths(db, 0.5, 2.0, bad)


NEGATIVE = "^hop_seconds and smoothing_seconds must not be negative$"


class Encoder:
    batch_size = 3

    def __init__(self):
        self.seen = []

    def encode(self, clips):
        self.seen.append(clips.clone())
        out = torch.zeros(clips.shape[0], 4)
        out[:, 0] = clips[:, 0]
        out[:, 1] = 1.0
        return out / out.norm(dim=-1, keepdim=True)


def test_encode_frames_validates_and_places_hop_windows():
    wave = (torch.arange(8000 * 5) / 8000.0).view(1, -1)  # 5 s ramp
    for kw, message in ((dict(fps=0.0), "fps must be positive"),
                        (dict(fps=1.0, window_s=0.0), "window_seconds must be in"),
                        (dict(fps=1.0, window_s=10.5), "window_seconds must be in"),
                        (dict(fps=1.0, hop_s=-1.0), NEGATIVE),
                        (dict(fps=1.0, smoothing_s=-1.0), NEGATIVE)):
        with pytest.raises(ValueError, match=message):
            animation.encode_frames(Encoder(), wave, 8000, **kw)
    enc = Encoder()
    animation.encode_frames(enc, wave, 8000, fps=2.0, window_s=10.0, hop_s=2.0)
    starts = [float(c[0]) for c in torch.cat(enc.seen)]
    assert len(starts) == 4  # centres 0, 2, 4 s and the last frame, 4.5 s
    enc = Encoder()
    animation.encode_frames(enc, wave, 8000, fps=1.0, window_s=2.0, hop_s=2.0)
    starts = [round(float(c[0]), 2) for c in torch.cat(enc.seen)]
    assert starts == [0.0, 1.0, 3.0]  # centres 0, 2, 4 s (the last frame, 4 s, is on the grid)
    enc = Encoder()
    out = animation.encode_frames(enc, wave, 8000, fps=1.0, window_s=2.0, hop_s=3.0)
    starts = [round(float(c[0]), 2) for c in torch.cat(enc.seen)]
    assert starts == [0.0, 2.0, 3.0] and out.shape == (5, 4)  # centres 0, 3 and the last frame 4 s
    enc = Encoder()
    animation.encode_frames(enc, wave, 8000, fps=1.0, window_s=2.0, hop_s=2.5)
    starts = [round(float(c[0]), 2) for c in torch.cat(enc.seen)]
    assert starts == [0.0, 1.5, 4.0]  # 5 s / 2.5 s is exactly 2 hops: centres 0, 2.5 and 5 s


def test_encoder_batches_follow_its_batch_size():
    enc = Encoder()
    enc.batch_size = 1
    animation.encode_frames(enc, torch.zeros(1, 8000 * 3), 8000, fps=1.0, window_s=1.0)
    assert [c.shape[0] for c in enc.seen] == [1, 1, 1]


def test_shared_noise_repeats_the_first_latents_noise():
    latent = {"samples": torch.zeros(3, 4, 2, 2)}
    out = animation.SharedNoise("7").generate_noise(latent)
    ref = comfy.sample.prepare_noise(torch.zeros(1, 4, 2, 2), 7)
    assert out.shape == (3, 4, 2, 2)
    for i in range(3):
        assert torch.equal(out[i], ref[0])
    out[0, 0, 0, 0] = 99.0
    assert out[1, 0, 0, 0] != 99.0  # its own memory, not a view
