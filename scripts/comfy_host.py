"""Boots the ComfyUI tree built by setup_host.sh in-process, on the CPU, with this
pack loaded through ComfyUI's own custom-node loader. Shared by the tests, the
workflow builder and the tools; the demo uses the real server instead."""
import asyncio
import logging
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = Path(os.environ.get("SONIC_BUILD_DIR", ROOT / ".build"))
HOST = Path(os.environ.get("SONIC_COMFYUI_DIR", BUILD / "comfyui"))
# Generated stand-in weights, the same on every host: scripts/run_tests.sh shares one folder.
FIXTURES = Path(os.environ.get("SONIC_FIXTURE_DIR") or BUILD / "fixtures")
PACK_DIR_NAME = "comfyui-sonicdiffusion"
# Third-party packs users run beside this one (read-only trees, docs in ../shared/packs/README.md):
# linked into the host's custom_nodes/ when present. SONIC_SHARED_PACKS names another folder.
SHARED_PACKS = Path(os.environ.get("SONIC_SHARED_PACKS") or ROOT.parent / "shared" / "packs")
BESIDE_PACKS = ("ComfyUI-AnimateDiff-Evolved",)
# (path, error) of each module ComfyUI's loader could not import during boot() (it only logs them).
IMPORT_FAILURES = []


class _ImportFailureLog(logging.Handler):
    """Collects ComfyUI's "Cannot import <path> module for custom nodes: <error>" warnings."""

    PATTERN = re.compile(r"Cannot import (.+?) module for custom nodes: (.*)", re.S)

    def emit(self, record):
        match = self.PATTERN.search(record.getMessage())
        if match:
            IMPORT_FAILURES.append((match.group(1), match.group(2)))


def boot(base: Path, extra_model_paths=None, cpu=True):
    """Returns the loaded pack module. `base` gets models/, input/, output/, custom_nodes/."""
    if not (HOST / "comfy").is_dir():
        raise RuntimeError(f"no ComfyUI tree at {HOST}: run scripts/setup_host.sh first")
    os.environ.setdefault("SONIC_COMFYUI_DIR", str(HOST))
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    from sonic_diffusion import host as sonic_host  # the one in-process boot, shared with evaluate --generate

    link_beside_packs(base)
    failures = _ImportFailureLog(logging.WARNING)
    logging.getLogger().addHandler(failures)
    try:
        pack = sonic_host.boot_in_process(base, cpu=cpu, extra_model_paths=extra_model_paths)
    finally:
        logging.getLogger().removeHandler(failures)
    return pack


def link_beside_packs(base: Path):
    """Links each pack of BESIDE_PACKS found in SHARED_PACKS into base/custom_nodes/ (never a copy
    that could be edited). Returns the names linked."""
    linked = []
    for name in BESIDE_PACKS:
        src = SHARED_PACKS / name
        if not (src / "__init__.py").is_file():
            continue
        dest = Path(base) / "custom_nodes" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.symlink(src, dest)
        linked.append(name)
    return linked


def beside_pack_module(name):
    """The loaded module of a linked third-party pack (ComfyUI keys it by its path), or None."""
    return next((m for k, m in list(sys.modules.items()) if k.replace("\\", "/").split("/")[-1] == name), None)


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
        if asyncio.iscoroutine(entry):  # newer ComfyUI (0.33.0): the cache's get is async
            entry = asyncio.run(entry)
        if entry is None:
            raise KeyError(f"node {node_id} has no cached output")
        outs = entry.outputs if hasattr(entry, "outputs") else entry
        return [o[0] if isinstance(o, list) and len(o) == 1 else o for o in outs]

    def ui(self, node_id):
        return self.executor.history_result["outputs"].get(str(node_id))


class Host:
    """Runs API-format graphs through ComfyUI's validator and executor (after boot)."""

    def __init__(self):
        self.server = _ServerStub()
        self.new_executor()

    def new_executor(self):
        import execution

        self.executor = execution.PromptExecutor(
            self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})  # ram_inactive: 0.33.0
        return self.executor

    def validate(self, prompt):
        import execution

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
        """Symlinks a file into the first path of models/<folder>/ outside custom_nodes/ so loaders list it."""
        import folder_paths

        src = Path(src)
        paths = folder_paths.get_folder_paths(folder)
        # Not into a pack's own models folder (AnimateDiff-Evolved lists its read-only tree first).
        dest_dir = Path(next((p for p in paths if "custom_nodes" not in Path(p).parts), paths[0]))
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / (name or src.name)
        if not dest.exists():
            os.symlink(src, dest)
        folder_paths.filename_list_cache.clear() if hasattr(folder_paths, "filename_list_cache") else None
        return dest.name

    def put_input(self, src, name=None):
        import folder_paths

        src = Path(src)
        dest = Path(folder_paths.get_input_directory()) / (name or src.name)
        if not dest.exists():
            # A copy: Load Audio (Sonic) and newer ComfyUI (0.33.0) refuse links out of input/.
            shutil.copyfile(src, dest)
        return dest.name
