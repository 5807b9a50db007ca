"""Load Audio (Sonic), Audio Encoder Loader (Sonic), Audio Encode (Sonic), Audio Embeds Mix (Sonic)."""
import hashlib
import os
import stat

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..sonic_diffusion import mixing
from ..sonic_diffusion.audio_decode import AudioDecodeError, decode_audio
from ..sonic_diffusion.audio_prep import check_window_offset, prepare_clip
from ..sonic_diffusion.clap import ClapEncoder, ClapWeightsError, load_clap_state_dict
from ..sonic_diffusion.paths import PathRefusedError, check_regular_file, is_inside, resolve_confined
from ..sonic_diffusion.safe_load import load_weights_file
from .common import (
    CATEGORY,
    NodeInputError,
    SonicAudioEmbeds,
    SonicAudioEncoderType,
    audio_value,
    node_errors,
    require_finite,
    schema,
)
from .folders import CLAP_FOLDER

LOAD_NODE = "Load Audio (Sonic)"
ENCODER_LOADER = "Audio Encoder Loader (Sonic)"
ENCODE = "Audio Encode (Sonic)"
MIX = "Audio Embeds Mix (Sonic)"


def _allowed_roots():
    """Load Audio (Sonic) reads only inside these folders (after resolving symlinks)."""
    return [folder_paths.get_input_directory(), folder_paths.get_output_directory(),
            folder_paths.get_temp_directory()]


def _listable(path, roots):
    try:
        return is_inside(path, roots) and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _audio_files():
    input_dir = folder_paths.get_input_directory()
    try:
        names = os.listdir(input_dir)
    except FileNotFoundError:
        return []
    roots = _allowed_roots()
    files = [f for f in names if _listable(os.path.join(input_dir, f), roots)]
    return sorted(folder_paths.filter_files_content_types(files, ["audio", "video"]))


def _resolve_audio(audio):
    """The real path of the chosen file (``name``, ``name [output]``, ``name [temp]``),
    confined to input/output/temp and checked to be a non-empty regular file."""
    # Joined here, not by folder_paths.get_annotated_filepath: newer ComfyUI raises its own
    # "Invalid file path" there, and the pack's one confinement rule and message apply on every host.
    name, base_dir = folder_paths.annotated_filepath(audio)
    path = os.path.join(base_dir or folder_paths.get_input_directory(), name)
    with node_errors(LOAD_NODE, PathRefusedError, prefix=f"{audio!r}: ", suffix="."), \
            node_errors(LOAD_NODE, AudioDecodeError, describe=lambda e: _name_only(e, path, audio)):
        real = resolve_confined(path, _allowed_roots())
        check_regular_file(real, AudioDecodeError, what="audio file",
                           missing_fix="upload it or pick another file", empty_fix="re-export or re-upload it")
    return real


def _name_only(error, path, audio):
    """The error with the server-side path replaced by the name the user chose."""
    return str(error).replace(repr(path), repr(audio)).replace(repr(os.path.realpath(path)), repr(audio))


class SonicLoadAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicLoadAudio",
            display_name=LOAD_NODE,
            category=CATEGORY + "/audio",
            description="Loads an audio file from ComfyUI's input folder (wav, flac, mp3, ogg, m4a...) with PyAV, "
                        "optionally a window of it and a gain. Outputs core AUDIO, usable by any audio node. Only "
                        "files inside input/output/temp load; at most 30 minutes and at most the server's "
                        "memory budget (SONIC_AUDIO_BUDGET_MB, default 512 MiB) per load.",
            inputs=[
                io.Float.Input("start_time", default=0.0, min=0.0, max=1e6, step=0.1,
                               tooltip="Seconds to skip at the start of the file."),
                io.Float.Input("duration", default=0.0, min=0.0, max=1e6, step=0.1,
                               tooltip="Seconds to load; 0 loads to the end (at most 30 minutes: set a duration "
                                       "for longer files). Only this window is decoded."),
                io.Float.Input("gain_db", default=0.0, min=-60.0, max=60.0, step=0.5,
                               tooltip="Volume change in dB. Gain changes the CLAP embedding (the paper's "
                                       "volume adjustment); no normalisation is applied."),
                # Last, so the frontend's upload and preview widgets trail every other widget value.
                io.Combo.Input("audio", options=_audio_files(), upload=io.UploadType.audio,
                               tooltip="A file in ComfyUI's input folder; upload one with the button."),
            ],
            outputs=[io.Audio.Output()],
        )

    @classmethod
    def execute(cls, audio, start_time, duration, gain_db):
        require_finite(LOAD_NODE, start_time=start_time, duration=duration, gain_db=gain_db)
        path = _resolve_audio(audio)
        with node_errors(LOAD_NODE, AudioDecodeError, describe=lambda e: _name_only(e, path, audio)):
            waveform, rate = decode_audio(
                path, start_s=start_time, duration_s=duration, gain_db=gain_db,
                check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        return io.NodeOutput({"waveform": waveform.unsqueeze(0), "sample_rate": rate})

    @classmethod
    def fingerprint_inputs(cls, audio, start_time, duration, gain_db):
        # The file's content, not its name, decides whether the cached output is still
        # valid; a refused or missing file is never opened (validate_inputs reports it).
        try:
            path = _resolve_audio(audio)
        except NodeInputError:
            return f"unavailable:{audio}"
        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except OSError:
            return f"unavailable:{audio}"
        return f"{h.hexdigest()}:{start_time}:{duration}:{gain_db}"

    @classmethod
    def validate_inputs(cls, audio):
        # Only `audio`: ComfyUI skips its own min/max checks for every input named here.
        try:
            _resolve_audio(audio)
        except NodeInputError as e:
            return str(e)
        return True


class SonicAudioEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicAudioEncoderLoader",
            display_name=ENCODER_LOADER,
            category=CATEGORY + "/loaders",
            description="Loads the MS-CLAP 2022 audio tower from the official CLAP_weights_2022.pth (its text "
                        "tower is ignored) or from an audio-only .safetensors made by the pack's converter. "
                        "Files live in models/audio_encoders.",
            inputs=[io.Combo.Input("clap_name", options=folder_paths.get_filename_list(CLAP_FOLDER),
                                   tooltip="CLAP_weights_2022.pth or its audio-only conversion.")],
            # The second output is the same encoder as core's AUDIO_ENCODER type, for core's "Audio
            # Encoder Encode" (appended, so saved workflows' links to the first still hold).
            outputs=[SonicAudioEncoderType.Output(display_name="audio_encoder"),
                     io.AudioEncoder.Output(display_name="AUDIO_ENCODER")],
        )

    @classmethod
    def execute(cls, clap_name):
        node = ENCODER_LOADER
        path = folder_paths.get_full_path_or_raise(CLAP_FOLDER, clap_name)
        with node_errors(node, ValueError, ClapWeightsError, prefix=f"{clap_name}: "):
            sd, _meta = load_weights_file(path)
            model = load_clap_state_dict(sd)
        encoder = ClapEncoder(model)
        return io.NodeOutput(encoder, encoder)


class SonicAudioEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicAudioEncode",
            display_name=ENCODE,
            category=CATEGORY + "/audio",
            description="Turns AUDIO into MS-CLAP 2022 embeddings [B,1024] with the official preprocessing: mono, "
                        "44.1 kHz, exactly 10 s (shorter clips are repeated, longer ones windowed).",
            inputs=[
                SonicAudioEncoderType.Input("audio_encoder", tooltip="From Audio Encoder Loader (Sonic): the MS-CLAP 2022 audio tower."),
                io.Audio.Input("audio", tooltip="From Load Audio (Sonic) or core Load Audio; a batch of B clips "
                                                "gives B embeddings."),
                io.Combo.Input("window", options=["center", "start", "offset"], default="center",
                               tooltip="Which 10 s of a longer clip to use. The official code picks a random "
                                       "crop; here it is deterministic."),
                io.Float.Input("offset", default=0.0, min=0.0, max=1e6, step=0.1,
                               tooltip="Start of the window in seconds, used when window is 'offset'; it must "
                                       "leave a full 10 s window (0 for clips of 10 s or less)."),
            ],
            outputs=[SonicAudioEmbeds.Output(display_name="audio_embeds")],
        )

    @classmethod
    def execute(cls, audio_encoder, audio, window, offset):
        node = ENCODE
        waveform, sample_rate = audio_value(node, audio)
        require_finite(node, offset=offset)
        with node_errors(node):
            check_window_offset(waveform, sample_rate, window, offset)
            clips = prepare_clip(waveform, sample_rate, window=window, offset_s=offset)
        bar = comfy.utils.ProgressBar(clips.shape[0])
        embeds = audio_encoder.encode(
            clips, progress=lambda i: bar.update_absolute(i, clips.shape[0]),
            check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        return io.NodeOutput(embeds)


class SonicAudioEmbedsMix(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicAudioEmbedsMix",
            display_name=MIX,
            category=CATEGORY + "/audio",
            description="Mixes two audio embeddings (the paper's sound interpolation): lerp or slerp at a ratio, "
                        "a series of ratios as a batch, or a weighted sum. The result is re-normalised.",
            inputs=[
                SonicAudioEmbeds.Input("embeds_a", tooltip="First audio embedding (ratio 0)."),
                SonicAudioEmbeds.Input("embeds_b", tooltip="Second audio embedding (ratio 1)."),
                io.Combo.Input("mode", options=["slerp", "lerp", "weighted_sum"], default="slerp",
                               tooltip="slerp (spherical), lerp (straight line) or weighted_sum (uses weight_a and weight_b)."),
                io.Float.Input("ratio", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="0 gives embeds_a, 1 gives embeds_b (lerp and slerp)."),
                io.String.Input("ratios", default="", optional=True,
                                tooltip="Comma-separated ratios, e.g. 0,0.25,0.5,0.75,1: one embedding each, as a "
                                        "batch (one latent per ratio). Overrides ratio when not empty."),
                io.Float.Input("weight_a", default=1.0, min=-10.0, max=10.0, step=0.05, optional=True,
                               tooltip="weighted_sum: weight of embeds_a."),
                io.Float.Input("weight_b", default=1.0, min=-10.0, max=10.0, step=0.05, optional=True,
                               tooltip="weighted_sum: weight of embeds_b."),
            ],
            outputs=[SonicAudioEmbeds.Output(display_name="audio_embeds")],
        )

    @classmethod
    def execute(cls, embeds_a, embeds_b, mode, ratio, ratios="", weight_a=1.0, weight_b=1.0):
        node = MIX
        require_finite(node, ratio=ratio, weight_a=weight_a, weight_b=weight_b)
        with node_errors(node):
            if mode == "weighted_sum":
                return io.NodeOutput(mixing.weighted_sum(embeds_a, embeds_b, weight_a, weight_b))
            series = mixing.parse_ratios(ratios or "")
            if series:
                if embeds_a.shape[0] != 1 or embeds_b.shape[0] != 1:
                    raise ValueError("a list of ratios needs single embeddings on both inputs")
                return io.NodeOutput(mixing.mix_series(embeds_a, embeds_b, series, mode))
            fn = mixing.slerp if mode == "slerp" else mixing.lerp
            return io.NodeOutput(fn(embeds_a, embeds_b, ratio))
