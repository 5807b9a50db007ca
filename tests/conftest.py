"""Boots a real ComfyUI host (the tree built by scripts/setup_host.sh) in-process
on the CPU, loads this pack through ComfyUI's own custom-node loader and offers
fixtures to run API-format graphs through the real executor.

Everything happens at import so that test modules can import ``sonic_diffusion``
at their top: the name is aliased to the copy of the package that ComfyUI loaded,
so tests and nodes share one set of classes and caches.
"""
import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import comfy_host  # noqa: E402

BUILD = comfy_host.BUILD
# The base directory holds models/, input/, output/ and custom_nodes/ for this session.
BASE = Path(tempfile.mkdtemp(prefix="sonic-comfy-base-"))

# An extra_model_paths.yaml as a user would have, applied before packs load (as main.py does):
# the pack must extend the folder it names, never replace it.
EXTRA_SONIC_DIR = BASE / "extra_sonic_models"
EXTRA_SONIC_DIR.mkdir()
_yaml = BASE / "extra_model_paths.yaml"
_yaml.write_text(f"user_models:\n    base_path: {BASE}\n    sonic_diffusion: extra_sonic_models\n")

PACK_MODULE = comfy_host.boot(BASE, extra_model_paths=_yaml)

import execution  # noqa: E402
import folder_paths  # noqa: E402


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
