"""The inversion cache, owned the ComfyUI way:

- one cache per diffusion model (the BaseModel all clones of a checkpoint share), held in
  a weak-keyed table: it lives exactly as long as ComfyUI keeps that model (its node
  output cache); when ComfyUI drops the model (a new checkpoint, `/free` with
  free_memory) the cache and its latents go with it;
- each cache has a zero-size ModelPatcher that the edit's guider loads beside the UNet
  (an additional model), so when ComfyUI unloads models (`/free` with unload_models or
  free_memory: comfy.model_management.unload_all_models, or memory pressure) it detaches
  that patcher too, and its ON_DETACH callback empties the cache (both ComfyUI 0.3.75
  and 0.33.0 call ON_DETACH from ModelPatcher.detach);
- bounded in bytes (MAX_BYTES, least recently used evicted first);
- entries hold only weak references to the models, patches and wrappers an inversion
  depends on, so the cache keeps nothing of another pack alive. Latents stay on the CPU.
"""
import collections
import hashlib
import weakref

import comfy.model_management as mm
import comfy.model_patcher
import torch
from comfy.patcher_extension import CallbacksMP

from ..patch import SonicAudioPatch, StreamCapture
from .injection import AttentionInjection, CallContext, FeatureInjection

# The inversion runs with the audio off and the injection idle: these patches do not change it.
_NEUTRAL = (SonicAudioPatch, StreamCapture, AttentionInjection, CallContext, FeatureInjection)


def digest(t):
    t = t.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha1(t.numpy().tobytes()).hexdigest() + str(tuple(t.shape))


def _replace_target(patch):
    """An injection hook stands in for the attn1 replace it wraps (if any)."""
    while isinstance(patch, AttentionInjection):
        patch = patch.previous
    return patch


def dependencies(base_model, patcher, model_options):
    """What an inversion depends on besides its inputs: (description, objects). The
    objects are compared by identity on a hit; patches of the pack that are inert during
    the inversion are left out."""
    to = model_options.get("transformer_options", {})
    objects = [base_model]
    parts = [str(patcher.patches_uuid), str(patcher.load_device), str(base_model.get_dtype()),
             str(getattr(base_model, "manual_cast_dtype", None))]
    for name in sorted(to.get("patches", {})):
        ps = [p for p in to["patches"][name] if not isinstance(p, _NEUTRAL)]
        objects += ps
        parts.append((name, len(ps)))
    for name in sorted(to.get("patches_replace", {})):
        items = sorted((repr(k), _replace_target(v)) for k, v in to["patches_replace"][name].items())
        items = [(k, v) for k, v in items if v is not None]
        objects += [v for _, v in items]
        parts.append((name, tuple(k for k, _ in items)))
    for name in sorted(patcher.object_patches):
        if not isinstance(patcher.object_patches[name], FeatureInjection):
            objects.append(patcher.object_patches[name])
            parts.append(("object", name))
    if model_options.get("model_function_wrapper") is not None:
        objects.append(model_options["model_function_wrapper"])
        parts.append("model_function_wrapper")
    for source, wrappers in (("patcher", patcher.wrappers), ("options", to.get("wrappers", {}))):
        for wtype in sorted(wrappers):
            for wkey in sorted(wrappers[wtype], key=repr):
                objects += list(wrappers[wtype][wkey])
                parts.append(("wrappers", source, wtype, repr(wkey), len(wrappers[wtype][wkey])))
    _other_options(to, parts, objects)
    return tuple(parts), objects


# transformer_options entries handled above, or set by ComfyUI anew for every model call
# (they describe the call, not the model): everything else is part of the key.
_HANDLED = {"patches", "patches_replace", "wrappers", "callbacks", "cond_or_uncond", "uuids", "sigmas",
            "sample_sigmas", "block", "block_index", "original_shape", "transformer_index", "activations_shape",
            "current_index", "cond_index"}
_PLAIN = (bool, int, float, str, bytes, type(None))


def _other_options(to, parts, objects):
    """Any other transformer option that may change the model call: plain values by value,
    objects (an attention override, a custom hook) by identity; an option that can be
    neither (a dict, a list) makes the key unweakrefable, so that inversion is not cached."""
    for name in sorted(k for k in to if k not in _HANDLED):
        value = to[name]
        if isinstance(value, _PLAIN) or (isinstance(value, tuple) and all(isinstance(v, _PLAIN) for v in value)):
            parts.append(("option", name, repr(value)))
        else:
            objects.append(value)
            parts.append(("option", name, type(value).__name__))


def _weak(objects):
    """Weak references to every object, or None when one cannot be weakly referenced
    (such an inversion is not cached rather than kept alive)."""
    try:
        return [weakref.ref(o) for o in objects]
    except TypeError:
        return None


# The bound of one model's cache: the latents of one 50-step inversion of a 512x512 image
# take 3.4 MB, of a batch of four 1024x1024 images 54 MB.
MAX_BYTES = 256 << 20


def _nbytes(latents):
    return sum(t.numel() * t.element_size() for t in latents)


class InversionCache:
    """The latest inversions (lists of latents) of one model, at most ``max_bytes`` in
    all, keyed by their inputs and checked against the identity of the objects they
    depend on. ``patcher`` is the zero-size ModelPatcher whose unload empties it."""

    def __init__(self, max_bytes=MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self._entries = collections.OrderedDict()  # key -> (weak refs, latents, bytes)
        self.nbytes = 0
        self.patcher = comfy.model_patcher.ModelPatcher(
            torch.nn.Module(), load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
        owner = weakref.ref(self)  # the patcher must not keep its cache alive

        def on_detach(_patcher, unpatch_all):
            # unpatch_all False: ComfyUI swaps one clone of this patcher for another
            # (load_models_gpu), which frees nothing; True: a model unload.
            cache = owner()
            if cache is not None and unpatch_all:
                cache.clear()

        self.patcher.add_callback(CallbacksMP.ON_DETACH, on_detach)

    def get(self, key, objects):
        entry = self._entries.get(key)
        if entry is None:
            return None
        refs, latents, _ = entry
        if len(refs) != len(objects) or any(r() is not o for r, o in zip(refs, objects)):
            self._drop(key)  # an object it depended on is gone or replaced
            return None
        self._entries.move_to_end(key)
        return latents

    def put(self, key, objects, latents):
        refs = _weak(objects)
        latents = [t.cpu() for t in latents]
        size = _nbytes(latents)
        if refs is None or size > self.max_bytes:
            return  # not weakly referable, or larger than the whole bound: not cached
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (refs, latents, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key):
        self.nbytes -= self._entries.pop(key)[2]

    def clear(self):
        self._entries.clear()
        self.nbytes = 0

    def __len__(self):
        return len(self._entries)


_BY_MODEL = weakref.WeakKeyDictionary()  # BaseModel -> its InversionCache (dies with the model)
ADDITIONAL_MODELS_KEY = "sonic_inversion_cache"


def inversions_for(base_model):
    """The inversion cache of ``base_model`` (a ComfyUI BaseModel), made on first use."""
    cache = _BY_MODEL.get(base_model)
    if cache is None:
        cache = _BY_MODEL[base_model] = InversionCache()
    return cache


def attach(model_patcher, cache):
    """Loads ``cache``'s patcher with ``model_patcher`` (an edit's clone), so ComfyUI's
    unloading of models reaches the cache."""
    model_patcher.set_additional_models(ADDITIONAL_MODELS_KEY, [cache.patcher])
