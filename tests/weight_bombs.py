"""Small hostile weight files for the loader tests, generated in a temp folder.

- deflate_bomb_pth: a PyTorch zip archive of ~2 MiB whose one storage inflates to
  ``nbytes`` (2 GiB by default) of zeros: torch.load would allocate all of it.
- huge_safetensors_header: a .safetensors file whose JSON header alone is ``mib``
  MiB with one empty tensor per entry.
"""
import collections
import io
import pickle
import zipfile
import zlib

import torch

_CHUNK = 16 << 20


class _Storage:
    pass


class _Tensor:
    def __init__(self, numel):
        self.numel = numel

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (_Storage(), 0, (self.numel,), (1,), False, collections.OrderedDict()))


def _data_pkl(key, numel):
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, _Storage) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({key: _Tensor(numel)})
    return buf.getvalue()


class _RepeatedZeros:
    """zipfile's compressor for the bomb: every 16 MiB chunk of zeros deflates to the same
    bytes after a full flush, so it is compressed once and repeated (seconds, not minutes)."""

    def __init__(self):
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)
        self.block = comp.compress(bytes(_CHUNK)) + comp.flush(zlib.Z_FULL_FLUSH)
        self.tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush()

    def compress(self, data):
        assert len(data) == _CHUNK and not any(data[:64])
        return self.block

    def flush(self):
        return self.tail


def deflate_bomb_pth(path, key="audio_emb_projection.0.weight", nbytes=2 << 30):
    numel = nbytes // 4
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", _data_pkl(key, numel))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        original = zipfile._get_compressor
        zipfile._get_compressor = lambda *a, **k: _RepeatedZeros()
        try:
            zeros = bytes(_CHUNK)
            with z.open(info, "w", force_zip64=True) as f:
                for _ in range(nbytes // _CHUNK):
                    f.write(zeros)
        finally:
            zipfile._get_compressor = original
    return path


def huge_safetensors_header(path, keys=400_000):
    """``keys`` entries ``"audio_encoder.block.<i>.weight": 0-element F32`` (about 34 MB of
    header for 400k keys). Returns (path, header bytes)."""
    entry = '"audio_encoder.block.%07d.weight":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    blob = ("{" + ",".join(entry % i for i in range(keys)) + "}").encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
    return path, len(blob)
