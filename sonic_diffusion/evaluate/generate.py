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
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

PACK_ROOT = Path(__file__).resolve().parents[2]
BUNDLED = "bundled (from the adapter file)"  # nodes/adapter.py's choice for a bundle's own projector


class GenerationError(RuntimeError):
    pass


def stem_seed(base_seed, stem):
    return int(base_seed) + int.from_bytes(hashlib.sha256(stem.encode()).digest()[:4], "little") % (2 ** 31)


def _booted():
    mod = sys.modules.get("nodes")
    return mod is not None and "SonicApplyAdapter" in getattr(mod, "NODE_CLASS_MAPPINGS", {})


def boot_host(cpu=None):
    """Boots ComfyUI in this process with the pack loaded (once); reuses a booted one."""
    if _booted():
        return
    from .. import host

    os.environ.setdefault("SONIC_COMFYUI_DIR", str(host.locate_comfyui()))
    spec = importlib.util.spec_from_file_location("comfy_host", PACK_ROOT / "scripts" / "comfy_host.py")
    comfy_host = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(comfy_host)
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    base = Path(tempfile.mkdtemp(prefix="sonic-eval-comfy-"))
    comfy_host.boot(base, cpu=cpu)


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
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": names["ckpt"]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": s["prompt"], "clip": ["ckpt", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": s["negative"], "clip": ["ckpt", 1]}},
        "clap": {"class_type": "SonicAudioEncoderLoader", "inputs": {"clap_name": names["clap"]}},
        "load": {"class_type": "SonicLoadAudio", "inputs": {"audio": audio, "start_time": 0.0,
                                                           "duration": 0.0, "gain_db": 0.0}},
        "enc": {"class_type": "SonicAudioEncode", "inputs": {"audio_encoder": ["clap", 0], "audio": ["load", 0],
                                                            "window": "center", "offset": 0.0}},
        "adapter": {"class_type": "SonicAdapterLoader", "inputs": {"adapter_name": names["adapter"],
                                                                   "projector_name": names["projector"]}},
        "apply": {"class_type": "SonicApplyAdapter", "inputs": {"model": ["ckpt", 0], "sonic_adapter": ["adapter", 0],
                                                                "audio_embeds": ["enc", 0], "strength": s["strength"],
                                                                "start_percent": 0.0, "end_percent": 1.0}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": s["width"], "height": s["height"],
                                                                "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {"model": ["apply", 0], "seed": seed, "steps": s["steps"],
                                                    "cfg": s["cfg"], "sampler_name": s["sampler"],
                                                    "scheduler": s["scheduler"], "positive": ["pos", 0],
                                                    "negative": ["neg", 0], "latent_image": ["latent", 0],
                                                    "denoise": 1.0}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["ckpt", 2]}},
        # An output node, so that the executor runs the graph (the image is read from its cache).
        "out": {"class_type": "PreviewImage", "inputs": {"images": ["dec", 0]}},
    }


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
    outs = entry.outputs if hasattr(entry, "outputs") else entry
    img = outs[0]
    img = img[0] if isinstance(img, list) else img  # [1, H, W, 3]
    return img[0]


def settings_record(checkpoint, adapter, projector, clap, settings):
    from .cache import file_fingerprint

    files = {"checkpoint": checkpoint, "adapter": adapter, "projector": projector, "clap": clap}
    return {"files": {k: {"path": str(Path(v).resolve()), "fingerprint": file_fingerprint(v)} for k, v in files.items() if v},
            **settings}


def generate(audio_files, out_dir, checkpoint, adapter, clap, projector=None, seed=0, steps=50, cfg=7.5,
             width=512, height=512, sampler="euler", scheduler="normal", prompt="", negative="",
             strength=1.0, overwrite=False, progress=True):
    """Renders ``out_dir/<stem>.png`` for each audio file. Returns {"rendered": n, "kept": n}."""
    for what, p in (("checkpoint", checkpoint), ("adapter", adapter), ("CLAP weights", clap),
                    ("projector", projector)):
        if p is not None and not Path(p).is_file():
            raise GenerationError(f"--generate: the {what} file {p} does not exist")
    stems = [Path(a).stem for a in audio_files]
    if len(set(stems)) != len(stems):
        raise GenerationError("--generate: two audio files share a stem; images are named after the stem")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = {"seed": int(seed), "steps": int(steps), "cfg": float(cfg), "width": int(width), "height": int(height),
         "sampler": sampler, "scheduler": scheduler, "prompt": prompt, "negative": negative,
         "strength": float(strength), "seed_rule": "seed + sha256(stem)[:4] mod 2**31"}
    record = settings_record(checkpoint, adapter, projector, clap, s)
    rec_path = out_dir / "generation.json"
    old = json.loads(rec_path.read_text()) if rec_path.is_file() else None
    same = old is not None and {k: v for k, v in old.items() if k != "images"} == record
    if old is not None and not same and not overwrite:
        existing = [st for st in stems if (out_dir / f"{st}.png").exists()]
        if existing:
            raise GenerationError(
                f"{out_dir} holds images rendered with other settings ({rec_path}); pass --overwrite to "
                "re-render them, or use another --generated folder")
    images = dict(old.get("images", {})) if same else {}
    todo = [(a, st) for a, st in zip(audio_files, stems)
            if overwrite or not (same and (out_dir / f"{st}.png").exists())]
    if todo:
        boot_host()
        import execution
        from PIL import Image
        from tqdm.auto import tqdm

        names = {"ckpt": _link("checkpoints", checkpoint), "adapter": _link("sonic_diffusion", adapter),
                 "clap": _link("audio_encoders", clap),
                 "projector": _link("sonic_diffusion", projector) if projector else BUNDLED}
        executor = execution.PromptExecutor(_ServerStub(), cache_type=execution.CacheType.CLASSIC,
                                            cache_args={"lru": 0, "ram": 0})
        for audio, stem in tqdm(todo, desc="generate", unit="image", disable=not progress):
            sd = stem_seed(seed, stem)
            img = _run(executor, graph(names, _link("input", audio), sd, s))
            arr = (img.float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
            dest = out_dir / f"{stem}.png"
            tmp = out_dir / f".{stem}.{os.getpid()}.tmp.png"
            Image.fromarray(arr).save(tmp)
            os.replace(tmp, dest)
            images[stem] = {"audio": str(Path(audio).resolve()), "seed": sd}
    for audio, stem in zip(audio_files, stems):
        images.setdefault(stem, {"audio": str(Path(audio).resolve()), "seed": stem_seed(seed, stem)})
    tmp = rec_path.with_name(f".generation.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(record, images=images), indent=2, sort_keys=True))
    os.replace(tmp, rec_path)
    return {"rendered": len(todo), "kept": len(stems) - len(todo)}
