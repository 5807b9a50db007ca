"""The pack registers through ComfyUI's real loader (which only logs import failures)."""
import os
import re

import folder_paths
import nodes

from conftest import BASE, EXTRA_SONIC_DIR, PACK_MODULE

EXPECTED_NODES = {
    "SonicLoadAudio": "Load Audio (Sonic)",
    "SonicAudioEncoderLoader": "Audio Encoder Loader (Sonic)",
    "SonicAudioEncode": "Audio Encode (Sonic)",
    "SonicAudioEmbedsMix": "Audio Embeds Mix (Sonic)",
    "SonicAdapterLoader": "Sonic Adapter Loader",
    "SonicApplyAdapter": "Apply Sonic Adapter",
    "SonicAudioEdit": "Audio Edit (Sonic)",
    "SonicDualGuider": "Sonic Dual Guider (text / audio)",
    "SonicAudioGuidance": "Sonic Audio Guidance (KSampler)",
    "SonicAudioEncodeFrames": "Audio Encode Frames (Sonic)",
    "SonicSharedNoise": "Shared Noise (Sonic)",
}


def test_every_node_registers_under_its_id():
    for node_id, display in EXPECTED_NODES.items():
        assert node_id in nodes.NODE_CLASS_MAPPINGS, f"{node_id} is not registered"
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_id) == display
        # Registered from this pack, not some other module of the same name.
        assert nodes.NODE_CLASS_MAPPINGS[node_id].__module__.startswith(PACK_MODULE.__name__)


def test_node_ids_are_prefixed_and_never_shadow_core():
    from nodes import NODE_CLASS_MAPPINGS

    ours = [k for k, v in NODE_CLASS_MAPPINGS.items() if v.__module__.startswith(PACK_MODULE.__name__)]
    assert sorted(ours) == sorted(EXPECTED_NODES)
    assert all(k.startswith("Sonic") for k in ours)
    assert "LoadAudio" in NODE_CLASS_MAPPINGS and not NODE_CLASS_MAPPINGS["LoadAudio"].__module__.startswith(
        PACK_MODULE.__name__)


def test_sonic_models_folder_extends_user_paths_and_lists_only_weights():
    paths, extensions = folder_paths.folder_names_and_paths["sonic_diffusion"]
    default = os.path.join(folder_paths.models_dir, "sonic_diffusion")
    # The extra_model_paths.yaml folder (applied before the pack loaded) is still there, first.
    assert paths[0] == str(EXTRA_SONIC_DIR) and default in paths
    assert {".pt", ".pth", ".safetensors"} <= set(extensions)
    (EXTRA_SONIC_DIR / "readme.txt").write_text("not a weight file")
    (EXTRA_SONIC_DIR / "my_adapter.safetensors").write_bytes(b"")
    listed = folder_paths.get_filename_list("sonic_diffusion")
    assert "my_adapter.safetensors" in listed and "readme.txt" not in listed
    assert "audio_encoders" in folder_paths.folder_names_and_paths


def test_model_code_never_imports_comfy_api():
    root = BASE / "custom_nodes" / "comfyui-sonicdiffusion" / "sonic_diffusion"
    pattern = re.compile(r"^\s*(from|import)\s+comfy_api", re.M)
    offenders = [p.name for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_source_is_ascii():
    root = BASE / "custom_nodes" / "comfyui-sonicdiffusion"
    bad = []
    for p in list(root.glob("*.py")) + list(root.glob("nodes/*.py")) + list(root.rglob("sonic_diffusion/**/*.py")):
        try:
            p.read_bytes().decode("ascii")
        except UnicodeDecodeError:
            bad.append(str(p))
    assert bad == []
