"""Boots a real ComfyUI host (the tree built by scripts/setup_host.sh) in-process
on the CPU, loads this pack through ComfyUI's own custom-node loader and offers
fixtures to run API-format graphs through the real executor.

Everything happens at import so that test modules can import ``sonic_diffusion``
at their top: the name is aliased to the copy of the package that ComfyUI loaded,
so tests and nodes share one set of classes and caches.
"""
import asyncio
import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("SONIC_BUILD_DIR", ROOT / ".build"))
HOST = Path(os.environ.get("SONIC_COMFYUI_DIR", BUILD / "comfyui"))
PACK_DIR_NAME = "comfyui-sonicdiffusion"

if not (HOST / "comfy").is_dir():
    raise RuntimeError(f"no ComfyUI tree at {HOST}: run scripts/setup_host.sh first (or scripts/run_tests.sh)")

# The base directory holds models/, input/, output/ and custom_nodes/ for this session.
BASE = Path(tempfile.mkdtemp(prefix="sonic-comfy-base-"))
for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
    (BASE / sub).mkdir(parents=True, exist_ok=True)
os.symlink(ROOT, BASE / "custom_nodes" / PACK_DIR_NAME)

sys.path.insert(0, str(HOST))
from comfy.cli_args import args  # noqa: E402  must precede every other comfy import

args.cpu = True
args.base_directory = str(BASE)
args.disable_all_custom_nodes = False

# An extra_model_paths.yaml as a user would have, applied before packs load (as main.py does):
# the pack must extend the folder it names, never replace it.
EXTRA_SONIC_DIR = BASE / "extra_sonic_models"
EXTRA_SONIC_DIR.mkdir()
_yaml = BASE / "extra_model_paths.yaml"
_yaml.write_text(f"user_models:\n    base_path: {BASE}\n    sonic_diffusion: extra_sonic_models\n")

import folder_paths  # noqa: E402
import utils.extra_config  # noqa: E402

utils.extra_config.load_extra_path_config(str(_yaml))

import execution  # noqa: E402
import nodes  # noqa: E402
import server  # noqa: E402,F401  (imported by the executor's progress handler)

logging.getLogger().setLevel(logging.WARNING)
asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))

_pack_key = next((k for k in sys.modules if k.endswith(PACK_DIR_NAME)), None)
if _pack_key is None:
    raise RuntimeError("ComfyUI did not import the pack; see the log above for its import error")
for _name in list(sys.modules):
    if _name.startswith(_pack_key + ".sonic_diffusion"):
        sys.modules["sonic_diffusion" + _name[len(_pack_key + ".sonic_diffusion"):]] = sys.modules[_name]
PACK_MODULE = sys.modules[_pack_key]
if "sonic_diffusion" not in sys.modules:
    raise RuntimeError("the pack loaded but never imported its sonic_diffusion package")


class _ServerStub:
    """What PromptExecutor needs of PromptServer: a sink for its messages."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


class GraphError(RuntimeError):
    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details or {}


class GraphRun:
    def __init__(self, executor, prompt):
        self.executor = executor
        self.prompt = prompt

    def outputs(self, node_id):
        """The node's output tuple, read from the executor's output cache."""
        entry = self.executor.caches.outputs.get(str(node_id))
        if entry is None:
            raise KeyError(f"node {node_id} has no cached output")
        outs = entry.outputs if hasattr(entry, "outputs") else entry
        return [o[0] if isinstance(o, list) and len(o) == 1 else o for o in outs]

    def ui(self, node_id):
        return self.executor.history_result["outputs"].get(str(node_id))


class Host:
    """Runs API-format graphs through ComfyUI's validator and executor."""

    base = BASE
    root = ROOT

    def __init__(self):
        self.server = _ServerStub()
        self.executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})

    def new_executor(self):
        self.executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0})
        return self.executor

    def validate(self, prompt):
        return asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt, expect_error=False):
        prompt = {str(k): v for k, v in prompt.items()}
        ok, error, outputs, node_errors = self.validate(prompt)
        if not ok:
            if expect_error:
                raise GraphError(f"invalid prompt: {error} {node_errors}", {"error": error, "node_errors": node_errors})
            raise GraphError(f"invalid prompt: {error} {node_errors}")
        self.server.messages.clear()
        self.executor.execute(prompt, str(uuid.uuid4()), {}, outputs)
        if not self.executor.success:
            errs = [d for (ev, d) in self.executor.status_messages if ev in ("execution_error", "execution_interrupted")]
            msg = errs[0].get("exception_message", str(errs[0])) if errs else "unknown failure"
            raise GraphError(msg, errs[0] if errs else {})
        return GraphRun(self.executor, prompt)

    def link_model(self, folder, src, name=None):
        """Symlinks a generated file into BASE/models/<folder>/ so loaders list it."""
        src = Path(src)
        dest_dir = Path(folder_paths.get_folder_paths(folder)[0])
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / (name or src.name)
        if not dest.exists():
            os.symlink(src, dest)
        folder_paths.filename_list_cache.clear() if hasattr(folder_paths, "filename_list_cache") else None
        return dest.name

    def put_input(self, src, name=None):
        src = Path(src)
        dest = Path(folder_paths.get_input_directory()) / (name or src.name)
        if not dest.exists():
            os.symlink(src, dest)
        return dest.name


@pytest.fixture(scope="session")
def host():
    return Host()


@pytest.fixture(scope="session")
def fixture_dir():
    """Generated stand-in weights and audio, cached in the build folder across sessions."""
    from sonic_diffusion import fixtures

    out = BUILD / "fixtures"
    out.mkdir(parents=True, exist_ok=True)
    return fixtures.FixtureSet(out)
