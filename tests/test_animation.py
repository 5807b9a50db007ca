"""Audio Encode Frames (Sonic) and Shared Noise (Sonic).

Window bookkeeping, memory bound and interruption are checked with a recording
stand-in encoder (cheap, content dependent); the equality with Audio Encode uses the
generated MS-CLAP stand-in weights.
"""
import comfy.model_management
import comfy.sample
import pytest
import torch

import nodes
from sonic_diffusion import CLAP_CLIP_SAMPLES, animation
from sonic_diffusion.animation import SharedNoise, encode_frames, frame_count


class RecordingEncoder:
    """Stand-in for ClapEncoder: unit vectors from the windows' content; records what
    it is given and how many windows were built before each call."""

    batch_size = 4

    def __init__(self, built=None):
        self.batches = []
        self.built = built
        self.pending = []

    def encode(self, clips):
        assert clips.ndim == 2 and clips.shape[1] == CLAP_CLIP_SAMPLES
        self.batches.append(clips.shape[0])
        if self.built is not None:
            self.pending.append(self.built[0] - sum(self.batches[:-1]))
        feats = clips[:, :1024 * 430].reshape(clips.shape[0], 1024, 430).abs().mean(-1)
        feats = feats + torch.linspace(0, 1e-3, 1024)
        return feats / feats.norm(dim=-1, keepdim=True)


def chirp(seconds, rate=8000):
    """A clip whose content changes over time (rising pitch, rising level)."""
    t = torch.arange(int(seconds * rate)) / rate
    return (0.1 + 0.8 * t / seconds) * torch.sin(2 * torch.pi * (200 + 40 * t) * t)


def test_one_embedding_per_frame_at_fps():
    enc = RecordingEncoder()
    emb = encode_frames(enc, chirp(6.0).unsqueeze(0), 8000, fps=2.0, window_s=2.0)
    assert emb.shape == (frame_count(6.0, 2.0), 1024) == (12, 1024)
    assert sum(enc.batches) == 12 and max(enc.batches) <= enc.batch_size
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(12))
    # The content moves, so do the embeddings (the first and last windows differ most).
    assert (emb[0] - emb[-1]).norm() > (emb[5] - emb[6]).norm() > 0


def test_window_bounds_cut_to_the_clip():
    assert animation.window_bounds(0.0, 10.0, 30.0) == (0.0, 5.0)
    assert animation.window_bounds(12.0, 10.0, 30.0) == (7.0, 17.0)
    assert animation.window_bounds(29.5, 10.0, 30.0) == (24.5, 30.0)
    assert animation.window_bounds(1.0, 10.0, 3.0) == (0.0, 3.0)


def test_five_minute_song_is_built_batch_by_batch(monkeypatch):
    """300 s at 44.1 kHz, 1 fps: 300 windows, but at most one batch of them exists at a time."""
    built = [0]
    real = animation.build_window

    def counting(*args):
        built[0] += 1
        return real(*args)

    monkeypatch.setattr(animation, "build_window", counting)
    enc = RecordingEncoder(built)
    song = torch.randn(2, 300 * 44100) * 0.1
    emb = encode_frames(enc, song, 44100, fps=1.0)
    assert emb.shape == (300, 1024)
    assert max(enc.batches) == enc.batch_size and len(enc.batches) == 75
    assert max(enc.pending) <= enc.batch_size  # windows built but not yet encoded at each call


def test_progress_and_interruption():
    enc = RecordingEncoder()
    seen = []
    encode_frames(enc, chirp(5.0).unsqueeze(0), 8000, fps=2.0, window_s=1.0, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(4, 10), (8, 10), (10, 10)]

    class Stop(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) == 2:
            raise Stop

    enc = RecordingEncoder()
    with pytest.raises(Stop):
        encode_frames(enc, chirp(5.0).unsqueeze(0), 8000, fps=2.0, window_s=1.0, check_interrupt=check)
    assert enc.batches == [4]  # stopped before the second batch


def test_node_is_interruptible_through_comfy():
    enc = RecordingEncoder()
    node = nodes.NODE_CLASS_MAPPINGS["SonicAudioEncodeFrames"]
    audio = {"waveform": chirp(5.0).view(1, 1, -1), "sample_rate": 8000}
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            node.execute(audio_encoder=enc, audio=audio, fps=2.0, window_seconds=1.0, hop_seconds=0.0,
                         smoothing_seconds=0.0)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert enc.batches == []


def test_hop_interpolates_between_encoded_windows():
    wave = chirp(8.0).unsqueeze(0)
    full = encode_frames(RecordingEncoder(), wave, 8000, fps=4.0, window_s=2.0)
    enc = RecordingEncoder()
    hopped = encode_frames(enc, wave, 8000, fps=4.0, window_s=2.0, hop_s=1.0)
    assert hopped.shape == full.shape == (32, 1024)
    assert sum(enc.batches) == 9  # windows at 0, 1, ..., 8 s instead of 32
    # Frames on the hop grid are the encoded windows themselves.
    torch.testing.assert_close(hopped[::4], full[::4], rtol=0, atol=1e-6)
    # A frame between two windows lies between them.
    mid = hopped[2]
    assert float(mid @ full[0]) > float(full[4] @ full[0]) and float(mid @ full[4]) > float(full[0] @ full[4])
    torch.testing.assert_close(hopped.norm(dim=-1), torch.ones(32))


def test_smoothing_calms_changes_and_keeps_constant_runs():
    wave = chirp(6.0).unsqueeze(0)
    raw = encode_frames(RecordingEncoder(), wave, 8000, fps=4.0, window_s=1.0)
    smooth = encode_frames(RecordingEncoder(), wave, 8000, fps=4.0, window_s=1.0, smoothing_s=0.5)
    step = lambda e: (e[1:] - e[:-1]).norm(dim=-1).mean()
    assert step(smooth) < 0.7 * step(raw)
    torch.testing.assert_close(smooth.norm(dim=-1), torch.ones(24))
    same = torch.nn.functional.normalize(torch.randn(1, 1024), dim=-1).expand(7, -1)
    torch.testing.assert_close(animation.smooth(same, 2.0), same, rtol=0, atol=1e-6)


def test_bad_input_names_the_node_and_the_fix():
    node = nodes.NODE_CLASS_MAPPINGS["SonicAudioEncodeFrames"]
    audio = {"waveform": chirp(2.0).view(1, 1, -1), "sample_rate": 8000}
    ok = dict(audio_encoder=RecordingEncoder(), audio=audio, fps=2.0, window_seconds=1.0, hop_seconds=0.0,
              smoothing_seconds=0.0)
    with pytest.raises(ValueError, match=r"Audio Encode Frames.*'fps' is nan.*finite"):
        node.execute(**dict(ok, fps=float("nan")))
    with pytest.raises(ValueError, match=r"Audio Encode Frames.*window_seconds"):
        node.execute(**dict(ok, window_seconds=12.0))
    with pytest.raises(ValueError, match=r"Audio Encode Frames.*not an AUDIO"):
        node.execute(**dict(ok, audio="song.wav"))
    with pytest.raises(ValueError, match=r"Audio Encode Frames.*one clip at a time"):
        node.execute(**dict(ok, audio={"waveform": torch.zeros(2, 1, 16000), "sample_rate": 8000}))
    out = node.execute(**ok).result
    assert out[0].shape == (4, 1024) and out[1] == 4 and out[2] == 2.0


def test_frames_equal_audio_encode_windows(host, fixture_dir):
    """Interior frames with 10 s windows are exactly Audio Encode's 'offset' window
    (the same preprocessing code) through the MS-CLAP stand-in."""
    clap = host.link_model("audio_encoders", fixture_dir.clap())
    name = host.put_input(fixture_dir.audio("noise_mono_8k_25s.flac"))
    run = lambda node_id, **kw: nodes.NODE_CLASS_MAPPINGS[node_id].execute(**kw).result
    encoder = run("SonicAudioEncoderLoader", clap_name=clap)[0]
    audio = run("SonicLoadAudio", audio=name, start_time=0.0, duration=0.0, gain_db=0.0)[0]
    frames, count, fps, timing = run("SonicAudioEncodeFrames", audio_encoder=encoder, audio=audio, fps=0.2,
                                     window_seconds=10.0, hop_seconds=0.0, smoothing_seconds=0.0)
    assert count == timing.frames == 5 and frames.shape == (5, 1024) and fps == timing.fps == 0.2
    for k in (1, 3):  # frames at 5 s and 15 s: windows [0, 10) and [10, 20)
        single = run("SonicAudioEncode", audio_encoder=encoder, audio=audio, window="offset", offset=5.0 * k - 5.0)[0]
        # measured max |diff| 2.8e-8 and 3.7e-8 (a batch of 4 clips vs 1)
        torch.testing.assert_close(frames[k:k + 1], single, rtol=0, atol=1e-6)


def test_shared_noise_is_the_same_for_every_latent():
    latent = {"samples": torch.zeros(3, 4, 8, 8)}
    noise = SharedNoise(123).generate_noise(latent)
    assert noise.shape == (3, 4, 8, 8)
    first = comfy.sample.prepare_noise(torch.zeros(1, 4, 8, 8), 123)
    for row in noise:
        assert torch.equal(row, first[0])
    assert not torch.equal(SharedNoise(124).generate_noise(latent)[0], first[0])
    node = nodes.NODE_CLASS_MAPPINGS["SonicSharedNoise"]
    assert node.execute(noise_seed=7).result[0].seed == 7


def test_animation_workflow_writes_frames_webp_and_video_with_the_audio(host, fixture_dir):
    """The shipped workflow, made tiny (2 frames, 1 step, 64x64): PNG frames, a WEBP, and a
    video with one frame per embedding whose audio track is the clip."""
    import json
    from pathlib import Path

    import av
    import folder_paths
    import workflow_tools
    from conftest import ROOT
    from PIL import Image
    from test_workflows import STAND_INS

    ui = json.loads((ROOT / "workflows" / "sonic_audio_animation.json").read_text())
    for folder, names in workflow_tools.model_files(ui).items():
        for name in names:
            host.link_model(folder, STAND_INS[name](fixture_dir), name)
    host.put_input(fixture_dir.audio("noise_stereo_48k_10s_f32.wav"), "sonic_example_thunder.wav")
    prompt = workflow_tools.ui_to_api(ui)
    by_type = {v["class_type"]: k for k, v in prompt.items()}
    prompt[by_type["EmptyLatentImage"]]["inputs"].update(width=64, height=64)
    prompt[by_type["BasicScheduler"]]["inputs"]["steps"] = 1
    prompt[by_type["SonicAudioEncodeFrames"]]["inputs"]["fps"] = 1.0
    prompt[by_type["SonicLoadAudio"]]["inputs"]["duration"] = 2.0
    run = host.run(prompt)
    out = Path(folder_paths.get_output_directory())

    def saved(node_type):
        entry = run.ui(by_type[node_type])["images"]
        return [out / e["subfolder"] / e["filename"] for e in entry]

    assert len(saved("SaveImage")) == 2
    # The WEBP is written; its frame count is not checked: libwebp merges identical
    # consecutive frames, and the stand-in weights change the 8-bit image too little.
    with Image.open(saved("SaveAnimatedWEBP")[0]) as webp:
        assert webp.format == "WEBP" and webp.size == (64, 64)
    with av.open(str(saved("SaveVideo")[0])) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        frames = sum(1 for _ in container.decode(video=0))
        seconds = float(container.duration) / av.time_base
    assert frames == 2
    assert 1.5 <= seconds <= 2.5  # the 2 s of audio at 1 fps
