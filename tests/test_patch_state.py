"""The patch objects hold weights and settings only (docs/design.md section 10.6): the
stream, the tokens of each row and the sigma window reach the patch through the call."""
import threading
import time

import comfy.model_management as mm
import torch
from sonic_reference import sonic_patches
from test_guidance import apply, cfg_guider, one_step, sample
from test_guider_roles import parts  # noqa: F401  (module fixture)

import nodes
from sonic_diffusion.audio_call import CAPTURE
from sonic_diffusion.audio_rows import RunContext
from sonic_diffusion.blocks import BLOCKS_BY_COMFY_KEY
from sonic_diffusion.patch import SonicAudioPatch, StreamCapture
from testing.unet import unet_call, unet_inputs


def tensors_held(obj, skip=("adapter",), depth=4):
    """Ids of the tensors reachable from an object through its attributes, dicts, lists and
    tuples (the adapter's weights left out)."""
    found = set()

    def walk(value, level):
        if isinstance(value, torch.Tensor):
            found.add(id(value))
        elif level == 0:
            return
        elif isinstance(value, dict):
            for v in value.values():
                walk(v, level - 1)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                walk(v, level - 1)
        elif hasattr(value, "__dict__"):
            for k, v in vars(value).items():
                if k not in skip:
                    walk(v, level - 1)

    walk(obj, depth)
    return found


def test_two_threads_on_one_patched_model_equal_sequential_calls(parts, monkeypatch):
    model = apply(parts, parts["audio"], parts["other_audio"])
    inputs = [unet_inputs(2, seed=s) for s in (1, 2)]
    chunks = [(1, 0), (0, 1)]
    sequential = [unet_call(model, x, t, ctx, c) for (x, t, ctx, _), c in zip(inputs, chunks)]

    # Widen the gap between a block's capture and its output patch so the threads interleave there.
    real = StreamCapture.__call__

    def slow_capture(self, x, extra_options):
        out = real(self, x, extra_options)
        time.sleep(0.002)
        return out

    monkeypatch.setattr(StreamCapture, "__call__", slow_capture)
    results = [None, None]
    barrier = threading.Barrier(2)

    def worker(i):
        barrier.wait()
        x, t, ctx, _ = inputs[i]
        results[i] = unet_call(model, x, t, ctx, chunks[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for got, want in zip(results, sequential):
        # measured: 0 (the same kernels on the same shapes)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_nothing_per_call_is_held_after_sampling(parts, monkeypatch):
    model = apply(parts, parts["audio"])
    patch = sonic_patches(model)[0]
    before = tensors_held(patch)
    runs = []
    real_init = RunContext.__init__

    def record(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        runs.append(self)

    monkeypatch.setattr(RunContext, "__init__", record)
    sample(cfg_guider(model, parts["pos"], parts["neg"], 5.0), steps=2)
    # The patch holds exactly the tensors it was made with (its tokens), the capture none.
    assert tensors_held(patch) == before
    assert before == {id(patch.cond_tokens), id(patch.uncond_tokens)}
    assert tensors_held(CAPTURE) == set()
    # The run built derived tensors and released them when it ended.
    assert len(runs) == 1 and runs[0]._cache == {} and runs[0]._cache_left == 0


def test_no_model_is_loaded_inside_a_unet_call(parts, monkeypatch):
    """Everything the patch needs is projected when the node runs (null audio included)."""
    inside = []
    loads = []
    for name in ("load_model_gpu", "load_models_gpu"):
        real = getattr(mm, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            loads.append((_name, bool(inside)))
            return _real(*args, **kwargs)

        monkeypatch.setattr(mm, name, spy)
    # A fresh adapter object: no null tokens projected yet.
    fresh = type(parts["adapter"])(parts["adapter"].model, name="fresh")
    model = apply({**parts, "adapter": fresh}, parts["audio"]).clone()

    def wrapper(apply_model, args):
        inside.append(1)
        try:
            return apply_model(args["input"], args["timestep"], **args["c"])
        finally:
            inside.pop()

    model.set_model_unet_function_wrapper(wrapper)
    one_step(cfg_guider(model, parts["pos"], parts["neg"], 5.0))
    assert loads and not any(during for _, during in loads), loads


def test_window_follows_the_model_sampling_in_force(parts, monkeypatch):
    """start/end percent turn into sigmas when sampling starts, with the model sampling of the
    MODEL that samples: here a ModelSamplingDiscrete (v-prediction, zsnr) placed after the adapter."""
    node = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
    patched = node.execute(model=parts["model"], sonic_adapter=parts["adapter"], audio_embeds=parts["audio"],
                           strength=1.0, start_percent=0.0, end_percent=0.1).result[0]
    shifted = nodes.NODE_CLASS_MAPPINGS["ModelSamplingDiscrete"]
    model = getattr(shifted(), shifted.FUNCTION)(patched, "v_prediction", True)[0] \
        if hasattr(shifted, "FUNCTION") else shifted.execute(patched, "v_prediction", True).result[0]
    acted = []
    real = SonicAudioPatch.__call__

    def spy(self, n, extra_options):
        out = real(self, n, extra_options)
        if extra_options.get("block") in BLOCKS_BY_COMFY_KEY:
            acted.append((float(extra_options["sigmas"].reshape(-1)[0]), not torch.equal(out, n)))
        return out

    monkeypatch.setattr(SonicAudioPatch, "__call__", spy)
    # 8 steps: one sigma (11.6) lies between the end sigma of zsnr (18.2) and of the node-time eps
    # sampling (8.3), so the two resolutions decide differently there.
    sample(cfg_guider(model, parts["pos"], parts["neg"], 5.0), steps=8)
    now = model.get_model_object("model_sampling")
    at_node = patched.get_model_object("model_sampling")
    hi, lo = float(now.percent_to_sigma(0.0)), float(now.percent_to_sigma(0.1))
    assert acted
    for sigma, did in acted:
        assert did == (lo <= sigma <= hi), (sigma, lo, hi)
    # The sigmas the node would have seen differ, and would have decided differently here.
    old_lo = float(at_node.percent_to_sigma(0.1))
    assert any((old_lo <= s <= float(at_node.percent_to_sigma(0.0))) != did for s, did in acted)
