"""Shared glue: the pack's custom types and a Schema helper that works on every ComfyUI."""
import dataclasses
import math

from comfy_api.latest import io

from ..sonic_diffusion.clap import ENCODER_OUTPUT_KIND

SonicAudioEmbeds = io.Custom("SONIC_AUDIO_EMBEDS")
SonicAdapterType = io.Custom("SONIC_ADAPTER")
SonicAudioEncoderType = io.Custom("SONIC_AUDIO_ENCODER")
SonicStrengthCurve = io.Custom("SONIC_STRENGTH_CURVE")
# Core ComfyUI's "Audio Encoder Encode" output, as the pack's audio embeddings: the pack's CLAP
# (Audio Encoder Loader (Sonic)'s AUDIO_ENCODER output) makes one that nodes taking audio_embeds
# accept. One input of both types, not a converter node: core's output plugs straight in, and
# saved workflows' SONIC_AUDIO_EMBEDS links still connect.
EMBEDS_TYPES = [SonicAudioEmbeds, io.AudioEncoderOutput]

CATEGORY = "SonicDiffusion"

_SCHEMA_FIELDS = {f.name for f in dataclasses.fields(io.Schema)}
# Schema fields of newer ComfyUI that 0.3.75's io.Schema rejects; only these are
# dropped where unknown, so a misspelt field still fails loudly.
_NEWER_SCHEMA_FIELDS = {"search_aliases", "essentials_category", "is_dev_only", "price_badge",
                        "has_intermediate_output", "accept_all_inputs"}


def schema(**fields):
    """io.Schema on every supported ComfyUI: newer optional fields are dropped by name
    where this host does not know them; any other unknown field raises."""
    unknown = set(fields) - _SCHEMA_FIELDS - _NEWER_SCHEMA_FIELDS
    if unknown:
        raise TypeError(f"unknown io.Schema field(s): {', '.join(sorted(unknown))}")
    return io.Schema(**{k: v for k, v in fields.items() if k in _SCHEMA_FIELDS})


class NodeInputError(ValueError):
    """A user-facing error: names the node and says how to fix the input."""


def require_finite(node, **values):
    """Refuses NaN or infinite float inputs (ComfyUI's min/max validation lets NaN
    through, since every comparison with NaN is false)."""
    for name, value in values.items():
        if value is not None and not math.isfinite(float(value)):
            raise NodeInputError(f"{node}: input '{name}' is {value}; enter a finite number.")


def audio_value(node, audio):
    """(waveform, sample_rate) of an AUDIO input, or an error naming the node."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise NodeInputError(f"{node}: the audio input is not an AUDIO value; connect a Load Audio node.")
    return audio["waveform"], audio["sample_rate"]


def audio_embeds_value(node, name, value):
    """The [B, 1024] embeddings of an audio_embeds input: the pack's own tensor as is, or core's
    AUDIO_ENCODER_OUTPUT dict made from the pack's CLAP (marked with its "kind"); any
    other encoder's output (e.g. wav2vec2 features) is refused with the fix."""
    if not isinstance(value, dict):
        return value
    if value.get("kind") != ENCODER_OUTPUT_KIND or "encoded_audio" not in value:
        raise NodeInputError(f"{node}: {name} is an AUDIO_ENCODER_OUTPUT of another audio encoder; SonicDiffusion "
                             f"needs MS-CLAP 2022 embeddings: feed Audio Encoder Encode from Audio Encoder Loader "
                             f"(Sonic), or use Audio Encode (Sonic).")
    return value["encoded_audio"]
