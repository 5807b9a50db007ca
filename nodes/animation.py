"""Audio Encode Frames (Sonic), Loudness Strength Curve (Sonic) and Shared Noise (Sonic):
audio-reactive animation."""
import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from ..sonic_diffusion.animation import MAX_WINDOW_S, SharedNoise, encode_frames, frame_loudness_db, loudness_strengths
from ..sonic_diffusion.blocks import check_factor
from ..sonic_diffusion.frame_timing import FrameTiming
from .common import (
    CATEGORY,
    SonicAudioEmbeds,
    SonicAudioEncoderType,
    SonicFrameTiming,
    SonicStrengthCurve,
    audio_value,
    node_errors,
    require_finite,
    schema,
)

CURVE = "Loudness Strength Curve (Sonic)"
ENCODE_FRAMES = "Audio Encode Frames (Sonic)"


class SonicAudioEncodeFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicAudioEncodeFrames",
            display_name=ENCODE_FRAMES,
            category=CATEGORY + "/audio",
            description="Slides the CLAP window along a song or recording and returns one audio embedding per "
                        "video frame at fps: a batch that Apply Sonic Adapter maps one-to-one onto a latent batch "
                        "of frame_count latents. Windows are built and encoded batch by batch (bounded memory "
                        "for long songs), with a progress bar, and the run can be cancelled.",
            inputs=[
                SonicAudioEncoderType.Input("audio_encoder", tooltip="From Audio Encoder Loader (Sonic)."),
                io.Audio.Input("audio", tooltip="One clip (Load Audio (Sonic) can cut a part of a long file)."),
                io.Float.Input("fps", default=8.0, min=0.1, max=120.0, step=0.5,
                               tooltip="Frames per second of the animation: one embedding every 1/fps seconds."),
                io.Float.Input("window_seconds", default=10.0, min=0.5, max=MAX_WINDOW_S, step=0.5,
                               tooltip="Length of the audio window around each frame. 10 s is what CLAP was "
                                       "trained on; shorter windows follow fast changes and are tiled to 10 s."),
                io.Float.Input("hop_seconds", default=0.0, min=0.0, max=60.0, step=0.05,
                               tooltip="0 encodes one window per frame. Larger values encode a window every "
                                       "hop_seconds and interpolate the frames between them (faster)."),
                io.Float.Input("smoothing_seconds", default=0.0, min=0.0, max=30.0, step=0.05,
                               tooltip="Gaussian smoothing over time (its sigma, in seconds); 0 is off. Calms "
                                       "flicker between frames."),
            ],
            outputs=[
                SonicAudioEmbeds.Output(display_name="audio_embeds"),
                io.Int.Output(display_name="frame_count", tooltip="Number of frames: the latent batch size."),
                io.Float.Output(display_name="fps", tooltip="The fps, for Create Video and Save Animated WEBP."),
                SonicFrameTiming.Output(display_name="timing",
                                        tooltip="fps and frame count in one value: connect it to Empty Latent "
                                                "Frames (Sonic) and Create Video (Sonic) so frames, latents and "
                                                "video share one fps."),
            ],
        )

    @classmethod
    def execute(cls, audio_encoder, audio, fps, window_seconds, hop_seconds, smoothing_seconds):
        node = ENCODE_FRAMES
        require_finite(node, fps=fps, window_seconds=window_seconds, hop_seconds=hop_seconds,
                       smoothing_seconds=smoothing_seconds)
        waveform, sample_rate = audio_value(node, audio)
        bar = comfy.utils.ProgressBar(1)

        def progress(done, total):
            bar.update_absolute(done, total)

        with node_errors(node):
            embeds = encode_frames(audio_encoder, waveform, sample_rate, fps,
                                   window_s=window_seconds, hop_s=hop_seconds, smoothing_s=smoothing_seconds,
                                   progress=progress,
                                   check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        timing = FrameTiming.of_clip(waveform.shape[-1] / sample_rate, fps)
        if timing.frames != int(embeds.shape[0]):  # one frame rule for both: never expected
            raise RuntimeError(f"{node}: {embeds.shape[0]} embeddings for {timing.describe()}")
        return io.NodeOutput(embeds, timing.frames, float(fps), timing)


class SonicLoudnessCurve(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicLoudnessCurve",
            display_name=CURVE,
            category=CATEGORY + "/audio",
            description="A strength factor per video frame from the loudness of the audio at that frame (RMS of "
                        "the 1/fps seconds around it): the loudest frame gets max_strength, frames range_db or "
                        "more below it min_strength, linear in dB between. Feed it to Apply Sonic Adapter's "
                        "strength_curve, with the same audio and fps as Audio Encode Frames (Sonic), so loud "
                        "moments push the image harder.",
            inputs=[
                io.Audio.Input("audio", tooltip="The clip given to Audio Encode Frames (Sonic)."),
                io.Float.Input("fps", default=8.0, min=0.1, max=120.0, step=0.5,
                               tooltip="The fps of Audio Encode Frames (Sonic): one value per frame."),
                io.Float.Input("min_strength", default=0.5, min=-10.0, max=10.0, step=0.05,
                               tooltip="Factor on Apply Sonic Adapter's strength for quiet frames."),
                io.Float.Input("max_strength", default=1.5, min=-10.0, max=10.0, step=0.05,
                               tooltip="Factor on Apply Sonic Adapter's strength for the loudest frame."),
                io.Float.Input("range_db", default=40.0, min=1.0, max=200.0, step=1.0,
                               tooltip="Loudness range mapped onto min..max, in dB below the loudest frame."),
            ],
            outputs=[SonicStrengthCurve.Output(display_name="strength_curve",
                                               tooltip="Connect to Apply Sonic Adapter's strength_curve.")],
        )

    @classmethod
    def execute(cls, audio, fps, min_strength, max_strength, range_db):
        require_finite(CURVE, fps=fps, min_strength=min_strength, max_strength=max_strength, range_db=range_db)
        waveform, sample_rate = audio_value(CURVE, audio)
        with node_errors(CURVE):
            check_factor("min_strength", min_strength)  # the curve is folded into the adapter's term
            check_factor("max_strength", max_strength)
            levels = frame_loudness_db(waveform, sample_rate, fps)
            return io.NodeOutput(loudness_strengths(levels, min_strength, max_strength, range_db))


class SonicSharedNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicSharedNoise",
            display_name="Shared Noise (Sonic)",
            category=CATEGORY + "/sampling",
            description="NOISE for SamplerCustomAdvanced where every latent of the batch starts from the same "
                        "noise (the core Random Noise gives each latent its own). Animation frames then stay "
                        "coherent and change only with their audio.",
            inputs=[
                io.Int.Input("noise_seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the one noise image shared by every latent."),
            ],
            outputs=[io.Noise.Output()],
        )

    @classmethod
    def execute(cls, noise_seed):
        return io.NodeOutput(SharedNoise(noise_seed))
