"""Shared glue: the pack's custom types and a Schema helper that works on every ComfyUI."""
import dataclasses

from comfy_api.latest import io

SonicAudioEmbeds = io.Custom("SONIC_AUDIO_EMBEDS")
SonicAdapterType = io.Custom("SONIC_ADAPTER")
SonicAudioEncoderType = io.Custom("SONIC_AUDIO_ENCODER")

CATEGORY = "SonicDiffusion"

_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)}


def schema(**fields):
    """io.Schema without the fields this ComfyUI does not know (0.3.75 raises on
    newer ones such as search_aliases or essentials_category)."""
    return io.Schema(**{k: v for k, v in fields.items() if k in _SCHEMA_FIELDS})


class NodeInputError(ValueError):
    """A user-facing error: names the node and says how to fix the input."""
