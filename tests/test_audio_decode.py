"""decode_audio: sample-exact windows in every container, truncated files refused
with both durations, a capped whole-file decode, regular files only, and Cancel and
a time bound honoured while decoding."""
import os
import struct

import comfy.model_management
import folder_paths
import numpy as np
import pytest
import torch
from audio_files import CONTAINERS, sweep, write_audio

import nodes
from sonic_diffusion.audio_decode import MAX_DECODE_SECONDS, AudioDecodeError, decode_audio

RATE = 48000  # Opus only encodes 48 kHz
STARTS = (0.3, 2.5, 11.11, 13.37, 15.0)
# Lossy decoders restart their state at a seek: the window may differ from the full
# decode by rounding once pre-roll has converged. Measured maxima over STARTS (and
# 1.0, 5.5, 7.7, 17.9 s): Opus 3e-8, AAC (m4a) 1.6e-5 at 48 kHz; every other codec 0.
TOLERANCE = {"opus": 1e-6, "m4a": 1e-4}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    d = tmp_path_factory.mktemp("containers")
    signal = sweep(RATE, 20.0)
    return {ext: write_audio(d / f"sweep.{ext}", signal, RATE) for ext in CONTAINERS}


@pytest.mark.parametrize("ext", sorted(CONTAINERS))
def test_windows_equal_the_full_decode_sliced_at_the_same_sample(encoded, ext):
    full, sr = decode_audio(encoded[ext])
    assert sr == RATE and full.shape[0] == 2
    for start in STARTS:
        win, _ = decode_audio(encoded[ext], start_s=start, duration_s=1.0)
        first = int(round(start * sr))
        assert win.shape == (2, sr), (ext, start)
        ref = full[:, first:first + sr]
        torch.testing.assert_close(win, ref, rtol=0, atol=TOLERANCE.get(ext, 0.0), msg=f"{ext} at {start} s")


def _cut(src, dst, keep_bytes):
    dst.write_bytes(src.read_bytes()[:keep_bytes])
    return dst


def test_wav_whose_header_says_25_s_but_holds_1_s_is_refused(tmp_path):
    good = write_audio(tmp_path / "long.wav", sweep(16000, 25.0), 16000)
    header = good.read_bytes().index(b"data") + 8
    cut = _cut(good, tmp_path / "cut.wav", header + 16000 * 2 * 2)  # the header and 1 s of 16-bit stereo
    for window in ((0.0, 0.0), (0.5, 2.0)):
        with pytest.raises(AudioDecodeError, match=r"declares 25\.000 s .* holds only 1\.000 s"):
            decode_audio(cut, *window)
    # A window inside the part that is there is still served.
    assert decode_audio(cut, 0.25, 0.5)[0].shape[-1] == 8000


@pytest.mark.parametrize("ext", ["mp3", "flac", "webm"])
def test_compressed_files_cut_short_are_refused(tmp_path, ext):
    good = write_audio(tmp_path / f"long.{ext}", sweep(RATE, 25.0), RATE)
    cut = _cut(good, tmp_path / f"cut.{ext}", 20000 if ext != "flac" else 200000)
    with pytest.raises(AudioDecodeError, match=r"truncated: its header declares 25\.0\d\d s .* holds only \d"):
        decode_audio(cut)


def _silent_flac(path, minutes, rate=1000):
    write_audio(path, np.zeros((1, int(minutes * 60 * rate))), rate)
    return path


def _streamed_wav(path, minutes, rate=1000):
    """A WAV as a recorder writing to a pipe leaves it: no length in the header."""
    write_audio(path, np.zeros((1, int(minutes * 60 * rate))) + 0.01, rate)
    data = bytearray(path.read_bytes())
    pos = data.index(b"data")
    data[4:8] = struct.pack("<I", 0xFFFFFFFF)
    data[pos + 4:pos + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_whole_file_decode_is_capped_and_windows_still_stream(tmp_path):
    minutes = MAX_DECODE_SECONDS / 60 + 1
    flac = _silent_flac(tmp_path / "long.flac", minutes)
    assert flac.stat().st_size < 1 << 20  # a small file that decodes to 31 minutes
    wav = _streamed_wav(tmp_path / "long.wav", minutes)
    for path in (flac, wav):  # FLAC declares its length (refused at once); the WAV is counted
        with pytest.raises(AudioDecodeError, match=r"longer than 30 minutes.*set duration"):
            decode_audio(path)
        win, sr = decode_audio(path, start_s=minutes * 60 - 30, duration_s=10.0)
        assert win.shape == (1, 10 * sr)
    with pytest.raises(AudioDecodeError, match="longer than the maximum"):
        decode_audio(flac, duration_s=MAX_DECODE_SECONDS + 1)


def test_devices_and_fifos_are_refused(tmp_path):
    with pytest.raises(AudioDecodeError, match="not a regular file"):
        decode_audio("/dev/zero")
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    with pytest.raises(AudioDecodeError, match="not a regular file"):
        decode_audio(fifo)
    # The weight loaders share the same check (one helper, sonic_diffusion/paths.py).
    from sonic_diffusion.safe_load import WeightsFileError, load_weights_file

    for name in ("pipe.pth", "pipe.safetensors"):
        os.mkfifo(tmp_path / name)
        with pytest.raises(WeightsFileError, match="not a regular file"):
            load_weights_file(tmp_path / name)


def test_cancel_and_the_time_bound_stop_a_decode(tmp_path):
    path = _silent_flac(tmp_path / "ten_minutes.flac", 10)
    calls = []

    class Cancelled(Exception):
        pass

    def cancel_on_fifth():
        calls.append(1)
        if len(calls) == 5:
            raise Cancelled()

    with pytest.raises(Cancelled):
        decode_audio(path, check_interrupt=cancel_on_fifth)
    assert len(calls) == 5  # called once per decoded frame, and decoding stopped there
    with pytest.raises(AudioDecodeError, match="took longer than 0 s"):
        decode_audio(path, time_limit_s=0.0)


def test_load_audio_node_honours_comfyui_cancel(tmp_path):
    name = "cancel_me.flac"
    _silent_flac(tmp_path / name, 10)
    dest = os.path.join(folder_paths.get_input_directory(), name)
    os.replace(tmp_path / name, dest)
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            nodes.NODE_CLASS_MAPPINGS["SonicLoadAudio"].execute(audio=name, start_time=0.0, duration=0.0, gain_db=0.0)
    finally:
        comfy.model_management.interrupt_current_processing(False)


class _MisplacingContainer:
    """A real container whose first ``count`` frames after a seek carry timestamps
    ``shift`` ticks early, as FFmpeg's Ogg demuxer gives libvorbis files when a short
    block follows the seek point (448 samples: the long/short block overlap)."""

    def __init__(self, inner, shift, count):
        self.inner, self.shift, self.count, self.seeked = inner, shift, count, False

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.inner.close()

    def seek(self, *args, **kwargs):
        self.seeked = True
        return self.inner.seek(*args, **kwargs)

    def decode(self, stream):
        for i, frame in enumerate(self.inner.decode(stream)):
            if self.seeked and i < self.count:
                frame.pts -= self.shift
            yield frame


# Native Vorbis frames after 0.5 s of pre-roll: 3 misplaced frames end before the window
# (re-anchored on the later timestamps), 80 end inside it (measured), so the decode
# restarts from the beginning, counting samples.
@pytest.mark.parametrize(("count", "restarts"), [(3, False), (80, True)])
def test_misplaced_timestamps_after_a_seek_still_give_the_exact_window(encoded, monkeypatch, count, restarts):
    import sonic_diffusion.audio_decode as audio_decode

    full, sr = decode_audio(encoded["ogg"])
    real_open, real_pass = audio_decode._open, audio_decode._run_pass
    statuses = []

    def watched_pass(*args):
        result = real_pass(*args)
        statuses.append(result[0])
        return result

    monkeypatch.setattr(audio_decode, "_open", lambda av, path: _MisplacingContainer(real_open(av, path), 448, count))
    monkeypatch.setattr(audio_decode, "_run_pass", watched_pass)
    for start in (11.11, 13.37, 15.0):
        statuses.clear()
        win, _ = decode_audio(encoded["ogg"], start_s=start, duration_s=1.0)
        first = int(round(start * sr))
        assert torch.equal(win, full[:, first:first + sr]), start
        assert ("overshoot" in statuses) == restarts, (start, statuses)
