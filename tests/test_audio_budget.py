"""The memory budget of Load Audio (Sonic) (sonic_diffusion/audio_budget.py): hostile
files (a high rate, many channels, a header that lies about the length or declares
none) are refused from the header before any frame is decoded, or while decoding as
soon as the decoded samples pass the budget; the rate rule applies at decode time;
the error names the node, the file's rate, channels and length, and the limit."""
import os

import folder_paths
import pytest
from audio_files import flac_declaring, silent_flac, wav_header_only

import nodes
from sonic_diffusion.audio_budget import BUDGET_ENV, DEFAULT_BUDGET_MB, budget_bytes
from sonic_diffusion.audio_decode import AudioDecodeError, decode_audio

BUDGET_MB = 4  # small, so the hostile files are small and quick to make


@pytest.fixture
def small_budget(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, str(BUDGET_MB))
    return BUDGET_MB << 20


class FrameCounter:
    """check_interrupt: called once per decoded frame, so it counts them."""

    def __init__(self):
        self.frames = 0

    def __call__(self):
        self.frames += 1


def test_default_budget_is_well_under_one_gib_and_the_env_variable_sets_it(monkeypatch):
    monkeypatch.delenv(BUDGET_ENV, raising=False)
    assert budget_bytes() == DEFAULT_BUDGET_MB << 20 <= 512 << 20
    monkeypatch.setenv(BUDGET_ENV, "64")
    assert budget_bytes() == 64 << 20
    for bad in ("lots", "-1", "0", "nan"):
        monkeypatch.setenv(BUDGET_ENV, bad)
        with pytest.raises(ValueError, match=BUDGET_ENV):
            budget_bytes()


def test_high_rate_many_channels_declared_length_is_refused_before_decoding(tmp_path, small_budget):
    # 8 channels at 384 kHz: 12 MiB per second decoded; the header declares 2 s.
    path = silent_flac(tmp_path / "wide.flac", 384000, 8, 2.0)
    counter = FrameCounter()
    with pytest.raises(AudioDecodeError, match=r"384000 Hz, 8 channel\(s\), 2\.0 s declared by the header: "
                                               r"that needs 23\.\d MiB .* budget of 4\.0 MiB .*SONIC_AUDIO_BUDGET_MB"):
        decode_audio(path, check_interrupt=counter)
    assert counter.frames == 0
    # A window that fits is served, and so is a duration longer than the file's rest.
    wave, sr = decode_audio(path, start_s=0.5, duration_s=0.25)
    assert wave.shape == (8, 96000) and sr == 384000
    assert 38400 <= decode_audio(path, start_s=1.9, duration_s=30.0)[0].shape[-1] < 76800  # the file's rest
    with pytest.raises(AudioDecodeError, match=r"1\.0 s requested \(duration\)"):
        decode_audio(path, duration_s=1.0, check_interrupt=counter)
    assert counter.frames == 0


def test_many_channels_in_a_wav_are_refused_before_decoding(tmp_path, small_budget):
    path = wav_header_only(tmp_path / "many.wav", 48000, 64, 1.0, 1.0)  # 64 channels: 11.7 MiB per second
    counter = FrameCounter()
    with pytest.raises(AudioDecodeError, match=r"48000 Hz, 64 channel\(s\), 1\.0 s declared"):
        decode_audio(path, check_interrupt=counter)
    assert counter.frames == 0


def test_rate_ceiling_applies_at_decode_time(tmp_path):
    path = wav_header_only(tmp_path / "fast.wav", 1_000_000, 1, 0.01, 0.01)
    counter = FrameCounter()
    with pytest.raises(AudioDecodeError, match=r"sample rate 1000000 Hz is outside the supported 1000-768000 Hz"):
        decode_audio(path, check_interrupt=counter)
    assert counter.frames == 0


@pytest.mark.parametrize("lie", ["flac_says_short", "wav_streamed"])
def test_a_header_that_lies_is_stopped_while_decoding(tmp_path, small_budget, lie):
    if lie == "flac_says_short":  # 3 s of 8 x 384 kHz whose STREAMINFO says 0.01 s
        path = flac_declaring(silent_flac(tmp_path / "liar.flac", 384000, 8, 3.0), 3840)
        per_s = 384000 * 8 * 4
    else:  # a streamed WAV (no length in the header) holding 30 s of 8 x 48 kHz
        path = wav_header_only(tmp_path / "liar.wav", 48000, 8, 0, 30.0)
        per_s = 48000 * 8 * 4
    counter = FrameCounter()
    with pytest.raises(AudioDecodeError, match=r"decoded so far .* budget of 4\.0 MiB"):
        decode_audio(path, check_interrupt=counter)
    # Stopped once the budget was passed: the frames decoded hold at most the budget plus one frame.
    sizes = _frame_sizes(path)
    held = sum(sizes[:counter.frames - 1]) * per_s / RATE_OF[lie]
    assert 0 < counter.frames < len(sizes) and held <= small_budget, (counter.frames, len(sizes))


RATE_OF = {"flac_says_short": 384000, "wav_streamed": 48000}


def _frame_sizes(path):
    import av

    with av.open(str(path)) as c:
        return [f.samples for f in c.decode(c.streams.audio[0])]

def test_load_audio_node_names_itself_the_file_and_the_limit(tmp_path, small_budget):
    name = "hostile_wide.flac"
    silent_flac(tmp_path / name, 384000, 8, 2.0)
    os.replace(tmp_path / name, os.path.join(folder_paths.get_input_directory(), name))
    try:
        with pytest.raises(ValueError, match=r"^Load Audio \(Sonic\): 'hostile_wide\.flac': 384000 Hz, "
                                                r"8 channel\(s\), 2\.0 s .* budget of 4\.0 MiB"):
            nodes.NODE_CLASS_MAPPINGS["SonicLoadAudio"].execute(audio=name, start_time=0.0, duration=0.0,
                                                                gain_db=0.0)
    finally:
        os.remove(os.path.join(folder_paths.get_input_directory(), name))

