"""SonicDiffusion model code: audio encoder, projector, gated audio attention,
checkpoint formats, Plug-and-Play editing and training.

This package never imports ``comfy_api``: the ComfyUI node glue lives in the
pack's ``nodes/`` package. It does use ComfyUI's model-side modules (``comfy.ops``,
``comfy.model_patcher``, ``comfy.model_management``), which must be importable.
"""

# Official file layouts, shared by loaders, converters, fixtures and tests.
AUDIO_EMBED_DIM = 1024
AUDIO_TOKENS = 77
TOKEN_DIM = 768
CLAP_SAMPLE_RATE = 44100
CLAP_CLIP_SAMPLES = 441000
