"""ComfyUI for the command-line tools (fixtures, convert, train, evaluate), which run
outside a ComfyUI process: where its tree is, how to import `comfy` before anything
probes the GPU, which device to use (ComfyUI's own choice: CUDA, MPS, XPU, NPU,
DirectML or the CPU), and booting the whole host in-process for graph runs."""
import logging
import os
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_DIR_NAME = "comfyui-sonicdiffusion"  # the pack's folder name inside a booted host's custom_nodes/


def locate_comfyui():
    """Env override, else the ComfyUI this pack is installed in, else the test host."""
    env = os.environ.get("SONIC_COMFYUI_DIR") or os.environ.get("COMFYUI_PATH")
    candidates = [Path(env)] if env else []
    candidates.append(PACK_ROOT.parent.parent)  # <ComfyUI>/custom_nodes/<pack>
    build = os.environ.get("SONIC_BUILD_DIR")
    candidates.append(Path(build) / "comfyui" if build else PACK_ROOT / ".build" / "comfyui")
    for c in candidates:
        if (c / "comfy" / "model_management.py").is_file():
            return c
    raise RuntimeError("cannot find ComfyUI: set SONIC_COMFYUI_DIR to the folder holding comfy/ "
                       "(or run scripts/setup_host.sh to build the test host)")


def has_accelerator():
    """Whether ComfyUI's model management would find a device other than the CPU.
    (Without one it must be told --cpu, or its import fails probing CUDA.)"""
    import torch

    probes = [torch.cuda.is_available, getattr(torch.backends, "mps", None) and torch.backends.mps.is_available]
    for name in ("xpu", "npu", "mlu"):
        mod = getattr(torch, name, None)
        probes.append(getattr(mod, "is_available", None))
    return any(p() for p in probes if p is not None)


def bootstrap(cpu=None, directml=None, import_now=True):
    """Must run before any comfy import: model_management probes the device at import.
    cpu=None lets ComfyUI pick its device, and the CPU where it has none. directml:
    a DirectML device index, as ComfyUI's --directml (env SONIC_DIRECTML). import_now:
    import model_management here, with the host's import-time warnings hushed in a
    command-line tool (its errors are one line; a whole boot imports it later itself)."""
    if "comfy.model_management" in sys.modules:
        return
    root = str(locate_comfyui())
    if root not in sys.path:
        sys.path.insert(0, root)
    from comfy.cli_args import args

    if directml is None and os.environ.get("SONIC_DIRECTML", "") != "":
        directml = int(os.environ["SONIC_DIRECTML"])
    if directml is not None:
        args.directml = int(directml)
    if cpu is None:
        cpu = directml is None and not has_accelerator()
    args.cpu = bool(cpu)
    if import_now:
        _import_model_management_quietly()


def _import_model_management_quietly():
    """Newer ComfyUI logs warnings about GPU builds while importing (e.g. "You need pytorch
    with cu130"); in a tool with no logging set up they would precede its own output."""
    root = logging.getLogger()
    if root.handlers:  # logging is configured (a host, pytest): leave it alone
        import comfy.model_management
        return
    previous = root.level
    root.setLevel(logging.ERROR)
    try:
        import comfy.model_management  # noqa: F401
    finally:
        root.setLevel(previous)


def torch_device(name=None):
    """The torch.device for a --device option: "auto"/None is ComfyUI's device
    (model_management.get_torch_device()), anything else is taken as a torch device name."""
    import torch

    if name in (None, "", "auto"):
        import comfy.model_management as mm

        return mm.get_torch_device()
    return torch.device(name)


def boot_in_process(base, cpu=None, extra_model_paths=None):
    """Boots ComfyUI in this process with this pack loaded through ComfyUI's own
    custom-node loader; ``base`` gets models/, input/, output/, temp/, custom_nodes/.
    Returns the loaded pack module (its sonic_diffusion package becomes the one
    `import sonic_diffusion` finds)."""
    import asyncio

    base = Path(base)
    for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        os.symlink(PACK_ROOT, link)
    bootstrap(cpu=cpu, import_now=False)
    root = str(locate_comfyui())
    if sys.path[0] != root:  # ComfyUI's own `nodes`, `utils`... before any same-named folder
        sys.path.insert(0, root)
    from comfy.cli_args import args

    args.base_directory = str(base)
    import folder_paths  # noqa: F401 - reads args.base_directory at import

    # As main.py does, before nodes.py puts comfy/ first on sys.path: otherwise a later
    # `import utils.install_util` (server.py, via comfy_extras/nodes_images.py) finds
    # comfy/utils.py as `utils` and core nodes fail to import.
    import utils.extra_config

    if extra_model_paths is not None:
        utils.extra_config.load_extra_path_config(str(extra_model_paths))
    import nodes

    logging.getLogger().setLevel(logging.WARNING)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    key = next((k for k in sys.modules if k.endswith(PACK_DIR_NAME)), None)
    if key is None:
        raise RuntimeError("ComfyUI did not import the pack; see the log above for its import error")
    for name in list(sys.modules):
        if name.startswith(key + ".sonic_diffusion"):
            sys.modules["sonic_diffusion" + name[len(key + ".sonic_diffusion"):]] = sys.modules[name]
    if "sonic_diffusion" not in sys.modules:
        raise RuntimeError("the pack loaded but never imported its sonic_diffusion package")
    return sys.modules[key]
