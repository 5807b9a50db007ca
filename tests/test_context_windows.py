"""Per-frame audio under core Context Windows (Manual) (ComfyUI 0.33.0; 0.3.75's own
context windows fail on SD 1.x without the pack, so this runs where they exist).

An SD 1.x UNet treats every latent on its own, so a context-windowed run must give each
latent what the whole-batch run gives it, provided each window's latents get their own
frames' audio and strengths. A spy reads which audio rows every call used.
"""
import inspect

import pytest
import torch
from test_guidance import cfg_guider, sample
from test_guider_roles import close, parts  # noqa: F401  (parts: module fixture)

import nodes
from sonic_diffusion.patch import CALL_AUDIO, SonicAudioPatch

FRAMES = 8

def _host_windows_fit():
    """Context Windows (Manual) of the kind this test drives (ComfyUI 0.33.0: freenoise, causal
    anchor, per-model-cond slicing). ComfyUI 0.3.75's node predates it."""
    node = nodes.NODE_CLASS_MAPPINGS.get("ContextWindowsManual")
    return node is not None and "freenoise" in inspect.signature(node.execute).parameters


if not _host_windows_fit():
    pytest.skip("needs ComfyUI 0.33.0's Context Windows (Manual) (0.3.75's predates it)", allow_module_level=True)


def windowed(model, length, overlap):
    node = nodes.NODE_CLASS_MAPPINGS["ContextWindowsManual"]
    return node.execute(model=model, context_length=length, context_overlap=overlap,
                        context_schedule="standard_static", context_stride=1, closed_loop=False,
                        fuse_method="pyramid", dim=0, freenoise=False).result[0]


@pytest.fixture(scope="module")
def per_frame(parts):
    g = torch.Generator().manual_seed(3)
    embeds = torch.nn.functional.normalize(torch.randn(FRAMES, 1024, generator=g), dim=-1)
    curve = torch.linspace(0.2, 1.6, FRAMES)
    node = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
    model = node.execute(model=parts["model"], sonic_adapter=parts["adapter"], audio_embeds=embeds, strength=1.0,
                         start_percent=0.0, end_percent=1.0, strength_curve=curve).result[0]
    return model


def run(parts, model):
    return sample(cfg_guider(model, parts["pos"], parts["neg"], 5.0), steps=1, batch=FRAMES)


@pytest.mark.parametrize(("length", "overlap"), [(4, 0), (4, 2), (5, 1)])
def test_each_window_gets_its_frames_audio(parts, per_frame, monkeypatch, length, overlap):
    whole = run(parts, per_frame)
    rows_seen = []
    real = SonicAudioPatch.__call__

    def spy(self, n, extra_options):
        window = extra_options.get("context_window")
        audio = extra_options[CALL_AUDIO]
        if window is not None:
            want = list(window.index_list)
            anchor = getattr(window, "causal_anchor_index", None)
            if anchor is not None and anchor >= 0:
                want = [anchor, *want]
            rows_seen.append(all(list(idx) == want for _, idx in audio.parts))
        return real(self, n, extra_options)

    monkeypatch.setattr(SonicAudioPatch, "__call__", spy)
    got = run(parts, windowed(per_frame, length, overlap))
    assert rows_seen and all(rows_seen)
    # Row by row: each latent equals its whole-batch result.
    # measured max |diff| / scale over the rows: at most 2.3e-6 in each case (0.33.0, CPU)
    for i in range(FRAMES):
        close(got[i], whole[i])


def test_one_window_covering_everything_equals_no_context(parts, per_frame):
    torch.testing.assert_close(run(parts, windowed(per_frame, FRAMES, 0)), run(parts, per_frame), rtol=0, atol=0)
