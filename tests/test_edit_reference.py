"""The whole edit, with injection and the audio, against an independent reference built
the authors' way with diffusers (tests/edit_reference.py): the DDIM inversion and the
Plug-and-Play loop written plainly on a diffusers UNet with the adapter's plain formula."""
import edit_reference
import pytest
import torch

import nodes
from sonic_diffusion import edit
from sonic_diffusion.safe_load import load_weights_file

pytest_plugins = ("edit_support",)  # its fixtures: names, first_run, parts

STEPS = 4


@pytest.fixture(scope="module")
def reference(fixture_dir, parts):
    gates, _ = load_weights_file(fixture_dir.gates())
    return edit_reference.build_unet(fixture_dir.full_checkpoint(), gates)


@pytest.fixture(scope="module")
def audio(parts):
    g = torch.Generator().manual_seed(12)
    e = torch.nn.functional.normalize(torch.randn(1, 1024, generator=g), dim=-1)
    model = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"].execute(
        model=parts["source"], sonic_adapter=parts["adapter"], audio_embeds=e, strength=1.0,
        start_percent=0.0, end_percent=1.0).result[0]
    return model, e


@pytest.mark.parametrize("fractions", [(0.75, 0.5), (0.0, 0.0)])
def test_whole_edit_with_injection_matches_the_diffusers_reference(parts, reference, audio, fractions):
    unet, control = reference
    model, e = audio
    sched = edit_reference.scheduler(STEPS)
    neg, pos = parts["neg"][0][0].float(), parts["pos"][0][0].float()
    x0 = parts["latent"]["samples"].float() * 0.18215  # SD 1.x latent scale
    inverted = edit_reference.invert(unet, control, sched, x0, neg)
    n_attention, n_features = (int(STEPS * f) for f in fractions)
    with torch.no_grad():
        tokens, null_tokens = parts["adapter"].project(e), parts["adapter"].null_tokens()
    ref = edit_reference.pnp_edit(unet, control, sched, inverted, neg, pos, tokens, null_tokens, 7.5,
                                  n_attention, n_features) / 0.18215
    ours = edit.audio_edit(model, parts["pos"], parts["neg"], parts["latent"], steps=STEPS, cfg=7.5,
                           attention_injection=fractions[0], feature_injection=fractions[1],
                           inversions=edit.InversionCache())["samples"].cpu()
    scale = float(ref.abs().max())
    err = float((ours - ref).abs().max())
    print(f"edit vs diffusers reference, fractions {fractions}: max error / max |ref| = {err / scale:.3g}")
    # Measured (fp32, CPU, torch 2.9.1): 3.16e-5 with injection (0.75, 0.5), 2.88e-5 without;
    # the bound is 10x the larger.
    assert err <= 3.2e-4 * scale, err / scale
    if fractions != (0.0, 0.0):  # the injection must matter at this scale, or the comparison proves little
        plain = edit.audio_edit(model, parts["pos"], parts["neg"], parts["latent"], steps=STEPS, cfg=7.5,
                                attention_injection=0.0, feature_injection=0.0,
                                inversions=edit.InversionCache())["samples"].cpu()
        assert float((ours - plain).abs().max()) > 20 * err
