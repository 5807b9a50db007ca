"""Empty Latent Frames (Sonic) and Create Video (Sonic): the latent batch and the video
take their frame count and fps from Audio Encode Frames (Sonic)'s timing output."""
import comfy.model_management
import torch
from comfy_api.latest import InputImpl, Types, io

from ..sonic_diffusion.frame_timing import FrameTiming, audio_for_video
from .common import CATEGORY, NodeInputError, SonicFrameTiming, audio_value, schema

LATENT_NODE = "Empty Latent Frames (Sonic)"
VIDEO_NODE = "Create Video (Sonic)"
TIMING_TOOLTIP = "The timing output of Audio Encode Frames (Sonic)."


def timing_value(node, timing):
    if not isinstance(timing, FrameTiming):
        raise NodeInputError(f"{node}: timing is not a frame timing; connect Audio Encode Frames (Sonic)'s "
                             f"timing output.")
    return timing


class SonicLatentFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicLatentFrames",
            display_name=LATENT_NODE,
            category=CATEGORY + "/animation",
            description="An empty SD 1.x latent batch with one latent per video frame of the timing from Audio "
                        "Encode Frames (Sonic): the batch size always matches the audio embeddings, the "
                        "loudness curve and the video's fps.",
            inputs=[
                SonicFrameTiming.Input("timing", tooltip=TIMING_TOOLTIP),
                io.Int.Input("width", default=512, min=64, max=8192, step=8, tooltip="Frame width in pixels."),
                io.Int.Input("height", default=512, min=64, max=8192, step=8, tooltip="Frame height in pixels."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, timing, width, height):
        timing = timing_value(LATENT_NODE, timing)
        samples = torch.zeros([timing.frames, 4, height // 8, width // 8],
                              device=comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": samples})


class SonicCreateVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicCreateVideo",
            display_name=VIDEO_NODE,
            category=CATEGORY + "/animation",
            description="A VIDEO of the decoded frames at the fps of Audio Encode Frames (Sonic)'s timing, with "
                        "the audio cut to the frames' length (frames / fps seconds), for the core Save Video. "
                        "Refuses a frame count other than the timing's, so picture and sound cannot drift apart.",
            inputs=[
                io.Image.Input("images", tooltip="The decoded frames (VAE Decode of the sampled latent batch)."),
                SonicFrameTiming.Input("timing", tooltip=TIMING_TOOLTIP),
                io.Audio.Input("audio", optional=True,
                               tooltip="The clip given to Audio Encode Frames (Sonic), muxed into the video."),
            ],
            outputs=[io.Video.Output(display_name="video")],
        )

    @classmethod
    def execute(cls, images, timing, audio=None):
        sound = None if audio is None else audio_value(VIDEO_NODE, audio)  # the pack's one rate rule, first
        timing = timing_value(VIDEO_NODE, timing)
        if images.shape[0] != timing.frames:
            raise NodeInputError(
                f"{VIDEO_NODE}: {images.shape[0]} images for a timing of {timing.describe()}. Make the latent "
                f"batch with Empty Latent Frames (Sonic) from the same timing and decode all of it.")
        if sound is not None:
            waveform, rate = sound
            audio = {"waveform": audio_for_video(waveform, rate, timing), "sample_rate": rate}
        parts = Types.VideoComponents(images=images, audio=audio, frame_rate=timing.frame_rate())
        return io.NodeOutput(InputImpl.VideoFromComponents(parts))
