"""SonicDiffusion for ComfyUI: audio-driven image generation and editing with SD 1.x.

ComfyUI loads this file; it registers the model folders at import (ComfyUI 0.3.75
never calls ComfyExtension.on_load) and exposes the V3 entry point.
"""
from .nodes.folders import register_model_folders

register_model_folders()

from .nodes import comfy_entrypoint  # noqa: E402

WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
