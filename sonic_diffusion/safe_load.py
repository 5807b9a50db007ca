"""Safe weight-file reading shared by every loader of the pack.

Pickles (.pth / .pt / .ckpt / .bin) are read with ``torch.load(weights_only=True)``
only: a pickle that holds anything but tensors and plain containers (classes,
functions, code) is refused, never executed. ``.safetensors`` is read with the
safetensors library. Format detection happens later, by keys.
"""
import os
import pickle
import zipfile

import torch

from .paths import check_regular_file


class WeightsFileError(ValueError):
    """The file is missing, damaged, or not a weights file."""


class UnsafeWeightsError(WeightsFileError):
    """A pickle that holds non-tensor objects: refused for safety."""


def load_pickle_weights(path):
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors."""
    path = os.fspath(path)
    _check_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only's unpickler raises this for any global it does not allow.
        raise UnsafeWeightsError(
            f"{path!r} holds non-tensor Python objects (code or classes), so it is refused for safety. "
            f"Only plain tensor files are loaded; re-save the state_dict alone or use a .safetensors file. "
            f"(detail: {str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise WeightsFileError(
            f"{path!r} could not be read as a PyTorch weights file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is damaged or truncated: download it again") from None


def _check_file(path):
    check_regular_file(path, WeightsFileError, what="weights file", missing_fix="check the name and folder",
                       empty_fix="download it again")


def load_safetensors_weights(path):
    """(state_dict, metadata) of a .safetensors file; damaged files give a clear error."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    _check_file(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsFileError(
            f"{path!r} is not a valid .safetensors file ({e}); it is damaged or truncated: download or convert it again") from None
    return sd, meta


def load_weights_file(path):
    """Read a weight file by extension: ``.safetensors`` via safetensors, anything
    else via the weights-only pickle path. Returns ``(state_dict, metadata)``;
    pickles have empty metadata."""
    path = os.fspath(path)
    if path.lower().endswith(".safetensors"):
        return load_safetensors_weights(path)
    sd = load_pickle_weights(path)
    if not isinstance(sd, dict):
        raise WeightsFileError(f"{path!r} holds a {type(sd).__name__}, not a dict of tensors")
    return sd, {}
