"""The inversion cache: owned by the node that edits (its lifetime is the node's), holding
only weak references to the models and patches an inversion depends on, so it keeps no
other pack's objects (nor an unloaded checkpoint) alive. Latents are kept on the CPU."""
import collections
import hashlib
import weakref

import torch

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
    return tuple(parts), objects


def _weak(objects):
    """Weak references to every object, or None when one cannot be weakly referenced
    (such an inversion is not cached rather than kept alive)."""
    try:
        return [weakref.ref(o) for o in objects]
    except TypeError:
        return None


class InversionCache:
    """The latest `size` inversions (lists of latents), keyed by their inputs and checked
    against the identity of the objects they depend on."""

    def __init__(self, size=2):
        self.size = size
        self._entries = collections.OrderedDict()  # key -> (weak refs, latents)

    def get(self, key, objects):
        entry = self._entries.get(key)
        if entry is None:
            return None
        refs, latents = entry
        if len(refs) != len(objects) or any(r() is not o for r, o in zip(refs, objects)):
            del self._entries[key]  # an object it depended on is gone or replaced
            return None
        self._entries.move_to_end(key)
        return latents

    def put(self, key, objects, latents):
        refs = _weak(objects)
        if refs is None:
            return
        self._entries[key] = (refs, [t.cpu() for t in latents])
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self):
        self._entries.clear()

    def __len__(self):
        return len(self._entries)
