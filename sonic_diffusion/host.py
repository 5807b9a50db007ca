"""Makes ComfyUI's `comfy` package importable for the command-line tools
(fixtures, convert, train, evaluate), which run outside a ComfyUI process."""
import os
import sys
from pathlib import Path

_PACK = Path(__file__).resolve().parents[1]


def locate_comfyui():
    """Env override, else the ComfyUI this pack is installed in, else the test host."""
    env = os.environ.get("SONIC_COMFYUI_DIR") or os.environ.get("COMFYUI_PATH")
    candidates = [Path(env)] if env else []
    candidates.append(_PACK.parent.parent)  # <ComfyUI>/custom_nodes/<pack>
    build = os.environ.get("SONIC_BUILD_DIR")
    candidates.append(Path(build) / "comfyui" if build else _PACK / ".build" / "comfyui")
    for c in candidates:
        if (c / "comfy" / "model_management.py").is_file():
            return c
    raise RuntimeError("cannot find ComfyUI: set SONIC_COMFYUI_DIR to the folder holding comfy/ "
                       "(or run scripts/setup_host.sh to build the test host)")


def bootstrap(cpu=None):
    """Must run before any comfy import: model_management probes the GPU at import
    unless args.cpu is set. cpu=None picks the CPU when CUDA is unavailable."""
    if "comfy.model_management" in sys.modules:
        return
    root = str(locate_comfyui())
    if root not in sys.path:
        sys.path.insert(0, root)
    from comfy.cli_args import args

    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    args.cpu = bool(cpu)
