"""Fast unit checks of the window and bound logic in audio_decode.py (no real decoding):
the sample window (which frames and samples are kept, its end, full and the length and
memory caps), the argument checks, the header checks before decoding, the result checks
after it, timestamp placement and the decode pass over stand-in frames, against values
worked out by hand, so a changed sign, off-by-one or swapped bound fails (scripts/mutation.sh)."""
import logging
import sys
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest

from sonic_diffusion import audio_decode as ad
from sonic_diffusion.audio_budget import BUDGET_ENV
from sonic_diffusion.audio_decode import AudioDecodeError

BIG = 1 << 40  # a budget nothing reaches


class Frame:
    """A stand-in decoded frame: planar float samples ``pos, pos + 1, ...`` per channel
    (channel c offset by 1000 * c), so the kept samples name their absolute positions."""

    def __init__(self, first, samples, channels=1, pts=None, time_base=None, fmt="fltp", planar=True, data=None):
        self.samples = samples
        self.layout = SimpleNamespace(nb_channels=channels)
        self.format = SimpleNamespace(name=fmt, is_planar=planar)
        self.pts, self.time_base = pts, time_base
        if data is None:
            data = np.stack([np.arange(first, first + samples, dtype=np.float32) + 1000 * c for c in range(channels)])
        self.data = data

    def to_ndarray(self):
        return self.data


def kept(window):
    return [c.tolist() for c in window.chunks]


# ---- _Window -------------------------------------------------------------------

def test_window_skips_frames_before_start_and_trims_to_need():
    w = ad._Window(10, 5, 100, BIG)
    w.add(0, Frame(0, 8))
    assert (w.chunks, w.got, w.end, w.channels) == ([], 0, 8, 1)
    assert not w.full()
    w.add(8, Frame(8, 8))
    assert kept(w) == [[[10.0, 11.0, 12.0, 13.0, 14.0]]]
    assert (w.got, w.end) == (5, 16)
    assert w.full()


def test_window_frame_ending_exactly_at_start_keeps_nothing():
    w = ad._Window(10, 5, 100, BIG)
    w.add(0, Frame(0, 10))
    assert (w.chunks, w.got, w.end) == ([], 0, 10)
    w.add(10, Frame(10, 1))
    assert kept(w) == [[[10.0]]]
    assert w.got == 1


def test_window_spans_frames_and_counts_what_is_left():
    w = ad._Window(1, 5, 100, BIG)
    w.add(0, Frame(0, 3))
    assert kept(w) == [[[1.0, 2.0]]]
    assert w.got == 2 and not w.full()
    w.add(3, Frame(3, 3))
    assert kept(w) == [[[1.0, 2.0]], [[3.0, 4.0, 5.0]]]
    assert w.got == 5 and w.full()
    assert w.end == 6


def test_window_full_needs_exactly_need_samples():
    w = ad._Window(0, 4, 100, BIG)
    w.add(0, Frame(0, 3))
    assert w.got == 3 and not w.full()
    w.add(3, Frame(3, 3))
    assert kept(w) == [[[0.0, 1.0, 2.0]], [[3.0]]]
    assert w.got == 4 and w.full()


def test_window_to_the_end_never_full_and_keeps_whole_frames():
    w = ad._Window(2, None, 100, BIG)
    w.add(0, Frame(0, 4))
    w.add(4, Frame(4, 4))
    assert kept(w) == [[[2.0, 3.0]], [[4.0, 5.0, 6.0, 7.0]]]
    assert w.got == 6 and w.end == 8
    assert not w.full()


def test_window_end_is_the_furthest_position_seen():
    w = ad._Window(0, None, 100, BIG)
    w.add(10, Frame(10, 5))
    w.add(0, Frame(0, 3))
    assert w.end == 15
    assert w.got == 8


def test_window_stereo_keeps_both_channels():
    w = ad._Window(1, 2, 100, BIG)
    w.add(0, Frame(0, 4, channels=2))
    assert kept(w) == [[[1.0, 2.0], [1001.0, 1002.0]]]
    assert w.chunks[0].dtype == np.float32


def test_window_refuses_a_channel_change():
    w = ad._Window(0, None, 100, BIG)
    w.add(0, Frame(0, 2, channels=2))
    with pytest.raises(AudioDecodeError) as e:
        w.add(2, Frame(2, 2, channels=1))
    assert str(e.value) == "the channel count changes inside the file (2 -> 1)"
    w.add(2, Frame(2, 2, channels=2))
    assert w.got == 4


def test_window_length_cap_is_inclusive():
    w = ad._Window(1, None, 6, BIG)
    w.add(0, Frame(0, 4))  # 3 kept
    w.add(4, Frame(4, 3))  # 6 kept == cap: allowed
    assert w.got == 6
    with pytest.raises(ad._TooLong):
        w.add(7, Frame(7, 1))
    assert w.got == 6 and len(w.chunks) == 2


def test_window_length_cap_counts_only_kept_samples():
    w = ad._Window(4, None, 2, BIG)
    w.add(0, Frame(0, 6))  # 6 decoded, 2 kept
    assert w.got == 2


def test_window_length_cap_ignored_with_a_duration():
    w = ad._Window(0, 10, 2, BIG)
    w.add(0, Frame(0, 8))
    assert w.got == 8


def test_window_budget_is_inclusive_and_counts_before_copying():
    # 2 channels x 4 bytes: 5 samples = 40 bytes
    w = ad._Window(1, None, 100, 40)
    w.add(0, Frame(0, 4, channels=2))  # 3 kept: 24 bytes
    w.add(4, Frame(4, 2, channels=2))  # 5 kept: 40 bytes == budget
    assert w.got == 5
    with pytest.raises(ad._OverBudget) as e:
        w.add(6, Frame(6, 3, channels=2))
    assert (e.value.samples, e.value.channels) == (8, 2)
    assert w.got == 5 and len(w.chunks) == 2


def test_window_budget_counts_the_trimmed_frame():
    w = ad._Window(3, 2, 100, 8)  # 2 mono samples = 8 bytes
    w.add(0, Frame(0, 10))
    assert kept(w) == [[[3.0, 4.0]]]


# ---- _frame_to_float ---------------------------------------------------------------

def test_frame_to_float_u8_and_integer_scales():
    f = Frame(0, 3, fmt="u8p", data=np.array([[0, 128, 255]], dtype=np.uint8))
    assert ad._frame_to_float(f, 1).tolist() == [[-1.0, 0.0, 127.0 / 128.0]]
    f = Frame(0, 2, fmt="s16p", data=np.array([[-32768, 16384]], dtype=np.int16))
    assert ad._frame_to_float(f, 1).tolist() == [[-1.0, 0.5]]
    f = Frame(0, 1, fmt="s32p", data=np.array([[1 << 30]], dtype=np.int32))
    assert ad._frame_to_float(f, 1).tolist() == [[0.5]]
    f = Frame(0, 1, fmt="s64p", data=np.array([[-(1 << 62)]], dtype=np.int64))
    assert ad._frame_to_float(f, 1).tolist() == [[-0.5]]
    out = ad._frame_to_float(Frame(0, 1, fmt="dblp", data=np.array([[0.25]])), 1)
    assert out.dtype == np.float32 and out.tolist() == [[0.25]]


def test_frame_to_float_packed_is_deinterleaved():
    f = Frame(0, 2, channels=2, fmt="s16", planar=False, data=np.array([[16384, -16384, 8192, -8192]], dtype=np.int16))
    assert ad._frame_to_float(f, 2).tolist() == [[0.5, 0.25], [-0.5, -0.25]]
    f = Frame(0, 2, channels=2, fmt="flt", planar=False, data=np.array([[1, 2, 3, 4]], dtype=np.float32))
    assert ad._frame_to_float(f, 2).tolist() == [[1.0, 3.0], [2.0, 4.0]]


# ---- _check_number -------------------------------------------------------------------

def test_check_number_accepts_the_minimum_and_converts():
    assert ad._check_number("start_s", 0) == 0.0
    assert ad._check_number("start_s", "2.5") == 2.5
    assert ad._check_number("x", 3.0, minimum=3.0) == 3.0


@pytest.mark.parametrize(("value", "shown"), [(-0.5, "-0.5"), (float("nan"), "nan"), (float("inf"), "inf")])
def test_check_number_refuses(value, shown):
    with pytest.raises(AudioDecodeError) as e:
        ad._check_number("duration_s", value)
    assert str(e.value) == f"duration_s must be a finite number >= 0.0, got {shown}"


def test_check_number_refuses_below_a_given_minimum():
    with pytest.raises(AudioDecodeError, match=r"^x must be a finite number >= 1.0, got 0.5$"):
        ad._check_number("x", 0.5, minimum=1.0)


# ---- _Guard ------------------------------------------------------------------------

def test_guard_calls_interrupt_then_checks_time(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(ad.time, "monotonic", lambda: clock[0])
    calls = []
    g = ad._Guard(lambda: calls.append(1), 10.0)
    clock[0] = 110.0  # exactly the limit: allowed
    g()
    assert calls == [1]
    clock[0] = 110.5
    with pytest.raises(AudioDecodeError) as e:
        g()
    assert calls == [1, 1]
    assert str(e.value) == ("decoding took longer than 10 s and was stopped; "
                            "load a shorter part (start_time and duration)")


def test_guard_without_interrupt(monkeypatch):
    monkeypatch.setattr(ad.time, "monotonic", lambda: 5.0)
    ad._Guard(None, 0.0)()


def test_guard_interrupt_raises_first(monkeypatch):
    monkeypatch.setattr(ad.time, "monotonic", lambda: 0.0)

    def cancel():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ad._Guard(cancel, 10.0)()


# ---- timestamps -------------------------------------------------------------------

@pytest.mark.parametrize(("time_base", "sr", "exact"), [
    (Fraction(1, 48000), 48000, True),
    (Fraction(1, 14112000), 44100, True),  # MP3 demuxer: 1/320 sample per tick
    (Fraction(1, 96000), 48000, True),
    (Fraction(1, 1000), 48000, False),  # Matroska: 48 samples per tick
    (Fraction(1, 24000), 48000, False),  # 2 samples per tick
    (Fraction(1, 44100), 48000, False),
    (None, 48000, False),
    (Fraction(0), 48000, False),
])
def test_sample_exact_timestamps(time_base, sr, exact):
    assert ad._sample_exact_timestamps(SimpleNamespace(time_base=time_base), sr) is exact


def test_pts_position():
    stream = SimpleNamespace(time_base=Fraction(1, 1000))
    assert ad._pts_position(SimpleNamespace(pts=None, time_base=None), stream, 0, 48000) is None
    assert ad._pts_position(SimpleNamespace(pts=1500, time_base=None), stream, 500, 48000) == 48000
    assert ad._pts_position(SimpleNamespace(pts=1500, time_base=Fraction(1, 48000)), stream, 500, 48000) == 1000
    assert ad._pts_position(SimpleNamespace(pts=1, time_base=None), stream, 0, 44100) == 44  # 44.1 truncated
    assert ad._pts_position(SimpleNamespace(pts=0, time_base=None), stream, 1, 44100) == -44  # toward zero
    assert ad._pts_position(SimpleNamespace(pts=7, time_base=None), stream, 7, 44100) == 0


# ---- _check_before_decoding -------------------------------------------------------

SR = 1024  # 1 MiB budget, 2 channels x 4 bytes: exactly 128 s fit


def stream_with(channels):
    return SimpleNamespace(codec_context=SimpleNamespace(channels=channels))


@pytest.fixture
def one_mib(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "1")
    return 1 << 20


def test_before_decoding_returns_the_budget(one_mib):
    assert ad._check_before_decoding("f.wav", stream_with(2), SR, None, 0.0, 0.0) == one_mib


def test_before_decoding_duration_at_budget_passes_one_more_sample_fails(one_mib):
    assert ad._check_before_decoding("f.wav", stream_with(2), SR, None, 0.0, 128.0) == one_mib
    with pytest.raises(AudioDecodeError) as e:
        ad._check_before_decoding("f.wav", stream_with(2), SR, None, 0.0, 128.0 + 1 / SR)
    msg = str(e.value)
    assert msg.startswith("'f.wav': 1024 Hz, 2 channel(s), 128.0 s requested (duration): that needs 1.0 MiB decoded")
    assert "budget of 1.0 MiB" in msg and "load a shorter part" in msg


def test_before_decoding_duration_rounds_samples_up(one_mib):
    with pytest.raises(AudioDecodeError):  # 131072.5 samples -> 131073
        ad._check_before_decoding("f.wav", stream_with(2), SR, None, 0.0, 128.0 + 0.5 / SR)


def test_before_decoding_duration_with_longer_declared(one_mib):
    with pytest.raises(AudioDecodeError, match=r"129\.0 s requested \(duration\)"):
        ad._check_before_decoding("f.wav", stream_with(2), SR, 500.0, 10.0, 129.0)


def test_before_decoding_declared_shorter_than_duration_uses_declared(one_mib):
    # 100 s declared, 200 s asked: only 100 s can come
    assert ad._check_before_decoding("f.wav", stream_with(2), SR, 100.0, 0.0, 200.0) == one_mib
    with pytest.raises(AudioDecodeError, match=r"140\.0 s declared by the header"):
        ad._check_before_decoding("f.wav", stream_with(2), SR, 150.0, 10.0, 200.0)


def test_before_decoding_declared_counts_from_start(one_mib):
    assert ad._check_before_decoding("f.wav", stream_with(2), SR, 178.0, 50.0, 0.0) == one_mib
    with pytest.raises(AudioDecodeError) as e:
        ad._check_before_decoding("f.wav", stream_with(2), SR, 178.5, 50.0, 0.0)
    assert "128.5 s declared by the header" in str(e.value)
    # a start past the declared end needs nothing
    assert ad._check_before_decoding("f.wav", stream_with(2), SR, 10.0, 20.0, 0.0) == one_mib


def test_before_decoding_nothing_known_or_no_channels(one_mib):
    assert ad._check_before_decoding("f.wav", stream_with(64), SR, None, 0.0, 0.0) == one_mib
    assert ad._check_before_decoding("f.wav", stream_with(0), SR, 10_000.0, 0.0, 0.0) == one_mib
    assert ad._check_before_decoding("f.wav", stream_with(None), SR, 10_000.0, 0.0, 0.0) == one_mib
    with pytest.raises(AudioDecodeError, match="1024 Hz, 1 channel"):
        ad._check_before_decoding("f.wav", stream_with(1), SR, 257.0, 0.0, 0.0)
    assert ad._check_before_decoding("f.wav", stream_with(1), SR, 256.0, 0.0, 0.0) == one_mib


@pytest.mark.parametrize("sr", [999, 768001])
def test_before_decoding_rate_rule(one_mib, sr):
    with pytest.raises(AudioDecodeError) as e:
        ad._check_before_decoding("f.wav", stream_with(1), sr, 1.0, 0.0, 0.0)
    assert str(e.value).startswith(f"'f.wav': sample rate {sr} Hz is outside the supported 1000-768000 Hz")


def test_before_decoding_rate_limits_pass(one_mib):
    assert ad._check_before_decoding("f.wav", stream_with(1), 1000, 1.0, 0.0, 0.0) == one_mib
    assert ad._check_before_decoding("f.wav", stream_with(1), 768000, 0.1, 0.0, 0.0) == one_mib


def test_before_decoding_bad_budget_setting(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "lots")
    with pytest.raises(AudioDecodeError) as e:
        ad._check_before_decoding("f.wav", stream_with(1), 48000, None, 0.0, 0.0)
    assert str(e.value).startswith(f"'f.wav': the environment variable {BUDGET_ENV}='lots'")


# ---- _check_result ---------------------------------------------------------------

def window_with(got, end, need=None):
    w = ad._Window(0, need, 10**9, BIG)
    w.got, w.end = got, end
    return w


def test_result_truncated_is_refused():
    with pytest.raises(AudioDecodeError) as e:
        ad._check_result("f.flac", window_with(9000, 9000), 1000, 10.0, None, 0.0)
    assert str(e.value) == ("'f.flac' is truncated: its header declares 10.000 s of audio but it holds only "
                            "9.000 s; re-export or re-download the file")


def test_result_truncation_tolerance():
    # tolerance at 10 s declared: 0.1 s + 0.5 % = 0.15 s
    ad._check_result("f.flac", window_with(9880, 9880), 1000, 10.0, None, 0.0)  # 0.12 s short
    with pytest.raises(AudioDecodeError, match="truncated"):
        ad._check_result("f.flac", window_with(9820, 9820), 1000, 10.0, None, 0.0)  # 0.18 s short
    # at 100 s declared: 0.6 s
    ad._check_result("f.flac", window_with(99500, 99500), 1000, 100.0, None, 0.0)
    with pytest.raises(AudioDecodeError, match="truncated"):
        ad._check_result("f.flac", window_with(99300, 99300), 1000, 100.0, None, 0.0)


def test_result_longer_than_declared_passes():
    ad._check_result("f.flac", window_with(12000, 12000), 1000, 10.0, None, 0.0)


def test_result_full_window_is_not_truncated():
    # a full window stopped early on purpose: its end says nothing about the file's length
    ad._check_result("f.flac", window_with(1000, 1000, need=1000), 1000, 10.0, None, 0.0)
    ad._check_result("f.flac", window_with(1000, 1000), 1000, None, None, 0.0)


def test_result_undecodable():
    with pytest.raises(AudioDecodeError) as e:
        ad._check_result("f.ogg", window_with(0, 0), 1000, None, "boom", 0.0)
    assert str(e.value) == "'f.ogg' could not be decoded (boom); the file is damaged or truncated"


def test_result_start_beyond_the_end():
    with pytest.raises(AudioDecodeError) as e:
        ad._check_result("f.ogg", window_with(0, 3000), 1000, None, None, 5.0)
    assert str(e.value) == "start 5.000 s is beyond the end of 'f.ogg' (about 3.000 s long); use a smaller start"
    with pytest.raises(AudioDecodeError, match=r"^start 5\.000 s is beyond"):  # a late error does not hide it
        ad._check_result("f.ogg", window_with(0, 3000), 1000, None, "boom", 5.0)


@pytest.mark.parametrize(("end", "start_s"), [(0, 0.0), (0, 5.0), (3000, 0.0)])
def test_result_no_samples(end, start_s):
    with pytest.raises(AudioDecodeError) as e:
        ad._check_result("f.ogg", window_with(0, end), 1000, None, None, start_s)
    assert str(e.value) == "'f.ogg' holds no audio samples: it is empty or truncated; re-export it"


def test_result_late_error_warns(caplog):
    with caplog.at_level(logging.WARNING):
        ad._check_result("f.ogg", window_with(500, 500), 1000, None, "boom", 0.0)
    assert [r.getMessage() for r in caplog.records] == [
        "SonicDiffusion: f.ogg: decoding stopped early (boom); using the 0.500 s decoded"]


def test_result_clean_is_silent(caplog):
    with caplog.at_level(logging.WARNING):
        assert ad._check_result("f.ogg", window_with(500, 500), 1000, 0.5, None, 0.0) is None
    assert caplog.records == []


# ---- _run_pass -------------------------------------------------------------------

class Container:
    """Stand-in demuxer: records seeks; decode() yields the frames, then raises ``error``."""

    def __init__(self, frames, error=None, seek_error=None):
        self.frames, self.error, self.seek_error = frames, error, seek_error
        self.seeks, self.yielded = [], 0

    def seek(self, offset, **kw):
        self.seeks.append((offset, kw))
        if self.seek_error is not None:
            raise self.seek_error

    def decode(self, stream):
        self.decoded = stream
        for f in self.frames:
            self.yielded += 1
            yield f
        if self.error is not None:
            raise self.error


TB = Fraction(1, 100)  # 100 ticks per second; at SR_PASS = 100 one tick per sample
SR_PASS = 100
TMS = Fraction(1, 1000)


def ms_stream(start_time=0):
    return SimpleNamespace(start_time=start_time, time_base=TB)


def timed(pos, n, origin=0):
    return Frame(pos, n, pts=pos + origin, time_base=TB)


def counter():
    calls = []
    return calls, (lambda: calls.append(1))


def test_pass_counts_samples_without_seek_and_stops_when_full():
    c = Container([Frame(0, 3), Frame(3, 3), Frame(6, 3), Frame(9, 3)])
    w = ad._Window(3, 4, 100, BIG)
    calls, guard = counter()
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, guard, None) == ("ok", None)
    assert kept(w) == [[[3.0, 4.0, 5.0]], [[6.0]]]
    assert c.seeks == [] and c.yielded == 3 and len(calls) == 3


def test_pass_skips_empty_frames():
    c = Container([Frame(0, 0), Frame(0, 2), Frame(2, 0), Frame(2, 2)])
    w = ad._Window(0, None, 100, BIG)
    calls, guard = counter()
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, guard, None) == ("ok", None)
    assert kept(w) == [[[0.0, 1.0]], [[2.0, 3.0]]]
    assert len(calls) == 4  # the guard runs for every frame, empty ones too


def test_pass_seeks_relative_to_the_stream_start():
    c = Container([timed(40, 20, origin=7), timed(60, 20, origin=7)])
    w = ad._Window(50, 15, 100, BIG)
    stream = ms_stream(start_time=7)
    assert ad._run_pass(c, stream, SR_PASS, w, lambda: None, 0.4) == ("ok", None)
    assert c.seeks == [(47, {"stream": stream, "backward": True, "any_frame": False})]
    assert c.decoded is stream
    assert kept(w) == [[[50.0 + i for i in range(10)]], [[60.0, 61.0, 62.0, 63.0, 64.0]]]


def test_pass_unseekable_is_overshoot():
    c = Container([timed(0, 10)], seek_error=av.error.FFmpegError(5, "no seek"))
    w = ad._Window(0, None, 100, BIG)
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, 0.5) == ("overshoot", None)
    assert c.yielded == 0


def test_pass_seek_landing_after_the_start_is_overshoot():
    w = ad._Window(50, 5, 100, BIG)
    c = Container([timed(51, 10)])
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, 0.4) == ("overshoot", None)
    assert w.chunks == []
    w = ad._Window(50, 5, 100, BIG)  # landing exactly on the start is fine
    c = Container([timed(50, 10)])
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, 0.4) == ("ok", None)
    assert kept(w) == [[[50.0, 51.0, 52.0, 53.0, 54.0]]]


def test_pass_first_frame_without_timestamp_is_overshoot():
    c = Container([Frame(0, 10)])  # pts None
    w = ad._Window(0, None, 100, BIG)
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, 0.5) == ("overshoot", None)


def test_pass_later_frame_without_timestamp_continues():
    c = Container([timed(40, 10), Frame(50, 10)])
    w = ad._Window(45, None, 100, BIG)
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, 0.4) == ("ok", None)
    assert w.got == 15 and w.end == 60


def test_pass_reanchors_while_nothing_is_kept():
    # first packet misplaced by an overlap (placed at 10 but the next says 30): nothing kept yet
    f1 = Frame(0, 10, pts=10, time_base=TB)
    c = Container([f1, timed(30, 10), timed(40, 10)])
    w = ad._Window(35, 10, 100, BIG)
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, 0.1) == ("ok", None)
    assert kept(w) == [[[35.0, 36.0, 37.0, 38.0, 39.0]], [[40.0, 41.0, 42.0, 43.0, 44.0]]]


def test_pass_jump_after_samples_kept_is_overshoot():
    c = Container([timed(30, 10), timed(45, 10)])
    w = ad._Window(35, None, 100, BIG)
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, 0.1) == ("overshoot", None)


def test_pass_reanchor_to_after_the_start_is_overshoot():
    c = Container([timed(10, 10), timed(36, 10)])
    w = ad._Window(35, None, 100, BIG)
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, 0.1) == ("overshoot", None)


def test_pass_nothing_after_the_seek_is_empty():
    w = ad._Window(35, None, 100, BIG)
    assert ad._run_pass(Container([]), ms_stream(), SR_PASS, w, lambda: None, 0.1) == ("empty", None)
    assert ad._run_pass(Container([Frame(0, 0)]), ms_stream(), SR_PASS, w, lambda: None, 0.1) == ("empty", None)
    assert ad._run_pass(Container([]), ms_stream(), SR_PASS, w, lambda: None, None) == ("ok", None)


def test_pass_decoder_error_is_returned():
    err = av.error.FFmpegError(5, "broken packet")
    c = Container([Frame(0, 5)], error=err)
    w = ad._Window(0, None, 100, BIG)
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, None) == ("ok", err)
    assert w.got == 5
    c = Container([], error=err)  # error before any frame after a seek: not "empty"
    assert ad._run_pass(c, ms_stream(), SR_PASS, ad._Window(0, None, 100, BIG), lambda: None, 0.1) == ("ok", err)


# ---- _open, _decode and decode_audio over a stand-in PyAV ---------------------------

class File(Container):
    """Stand-in opened file: one audio stream at ``sr`` Hz with ``time_base``."""

    def __init__(self, frames, sr=1000, time_base=TMS, channels=1, error=None, audio=True):
        super().__init__(frames, error=error)
        stream = SimpleNamespace(codec_context=SimpleNamespace(sample_rate=sr, channels=channels), rate=None,
                                 time_base=time_base, start_time=0, type="audio", duration=None)
        self.streams = SimpleNamespace(audio=[stream] if audio else [], __iter__=None)
        self.all_streams = [stream] if audio else [SimpleNamespace(type="video"), SimpleNamespace(type="data")]
        self.closed = 0

    def close(self):
        self.closed += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Streams(list):
    pass


class FakeAv:
    """``av`` with ``open`` returning fresh copies of one stand-in file, counting opens."""

    error = av.error

    def __init__(self, make):
        self.make, self.opened, self.paths = make, [], []

    def open(self, path, mode):
        assert mode == "r"
        self.paths.append(path)
        f = self.make()
        self.opened.append(f)
        return f


def frames_from(first, total, size=100):
    """Frames of ``size`` samples at 1000 Hz with millisecond timestamps."""
    return [Frame(p, min(size, first + total - p), pts=p, time_base=TMS) for p in range(first, first + total, size)]


@pytest.fixture
def declared(monkeypatch):
    value = [None]

    def declared_seconds(path, container, stream):
        assert path == "f.ogg" or path.endswith("f.ogg")
        assert stream is container.streams.audio[0]
        return value[0]

    monkeypatch.setattr(ad, "declared_seconds", declared_seconds)
    return value


def run_decode(fake, start_s, duration_s, max_seconds=60):
    return ad._decode(fake, "f.ogg", start_s, duration_s, max_seconds, lambda: None)


def test_open_refuses_unreadable_and_soundless_files():
    def bad(path, mode):
        raise av.error.FFmpegError(5, "bad header")

    with pytest.raises(AudioDecodeError) as e:
        ad._open(SimpleNamespace(open=bad, error=av.error), "f.bin")
    assert str(e.value) == ("'f.bin' is not a readable audio file ([Errno 5] bad header); "
                            "use wav, flac, mp3, ogg or m4a")
    f = File([], audio=False)
    f.streams = Streams([SimpleNamespace(type="video"), SimpleNamespace(type="data"), SimpleNamespace(type="video")])
    f.streams.audio = []
    with pytest.raises(AudioDecodeError) as e:
        ad._open(FakeAv(lambda: f), "f.mp4")
    assert str(e.value) == ("'f.mp4' has no audio stream (streams found: data, video); "
                            "pick a file that contains sound")
    assert f.closed == 1
    g = File([], audio=False)
    g.streams = Streams([])
    g.streams.audio = []
    with pytest.raises(AudioDecodeError, match=r"streams found: none\)"):
        ad._open(FakeAv(lambda: g), "f.mp4")


def test_decode_seeks_before_a_late_window(declared):
    fake = FakeAv(lambda: File(frames_from(1500, 2000)))
    w, sr, decl, err = run_decode(fake, 2.0, 0.025)
    assert (sr, decl, err) == (1000, None, None)
    assert len(fake.opened) == 1
    assert fake.opened[0].seeks[0][0] == 1500  # 0.5 s before the start
    assert (w.start, w.need, w.cap) == (2000, 25, 60000)
    assert np.concatenate(w.chunks, axis=1).tolist() == [[2000.0 + i for i in range(25)]]


def test_decode_start_within_the_margin_decodes_from_the_start(declared):
    fake = FakeAv(lambda: File(frames_from(0, 2000)))
    w, _, _, _ = run_decode(fake, 0.5, 0.01)
    assert len(fake.opened) == 2 and fake.opened[0].seeks == [] and fake.opened[0].yielded == 0
    assert fake.opened[1].seeks == []
    assert np.concatenate(w.chunks, axis=1).tolist() == [[500.0 + i for i in range(10)]]


def test_decode_coarse_timestamps_decode_from_the_start(declared):
    # 1/500 s ticks at 1000 Hz: two samples per tick, so frames are counted, not placed
    fake = FakeAv(lambda: File([Frame(p, 100, pts=p // 2, time_base=Fraction(1, 500)) for p in range(0, 3000, 100)],
                               time_base=Fraction(1, 500)))
    w, _, _, _ = run_decode(fake, 2.0, 0.005)
    assert len(fake.opened) == 2 and fake.opened[0].seeks == []
    assert kept(w) == [[[2000.0, 2001.0, 2002.0, 2003.0, 2004.0]]]


def test_decode_overshoot_retries_from_the_start_with_a_fresh_window(declared):
    # after the seek the timestamps say 2600 (past the 2000 start): decode again, counting
    files = iter([File(frames_from(2600, 100)), File(frames_from(0, 3000))])
    fake = FakeAv(lambda: next(files))
    w, _, _, _ = run_decode(fake, 2.0, 0.003)
    assert len(fake.opened) == 2 and fake.opened[1].seeks == []
    assert kept(w) == [[[2000.0, 2001.0, 2002.0]]]
    assert w.end == 2100


def test_decode_rounds_start_and_need(declared):
    fake = FakeAv(lambda: File(frames_from(0, 1000)))
    w, _, _, _ = run_decode(fake, 0.0016, 0.0004)  # 1.6 -> 2; 0.4 samples -> at least 1
    assert (w.start, w.need) == (2, 1)
    assert kept(w) == [[[2.0]]]
    w, _, _, _ = run_decode(fake, 0.0, 0.0026)
    assert (w.start, w.need) == (0, 3)
    w, _, _, _ = run_decode(fake, 0.0, 0.0)
    assert w.need is None and w.got == 1000


def test_decode_refuses_a_stream_without_rate(declared):
    fake = FakeAv(lambda: File([], sr=0))
    with pytest.raises(AudioDecodeError) as e:
        run_decode(fake, 0.0, 0.0)
    assert str(e.value) == "'f.ogg': the audio stream reports no sample rate; the file looks damaged"


def test_decode_uses_the_stream_rate_when_the_codec_has_none(declared):
    def make():
        f = File(frames_from(0, 20))
        f.streams.audio[0].codec_context.sample_rate = None
        f.streams.audio[0].rate = 2000
        return f

    _, sr, _, _ = run_decode(FakeAv(make), 0.0, 0.0)
    assert sr == 2000


def test_decode_refuses_a_declared_length_over_the_maximum(declared):
    fake = FakeAv(lambda: File(frames_from(0, 1000)))
    declared[0] = 60.0 + 0.1
    run_decode(fake, 0.0, 0.0, max_seconds=60)  # within the tolerance
    declared[0] = 60.2
    with pytest.raises(AudioDecodeError) as e:
        run_decode(fake, 0.0, 0.0, max_seconds=60)
    assert str(e.value) == ("'f.ogg' is longer than 1 minutes, the most one decode loads; "
                            "set duration (and start_time) to load the part you need")
    assert run_decode(fake, 0.3, 0.0, max_seconds=60)[0].got == 700  # counted from the start
    assert run_decode(fake, 0.0, 0.5, max_seconds=60)[0].got == 500  # a duration bounds it


def test_decode_refuses_more_decoded_than_the_maximum(declared):
    fake = FakeAv(lambda: File(frames_from(0, 1300)))
    with pytest.raises(AudioDecodeError, match=r"^'f\.ogg' is longer than 0\.02 minutes"):
        ad._decode(fake, "f.ogg", 0.0, 0.0, 1.2, lambda: None)  # cap 1200 samples
    w, _, _, _ = ad._decode(fake, "f.ogg", 0.0, 0.0, 1.3, lambda: None)
    assert w.got == 1300


def test_decode_over_budget_while_decoding(declared, monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, str(4000 / (1 << 20)))  # 4000 bytes: 1000 mono samples
    fake = FakeAv(lambda: File(frames_from(0, 1300)))
    with pytest.raises(AudioDecodeError) as e:
        run_decode(fake, 0.0, 0.0)
    assert str(e.value).startswith("'f.ogg': 1000 Hz, 1 channel(s), 1.1 s decoded so far "
                                   "(the header declares less or nothing): that needs")
    w, _, _, _ = run_decode(FakeAv(lambda: File(frames_from(0, 1000))), 0.0, 0.0)
    assert w.got == 1000


def test_decode_audio_end_to_end_with_gain(declared, monkeypatch, tmp_path):
    path = tmp_path / "f.ogg"
    path.write_bytes(b"x")
    fake = FakeAv(lambda: File(frames_from(0, 1000, size=300)))
    monkeypatch.setitem(sys.modules, "av", fake)
    wave, sr = ad.decode_audio(path, 0.1, 0.05)
    assert sr == 1000 and wave.dtype == ad.torch.float32
    assert wave.tolist() == [[100.0 + i for i in range(50)]]
    wave, _ = ad.decode_audio(path, 0.1, 0.02, gain_db=20.0)
    assert wave.tolist() == [[10.0 * (100.0 + i) for i in range(20)]]
    wave, _ = ad.decode_audio(path, 0.0, 0.01, gain_db=-6.0)
    assert wave[0, 1].item() == pytest.approx(10 ** (-6 / 20))
    wave, _ = ad.decode_audio(path, 0.995, 0.0)
    assert wave.tolist() == [[995.0, 996.0, 997.0, 998.0, 999.0]]


def test_decode_audio_argument_checks(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", FakeAv(lambda: File([])))
    with pytest.raises(AudioDecodeError, match=r"^gain_db must be finite, got nan$"):
        ad.decode_audio(tmp_path / "f.ogg", gain_db=float("nan"))
    with pytest.raises(AudioDecodeError, match=r"^start_s must be a finite number"):
        ad.decode_audio(tmp_path / "f.ogg", start_s=-1)
    with pytest.raises(AudioDecodeError, match=r"^duration_s must be a finite number"):
        ad.decode_audio(tmp_path / "f.ogg", duration_s=-1)
    with pytest.raises(AudioDecodeError) as e:
        ad.decode_audio(tmp_path / "f.ogg", duration_s=61, max_seconds=60)
    assert str(e.value) == ("duration 61 s is longer than the maximum of one decode (60 s); "
                            "load the file in parts")
    with pytest.raises(AudioDecodeError, match=r"^audio file not found: .*ComfyUI's input folder$"):
        ad.decode_audio(tmp_path / "f.ogg", duration_s=60, max_seconds=60)


# ---- survivors of the first mutation run ---------------------------------------------

def test_window_starts_empty():
    w = ad._Window(5, None, 100, BIG)
    assert (w.chunks, w.got, w.end, w.channels) == ([], 0, 0, None)


def test_window_over_budget_counts_only_kept_samples():
    w = ad._Window(3, None, 100, 24)  # 6 mono samples fit
    with pytest.raises(ad._OverBudget) as e:
        w.add(0, Frame(0, 10))  # 7 kept
    assert (e.value.samples, e.value.channels, e.value.args) == (7, 1, (7, 1))


def test_window_copies_the_frame_samples():
    f = Frame(0, 4)
    w = ad._Window(1, None, 100, BIG)
    w.add(0, f)
    f.data[:] = -1.0  # PyAV reuses frame buffers
    assert kept(w) == [[[1.0, 2.0, 3.0]]]


def test_window_packed_frames():
    f = Frame(0, 3, channels=2, fmt="s16", planar=False,
              data=np.array([[0, 16384, 8192, -8192, 16384, 0]], dtype=np.int16))
    w = ad._Window(1, None, 100, BIG)
    w.add(0, f)
    assert kept(w) == [[[0.25, 0.5], [-0.25, 0.0]]]


def test_frame_to_float_is_float32_for_integer_formats():
    assert ad._frame_to_float(Frame(0, 1, fmt="u8", data=np.array([[64]], dtype=np.uint8)), 1).dtype == np.float32
    assert ad._frame_to_float(Frame(0, 1, fmt="s16", data=np.array([[64]], dtype=np.int16)), 1).dtype == np.float32


def test_pass_places_frames_by_the_stream_time_base():
    c = Container([Frame(30, 10, pts=30), Frame(40, 10, pts=40)])  # frames without their own time base
    w = ad._Window(35, 10, 100, BIG)
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, 0.1) == ("ok", None)
    assert w.got == 10


def test_pass_jump_back_after_one_kept_sample_is_overshoot():
    c = Container([timed(30, 10), timed(35, 10)])
    w = ad._Window(39, None, 100, BIG)
    assert ad._run_pass(c, ms_stream(), SR_PASS, w, lambda: None, 0.1) == ("overshoot", None)


def test_before_decoding_duration_under_one_second(one_mib):
    with pytest.raises(AudioDecodeError, match=r"0\.5 s requested"):
        ad._check_before_decoding("f.wav", stream_with(1 << 20), SR, None, 0.0, 0.5)


def test_before_decoding_declared_counts_from_start_with_a_duration(one_mib):
    # 90 s left after the start, 200 s asked: 90 s fit
    assert ad._check_before_decoding("f.wav", stream_with(2), SR, 150.0, 60.0, 200.0) == one_mib


def test_before_decoding_declared_equal_to_duration_names_the_duration(one_mib):
    with pytest.raises(AudioDecodeError, match=r"130\.0 s requested \(duration\)"):
        ad._check_before_decoding("f.wav", stream_with(2), SR, 140.0, 10.0, 130.0)


def test_result_truncation_tolerance_is_inclusive():
    ad._check_result("f.flac", window_with(79500, 79500), 1000, 80.0, None, 0.0)  # 0.5 s short == tolerance


def test_result_small_start_or_end_beyond_the_end():
    with pytest.raises(AudioDecodeError, match=r"^start 0\.500 s is beyond the end of 'f\.ogg' \(about 0\.001 s"):
        ad._check_result("f.ogg", window_with(0, 1), 1000, None, None, 0.5)


def test_decode_rate_of_one_is_the_rate_rule(declared):
    with pytest.raises(AudioDecodeError, match=r"^'f\.ogg': sample rate 1 Hz is outside"):
        run_decode(FakeAv(lambda: File([], sr=1)), 0.0, 0.0)


def test_decode_refuses_from_the_declared_length(declared, one_mib):
    declared[0] = 300.0
    fake = FakeAv(lambda: File([], sr=1024, channels=2))
    with pytest.raises(AudioDecodeError, match=r"^'f\.ogg': 1024 Hz, 2 channel\(s\), 300\.0 s declared by the header"):
        run_decode(fake, 0.0, 0.0, max_seconds=600)
    assert fake.paths == ["f.ogg"]
    assert fake.opened[0].yielded == 0


def test_decode_opens_the_path_twice_when_decoding_from_the_start(declared):
    fake = FakeAv(lambda: File(frames_from(0, 100)))
    run_decode(fake, 0.0, 0.0)
    assert fake.paths == ["f.ogg", "f.ogg"]


def test_decode_audio_passes_path_interrupt_and_result(declared, monkeypatch, tmp_path, caplog):
    path = tmp_path / "f.ogg"
    path.write_bytes(b"x")
    fake = FakeAv(lambda: File(frames_from(0, 1000, size=300)))
    monkeypatch.setitem(sys.modules, "av", fake)
    calls = []
    wave, _ = ad.decode_audio(path, 0.25, 0.1, check_interrupt=lambda: calls.append(1))
    assert wave.tolist() == [[250.0 + i for i in range(100)]]  # two frames' chunks joined
    assert len(calls) == 2 and set(fake.paths) == {str(path)}
    wave, _ = ad.decode_audio(path, 0.0, 0.0, gain_db=1.0)
    assert wave[0, 1].item() == pytest.approx(10 ** (1 / 20))
    with pytest.raises(AudioDecodeError) as e:
        ad.decode_audio(path, 1.5, 0.0)
    assert str(e.value) == f"start 1.500 s is beyond the end of {str(path)!r} (about 1.000 s long); use a smaller start"
    declared[0] = 2.0
    with pytest.raises(AudioDecodeError, match=r"is truncated: its header declares 2\.000 s"):
        ad.decode_audio(path, 0.0, 0.0)
    declared[0] = None
    err = av.error.FFmpegError(5, "broken packet")
    monkeypatch.setitem(sys.modules, "av", FakeAv(lambda: File(frames_from(0, 500), error=err)))
    with caplog.at_level(logging.WARNING):
        wave, _ = ad.decode_audio(path, 0.0, 0.0)
    assert wave.shape == (1, 500)
    assert [r.getMessage() for r in caplog.records] == [
        f"SonicDiffusion: {path}: decoding stopped early ([Errno 5] broken packet); using the 0.500 s decoded"]


def test_decode_audio_refuses_an_empty_file(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", FakeAv(lambda: File([])))
    path = tmp_path / "f.ogg"
    path.write_bytes(b"")
    with pytest.raises(AudioDecodeError) as e:
        ad.decode_audio(path)
    assert str(e.value) == f"audio file {str(path)!r} is empty (0 bytes); re-export or re-download it"


def test_decode_audio_defaults_load_the_whole_file(declared, monkeypatch, tmp_path):
    path = tmp_path / "f.ogg"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "av", FakeAv(lambda: File(frames_from(0, 1500, size=300))))
    wave, sr = ad.decode_audio(path)
    assert sr == 1000 and wave.tolist() == [[float(i) for i in range(1500)]]
