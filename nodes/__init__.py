"""ComfyUI glue of the pack: V3 nodes only; the model code lives in sonic_diffusion/."""
from comfy_api.latest import ComfyExtension

from .adapter import SonicAdapterLoader, SonicApplyAdapter
from .animation import SonicAudioEncodeFrames, SonicLoudnessCurve, SonicSharedNoise
from .audio import SonicAudioEmbedsMix, SonicAudioEncode, SonicAudioEncoderLoader, SonicLoadAudio
from .conditioning import SonicAudioConditioning
from .edit import SonicAudioEdit
from .edit_custom import SonicDDIMEditSampler, SonicEditGuider
from .frames import SonicCreateVideo, SonicLatentFrames
from .guidance import SonicAudioGuidance, SonicDualGuider

NODES = [
    SonicLoadAudio,
    SonicAudioEncoderLoader,
    SonicAudioEncode,
    SonicAudioEmbedsMix,
    SonicAdapterLoader,
    SonicApplyAdapter,
    SonicAudioConditioning,
    SonicAudioEdit,
    SonicEditGuider,
    SonicDDIMEditSampler,
    SonicDualGuider,
    SonicAudioGuidance,
    SonicAudioEncodeFrames,
    SonicLoudnessCurve,
    SonicSharedNoise,
    SonicLatentFrames,
    SonicCreateVideo,
]


class SonicDiffusionExtension(ComfyExtension):
    async def get_node_list(self):
        return list(NODES)


async def comfy_entrypoint():
    return SonicDiffusionExtension()
