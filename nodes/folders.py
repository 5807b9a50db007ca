"""Model folders of the pack, registered at import (ComfyUI 0.3.75 never calls on_load)."""
import os

import folder_paths

SONIC_FOLDER = "sonic_diffusion"
CLAP_FOLDER = "audio_encoders"
WEIGHT_EXTENSIONS = {".pt", ".pth", ".safetensors"}


def _extend(key, default_dir):
    """Adds our default path to a folder key, keeping every path a user configured
    (extra_model_paths.yaml is applied before packs load)."""
    entry = folder_paths.folder_names_and_paths.get(key)
    if entry is None:
        folder_paths.folder_names_and_paths[key] = ([default_dir], set(WEIGHT_EXTENSIONS))
        return
    paths, extensions = entry
    if default_dir not in paths:
        paths.append(default_dir)
    if not extensions:
        # A key first created by extra_model_paths.yaml has an empty set, which lists every file.
        if isinstance(extensions, set):
            extensions.update(WEIGHT_EXTENSIONS)
        else:
            folder_paths.folder_names_and_paths[key] = (paths, set(WEIGHT_EXTENSIONS))


def register_model_folders():
    _extend(SONIC_FOLDER, os.path.join(folder_paths.models_dir, SONIC_FOLDER))
    _extend(CLAP_FOLDER, os.path.join(folder_paths.models_dir, CLAP_FOLDER))
