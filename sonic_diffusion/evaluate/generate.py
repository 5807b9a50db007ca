"""``--generate``: render one image per audio file through the pack's own ComfyUI graph.

The graph is the stock audio-to-image one (workflows/sonic_audio_to_image.json):
CheckpointLoaderSimple -> SonicAudioEncoderLoader / SonicLoadAudio / SonicAudioEncode
-> SonicAdapterLoader -> SonicApplyAdapter -> KSampler -> VAEDecode, run in-process
through ComfyUI's validator and executor (booted on a private base folder whose
models/ and input/ hold links to the given files, as scripts/comfy_host.py does for
the tests). Models stay loaded between images (the executor's output cache).

Each image gets the seed ``base_seed + (sha256(stem) mod 2**31)``: fixed per audio
file, independent of which other files are rendered. ``generation.json`` in the
output folder records the settings; images already there with the same settings
are kept (so a grown audio list only renders the new files), different settings
need ``--overwrite``.
"""
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

from ..files import write_atomic, write_text_atomic

BUNDLED = "bundled (from the adapter file)"  # nodes/adapter.py's choice for a bundle's own projector


class GenerationError(RuntimeError):
    pass


def stem_seed(base_seed, stem):
    return int(base_seed) + int.from_bytes(hashlib.sha256(stem.encode()).digest()[:4], "little") % (2 ** 31)


def _booted():
    mod = sys.modules.get("nodes")
    return mod is not None and "SonicApplyAdapter" in getattr(mod, "NODE_CLASS_MAPPINGS", {})


@contextlib.contextmanager
def host_session():
    """ComfyUI booted in this process with the pack loaded (a booted one is reused).
    A host booted here works in a temporary base folder that is removed afterwards."""
    if _booted():
        yield
        return
    from .. import host

    base = Path(tempfile.mkdtemp(prefix="sonic-eval-comfy-"))
    try:
        host.boot_in_process(base)
        yield
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _link(folder_kind, src):
    """Links ``src`` into the host's folder; returns the name loaders know it by."""
    import folder_paths

    src = Path(src).resolve()
    if folder_kind == "input":
        dest_dir = Path(folder_paths.get_input_directory())
    else:
        dest_dir = Path(folder_paths.get_folder_paths(folder_kind)[0])
    dest_dir.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(str(src).encode()).hexdigest()[:8]
    dest = dest_dir / f"eval-{tag}-{src.name}"
    if not dest.exists():
        if folder_kind == "input":
            shutil.copyfile(src, dest)  # Load Audio (Sonic) refuses symlinks out of input/
        else:
            os.symlink(src, dest)
    if hasattr(folder_paths, "filename_list_cache"):
        folder_paths.filename_list_cache.clear()
    return dest.name


def graph(names, audio, seed, s):
    from ..graphs import audio_to_image

    return audio_to_image(names["ckpt"], names["clap"], names["adapter"], names["projector"], audio, seed=seed,
                          steps=s["steps"], cfg=s["cfg"], width=s["width"], height=s["height"], sampler=s["sampler"],
                          scheduler=s["scheduler"], prompt=s["prompt"], negative=s["negative"],
                          strength=s["strength"])


class _ServerStub:
    """What PromptExecutor needs of PromptServer: a sink for its messages."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass


def _run(executor, prompt):
    import execution

    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    if not ok:
        raise GenerationError(f"the generation graph is invalid: {error} {node_errors}")
    executor.execute(prompt, str(uuid.uuid4()), {}, outputs)
    if not executor.success:
        errs = [d for (ev, d) in executor.status_messages if ev in ("execution_error", "execution_interrupted")]
        raise GenerationError(errs[0].get("exception_message", str(errs[0])) if errs else "generation failed")
    entry = executor.caches.outputs.get("dec")
    if asyncio.iscoroutine(entry):  # newer ComfyUI (0.33.0): the cache's get is async
        entry = asyncio.run(entry)
    outs = entry.outputs if hasattr(entry, "outputs") else entry
    img = outs[0]
    img = img[0] if isinstance(img, list) else img  # [1, H, W, 3]
    return img[0]


def settings_record(checkpoint, adapter, projector, clap, settings):
    from .cache import file_fingerprint

    files = {"checkpoint": checkpoint, "adapter": adapter, "projector": projector, "clap": clap}
    return {"files": {k: {"path": str(Path(v).resolve()), "fingerprint": file_fingerprint(v)} for k, v in files.items() if v},
            **settings}


def _check_files(audio_files, checkpoint, adapter, clap, projector):
    for what, p in (("checkpoint", checkpoint), ("adapter", adapter), ("CLAP weights", clap),
                    ("projector", projector)):
        if p is not None and not Path(p).is_file():
            raise GenerationError(f"--generate: the {what} file {p} does not exist")
    stems = [Path(a).stem for a in audio_files]
    if len(set(stems)) != len(stems):
        raise GenerationError("--generate: two audio files share a stem; images are named after the stem")
    return stems


def _kept_images(out_dir, rec_path, record, stems, overwrite):
    """The images of an earlier run with the same settings ({stem: info}), or {}."""
    old = json.loads(rec_path.read_text()) if rec_path.is_file() else None
    same = old is not None and {k: v for k, v in old.items() if k != "images"} == record
    if old is not None and not same and not overwrite and any((out_dir / f"{st}.png").exists() for st in stems):
        raise GenerationError(
            f"{out_dir} holds images rendered with other settings ({rec_path}); pass --overwrite to "
            "re-render them, or use another --generated folder")
    if not same or overwrite:
        return {}
    return {st: info for st, info in old.get("images", {}).items() if (out_dir / f"{st}.png").exists()}


def _render(todo, out_dir, files, seed, s, progress):
    """Runs the graph once per (audio, stem); returns {stem: info} of the rendered images."""
    import execution
    from PIL import Image
    from tqdm.auto import tqdm

    checkpoint, adapter, clap, projector = files
    names = {"ckpt": _link("checkpoints", checkpoint), "adapter": _link("sonic_diffusion", adapter),
             "clap": _link("audio_encoders", clap),
             "projector": _link("sonic_diffusion", projector) if projector else BUNDLED}
    executor = execution.PromptExecutor(_ServerStub(), cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0})
    done = {}
    for audio, stem in tqdm(todo, desc="generate", unit="image", disable=not progress):
        sd = stem_seed(seed, stem)
        img = _run(executor, graph(names, _link("input", audio), sd, s))
        arr = (img.float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
        write_atomic(out_dir / f"{stem}.png", lambda tmp, arr=arr: Image.fromarray(arr).save(tmp, format="PNG"))
        done[stem] = {"audio": str(Path(audio).resolve()), "seed": sd}
    return done


def generate(audio_files, out_dir, checkpoint, adapter, clap, projector=None, seed=0, steps=50, cfg=7.5,
             width=512, height=512, sampler="euler", scheduler="normal", prompt="", negative="",
             strength=1.0, overwrite=False, progress=True):
    """Renders ``out_dir/<stem>.png`` for each audio file. Returns {"rendered": n, "kept": n}."""
    stems = _check_files(audio_files, checkpoint, adapter, clap, projector)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = {"seed": int(seed), "steps": int(steps), "cfg": float(cfg), "width": int(width), "height": int(height),
         "sampler": sampler, "scheduler": scheduler, "prompt": prompt, "negative": negative,
         "strength": float(strength), "seed_rule": "seed + sha256(stem)[:4] mod 2**31"}
    record = settings_record(checkpoint, adapter, projector, clap, s)
    rec_path = out_dir / "generation.json"
    images = _kept_images(out_dir, rec_path, record, stems, overwrite)
    todo = [(a, st) for a, st in zip(audio_files, stems) if st not in images]
    if todo:
        with host_session():
            images.update(_render(todo, out_dir, (checkpoint, adapter, clap, projector), seed, s, progress))
    for audio, stem in zip(audio_files, stems):
        images.setdefault(stem, {"audio": str(Path(audio).resolve()), "seed": stem_seed(seed, stem)})
    write_text_atomic(rec_path, json.dumps(dict(record, images=images), indent=2, sort_keys=True))
    return {"rendered": len(todo), "kept": len(stems) - len(todo)}
