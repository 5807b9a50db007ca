"""Official SonicDiffusion weight formats, their validation and our single-file bundle.

Official files (both pickles, read with weights_only=True by safe_load):
- audio_projector_*.pth: the projector's plain state_dict (46 tensors).
- landscape.pt / greatest_hits.pt: 80 tensors in diffusers names; the LDM training
  code base spelled the same tensors `model.diffusion_model.output_blocks.k.1...`.
Our bundle: one .safetensors with `projector.*` and `adapter.<diffusers name>` keys.
Formats are detected by keys, never by file names.
"""
import functools
import json

import torch

from .adapter import SonicAdapterModel
from .blocks import ADAPTER_BLOCKS, BLOCK_TENSOR_SHAPES
from .files import write_atomic
from .projector import AudioProjector

BUNDLE_FORMAT = "sonicdiffusion-adapter"
BUNDLE_VERSION = "1"
_LDM_ROOT = "model.diffusion_model."


class AdapterWeightsError(ValueError):
    """A weight file is not the SonicDiffusion file it was given as."""


@functools.lru_cache(maxsize=1)
def projector_shapes():
    """The 46 official projector tensors and their shapes (from the module on the meta device)."""
    with torch.device("meta"):
        module = AudioProjector()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _names(keys, limit=6):
    keys = sorted(keys)
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def describe_keys(sd, limit=4):
    """A short description of what a state dict holds, for error messages."""
    if not sd:
        return "an empty file"
    return f"{len(sd)} tensors such as {_names(list(sd), limit)}"


def _check(found, expected_shapes, what, fix):
    missing = set(expected_shapes) - set(found)
    if missing:
        raise AdapterWeightsError(f"{what}: {len(missing)} of {len(expected_shapes)} tensors are missing: "
                                  f"{_names(missing)}. {fix}")
    for key, shape in expected_shapes.items():
        got = tuple(found[key].shape)
        if got != tuple(shape):
            raise AdapterWeightsError(f"{what}: tensor {key} has shape {list(got)}, expected {list(shape)}. {fix}")


def looks_like_projector(sd):
    return any(k.startswith("audio_emb_projection.") for k in sd)


def looks_like_gates(sd):
    return any(k.endswith("gate_adapter") for k in sd)


def looks_like_bundle(sd):
    return any(k.startswith("projector.") for k in sd) or any(k.startswith("adapter.") for k in sd)


def projector_state(sd, source="projector file"):
    """Validates an official projector state_dict: exactly the 46 official tensors."""
    expected = projector_shapes()
    fix = "Pick the audio_projector_*.pth that belongs to your adapter (landscape or greatest_hits)."
    if not looks_like_projector(sd):
        raise AdapterWeightsError(f"{source} is not a SonicDiffusion audio projector: it holds {describe_keys(sd)}; "
                                  f"expected keys like audio_emb_projection.0.weight. {fix}")
    _check(sd, expected, source, fix)
    extra = set(sd) - set(expected)
    if extra:
        raise AdapterWeightsError(f"{source}: unexpected tensors {_names(extra)}; a projector file holds exactly "
                                  f"{len(expected)} tensors. {fix}")
    return {k: sd[k] for k in expected}


def _gate_prefix_map():
    """Every accepted spelling of a block prefix -> the block's module name."""
    spellings = {}
    for b in ADAPTER_BLOCKS:
        spellings[b.diffusers] = b.name
        spellings[b.ldm] = b.name
        spellings[_LDM_ROOT + b.ldm] = b.name
    return spellings


def gates_state(sd, source="adapter file"):
    """Official gate dict (diffusers or LDM spelling) -> {"<block>.<suffix>": tensor}, validated."""
    fix = "Pick landscape.pt, greatest_hits.pt or a SonicDiffusion bundle (.safetensors)."
    prefixes = _gate_prefix_map()
    out, unknown = {}, []
    for key, value in sd.items():
        for suffix in BLOCK_TENSOR_SHAPES:
            if key.endswith("." + suffix) and key[: -len(suffix) - 1] in prefixes:
                out[prefixes[key[: -len(suffix) - 1]] + "." + suffix] = value
                break
        else:
            unknown.append(key)
    if not out:
        raise AdapterWeightsError(f"{source} is not a SonicDiffusion adapter: it holds {describe_keys(sd)}; expected "
                                  f"keys like {ADAPTER_BLOCKS[1].diffusers}.attn_adapter.to_q.weight. {fix}")
    if unknown:
        raise AdapterWeightsError(f"{source}: tensors outside the ten adapter blocks: {_names(unknown)}. "
                                  f"The adapter sits only in the middle block and output blocks 3-11. {fix}")
    expected = {f"{b.name}.{s}": shape(b.dim) for b in ADAPTER_BLOCKS for s, shape in BLOCK_TENSOR_SHAPES.items()}
    # Name tensors in the official (diffusers) spelling, which users can look up in their file.
    by_name = {b.name: b for b in ADAPTER_BLOCKS}
    official = lambda k: by_name[k.split(".", 1)[0]].diffusers + "." + k.split(".", 1)[1]
    missing = set(expected) - set(out)
    if missing:
        raise AdapterWeightsError(f"{source}: {len(missing)} of {len(expected)} adapter tensors are missing: "
                                  f"{_names({official(k) for k in missing})}. {fix}")
    _check({official(k): v for k, v in out.items()}, {official(k): v for k, v in expected.items()}, source, fix)
    return out


def split_bundle(sd, source="bundle"):
    """Our bundle -> (projector state or None, gates state)."""
    proj = {k[len("projector."):]: v for k, v in sd.items() if k.startswith("projector.")}
    gates = {k[len("adapter."):]: v for k, v in sd.items() if k.startswith("adapter.")}
    return (projector_state(proj, source) if proj else None), gates_state(gates, source)


def build_adapter_model(projector_sd, gates_sd):
    """Both validated states -> a SonicAdapterModel in float32, loaded strictly."""
    model = SonicAdapterModel()
    state = {"projector." + k: v for k, v in projector_sd.items()}
    state.update({"blocks." + k: v for k, v in gates_sd.items()})
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.float().eval().requires_grad_(False)


def bundle_tensors(model: SonicAdapterModel, dtype=torch.float32):
    """Our single-file layout: official names under `projector.` and `adapter.`."""
    out = {}
    for k, v in model.projector.state_dict().items():
        out["projector." + k] = v.detach().to("cpu", dtype).contiguous()
    for b in ADAPTER_BLOCKS:
        for k, v in model.blocks[b.name].state_dict().items():
            out[f"adapter.{b.diffusers}.{k}"] = v.detach().to("cpu", dtype).contiguous()
    return out


def save_atomic_safetensors(tensors, path, metadata, overwrite=False, make_parents=True):
    """Writes to a temporary file and renames it, so a crash never leaves half a file
    (files.write_atomic: unique temp name, stale temps of killed writers removed)."""
    from safetensors.torch import save_file

    return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), overwrite,
                        make_parents)


def check_adapter_header(header, source="adapter file"):
    """Runs the key and shape checks of whichever format ``header`` (TensorSpec leaves,
    from safe_load) has, before any tensor is read. Formats are told apart by keys."""
    if looks_like_bundle(header):
        split_bundle(header, source)
    elif looks_like_projector(header):
        projector_state(header, source)
    else:
        gates_state(header, source)


def load_adapter_file(path):
    """A gate file, projector file or bundle, checked by keys and shapes before its
    tensors are read. Returns the state dict."""
    from .safe_load import load_weights_file

    sd, _ = load_weights_file(path, check=lambda h: check_adapter_header(h, str(path)))
    return sd


def bundle_metadata(sources=(), extra=None):
    meta = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "sources": json.dumps(list(sources))}
    meta.update(extra or {})
    return meta
