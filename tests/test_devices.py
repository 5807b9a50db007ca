"""No CUDA assumptions and no float64 on a device (issue 12 item 2).

1. The adapter patch runs on a device that is not CUDA: ComfyUI's device lookup is
   faked to return the `meta` device (shapes only, like an accelerator we do not have)
   and the block stream lives there; a TorchFunctionMode refuses any float64 tensor
   made off the CPU (MPS has no float64) and any CUDA tensor.
2. A source scan of sonic_diffusion/ and nodes/ forbids CUDA device choices and
   float64 outside an allow-list of CPU-only uses, each with its reason.
"""
import copy
import re
from pathlib import Path

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management as mm
import pytest
import torch
from torch.overrides import TorchFunctionMode

import nodes
from sonic_diffusion.audio_call import labelled_call_audio
from sonic_diffusion.blocks import ADAPTER_BLOCKS

ROOT = Path(__file__).resolve().parents[1]
FAKE = torch.device("meta")


class DeviceRules(TorchFunctionMode):
    """Raises on a float64 tensor off the CPU and on any CUDA tensor; counts device outputs."""

    def __init__(self):
        super().__init__()
        self.device_outputs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                if t.device.type == "cuda":
                    raise AssertionError(f"{func} made a CUDA tensor")
                if t.device.type != "cpu":
                    self.device_outputs += 1
                    if t.dtype == torch.float64:
                        raise AssertionError(f"{func} made float64 on {t.device} (MPS refuses float64)")
        return out


@pytest.fixture
def fake_accelerator(monkeypatch):
    monkeypatch.setattr(mm, "get_torch_device", lambda: FAKE)
    monkeypatch.setattr(mm, "text_encoder_device", lambda: FAKE)
    # ComfyUI's own loaders and its CPU attention probe free memory by CUDA calls on a
    # non-CPU device; they are the host's, not the pack's: the pack's code is what runs here.
    monkeypatch.setattr(mm, "load_model_gpu", lambda *a, **k: None)
    monkeypatch.setattr(mm, "load_models_gpu", lambda *a, **k: None)
    monkeypatch.setattr(comfy_attention, "optimized_attention", comfy_attention.attention_pytorch)
    return FAKE


@pytest.fixture(scope="module")
def sd15(fixture_dir):
    """The stand-in SD1.5 MODEL, loaded on the CPU before any faking (module scope)."""
    import comfy.sd

    model, *_ = comfy.sd.load_checkpoint_guess_config(str(fixture_dir.full_checkpoint()),
                                                      output_vae=False, output_clip=False)
    return model


def test_patched_unet_runs_on_a_non_cuda_device_without_float64(adapter, sd15, fake_accelerator):
    """The whole patched UNet (ComfyUI's forward, the pack's wrapper, capture and cached
    path) on the fake device, in fp16 as on a GPU: shapes only, no CUDA, no float64."""
    e = torch.nn.functional.normalize(torch.randn(2, 1024, generator=torch.Generator().manual_seed(0)), dim=-1)
    patched = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"].execute(
        model=sd15, sonic_adapter=adapter, audio_embeds=e, strength=1.0, start_percent=0.0,
        end_percent=1.0).result[0]
    dm = sd15.model.diffusion_model.to(device=FAKE, dtype=torch.float16)  # sd15 is this test's alone
    rules = DeviceRules()
    calls = []

    def spied(patch):  # the pack's patch, called through a spy that records its output
        def call(n, extra):
            out = patch(n, extra)
            calls.append(out is not n and out.device == FAKE)
            return out
        return call

    for chunks in ([1, 0], [0]):
        rows = 2 * len(chunks)
        to = copy.copy(patched.model_options["transformer_options"])
        to["patches"] = dict(to["patches"], attn2_output_patch=[spied(p) for p in to["patches"]["attn2_output_patch"]])
        to.update(cond_or_uncond=chunks, sigmas=torch.full((rows,), 5.0, device=FAKE))
        x = torch.empty(rows, 4, 8, 8, device=FAKE, dtype=torch.float16)
        ctx = torch.empty(rows, 77, 768, device=FAKE, dtype=torch.float16)
        # The call's audio as a sampling run gives it (the spies hide the patch type from the wrapper).
        audio = labelled_call_audio(patched, chunks, 2)
        with torch.no_grad(), rules:
            out = dm(x, timesteps=torch.full((rows,), 500.0, device=FAKE), context=ctx, transformer_options=to,
                     sonic_audio=audio)
        assert out.device == FAKE and out.shape == x.shape and out.dtype == torch.float16
    assert rules.device_outputs > 0
    # The audio term was computed (a new tensor on the device) at each of the 10 blocks, twice.
    assert calls.count(True) == 2 * len(ADAPTER_BLOCKS)


# --- source scan ---------------------------------------------------------------------------------

SCANNED = [p for d in ("sonic_diffusion", "nodes") for p in sorted((ROOT / d).rglob("*.py"))]
# A CUDA device choice: a "cuda" device literal, .cuda(), or choosing by torch.cuda.is_available().
CUDA_CHOICE = re.compile(r"""["']cuda["']|\.cuda\(|cuda\.is_available\(\)""")
FLOAT64 = re.compile(r"torch\.float64|torch\.double\b|\.double\(\)")
# (file, line substring) -> why the use is fine: each runs on the CPU only.
ALLOWED = {
    ("sonic_diffusion/clap.py", ".double()"): "BatchNorm folding at load time, on the CPU state dict",
    ("sonic_diffusion/clap_frontend.py", 'torch.float64 if torch.device(device).type == "cpu"'):
        "the front end's float64 only where the input is on the CPU (float32 on any device)",
    ("sonic_diffusion/animation.py", "torch.as_tensor("): "frame times from Python floats, on the CPU",
    ("sonic_diffusion/evaluate/metrics.py", "float64"): "metrics on CPU feature arrays (FID needs float64)",
    ("sonic_diffusion/evaluate/run.py", ".double()"): "a count of CPU booleans",
    ("sonic_diffusion/evaluate/models.py", ".double().cpu()"): "features leave the device, cast for numpy",
    ("sonic_diffusion/resample.py", "kdtype = x.dtype if"): "keeps a float64 input's dtype, never makes one",
    ("sonic_diffusion/safe_load.py", "_ST_DTYPES"): "the dtype table of the file format",
    ("sonic_diffusion/safe_load.py", "_STORAGE_DTYPES"): "the dtype table of the pickle format",
    ("sonic_diffusion/train/stage2.py", '.to("cpu", torch.float64)'): "the schedule from sigmas, on the CPU",
    ("sonic_diffusion/train/checkpoint.py", "cuda"): "saving/restoring CUDA RNG state when CUDA exists, not a device choice",
    ("sonic_diffusion/train/distributed.py", "torch.cuda.set_device(local_rank())"):
        "torchrun: one CUDA GPU per process (CUDA's own API); other devices come from ComfyUI",
    ("sonic_diffusion/train/distributed.py", "and torch.cuda.is_available():"): "the same torchrun-on-CUDA case",
    ("sonic_diffusion/train/distributed.py", 'backend="nccl" if device.type == "cuda"'):
        "NCCL exists for CUDA only; every other device uses gloo",
}


def _allowed(rel, line):
    return any(rel == f and s in line for (f, s) in ALLOWED)


def _violations(pattern):
    found = []
    for path in SCANNED:
        rel = path.relative_to(ROOT).as_posix()
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and not _allowed(rel, line):
                found.append(f"{rel}:{no}: {line.strip()}")
    return found


def test_no_cuda_device_choice_in_the_source():
    assert _violations(CUDA_CHOICE) == [], "pick the device through comfy.model_management"


def test_no_float64_on_a_device_in_the_source():
    assert _violations(FLOAT64) == [], "float64 only on the CPU, listed in ALLOWED with its reason"


def test_the_scan_sees_the_sources_it_guards():
    rels = {p.relative_to(ROOT).as_posix() for p in SCANNED}
    assert {"sonic_diffusion/patch.py", "sonic_diffusion/clap_frontend.py", "nodes/adapter.py"} <= rels
    assert CUDA_CHOICE.search('device = torch.device("cuda")') and FLOAT64.search("x.double()")
