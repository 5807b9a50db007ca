"""The inversion cache of Audio Edit (Sonic) and Sonic DDIM Edit Sampler, owned the
ComfyUI way (sonic_diffusion/edit/cache.py): one per model and gone with it, bounded in
bytes, emptied when ComfyUI unloads models (what `/free` does), and keyed on model
wrappers and every other transformer option. A tiny stand-in module plays the model:
no UNet runs here (tests/test_edit_runtime.py runs the real edit)."""
import gc

import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension as ext
import pytest
import torch

import nodes
from sonic_diffusion.edit import cache as inv


class TinyModel(torch.nn.Module):
    """What dependencies() reads of a BaseModel."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4))

    def get_dtype(self):
        return torch.float32


def _patcher():
    return comfy.model_patcher.ModelPatcher(TinyModel(), load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def _latents(nbytes, n=2):
    return [torch.zeros(nbytes // 4 // n) for _ in range(n)]


def test_the_nodes_hold_no_cache_of_their_own():
    for key in ("SonicAudioEdit", "SonicDDIMEditSampler"):
        cls = nodes.NODE_CLASS_MAPPINGS[key]
        assert not any(isinstance(v, inv.InversionCache) for v in vars(cls).values()), key


def test_one_cache_per_model_gone_with_the_model():
    model = TinyModel()
    cache = inv.inversions_for(model)
    assert inv.inversions_for(model) is cache and inv.inversions_for(TinyModel()) is not cache
    cache.put(("k",), [model], _latents(1 << 20))
    assert cache.nbytes == 1 << 20
    before = len(inv._BY_MODEL)
    del model, cache
    gc.collect()  # ComfyUI dropping the model (a reset of its caches by `/free` with free_memory)
    assert len(inv._BY_MODEL) == before - 1


def test_bounded_in_bytes_least_recently_used_first():
    model = TinyModel()
    cache = inv.InversionCache(max_bytes=3 << 20)
    for i in range(3):
        cache.put(i, [model], _latents(1 << 20))
    assert cache.get(0, [model]) is not None  # 0 is now the most recently used
    cache.put(3, [model], _latents(1 << 20))
    assert cache.nbytes <= 3 << 20 and cache.get(1, [model]) is None and cache.get(0, [model]) is not None
    cache.put(4, [model], _latents(4 << 20))  # larger than the bound: not cached, nothing evicted for it
    assert cache.get(4, [model]) is None and len(cache) == 3


@pytest.mark.parametrize("free", ["unload_all_models", "free_memory"])
def test_comfyui_unloading_models_empties_the_cache(free):
    """`/free` with unload_models (or free_memory) makes ComfyUI call unload_all_models();
    memory pressure calls free_memory(): the cache's patcher, loaded beside the edit's
    model, is detached and the cache emptied."""
    model, edit_model = TinyModel(), _patcher()
    cache = inv.InversionCache()
    inv.attach(edit_model, cache)
    # As comfy.sampler_helpers._prepare_sampling loads a model (0.3.75 and 0.33.0): with its
    # nested additional models, where the cache's patcher is (tests/test_edit_runtime.py: a real edit).
    mm.load_models_gpu([edit_model, *edit_model.get_nested_additional_models()])
    assert any(m.model is cache.patcher for m in mm.current_loaded_models)
    cache.put(("k",), [model], _latents(1 << 16))
    # The next edit's clone replaces this one (ComfyUI detaches the old clone without
    # unpatching): that frees nothing, and the cache is kept.
    swap = edit_model.clone()
    mm.load_models_gpu([swap, *swap.get_nested_additional_models()])
    assert len(cache) == 1
    if free == "unload_all_models":
        mm.unload_all_models()
    else:
        mm.free_memory(1e30, mm.get_torch_device())
    assert len(cache) == 0 and cache.nbytes == 0


def _key(patcher):
    parts, objects = inv.dependencies(patcher.model, patcher, patcher.model_options)
    return ("latent", parts), objects


def test_key_covers_wrappers_and_other_transformer_options():
    base = _patcher()
    cache = inv.InversionCache()
    key, objects = _key(base)
    cache.put(key, objects, _latents(1024))
    assert cache.get(*_key(base)) is not None

    def wrapper_a(executor, *args, **kw):
        return executor(*args, **kw)

    def wrapper_b(executor, *args, **kw):
        return executor(*args, **kw)

    variants = []
    for wrapper in (wrapper_a, wrapper_b):  # the same place, another wrapper: a stale inversion
        m = base.clone()
        ext.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "k", wrapper, m.model_options, is_model_options=True)
        variants.append(m)
    for wrapper in (wrapper_a, wrapper_b):  # on the patcher itself (ModelPatcher.add_wrapper)
        m = base.clone()
        m.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "k", wrapper)
        variants.append(m)
    for value in (1, 2):  # a plain option that changes the model call
        m = base.clone()
        m.model_options["transformer_options"]["some_option"] = value
        variants.append(m)
    m = base.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = wrapper_a  # by identity
    variants.append(m)
    seen = set()
    for m in variants:
        key_m, objects_m = _key(m)
        assert cache.get(key_m, objects_m) is None
        cache.put(key_m, objects_m, _latents(1024))
        seen.add(key_m)
    # wrapper_a vs wrapper_b differ by identity, not by key: each put replaced the other's entry.
    assert cache.get(*_key(variants[1])) is not None and cache.get(*_key(variants[0])) is None
    assert len(seen) == 5
