"""The pack registers through ComfyUI's real loader (which only logs import failures)."""
import os
import re
from pathlib import Path

import comfy_host
import folder_paths
from conftest import BASE, EXTRA_SONIC_DIR, PACK_MODULE, ROOT, TORCHAUDIO_BLOCKED

import nodes

EXPECTED_NODES = {
    "SonicLoadAudio": "Load Audio (Sonic)",
    "SonicAudioEncoderLoader": "Audio Encoder Loader (Sonic)",
    "SonicAudioEncode": "Audio Encode (Sonic)",
    "SonicAudioEmbedsMix": "Audio Embeds Mix (Sonic)",
    "SonicAdapterLoader": "Sonic Adapter Loader",
    "SonicApplyAdapter": "Apply Sonic Adapter",
    "SonicAudioConditioning": "Audio Conditioning (Sonic)",
    "SonicAudioEdit": "Audio Edit (Sonic)",
    "SonicEditGuider": "Sonic Edit Guider",
    "SonicDDIMEditSampler": "Sonic DDIM Edit Sampler",
    "SonicDualGuider": "Sonic Dual Guider (text / audio)",
    "SonicAudioGuidance": "Sonic Audio Guidance (KSampler)",
    "SonicAudioEncodeFrames": "Audio Encode Frames (Sonic)",
    "SonicLoudnessCurve": "Loudness Strength Curve (Sonic)",
    "SonicSharedNoise": "Shared Noise (Sonic)",
    "SonicLatentFrames": "Empty Latent Frames (Sonic)",
    "SonicCreateVideo": "Create Video (Sonic)",
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
    # The first nodes' IDs are permanent; newer nodes may follow, all under the prefix.
    assert set(EXPECTED_NODES) <= set(ours)
    assert all(k.startswith("Sonic") for k in ours)
    if not TORCHAUDIO_BLOCKED:  # core Load Audio needs torchaudio on ComfyUI 0.3.75
        assert "LoadAudio" in NODE_CLASS_MAPPINGS
    assert "LoadAudio" not in ours


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


def test_boot_loads_every_core_node_file_and_the_pack():
    """The in-process host (scripts/comfy_host.py) loads what the real server loads: no core
    comfy_extras file and no file of the pack fails to import. (comfy/utils.py once shadowed
    the `utils` package, so nodes_images.py failed here but not in main.py.) With torchaudio
    blocked, only files failing on torchaudio itself are allowed (core audio nodes need it)."""
    failures = comfy_host.IMPORT_FAILURES
    if TORCHAUDIO_BLOCKED:
        failures = [(p, e) for p, e in failures if "torchaudio" not in e]
    assert failures == []


def test_core_image_and_video_nodes_are_registered():
    for node_id in ("SaveAnimatedWEBP", "SaveAnimatedPNG", "ImageStitch", "ImageCrop", "ImageFlip"):
        assert node_id in nodes.NODE_CLASS_MAPPINGS, f"core node {node_id} (comfy_extras/nodes_images.py) is missing"
    video = Path(comfy_host.HOST) / "comfy_extras" / "nodes_video.py"
    if "CreateVideo" in video.read_text():  # both 0.3.75 and 0.33.0 have it
        assert "CreateVideo" in nodes.NODE_CLASS_MAPPINGS


def test_no_torchaudio_job_really_has_none():
    """In the no-torchaudio job (SONIC_BLOCK_TORCHAUDIO=1, scripts/run_tests.sh) torchaudio does
    not import and the pack resamples with comfy.audio or its own sinc filter; in the other jobs
    the venv has it."""
    import importlib.util

    from sonic_diffusion import resample

    assert (importlib.util.find_spec("torchaudio") is None) == TORCHAUDIO_BLOCKED
    backend, _ = resample._pick_backend("auto")
    if TORCHAUDIO_BLOCKED:
        assert backend in ("comfy", "sinc")


def test_web_extensions_are_named_under_the_pack_namespace():
    """Frontend extension names share one global registry: ours start with `sonicdiffusion.`
    (lowercase, as comfy-test lint asks); tests/test_browser.py checks the page registers them."""
    names = [n for js in sorted((ROOT / "web" / "js").glob("*.js"))
             for n in re.findall(r"registerExtension\(\{\s*name:\s*\"([^\"]+)\"", js.read_text())]
    assert names and all(re.fullmatch(r"sonicdiffusion\.[A-Za-z0-9_.]+", n) for n in names), names
