"""One value that carries a clip's frame timing from Audio Encode Frames (Sonic) to the
latent batch and to the video writer, so frames, strengths and the video share one fps.

Frame k sits at t_k = k / fps; a clip of `seconds` has floor(seconds x fps) frames (at
least one), so frames / fps is the clip length to within one frame, for any fps.
"""
import math
from dataclasses import dataclass
from fractions import Fraction

import torch

# Fractional rates such as 24000/1001 (23.976) are exact with this denominator bound.
MAX_RATE_DENOMINATOR = 1_000_000


def frame_count(duration_s, fps):
    """Frames of a clip of duration_s seconds at fps: one per 1/fps seconds, at least one."""
    return max(1, int(math.floor(duration_s * fps + 1e-9)))


@dataclass(frozen=True)
class FrameTiming:
    """fps, frame count and the clip's length in seconds."""
    fps: float
    frames: int
    clip_seconds: float

    @classmethod
    def of_clip(cls, clip_seconds, fps):
        if not fps > 0 or not math.isfinite(fps):
            raise ValueError(f"fps must be a positive number, got {fps}")
        return cls(float(fps), frame_count(clip_seconds, fps), float(clip_seconds))

    @property
    def video_seconds(self):
        """Length of the video the frames make: frames / fps (at most one frame shorter than the clip)."""
        return self.frames / self.fps

    def frame_rate(self):
        """The fps as a Fraction for video writers (23.976 -> 2997/125)."""
        return Fraction(self.fps).limit_denominator(MAX_RATE_DENOMINATOR)

    def describe(self):
        return f"{self.frames} frames at {self.fps:g} fps"


def audio_for_video(waveform, sample_rate, timing):
    """The first frames / fps seconds of an AUDIO waveform [B, C, T] (zero-padded if shorter),
    so the muxed sound ends with the last frame."""
    want = int(round(timing.video_seconds * sample_rate))
    have = waveform.shape[-1]
    if have >= want:
        return waveform[..., :want]
    return torch.nn.functional.pad(waveform, (0, want - have))
