"""Sonic Adapter Loader and Apply Sonic Adapter."""
import folder_paths
import torch
from comfy_api.latest import io

from ..sonic_diffusion import checkpoints
from ..sonic_diffusion.audio_call import register
from ..sonic_diffusion.blocks import (
    BLOCK_PRESETS,
    BLOCK_SITE_NAMES,
    FACTOR_LIMIT,
    BlockWeightsError,
    check_factor,
    parse_block_weights,
)
from ..sonic_diffusion.compat import IncompatibleModelError, check_unet_fits
from ..sonic_diffusion.patch import SonicAudioPatch
from ..sonic_diffusion.runtime import SonicAdapter, resident_dtype
from ..sonic_diffusion.safe_load import load_weights_file
from .common import (
    CATEGORY,
    EMBEDS_TYPES,
    NodeInputError,
    SonicAdapterType,
    SonicStrengthCurve,
    audio_embeds_value,
    check_curve,
    check_embeds,
    node_errors,
    require_finite,
    schema,
)
from .folders import SONIC_FOLDER

BUNDLED = "bundled (from the adapter file)"
LOADER = "Sonic Adapter Loader"
APPLY = "Apply Sonic Adapter"


def _load(folder_name, node):
    path = folder_paths.get_full_path_or_raise(SONIC_FOLDER, folder_name)
    with node_errors(node):
        sd, _meta = load_weights_file(path)
    return path, sd


def _site_weights(node, preset, text):
    """The ten per-site weights: block_weights when given, else the preset."""
    if text and text.strip():
        with node_errors(node, BlockWeightsError, suffix=f". Give ten numbers, each within -{FACTOR_LIMIT:g}.."
                                                         f"{FACTOR_LIMIT:g}, or leave block_weights empty to use "
                                                         f"block_preset."):
            return parse_block_weights(text)
    if preset not in BLOCK_PRESETS:
        raise NodeInputError(f"{node}: unknown block_preset {preset!r}; choose one of: {', '.join(BLOCK_PRESETS)}.")
    return BLOCK_PRESETS[preset]


def _check_folded_factors(node, strength, strength_curve):
    """strength and every strength_curve value are folded into fp16/bf16 weights: the range."""
    with node_errors(node, BlockWeightsError, suffix="; each is multiplied into the adapter's weights."):
        check_factor("strength", strength)
        curve = None if strength_curve is None else torch.as_tensor(strength_curve)
        if curve is not None and curve.numel() and bool(curve.isfinite().all()):  # NaN: refused below
            worst = float(curve.abs().max())
            check_factor("strength_curve's largest value (in magnitude)", worst)


class SonicAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = folder_paths.get_filename_list(SONIC_FOLDER)
        # Projectors go to projector_name only; gates, bundles and unrecognised files to
        # adapter_name (an unknown file then gets the loader's error naming what it holds).
        kinds = {f: checkpoints.file_kind(folder_paths.get_full_path(SONIC_FOLDER, f)) for f in files}
        adapters = [f for f in files if kinds[f] != "projector"]
        projectors = [f for f in files if kinds[f] == "projector"]
        return schema(
            node_id="SonicAdapterLoader",
            display_name=LOADER,
            category=CATEGORY + "/loaders",
            description="Loads a SonicDiffusion adapter: the official pair (landscape.pt or greatest_hits.pt plus "
                        "its audio_projector_*.pth) or one SonicDiffusion .safetensors bundle holding both. "
                        "Files live in models/sonic_diffusion.",
            inputs=[
                io.Combo.Input("adapter_name", options=adapters,
                               tooltip="The gated attention weights (landscape.pt, greatest_hits.pt) or a bundle."),
                io.Combo.Input("projector_name", options=[BUNDLED, *projectors], default=BUNDLED,
                               tooltip="The audio projector (audio_projector_landscape.pth / audio_projector_gh.pth). "
                                       "Keep 'bundled' for a .safetensors bundle that already holds it."),
            ],
            outputs=[SonicAdapterType.Output(display_name="sonic_adapter")],
        )

    @classmethod
    def execute(cls, adapter_name, projector_name):
        node = LOADER
        _, sd = _load(adapter_name, node)
        with node_errors(node, checkpoints.AdapterWeightsError):
            if checkpoints.looks_like_bundle(sd):
                projector, gates = checkpoints.split_bundle(sd, adapter_name)
            elif checkpoints.looks_like_projector(sd):
                raise NodeInputError(f"{node}: {adapter_name} is an audio projector; choose it as projector_name and "
                                     f"the gate file (landscape.pt or greatest_hits.pt) as adapter_name.")
            else:
                projector, gates = None, checkpoints.gates_state(sd, adapter_name)
            if projector_name != BUNDLED:
                _, psd = _load(projector_name, node)
                projector = checkpoints.projector_state(psd, projector_name)
            if projector is None:
                raise NodeInputError(f"{node}: {adapter_name} holds no projector; choose the matching "
                                     f"audio_projector_*.pth as projector_name.")
            model = checkpoints.build_adapter_model(projector, gates)
        return io.NodeOutput(SonicAdapter(model, name=adapter_name))


class SonicApplyAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return schema(
            node_id="SonicApplyAdapter",
            display_name=APPLY,
            category=CATEGORY,
            description="Patches an SD 1.x MODEL so its middle block and output blocks 3-11 attend to the audio: "
                        "x += strength * tanh(gate) * Attn(LayerNorm(x), audio tokens), right after the text "
                        "cross-attention. The positive prompt gets audio_embeds; every other prompt of the guider "
                        "(negative, middle, empty) gets the null (or negative) audio. A prompt with its own "
                        "audio from Audio Conditioning (Sonic) keeps it. Works with every stock sampler and guider, "
                        "LoRA and ControlNet.",
            inputs=[
                io.Model.Input("model", tooltip="An SD 1.x MODEL; it is cloned, never changed."),
                SonicAdapterType.Input("sonic_adapter", tooltip="From Sonic Adapter Loader."),
                io.MultiType.Input("audio_embeds", EMBEDS_TYPES, optional=True,
                                   tooltip="From Audio Encode (Sonic), or core Audio Encoder Encode fed by Audio "
                                           "Encoder Loader (Sonic); goes to the positive prompt. One embedding "
                                           "serves every latent; B embeddings map one-to-one onto B latents. Leave "
                                           "it unconnected when every prompt carries its own audio (Audio "
                                           "Conditioning (Sonic)): unlinked positive prompts then get the null "
                                           "audio."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="The paper's f: 1.0 as published, 0 disables the audio, negative pushes away."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which the audio starts acting (turned into a sigma "
                                       "when each sampling run starts, with the model sampling then in force)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which the audio stops acting."),
                io.MultiType.Input("negative_audio_embeds", EMBEDS_TYPES, optional=True,
                                   tooltip="Audio for the negative prompt; default: the null audio "
                                               "(the projector's output for a zero embedding), as in the paper."),
                # Appended last and optional, so saved workflows (positional widget values) still load.
                io.Combo.Input("block_preset", options=list(BLOCK_PRESETS), default="all", optional=True,
                               tooltip="Which of the ten adapter sites get the audio: 'all' as published; the "
                                       "middle and coarse sites (output 3-5) shape the layout, the fine ones "
                                       "(output 9-11) texture and colour."),
                io.String.Input("block_weights", default="", optional=True,
                                tooltip=f"Overrides block_preset when not empty: ten numbers, one per site in "
                                        f"the order {BLOCK_SITE_NAMES}, e.g. '1, 1, 1, 1, 0.5, 0.5, 0.5, 0, 0, 0'. "
                                        f"Each multiplies strength at its site; 0 turns the site off; each "
                                        f"within -{FACTOR_LIMIT:g}..{FACTOR_LIMIT:g}."),
                SonicStrengthCurve.Input("strength_curve", optional=True,
                                         tooltip="One factor per latent on strength, e.g. from Loudness Strength "
                                                 "Curve (Sonic): with Audio Encode Frames the audio acts harder "
                                                 "on loud frames. Its length must equal the latent batch."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, sonic_adapter, audio_embeds=None, strength=1.0, start_percent=0.0, end_percent=1.0,
                negative_audio_embeds=None, block_preset="all", block_weights="", strength_curve=None):
        node = APPLY
        require_finite(node, strength=strength, start_percent=start_percent, end_percent=end_percent)
        weights = _site_weights(node, block_preset, block_weights)
        _check_folded_factors(node, strength, strength_curve)
        if start_percent > end_percent:
            raise NodeInputError(f"{node}: start_percent ({start_percent}) is after end_percent ({end_percent}); "
                                 f"swap them.")
        with node_errors(node, IncompatibleModelError):
            check_unet_fits(model)
        audio_embeds = audio_embeds_value(node, "audio_embeds", audio_embeds)
        negative_audio_embeds = audio_embeds_value(node, "negative_audio_embeds", negative_audio_embeds)
        check_embeds(node, audio_embeds=audio_embeds, negative_audio_embeds=negative_audio_embeds)
        check_curve(node, strength_curve)
        sonic_adapter = sonic_adapter.with_block_dtype(resident_dtype(model))
        # Projected here, null audio included, so no model is loaded inside sampling.
        null = sonic_adapter.null_tokens()
        cond = sonic_adapter.project(audio_embeds) if audio_embeds is not None else null
        uncond = sonic_adapter.project(negative_audio_embeds) if negative_audio_embeds is not None else null
        patch = SonicAudioPatch(sonic_adapter, cond, uncond, strength, start_percent, end_percent,
                                block_weights=weights, row_strengths=strength_curve, source=node)
        return io.NodeOutput(register(model.clone(), patch))
