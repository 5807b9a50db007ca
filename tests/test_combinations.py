"""The adapter combined with what users put beside it: GLIGEN and any other
middle_patch (in any order), an attention-replace pack on the same blocks (the
mechanism IPAdapter uses), LoRA and ControlNet, and the sampling window through the
real KSampler. Observed from outside: a spy on the patch, hooks on the UNet's norm2,
the plain formula from tests/sonic_reference.py."""
import comfy.ldm.modules.attention as comfy_attention
import pytest
import torch
from combo_parts import ShiftStream, apply_adapter, ksample, write_gligen
from sonic_reference import record_attn2_streams, spy_patch_calls

import nodes
from sonic_diffusion.blocks import ADAPTER_BLOCKS, BLOCKS_BY_COMFY_KEY
from testing.references import reference_term

# fast (folded) path vs the plain formula on one block's term, fp32: the largest
# |difference| / max|term| measured over these tests was 9.8e-6 (printed with -s);
# 1e-4 leaves 10x room while the stale-stream gaps measured 3.8e-2 .. 9.1e-2, and the
# tests require a gap above 100 x the tolerance (1e-2).
TERM_RTOL = 1e-4


@pytest.fixture(scope="module")
def sd15(host, fixture_dir):
    name = host.link_model("checkpoints", fixture_dir.full_checkpoint())
    model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]
    pos = nodes.CLIPTextEncode().encode(clip, "a quiet lake")[0]
    neg = nodes.CLIPTextEncode().encode(clip, "")[0]
    return {"model": model, "clip": clip, "vae": vae, "pos": pos, "neg": neg}


@pytest.fixture(scope="module")
def embeds():
    return torch.nn.functional.normalize(torch.randn(1, 1024, generator=torch.Generator().manual_seed(4)), dim=-1)


def check_terms_on_seen_stream(calls, seen, stale_streams=None):
    """Every adapter call's term equals the plain formula on the stream attn2 saw.
    With stale_streams (per block, the stream before the later middle patches), also
    proves the test can fail: the formula on those differs far beyond tolerance.
    Returns (worst relative error, smallest stale gap)."""
    worst, gap = 0.0, float("inf")
    index = {k: 0 for k in seen}
    for patch, key, n_in, n_out, extra in calls:
        if key not in BLOCKS_BY_COMFY_KEY:
            continue
        block = BLOCKS_BY_COMFY_KEY[key]
        x = seen[key][index[key]]
        chunks = extra.get("cond_or_uncond") or [0]
        term = n_out - n_in
        expected = reference_term(patch, block, x + n_in, chunks)
        scale = float(expected.abs().max())
        assert scale > 0
        worst = max(worst, float((term - expected).abs().max()) / scale)
        if stale_streams is not None and stale_streams[key]:
            stale = reference_term(patch, block, stale_streams[key][index[key]] + n_in, chunks)
            gap = min(gap, float((stale - expected).abs().max()) / scale)
        index[key] += 1
    assert all(index[b.comfy_block] > 0 for b in ADAPTER_BLOCKS)
    return worst, gap


def test_gligen_stream_is_the_one_the_adapter_uses(host, sd15, adapter, embeds, tmp_path, monkeypatch):
    """Core GLIGENLoader + GLIGENTextBoxApply append their middle_patch after the model's
    own at sampling time; the adapter must still use the post-GLIGEN stream."""
    name = host.link_model("gligen", write_gligen(tmp_path / "gligen_standin.safetensors"))
    gligen = nodes.GLIGENLoader().load_gligen(name)[0]
    pos = nodes.GLIGENTextBoxApply().append(sd15["pos"], sd15["clip"], gligen, "a red boat", 32, 32, 0, 0)[0]
    before = ShiftStream(1.0, 0.0)  # identity: records the stream before GLIGEN
    base = sd15["model"].clone()
    base.set_model_patch(before, "middle_patch")
    patched = apply_adapter(base, adapter, embeds)
    unet = patched.model.diffusion_model
    with spy_patch_calls(monkeypatch) as calls, record_attn2_streams(unet) as seen:
        ksample(patched, pos, sd15["neg"], steps=1)
    worst, gap = check_terms_on_seen_stream(calls, seen, before.seen)
    print(f"GLIGEN: term vs plain formula on the seen stream {worst:.2e}; stale-stream gap {gap:.2e}")
    assert worst < TERM_RTOL
    # GLIGEN changed the stream at the adapter sites (the cond rows): a stale capture would differ.
    assert gap > 100 * TERM_RTOL


@pytest.mark.parametrize("where", ["before", "after", "both"])
def test_other_middle_patches_in_any_order(sd15, adapter, embeds, monkeypatch, where):
    first, last = ShiftStream(1.1, 0.5), ShiftStream(0.9, -0.5)
    model = sd15["model"].clone()
    if where in ("before", "both"):
        model.set_model_patch(first, "middle_patch")
    model = apply_adapter(model, adapter, embeds)
    if where in ("after", "both"):
        model = model.clone()
        model.set_model_patch(last, "middle_patch")
    with spy_patch_calls(monkeypatch) as calls, record_attn2_streams(model.model.diffusion_model) as seen:
        ksample(model, sd15["pos"], sd15["neg"], steps=1)
    stale = last.seen if where != "before" else None
    worst, gap = check_terms_on_seen_stream(calls, seen, stale)
    print(f"middle patch {where}: term vs plain formula {worst:.2e}; stale gap {gap:.2e}")
    assert worst < TERM_RTOL
    if stale is not None:
        assert gap > 100 * TERM_RTOL


class ExtraTokensAttention:
    """An attn2 replace patch as IPAdapter registers one: text attention plus a weighted
    attention over extra (image) tokens with their own keys and values."""

    def __init__(self, weight=0.8, seed=6):
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randn(1, 4, 768, generator=g)
        self.proj = {}
        self.weight = weight
        self.calls = 0

    def __call__(self, q, k, v, extra_options):
        self.calls += 1
        heads, d = extra_options["n_heads"], q.shape[-1]
        if d not in self.proj:
            g = torch.Generator().manual_seed(d)
            self.proj[d] = (torch.randn(768, d, generator=g) / 768 ** 0.5, torch.randn(768, d, generator=g) / 768 ** 0.5)
        wk, wv = self.proj[d]
        ik = (self.tokens @ wk).to(q).expand(q.shape[0], -1, -1)
        iv = (self.tokens @ wv).to(q).expand(q.shape[0], -1, -1)
        out = comfy_attention.optimized_attention(q, k, v, heads)
        return out + self.weight * comfy_attention.optimized_attention(q, ik, iv, heads)

    def __deepcopy__(self, memo):
        return self


def _with_replace(model, patch):
    model = model.clone()
    for block in ADAPTER_BLOCKS:
        model.set_model_attn2_replace(patch, *block.comfy_block)
    return model


@pytest.mark.parametrize("replace_first", [True, False])
def test_attn2_replace_pack_on_the_same_blocks(sd15, adapter, embeds, monkeypatch, replace_first):
    """Both act, and the adapter's term is the plain formula on the stream it got,
    exactly as when it runs alone."""
    ip = ExtraTokensAttention()
    if replace_first:
        both = apply_adapter(_with_replace(sd15["model"], ip), adapter, embeds)
    else:
        both = _with_replace(apply_adapter(sd15["model"], adapter, embeds), ip)
    alone = apply_adapter(sd15["model"], adapter, embeds)
    only_ip = _with_replace(sd15["model"], ip)
    with spy_patch_calls(monkeypatch) as calls, record_attn2_streams(both.model.diffusion_model) as seen:
        out_both = ksample(both, sd15["pos"], sd15["neg"], steps=1)
    assert ip.calls > 0
    worst, _ = check_terms_on_seen_stream(calls, seen)
    print(f"attn2 replace: term vs plain formula {worst:.2e}")
    assert worst < TERM_RTOL
    with spy_patch_calls(monkeypatch) as alone_calls:
        out_alone = ksample(alone, sd15["pos"], sd15["neg"], steps=1)
    # The middle block is the first site of both: same stream in, so the adapter's term
    # there differs only through attn2's output n (which the replace patch changed).
    first_both = next(c for c in calls if c[1] == ("middle", 0))
    first_alone = next(c for c in alone_calls if c[1] == ("middle", 0))
    assert not torch.equal(first_both[2], first_alone[2])  # the replace patch acted on n
    out_ip = ksample(only_ip, sd15["pos"], sd15["neg"], steps=1)
    assert (out_both - out_alone).abs().max() > 1e-3  # the replace patch changes the result
    assert (out_both - out_ip).abs().max() > 1e-3     # the adapter changes the result


@pytest.fixture(scope="module")
def lora_and_controlnet(host, fixture_dir, sd15):
    lora = host.link_model("loras", fixture_dir.lora())
    model, _clip = nodes.LoraLoader().load_lora(sd15["model"], sd15["clip"], lora, 1.0, 1.0)
    cn = nodes.ControlNetLoader().load_controlnet(host.link_model("controlnet", fixture_dir.controlnet()))[0]
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(8))
    pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(sd15["pos"], sd15["neg"], cn, image, 1.0, 0.0, 1.0)[:2]
    return {"model": model, "pos": pos, "neg": neg}


def _image(sd15, model, pos, neg):
    return sd15["vae"].decode(ksample(model, pos, neg, seed=9, steps=2))


def test_lora_controlnet_and_adapter_each_act(sd15, adapter, embeds, lora_and_controlnet):
    """One graph with all three: removing any one changes the image; the adapter at
    strength 0 gives exactly the graph without it."""
    lc = lora_and_controlnet
    full = _image(sd15, apply_adapter(lc["model"], adapter, embeds), lc["pos"], lc["neg"])
    without = {
        "LoRA": _image(sd15, apply_adapter(sd15["model"], adapter, embeds), lc["pos"], lc["neg"]),
        "ControlNet": _image(sd15, apply_adapter(lc["model"], adapter, embeds), sd15["pos"], sd15["neg"]),
        "adapter": _image(sd15, lc["model"], lc["pos"], lc["neg"]),
    }
    for part, img in without.items():
        diff = float((full - img).detach().abs().max())
        print(f"without {part}: max |image difference| {diff:.3e}")
        assert diff > 1e-3, f"{part} has no effect on the image"
    zero = _image(sd15, apply_adapter(lc["model"], adapter, embeds, strength=0.0), lc["pos"], lc["neg"])
    assert torch.equal(zero, without["adapter"])


def test_window_switches_audio_on_exactly_inside_it(sd15, adapter, embeds, monkeypatch):
    """start/end percent through the real KSampler: the audio acts on exactly the model
    calls whose sigma lies in [sigma(end), sigma(start)]."""
    import comfy.samplers

    start, end, steps = 0.3, 0.7, 6
    model = apply_adapter(sd15["model"], adapter, embeds, start_percent=start, end_percent=end)
    sampling = model.get_model_object("model_sampling")
    hi, lo = sampling.percent_to_sigma(start), sampling.percent_to_sigma(end)
    with spy_patch_calls(monkeypatch) as calls:
        ksample(model, sd15["pos"], sd15["neg"], steps=steps)
    acted = {}
    for _, key, n_in, n_out, extra in calls:
        if key in BLOCKS_BY_COMFY_KEY:
            s = round(float(extra["sigmas"].reshape(-1)[0]), 4)
            acted.setdefault(s, set()).add(not torch.equal(n_in, n_out))
    assert all(len(v) == 1 for v in acted.values()), "the audio acted on some blocks of a call but not others"
    sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", steps)[:-1]
    expected = {round(float(s), 4): bool(lo <= float(s) <= hi) for s in sigmas}
    assert {s: v.pop() for s, v in acted.items()} == expected
    assert set(expected.values()) == {True, False}  # the window really cuts the schedule
