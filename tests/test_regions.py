"""Two sounds in two regions of one image (Audio Conditioning (Sonic) on areas and masks).

ComfyUI computes an area's prediction on its crop and a mask's on the whole latent, then
blends them by their masks; in a part of the image that only one region covers, the
result is that region's prediction. So inside region A the two-sound run must equal a
run where both regions carry sound a, and inside B one where both carry sound b.
References use Apply Sonic Adapter's own audio only (no Audio Conditioning).
"""
import pytest
import torch
from test_guidance import apply, cfg_guider, one_step
from test_guider_roles import close, parts  # noqa: F401  (parts: module fixture)

import nodes

# 64x64 pixels = 8x8 latents; region A is the left half, B the right half.
SIZE = 64


def node(node_id, **inputs):
    """Runs a V1 or V3 node class by id and returns its outputs."""
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    if hasattr(cls, "FUNCTION"):
        return getattr(cls(), cls.FUNCTION)(**inputs)
    return cls.execute(**inputs).result


def with_audio(parts, cond, audio, strength=1.0):
    return node("SonicAudioConditioning", conditioning=cond, sonic_adapter=parts["adapter"], audio_embeds=audio,
                strength=strength)[0]


def halves_by_area(cond):
    left = node("ConditioningSetArea", conditioning=cond, width=SIZE // 2, height=SIZE, x=0, y=0, strength=1.0)[0]
    right = node("ConditioningSetArea", conditioning=cond, width=SIZE // 2, height=SIZE, x=SIZE // 2, y=0,
                 strength=1.0)[0]
    return left, right


def halves_by_mask(cond):
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, :, : SIZE // 2] = 1.0
    left = node("ConditioningSetMask", conditioning=cond, mask=mask, set_cond_area="default", strength=1.0)[0]
    right = node("ConditioningSetMask", conditioning=cond, mask=1.0 - mask, set_cond_area="default", strength=1.0)[0]
    return left, right


def combine(a, b):
    return node("ConditioningCombine", conditioning_1=a, conditioning_2=b)[0]


@pytest.mark.parametrize("split", [halves_by_area, halves_by_mask], ids=["areas", "masks"])
def test_two_sounds_in_two_regions(parts, split):
    left, right = split(parts["pos"])
    model = parts["patched"]  # its own audio (a) is overridden wherever a prompt carries audio
    two = one_step(cfg_guider(model, combine(with_audio(parts, left, parts["audio"]),
                                             with_audio(parts, right, parts["other_audio"])), parts["neg"], 5.0))
    only_a = one_step(cfg_guider(apply(parts, parts["audio"]), combine(left, right), parts["neg"], 5.0))
    only_b = one_step(cfg_guider(apply(parts, parts["other_audio"]), combine(left, right), parts["neg"], 5.0))
    half = SIZE // 16  # latent columns of the left half
    # measured max |diff| / scale: 0 for areas and for masks (the same rows, batched alike)
    close(two[..., :half], only_a[..., :half])
    close(two[..., half:], only_b[..., half:])
    # Each half really carries its own sound.
    assert (two[..., :half] - only_b[..., :half]).abs().max() > 1e-3
    assert (two[..., half:] - only_a[..., half:]).abs().max() > 1e-3


def test_conditioning_audio_overrides_the_adapter_audio_for_that_prompt(parts):
    model = parts["patched"]  # audio a
    got = one_step(cfg_guider(model, with_audio(parts, parts["pos"], parts["other_audio"]), parts["neg"], 5.0))
    want = one_step(cfg_guider(apply(parts, parts["other_audio"]), parts["pos"], parts["neg"], 5.0))
    close(got, want)


def test_conditioning_strength_scales_the_term(parts):
    """strength 0 on the prompt's audio: the positive gets no audio term at all, which equals
    a model with strength 0 for the positive only; checked against the unpatched model at cfg 1."""
    got = one_step(cfg_guider(parts["patched"], with_audio(parts, parts["pos"], parts["audio"], 0.0),
                              parts["neg"], 1.0))
    plain = one_step(cfg_guider(parts["model"], parts["pos"], parts["neg"], 1.0))
    torch.testing.assert_close(got, plain, rtol=0, atol=0)  # a zero factor is an exact no-op per row


def test_audio_on_a_model_without_the_adapter_is_ignored(parts):
    """A conditioning with audio sampled on the plain model: no error, the plain result."""
    got = one_step(cfg_guider(parts["model"], with_audio(parts, parts["pos"], parts["audio"]), parts["neg"], 5.0))
    plain = one_step(cfg_guider(parts["model"], parts["pos"], parts["neg"], 5.0))
    torch.testing.assert_close(got, plain, rtol=0, atol=0)
