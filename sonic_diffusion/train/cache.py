"""Cached features: CLAP embeddings, VAE latents and CLIP text tokens.

One small .safetensors per item, under CACHE/<kind>/<key[:2]>/<key>.safetensors. The key
is a SHA-256 over the input file's content hash (or the caption text) plus every
setting that changes the result (model file content, window, resolution, ...), so a
changed file or setting computes anew and nothing stale is ever reused. Items that
cannot be decoded leave a <key>.failed note, so every process (and the next run)
skips them without retrying. Writes are atomic (temp file + rename).
"""
import contextlib
import hashlib
import json
import logging
from pathlib import Path

import torch

from ..files import file_sha256, write_atomic, write_text_atomic
from . import distributed as D

CACHE_VERSION = "1"
log = logging.getLogger("sonic_diffusion.train")


class FeatureCache:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._hash_index_path = self.root / "file_hashes.json"
        self._hash_index = None

    # -- content hashes, remembered by (path, size, mtime) so big checkpoints hash once
    def file_hash(self, path):
        path = Path(path).resolve()
        st = path.stat()
        if self._hash_index is None:
            try:
                self._hash_index = json.loads(self._hash_index_path.read_text())
            except (OSError, ValueError):
                self._hash_index = {}
        rec = self._hash_index.get(str(path))
        if rec and rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
            return rec[2]
        digest = file_sha256(path)
        self._hash_index[str(path)] = [st.st_size, st.st_mtime_ns, digest]
        with contextlib.suppress(OSError):  # only a speed-up
            write_text_atomic(self._hash_index_path, json.dumps(self._hash_index))
        return digest

    @staticmethod
    def key(kind, **parts):
        blob = json.dumps({"kind": kind, "v": CACHE_VERSION, **parts}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, kind, key, suffix=".safetensors"):
        return self.root / kind / key[:2] / (key + suffix)

    def load(self, kind, key):
        from safetensors.torch import load_file

        p = self._path(kind, key)
        if not p.exists():
            return None
        try:
            return load_file(str(p))
        except Exception:  # a damaged cache file is recomputed, never trusted
            log.warning("cache file %s is damaged; recomputing", p)
            p.unlink(missing_ok=True)
            return None

    def save(self, kind, key, tensors, meta=None):
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        metadata = {k: str(v) for k, v in (meta or {}).items()}
        write_atomic(self._path(kind, key), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def failure(self, kind, key):
        p = self._path(kind, key, ".failed")
        return p.read_text() if p.exists() else None

    def mark_failed(self, kind, key, reason):
        p = self._path(kind, key, ".failed")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(reason)


def _fill(cache, kind, jobs, compute, desc):
    """jobs: {name: key}. Computes the missing entries (each process a share, then a
    barrier), loads them all. Returns ({name: tensors}, {name: failure reason})."""
    missing = [n for n, k in jobs.items() if cache.load(kind, k) is None and cache.failure(kind, k) is None]
    mine = missing[D.rank()::D.world_size()]
    if mine:
        log.info("%s: computing %d of %d (cached: %d)", desc, len(mine), len(jobs), len(jobs) - len(missing))
        compute(mine)
    D.barrier()
    out, failed = {}, {}
    for n, k in jobs.items():
        reason = cache.failure(kind, k)
        if reason is not None:
            failed[n] = reason
            continue
        t = cache.load(kind, k)
        if t is None:
            failed[n] = "not computed"
        else:
            out[n] = t
    return out, failed


# -- CLAP --------------------------------------------------------------------------------

def clap_embeddings(items, cache, clap_path, window="center"):
    """{stem: [1024] float32}, {stem: reason} for items whose audio does not decode."""
    clap_id = cache.file_hash(clap_path)
    jobs = {it.stem: cache.key("clap", audio=cache.file_hash(it.audio), clap=clap_id, window=window) for it in items}
    by_stem = {it.stem: it for it in items}

    def compute(stems):
        from ..audio_decode import decode_audio
        from ..audio_prep import prepare_clip
        from ..clap import ClapEncoder

        encoder = ClapEncoder.from_file(clap_path)
        for stem in stems:
            it, key = by_stem[stem], jobs[stem]
            try:
                wave, sr = decode_audio(it.audio)
                clip = prepare_clip(wave, sr, window=window)
            except Exception as e:  # unreadable audio: skipped and counted, never a crash
                cache.mark_failed("clap", key, f"{it.audio.name}: {type(e).__name__}: {e}")
                continue
            emb = encoder.encode(clip)[0]
            cache.save("clap", key, {"embedding": emb.float()}, {"file": it.audio.name})
        del encoder

    got, failed = _fill(cache, "clap", jobs, compute, "CLAP embeddings")
    return {s: t["embedding"] for s, t in got.items()}, failed


# -- VAE latents ---------------------------------------------------------------------

def prepare_image(img, resolution):
    """PIL RGB -> [1,H,W,3] float in 0..1: shorter side to `resolution`, centre crop."""
    import numpy as np
    from PIL import Image

    w, h = img.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)


def vae_latents(items, cache, get_vae, vae_id, resolution, hflip):
    """{stem: {"latent": [4,h,w], "latent_flip": [4,h,w] (hflip only)}} (ComfyUI latent
    space, unscaled: the model's process_latent_in scales it), plus failures."""
    jobs = {it.stem: cache.key("latent", image=cache.file_hash(it.image), vae=vae_id, res=resolution,
                               crop="center", hflip=bool(hflip)) for it in items}
    by_stem = {it.stem: it for it in items}

    def compute(stems):
        from .dataset import load_image

        vae = get_vae()
        for stem in stems:
            it, key = by_stem[stem], jobs[stem]
            try:
                pixels = prepare_image(load_image(it.image), resolution)
            except Exception as e:
                cache.mark_failed("latent", key, f"{it.image.name}: {type(e).__name__}: {e}")
                continue
            batch = torch.cat([pixels, pixels.flip(2)]) if hflip else pixels
            with torch.no_grad():
                lat = vae.encode(batch).float().cpu()
            t = {"latent": lat[0]}
            if hflip:
                t["latent_flip"] = lat[1]
            cache.save("latent", key, t, {"file": it.image.name})

    return _fill(cache, "latent", jobs, compute, "VAE latents")


# -- CLIP text tokens -------------------------------------------------------------------

def encode_text(clip, text):
    """The checkpoint's own CLIP-L hidden states for `text`: [77,768] (SD1: one chunk;
    longer captions are cut to their first 77 tokens, as the official pipeline does)."""
    tokens = clip.tokenize(text)
    with torch.no_grad():
        cond = clip.encode_from_tokens(tokens)
    return cond[0, :77].float().cpu()


def text_tokens(texts, cache, get_clip, clip_id):
    """{text: [77,768]} for every distinct text."""
    texts = sorted(set(texts))
    jobs = {t: cache.key("text", text=t, clip=clip_id) for t in texts}

    def compute(todo):
        clip = get_clip()
        for t in todo:
            cache.save("text", jobs[t], {"tokens": encode_text(clip, t)})

    got, failed = _fill(cache, "text", jobs, compute, "CLIP text tokens")
    if failed:
        raise RuntimeError(f"text encoding failed for {len(failed)} caption(s)")
    return {t: v["tokens"] for t, v in got.items()}
