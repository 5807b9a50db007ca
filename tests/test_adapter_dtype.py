"""The adapter beside a half-precision UNet: its ten blocks are kept in the UNet's
dtype (a fp16 UNet does not carry fp32 blocks), the projector stays fp32 on purpose,
and the folded fast path is as accurate in fp16/bf16 as the plain formula evaluated
in the same dtype. The patch keeps no device or dtype state: it follows each call's."""
import ast
import types
from pathlib import Path

import pytest
import torch
from sonic_reference import block_call

from sonic_diffusion.blocks import BLOCKS_BY_COMFY_KEY
from sonic_diffusion.patch import SonicAudioPatch
from sonic_diffusion.runtime import resident_dtype
from testing.references import reference_term

HALF = (torch.float16, torch.bfloat16)
ROOT = Path(__file__).resolve().parents[1]


def _bytes(module):
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.mark.parametrize("dtype", HALF)
def test_blocks_take_the_unet_dtype_and_the_projector_stays_fp32(adapter, dtype):
    cast = adapter.with_block_dtype(dtype)
    assert cast is adapter.with_block_dtype(dtype)  # one copy per dtype
    assert {p.dtype for p in cast.model.blocks.parameters()} == {dtype}
    assert {p.dtype for p in cast.model.projector.parameters()} == {torch.float32}
    assert _bytes(cast.model.blocks) * 2 == _bytes(adapter.model.blocks)
    assert {p.dtype for p in adapter.model.blocks.parameters()} == {torch.float32}  # the loaded one is untouched
    assert adapter.with_block_dtype(torch.float32) is adapter
    e = torch.nn.functional.normalize(torch.randn(2, 1024, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert torch.equal(cast.project(e), adapter.project(e))  # same fp32 projector


def _fake_patcher(storage, cast=None):
    return types.SimpleNamespace(model=types.SimpleNamespace(get_dtype=lambda: storage, manual_cast_dtype=cast))


def test_resident_dtype_follows_comfyui_storage_and_manual_cast():
    assert resident_dtype(_fake_patcher(torch.float16)) == torch.float16
    assert resident_dtype(_fake_patcher(torch.bfloat16, torch.float32)) == torch.bfloat16
    assert resident_dtype(_fake_patcher(torch.float32)) == torch.float32
    # fp8 storage: the blocks use the dtype ComfyUI computes in.
    assert resident_dtype(_fake_patcher(torch.float8_e4m3fn, torch.float16)) == torch.float16
    assert resident_dtype(_fake_patcher(torch.float8_e4m3fn, None)) == torch.float32


def _stream(block, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, 64, block.dim, generator=g) * 2.0).to(dtype)
    n = (torch.randn(2, 64, block.dim, generator=g) * 0.5).to(dtype)
    return x, n


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("key", [("middle", 0), ("output", 9)])  # folded (1280 wide) and unfolded (320)
def test_fast_path_in_half_precision(adapter, dtype, key):
    """Against the plain formula in fp32 on the same (half-stored) weights and the same
    half inputs, the fast path's error stays within 1.5x the error of the plain formula
    evaluated in the half dtype itself (the adapter's own modules, manual cast).
    Measured (fast / plain, max abs): fp16 2.1e-5 / 3.4e-5 (middle), 1.4e-5 / 1.3e-5
    (output 9); bf16 1.8e-4 / 3.1e-4, 9.8e-5 / 1.4e-4: ratio <= 1.1, bound 1.5."""
    block = BLOCKS_BY_COMFY_KEY[key]
    cast = adapter.with_block_dtype(dtype)
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=torch.Generator().manual_seed(1)), dim=-1)
    patch = SonicAudioPatch(cast, cast.project(e), None, strength=1.0)
    x, _ = _stream(block, dtype, seed=2)
    # n = 0: the output is the term itself, so the comparison is not drowned by the
    # rounding of n + term to the half dtype (which hides any difference at |n| ~ 1).
    n = torch.zeros_like(x)
    chunks = [1, 0]
    out = patch(n, block_call(patch, block, x, chunks))
    assert out.dtype == dtype
    reference = n.float() + reference_term(patch, block, x.float() + n.float(), chunks).float()
    tokens = torch.cat([cast.null_tokens(), patch.cond_tokens]).to(dtype)
    with torch.no_grad():
        plain_half = n + cast.model.blocks[block.name].residual(x + n, tokens, 1.0)
    fast_err = float((out.float() - reference).abs().max())
    plain_err = float((plain_half.float() - reference).abs().max())
    print(f"{dtype} {key}: fast path error {fast_err:.3e}, plain formula in {dtype} {plain_err:.3e}")
    assert fast_err <= 1.5 * plain_err


def test_patch_follows_each_calls_dtype(adapter):
    """No .to()/cleanup state: the same patch serves an fp32 call and an fp16 call, each
    in its own dtype, and an fp32 call after the fp16 one gives the first result again."""
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=torch.Generator().manual_seed(3)), dim=-1)
    patch = SonicAudioPatch(adapter, adapter.project(e), None)
    assert not hasattr(patch, "to") and not hasattr(patch, "cleanup")
    block = BLOCKS_BY_COMFY_KEY[("output", 9)]
    x, n = _stream(block, torch.float32, seed=4)
    first = patch(n, block_call(patch, block, x, [0]))
    half = patch(n.half(), block_call(patch, block, x.half(), [0]))
    assert half.dtype == torch.float16
    # measured max |fp16 - fp32| 1.06e-3 at max |out| 2.34 (fp16 rounding of stream and term); bound ~10x
    torch.testing.assert_close(half.float(), first, rtol=0, atol=1e-2)
    assert torch.equal(patch(n, block_call(patch, block, x, [0])), first)


# --- no test switches in the product, read from the product's own code ----------------------

PRODUCT_FILES = [p for d in ("sonic_diffusion", "nodes") for p in sorted((ROOT / d).rglob("*.py"))]


def _product_trees():
    return {p: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for p in PRODUCT_FILES}


def _read_names(trees):
    """Every name the product reads: attributes loaded (x.name), keyword arguments given
    (f(name=...)), plain names and string constants (getattr(x, "name"), dict keys)."""
    seen = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                seen.add(node.attr)
            elif isinstance(node, ast.keyword) and node.arg:
                seen.add(node.arg)
            elif isinstance(node, ast.Name):
                seen.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                seen.add(node.value)
    return seen


def _class_members(tree):
    """(class, member, line) for each method of each class, each attribute its methods
    assign on self (self.x = ..., self.x += ...) and each keyword parameter of its __init__."""
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for item in cls.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield cls.name, item.name, item.lineno
                if item.name == "__init__":
                    for arg in item.args.args[1:] + item.args.kwonlyargs:
                        yield cls.name, arg.arg, item.lineno
                for node in ast.walk(item):
                    targets = node.targets if isinstance(node, ast.Assign) else \
                        [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
                    for t in (e for target in targets for e in (target.elts if isinstance(target, ast.Tuple) else [target])):
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                            yield cls.name, t.attr, node.lineno


# Names the host calls by convention, each with the host class that defines it (checked below):
# the product defines them for ComfyUI, torch or pickle, which read them by name.
HOST_PROTOCOL = {
    "get_node_list": ("comfy_api.latest", "ComfyExtension"),
    "define_schema": ("comfy_api.latest", "io.ComfyNode"),
    "fingerprint_inputs": ("comfy_api.latest", "io.ComfyNode"),
    "validate_inputs": ("comfy_api.latest", "io.ComfyNode"),
    "generate_noise": ("comfy_extras.nodes_custom_sampler", "Noise_RandomNoise"),
    "can_concat": ("comfy.conds", "CONDRegular"),
    "concat": ("comfy.conds", "CONDRegular"),
    "encode_audio": ("comfy.audio_encoders.audio_encoders", "AudioEncoderModel"),
    "send_sync": ("server", "PromptServer"),
    "predict_noise": ("comfy.samplers", "CFGGuider"),
    "extend": ("builtins", "list"),
    "find_class": ("pickle", "Unpickler"),
    "persistent_load": ("pickle", "Unpickler"),
}


def unread_members(trees):
    read = _read_names(trees)
    found = []
    for path, tree in trees.items():
        for cls, name, line in _class_members(tree):
            if name.startswith("__") or name in HOST_PROTOCOL or name in read:
                continue
            found.append(f"{path.relative_to(ROOT)}:{line} {cls}.{name}")
    return sorted(set(found))


def test_production_objects_carry_no_test_switches():
    """Every method, self attribute and __init__ keyword of every class in sonic_diffusion/
    and nodes/ is read somewhere in the product itself (or is a host protocol name): a mode
    flag only tests set, a counter only tests read, a method only tests call, fails here.
    Tests observe the product from outside (tests/sonic_reference.py)."""
    trees = _product_trees()
    assert len(trees) > 40 and sum(1 for t in trees.values() for n in ast.walk(t) if isinstance(n, ast.ClassDef)) > 30
    found = unread_members(trees)
    assert not found, "members nothing in the product reads (test switches?):\n" + "\n".join(found)


def test_the_host_protocol_names_are_the_hosts():
    """Each name the scan lets pass is really defined by the host class it is listed with."""
    import importlib

    for name, (module, path) in HOST_PROTOCOL.items():
        owner = importlib.import_module(module)
        for part in path.split("."):
            owner = getattr(owner, part)
        assert hasattr(owner, name), (name, module, path)


def test_the_switch_scan_sees_a_counter_a_flag_and_a_test_method(tmp_path):
    """The scan itself, on a made-up class: a counter the product only increments, a
    constructor flag the product never passes, and a method nothing in the product calls."""
    src = tmp_path / "m.py"
    src.write_text("class Patch:\n"
                   "    def __init__(self, adapter, fast=False):\n"
                   "        self.adapter, self.calls = adapter, 0\n"
                   "    def __call__(self, n):\n"
                   "        self.calls += 1\n"
                   "        return n + self.adapter\n"
                   "    def forward_all_layers(self):\n"
                   "        return None\n"
                   "p = Patch(1)\n")
    tree = {src: ast.parse(src.read_text())}
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert {f.split(" ")[1] for f in unread_members(tree)} == {"Patch.calls", "Patch.fast",
                                                                   "Patch.forward_all_layers"}
    finally:
        ROOT = saved
