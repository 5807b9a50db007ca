"""Per-file embedding cache: ``root/<model id>/<sha[:2]>/<sha256 of the file>.npy``.

The model id covers the weights (a fingerprint of each weight file), the config
and every preprocessing setting that changes the result, so a re-run on a grown
folder only computes the files it has not seen with that model. Writes are
atomic (temp file + rename): concurrent runs at worst compute a file twice.
"""
import hashlib
import json
from pathlib import Path

import numpy as np

from ..files import write_atomic


def file_fingerprint(path, edge=4 << 20):
    """Cheap identity of a (possibly multi-GB) weight file: name, size and the sha256
    of its first and last ``edge`` bytes."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(f"{path.name}|{size}|".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(edge))
        if size > edge:
            fh.seek(max(edge, size - edge))
            h.update(fh.read(edge))
    return h.hexdigest()


def model_id(kind, files=(), **settings):
    """Stable id for a model + its preprocessing settings."""
    blob = json.dumps({"kind": kind, "files": sorted(file_fingerprint(f) for f in files),
                       "settings": settings}, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


class EmbeddingCache:
    def __init__(self, root, enabled=True):
        self.root = Path(root) if root else None
        self.enabled = bool(enabled and root)
        self.computed = {}
        self.reused = {}

    def _path(self, mid, key):
        return self.root / mid / key[:2] / f"{key}.npy"

    def get(self, mid, key):
        if not self.enabled:
            return None
        p = self._path(mid, key)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            return None  # damaged entry: recompute and overwrite

    def put(self, mid, key, value):
        if not self.enabled:
            return
        array = np.asarray(value)

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
        write_atomic(self._path(mid, key), write)

    def embed(self, name, mid, items, compute, batch_size, progress=True):
        """``items``: list of (key, payload). ``compute(list of payloads) -> array [n, ...]``
        for the ones not cached, in batches. Returns a float32 array [len(items), ...]
        in item order; counts computed / reused under ``name``."""
        out = [None] * len(items)
        todo = []
        for i, (key, _payload) in enumerate(items):
            v = self.get(mid, key)
            if v is None:
                todo.append(i)
            else:
                out[i] = v
        self.reused[name] = self.reused.get(name, 0) + len(items) - len(todo)
        self.computed[name] = self.computed.get(name, 0) + len(todo)
        if todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=name, unit="file", disable=not progress, leave=False)
            for s in range(0, len(todo), batch_size):
                idx = todo[s:s + batch_size]
                vals = np.asarray(compute([items[i][1] for i in idx]), dtype=np.float32)
                for i, v in zip(idx, vals):
                    out[i] = v
                    self.put(mid, items[i][0], v)
                bar.update(len(idx))
            bar.close()
        if not out:
            return np.zeros((0,), dtype=np.float32)
        return np.stack(out).astype(np.float32)
