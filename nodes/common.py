"""Shared glue: the pack's custom types, a Schema helper that works on every ComfyUI, and
the one place where the model code's plain errors become errors naming the node."""
import contextlib
import dataclasses
import math
import numbers

import torch
from comfy_api.latest import io

from ..sonic_diffusion.audio_prep import check_sample_rate
from ..sonic_diffusion.clap import ENCODER_OUTPUT_KIND

SonicAudioEmbeds = io.Custom("SONIC_AUDIO_EMBEDS")
SonicAdapterType = io.Custom("SONIC_ADAPTER")
SonicAudioEncoderType = io.Custom("SONIC_AUDIO_ENCODER")
SonicStrengthCurve = io.Custom("SONIC_STRENGTH_CURVE")
SonicFrameTiming = io.Custom("SONIC_FRAME_TIMING")
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


@contextlib.contextmanager
def node_errors(node, *kinds, prefix="", suffix="", describe=str):
    """Re-raises an error of `kinds` (default ValueError) from the model code as a
    NodeInputError naming the node: "{node}: {prefix}{describe(e)}{suffix}". The model
    code's messages say what is wrong and the fix; the node layer adds which node. A
    NodeInputError raised inside passes through unchanged."""
    catch = kinds or (ValueError,)
    try:
        yield
    except NodeInputError:
        raise
    except catch as e:
        raise NodeInputError(f"{node}: {prefix}{describe(e)}{suffix}") from None


def require_finite(node, **values):
    """Refuses NaN or infinite float inputs (ComfyUI's min/max validation lets NaN
    through, since every comparison with NaN is false)."""
    for name, value in values.items():
        if value is not None and not math.isfinite(float(value)):
            raise NodeInputError(f"{node}: input '{name}' is {value}; enter a finite number.")


def audio_value(node, audio):
    """(waveform, int sample_rate) of an AUDIO input, or an error naming the node. The
    pack's one sample-rate rule for every node that takes AUDIO (and for Load Audio
    (Sonic) at decode time): a whole number of Hz within audio_prep's 1-768 kHz."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise NodeInputError(f"{node}: the audio input is not an AUDIO value; connect a Load Audio node.")
    rate = audio["sample_rate"]
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not float(rate).is_integer():
        raise NodeInputError(f"{node}: the audio's sample rate {rate!r} is not a whole number of Hz; "
                             f"resample it with a node that outputs a standard rate (e.g. 44100).")
    with node_errors(node, suffix="."):
        return audio["waveform"], check_sample_rate(rate)


def check_embeds(node, **embeds):
    """Refuses audio embeddings holding NaN or Inf (None inputs pass)."""
    for name, emb in embeds.items():
        if emb is not None and not bool(emb.isfinite().all()):
            raise NodeInputError(f"{node}: {name} holds NaN or Inf values; re-encode the audio.")


def check_curve(node, curve):
    """Refuses a strength curve holding NaN or Inf (None passes)."""
    if curve is not None and not bool(torch.as_tensor(curve).isfinite().all()):
        raise NodeInputError(f"{node}: strength_curve holds NaN or Inf values; rebuild it from the audio.")


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
