"""Sync by construction: Audio Encode Frames (Sonic)'s timing output carries fps and frame
count to Empty Latent Frames (Sonic) and Create Video (Sonic), so the embeddings, the latent
batch and the video share one fps; frame_count / fps is the clip's length within one frame."""
from fractions import Fraction

import av
import pytest
import torch
from test_animation import RecordingEncoder

import nodes
from sonic_diffusion.frame_timing import FrameTiming

RATE = 8000
FPS = [8.0, 12.0, 7.5, 23.976, 24000 / 1001, 29.97, 0.7]
SECONDS = [3.0, 2.95, 10.01, 1 / 3 + 2.0, 180.0]


def _node(node_id):
    return nodes.NODE_CLASS_MAPPINGS[node_id]


@pytest.mark.parametrize("fps", FPS)
@pytest.mark.parametrize("seconds", SECONDS)
def test_frame_count_times_fps_is_the_clip_within_one_frame(fps, seconds):
    timing = FrameTiming.of_clip(seconds, fps)
    assert 0 <= seconds - timing.video_seconds < 1 / fps + 1e-9
    assert abs(float(timing.frame_rate()) - fps) < 1e-6


def _encode(seconds, fps):
    audio = {"waveform": torch.randn(1, 2, int(round(seconds * RATE))) * 0.1, "sample_rate": RATE}
    out = _node("SonicAudioEncodeFrames").execute(audio_encoder=RecordingEncoder(), audio=audio, fps=fps,
                                                  window_seconds=1.0, hop_seconds=0.5, smoothing_seconds=0.0)
    return audio, out.result


@pytest.mark.parametrize(("fps", "seconds"), [(23.976, 2.95), (7.5, 3.1)])
def test_one_timing_sets_the_embeddings_the_latents_and_the_video(fps, seconds, tmp_path):
    audio, (embeds, count, fps_out, timing) = _encode(seconds, fps)
    assert embeds.shape[0] == count == timing.frames and fps_out == timing.fps == fps
    latent = _node("SonicLatentFrames").execute(timing=timing, width=64, height=48).result[0]
    assert latent["samples"].shape == (timing.frames, 4, 6, 8)
    images = torch.rand(timing.frames, 48, 64, 3)
    video = _node("SonicCreateVideo").execute(images=images, timing=timing, audio=audio).result[0]
    # The video's own audio is cut to frames / fps (the core writer also stops at the last frame).
    assert video.get_components().audio["waveform"].shape[-1] == round(timing.video_seconds * RATE)
    path = tmp_path / "clip.mp4"
    video.save_to(str(path))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == Fraction(fps).limit_denominator(1_000_000)
        assert sum(1 for _ in container.decode(video=0)) == timing.frames
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].rate
        sound = sum(f.samples for f in container.decode(audio=0)) / rate
    # The muxed audio ends with the last frame, give or take AAC's last 1024-sample frame. Measured:
    # +0.024 s (23.976 fps) and +0.005 s (7.5 fps); the whole clip instead would be +0.15 and +0.13 s.
    assert 0 <= sound - timing.video_seconds < 1024 / rate


def test_a_frame_count_other_than_the_timing_is_refused():
    timing = FrameTiming.of_clip(2.0, 8.0)
    with pytest.raises(ValueError, match=r"Create Video \(Sonic\): 15 images for a timing of 16 frames at 8 fps"):
        _node("SonicCreateVideo").execute(images=torch.rand(15, 8, 8, 3), timing=timing)
    with pytest.raises(ValueError, match=r"Empty Latent Frames \(Sonic\): timing is not a frame timing"):
        _node("SonicLatentFrames").execute(timing=16, width=64, height=64)
