"""Boots the ComfyUI tree built by setup_host.sh in-process, on the CPU, with this
pack loaded through ComfyUI's own custom-node loader. Shared by the tests, the
workflow builder and the tools; the demo uses the real server instead."""
import asyncio
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("SONIC_BUILD_DIR", ROOT / ".build"))
HOST = Path(os.environ.get("SONIC_COMFYUI_DIR", BUILD / "comfyui"))
PACK_DIR_NAME = "comfyui-sonicdiffusion"


def boot(base: Path, extra_model_paths=None, cpu=True):
    """Returns the loaded pack module. `base` gets models/, input/, output/, custom_nodes/."""
    if not (HOST / "comfy").is_dir():
        raise RuntimeError(f"no ComfyUI tree at {HOST}: run scripts/setup_host.sh first")
    base = Path(base)
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        os.symlink(ROOT, link)
    sys.path.insert(0, str(HOST))
    from comfy.cli_args import args  # must precede every other comfy import

    args.cpu = cpu
    args.base_directory = str(base)
    import folder_paths  # noqa: F401
    if extra_model_paths is not None:
        import utils.extra_config

        utils.extra_config.load_extra_path_config(str(extra_model_paths))
    import nodes

    logging.getLogger().setLevel(logging.WARNING)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    key = next((k for k in sys.modules if k.endswith(PACK_DIR_NAME)), None)
    if key is None:
        raise RuntimeError("ComfyUI did not import the pack; see the log above for its import error")
    # One copy of the model package: `sonic_diffusion` is the copy ComfyUI loaded.
    for name in list(sys.modules):
        if name.startswith(key + ".sonic_diffusion"):
            sys.modules["sonic_diffusion" + name[len(key + ".sonic_diffusion"):]] = sys.modules[name]
    if "sonic_diffusion" not in sys.modules:
        raise RuntimeError("the pack loaded but never imported its sonic_diffusion package")
    return sys.modules[key]
