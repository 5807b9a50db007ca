"""Shared by the Audio Edit tests: the reference formulas of the authors' diffusers code
(VP latents, alphas_cumprod of the SD 1.x "scaled_linear" schedule, raw UNet eps), the
graph, module fixtures, and a spy that counts UNet calls from outside."""
import contextlib
from pathlib import Path

import folder_paths
import numpy as np
import pytest
import torch

import nodes
from sonic_diffusion.patch import AUDIO_OFF
from testing import graphs
from testing.graphs import link_audio_graph_files
from testing.unet import unet_call

AUDIO_A = "tone440_mono_44k_3s.wav"
AUDIO_B = "noise_stereo_48k_10s_f32.wav"
SOURCE = "sonic_edit_source.png"
ATOL = 1e-4


def alphas_cumprod():
    """SD 1.x: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2 (diffusers' scaled_linear)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


A = alphas_cumprod()


def sigma_of(t):
    return float(((1 - A[t]) / A[t]) ** 0.5)


def unet_eps(model, x_vp, t, context, chunks, audio_off=False):
    """The raw UNet output (eps) for a VP latent at integer timestep t (its sigma from A)."""
    rows = x_vp.shape[0]
    return unet_call(model, x_vp, torch.full((rows,), float(t)), context, chunks,
                     sigmas=torch.full((rows,), sigma_of(t)), options={AUDIO_OFF: True} if audio_off else None).float()


def close(a, b, atol=ATOL):
    scale = max(1.0, float(b.abs().max()))
    torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=atol * scale)


@contextlib.contextmanager
def unet_calls(model):
    """Records every call of the model's UNet as (batch, cond_or_uncond, audio off), by
    wrapping the module's forward from outside."""
    unet = model.model.diffusion_model
    calls, original = [], unet.forward

    def spy(x, *args, **kwargs):
        to = kwargs.get("transformer_options", {})
        calls.append((x.shape[0], tuple(to.get("cond_or_uncond", ())), bool(to.get(AUDIO_OFF))))
        return original(x, *args, **kwargs)

    unet.forward = spy
    try:
        yield calls
    finally:
        del unet.forward


def inversion_calls(calls):
    return sum(1 for c in calls if c[2])


# The suite's edit: 4 steps, half of them injected (the schema's 50 steps / 0.8 cost CPU time).
EDIT_SETTINGS = dict(steps=4, cfg=7.5, attention_injection=0.5, feature_injection=0.5)


def edit_graph(n, audio=None):
    """testing.graphs.edit_graph of n["image"] with the suite's EDIT_SETTINGS."""
    return graphs.edit_graph(n, n["image"], audio=audio, **EDIT_SETTINGS)


@pytest.fixture(scope="module")
def names(host, fixture_dir):
    from PIL import Image

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:64, 0:64]
    img = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 30, (64, 64, 3))
    path = Path(folder_paths.get_input_directory()) / SOURCE
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return dict(link_audio_graph_files(host, fixture_dir, AUDIO_A, AUDIO_B), image=SOURCE)


@pytest.fixture(scope="module")
def first_run(host, names):
    """One edit through the executor; its cached node outputs give the loaded models to
    the direct tests (the full UNet is loaded once for the module)."""
    run = host.run(edit_graph(names))
    return {"run": run, "image": run.outputs("dec")[0], "latent": run.outputs("edit")[0]}


@pytest.fixture(scope="module")
def parts(first_run):
    run = first_run["run"]
    model = run.outputs("ckpt")[0]
    assert model.model.diffusion_model.dtype == torch.float32
    return {"source": model, "patched": run.outputs("apply")[0], "pos": run.outputs("pos")[0],
            "neg": run.outputs("neg")[0], "latent": run.outputs("venc")[0], "clip": run.outputs("ckpt")[1],
            "embeds": run.outputs("enc_a")[0], "adapter": run.outputs("adapter")[0]}


# The one-node edit as the runtime and ComfyUI-machinery tests call it.
EDIT = nodes.NODE_CLASS_MAPPINGS["SonicAudioEdit"]
STEPS = 3


def node_edit(parts, model=None, positive=None, negative=None, latent=None, **kw):
    args = dict(steps=STEPS, cfg=6.0, attention_injection=0.67, feature_injection=0.34)
    args.update(kw)
    out = EDIT.execute(model=model or parts["patched"], positive=positive or parts["pos"],
                       negative=negative or parts["neg"], latent=latent or parts["latent"], **args)
    return out.result[0]["samples"]
