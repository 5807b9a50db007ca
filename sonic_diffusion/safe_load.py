"""Safe weight-file reading shared by every loader of the pack.

The format is found from the file's first bytes, never from its name: a
``.safetensors`` header (8-byte length + JSON), a PyTorch zip archive (``PK``) or
a legacy PyTorch pickle. Before any tensor is materialised the file's own
description of its tensors is read and checked:

- safetensors: the JSON header (at most MAX_HEADER_BYTES, MAX_TENSORS entries,
  every byte range inside the file);
- PyTorch: ``data.pkl`` is walked by an unpickler that calls nothing (every
  global becomes an inert placeholder, tensors become TensorSpec records), so
  keys, dtypes and shapes are known while no storage exists. The tensor bytes it
  declares must fit in the file itself: ``torch.save`` stores storages
  uncompressed, so more declared bytes than the file holds means a compressed
  (zip-bomb) or damaged file.

A caller that knows the layout passes ``check(header)``; it sees TensorSpec
leaves (``.shape``, ``.dtype``) and raises before anything large is allocated.
Then pickles are read by torch's weights-only unpickler only (``weights_only=True``): a
pickle that holds anything but tensors and plain containers is refused, never executed.
This is the pack's one torch.load call site (comfy-test warns about it: ComfyUI's
comfy.utils.load_torch_file reads the same way but checks no header first).
"""
import json
import os
import pickle
import zipfile
from collections import OrderedDict

import torch

from .paths import check_regular_file

MAX_TENSORS = 20_000  # the pack's largest file (CLAP 2022, both towers) holds ~500
MAX_HEADER_BYTES = 8 << 20  # safetensors JSON header; a full SD 1.x checkpoint needs ~0.2 MiB
MAX_PICKLE_BYTES = 64 << 20  # data.pkl of a PyTorch archive; the pack's files need < 1 MiB
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER (legacy format)
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


class WeightsFileError(ValueError):
    """The file is missing, damaged, or not a weights file."""


class UnsafeWeightsError(WeightsFileError):
    """A pickle that holds non-tensor objects: refused for safety."""


class TensorSpec:
    """What the file says about one tensor, before it is read."""

    def __init__(self, shape, dtype, storage=None):
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.storage = storage

    def __repr__(self):
        return f"TensorSpec({list(self.shape)}, {self.dtype})"


def _first_line(e):
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _check_file(path):
    check_regular_file(path, WeightsFileError, what="weights file", missing_fix="check the name and folder",
                       empty_fix="download it again")


def sniff_format(path):
    """'safetensors', 'torch-zip', 'torch-legacy' or None, from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(10)
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":  # pickle PROTO opcode
        return "torch-legacy"
    return None


# -- safetensors header ------------------------------------------------------------------

def safetensors_header(path):
    """(specs {key: TensorSpec}, metadata) from the JSON header, bounds-checked."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise WeightsFileError(f"{path!r}: its safetensors header is {n / 2**20:.1f} MiB, more than the "
                                   f"{MAX_HEADER_BYTES >> 20} MiB this pack reads; refused before parsing it")
        if n > size - 8:
            raise WeightsFileError(f"{path!r} is not a valid .safetensors file (header longer than the file); "
                                   f"it is damaged or truncated: download or convert it again")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsFileError(f"{path!r} is not a valid .safetensors file (header: {_first_line(e)}); it is "
                               f"damaged or truncated: download or convert it again") from None
    if not isinstance(header, dict):
        raise WeightsFileError(f"{path!r} is not a valid .safetensors file (header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    _check_count(path, len(header))
    return {k: _st_entry(path, k, v, size - 8 - n) for k, v in header.items()}, dict(meta)


def _st_entry(path, key, entry, data_bytes):
    try:
        dtype = _ST_DTYPES[entry["dtype"]]
        shape = [int(s) for s in entry["shape"]]
        start, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise WeightsFileError(f"{path!r} is not a valid .safetensors file (entry {key!r} is malformed or has an "
                               f"unsupported dtype)") from None
    numel = 1
    for s in shape:
        numel *= s
    if min(shape, default=0) < 0 or not 0 <= start <= end <= data_bytes or end - start != numel * dtype.itemsize:
        raise WeightsFileError(f"{path!r} is not a valid .safetensors file (tensor {key!r} {shape} does not fit its "
                               f"byte range); it is damaged or truncated: download or convert it again")
    return TensorSpec(shape, dtype)


def _check_count(path, n):
    if n > MAX_TENSORS:
        raise WeightsFileError(f"{path!r} declares {n} tensors, more than the {MAX_TENSORS} this pack reads from "
                               f"one file; refused before reading them")


# -- PyTorch header: an unpickler that calls nothing ---------------------------------------

class _Inert:
    """Stands for any global the pickle names; accepts whatever the pickle does to it."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
                   "ComplexDoubleStorage": torch.complex128}


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _STORAGE_DTYPES.get(name)


class _Storage:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = str(key), dtype, int(numel)

    @property
    def nbytes(self):
        return self.numel * (self.dtype.itemsize if isinstance(self.dtype, torch.dtype) else 1)


class _HeaderUnpickler(pickle.Unpickler):
    def __init__(self, fh, path, storages):
        super().__init__(fh)
        self.path, self.storages, self.tensors = path, storages, 0

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._rebuild
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *a: data
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return lambda func, new_type, args, state: func(*args)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        return _Inert

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            return _Inert()
        stype, key, numel = pid[1], pid[2], pid[4]
        dtype = stype.dtype if isinstance(stype, _StorageType) else None
        if not isinstance(numel, int) or numel < 0:
            return _Inert()
        return self.storages.setdefault(str(key), _Storage(key, dtype, numel))

    def _rebuild(self, storage, offset, size, *rest):
        self.tensors += 1
        _check_count(self.path, self.tensors)
        if not isinstance(storage, _Storage) or not isinstance(size, (tuple, list, torch.Size)):
            return _Inert()
        return TensorSpec([int(s) for s in size], storage.dtype, storage)


def _zip_header(path, storages):
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next((i for i in zf.infolist() if i.filename.endswith("data.pkl")), None)
            if pkl is None:
                raise WeightsFileError(f"{path!r} is a zip file without data.pkl, not a PyTorch weights file")
            if pkl.file_size > MAX_PICKLE_BYTES:
                raise WeightsFileError(f"{path!r}: its data.pkl is {pkl.file_size / 2**20:.0f} MiB, more than the "
                                       f"{MAX_PICKLE_BYTES >> 20} MiB this pack reads; refused")
            with zf.open(pkl) as fh:
                raw = fh.read(MAX_PICKLE_BYTES + 1)
            if len(raw) > MAX_PICKLE_BYTES:  # its declared size lied
                raise WeightsFileError(f"{path!r}: its data.pkl inflates past {MAX_PICKLE_BYTES >> 20} MiB; refused")
    except zipfile.BadZipFile as e:
        raise WeightsFileError(f"{path!r} could not be read as a PyTorch weights file ({_first_line(e)}); it is "
                               f"damaged or truncated: download it again") from None
    import io

    return _HeaderUnpickler(io.BytesIO(raw), path, storages).load()


def _legacy_header(path, storages):
    with open(path, "rb") as fh:
        if _HeaderUnpickler(fh, path, storages).load() != _TORCH_MAGIC:
            return None  # a plain pickle: the weights-only load judges it (it allocates no storage)
        _HeaderUnpickler(fh, path, storages).load()  # protocol version
        _HeaderUnpickler(fh, path, storages).load()  # sys info
        return _HeaderUnpickler(fh, path, storages).load()


def pickle_header(path, kind=None):
    """The archive's object tree with TensorSpec leaves; no storage is read. Raises
    if the tensor bytes it declares cannot be stored in the file."""
    kind = kind or sniff_format(path)
    storages = {}
    try:
        tree = _zip_header(path, storages) if kind == "torch-zip" else _legacy_header(path, storages)
    except WeightsFileError:
        raise
    except Exception as e:
        raise WeightsFileError(f"{path!r} could not be read as a PyTorch weights file ({type(e).__name__}: "
                               f"{_first_line(e)}); it is damaged or truncated: download it again") from None
    declared = sum(s.nbytes for s in storages.values())
    size = os.path.getsize(path)
    if declared > size:
        raise WeightsFileError(
            f"{path!r} declares {declared / 2**20:.1f} MiB of tensor data in a {size / 2**20:.1f} MiB file: its "
            f"storage is compressed (a decompression bomb) or the file is damaged; refused before reading it")
    return tree


# -- loading -----------------------------------------------------------------------------

def load_pickle_weights(path, check=None, mmap=False):
    """The weights-only load of torch (map_location cpu), after the header checks.
    mmap=True (zip archives) maps the storages instead of reading them."""
    path = os.fspath(path)
    _check_file(path)
    header = pickle_header(path)
    if check is not None and header is not None:
        check(header)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Unsupported global" not in msg and "Unsupported operand" not in msg and "weights_only" not in msg.lower():
            raise WeightsFileError(f"{path!r} could not be read as a PyTorch weights file ({_first_line(e)}); "
                                   f"it is damaged or truncated: download it again") from None
        raise UnsafeWeightsError(
            f"{path!r} holds non-tensor Python objects (code or classes), so it is refused for safety. "
            f"Only plain tensor files are loaded; re-save the state_dict alone or use a .safetensors file. "
            f"(detail: {_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise WeightsFileError(
            f"{path!r} could not be read as a PyTorch weights file ({type(e).__name__}: "
            f"{_first_line(e)}); it is damaged or truncated: download it again") from None


def load_safetensors_weights(path, check=None):
    """(state_dict, metadata) of a .safetensors file; damaged files give a clear error."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    _check_file(path)
    specs, meta = safetensors_header(path)
    if check is not None:
        check(specs)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            sd = {k: f.get_tensor(k) for k in specs}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsFileError(
            f"{path!r} is not a valid .safetensors file ({e}); it is damaged or truncated: download or convert it again") from None
    return sd, meta


def inspect_weights_file(path):
    """Checks a weights file someone else will load (e.g. an SD checkpoint ComfyUI
    reads) without reading its tensors: the header limits of either format, and for a
    PyTorch zip archive the weights-only unpickling of its structure (storages mapped,
    not read), so hostile pickles are refused here with a clear error."""
    path = os.fspath(path)
    _check_file(path)
    kind = sniff_format(path)
    if kind == "safetensors":
        safetensors_header(path)
    elif kind == "torch-zip":
        load_pickle_weights(path, mmap=True)
    elif kind == "torch-legacy":
        pickle_header(path, kind)
    else:
        raise WeightsFileError(f"{path!r} is neither a .safetensors file nor a PyTorch weights file "
                               f"(its first bytes match neither); it is damaged or not a weights file")
    return kind


def load_weights_file(path, check=None):
    """Read a weight file by its content (safetensors, or a PyTorch pickle read
    weights-only). Returns ``(state_dict, metadata)``; pickles have empty metadata.
    ``check(header)`` sees TensorSpec leaves before any tensor is materialised."""
    path = os.fspath(path)
    _check_file(path)
    kind = sniff_format(path)
    if kind == "safetensors":
        return load_safetensors_weights(path, check)
    if kind is None:
        raise WeightsFileError(f"{path!r} is neither a .safetensors file nor a PyTorch weights file "
                               f"(its first bytes match neither); it is damaged or not a weights file")
    sd = load_pickle_weights(path, check)
    if not isinstance(sd, dict):
        raise WeightsFileError(f"{path!r} holds a {type(sd).__name__}, not a dict of tensors")
    return sd, {}
