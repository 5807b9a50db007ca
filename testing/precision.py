"""The half-precision rule shared by tests/test_precision.py and bench/gpu_check.py: the
adapter may not add more error than the plain UNet's own half-precision error times
RULE_FACTOR, both measured against float32 on the same device."""
import torch

from testing.references import plain_formula_model
from testing.unet import apply_adapter, timesteps, unet_call

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Measured adapter error / UNet error at 8x8 (strength 10, tests/test_precision.py on the
# CPU): fp16 1.02-1.17, bf16 0.94-1.00 (UNet error RMS 1.08e-3 fp16, 1.06e-2 bf16; adapter
# effect 5.0e-2, i.e. 4.7x bf16's error).
RULE_FACTOR = 1.5
# At strength 1 the stand-in adapter moves an 8x8 output by 5.0e-3 RMS, below bf16's own
# UNet error (1.02e-2; fp16 1.07e-3): the node's largest strength makes the adapter's term,
# and so its rounding, large enough to be seen beside the UNet's.
STRENGTH = 10.0


def rms(a):
    return float(a.float().square().mean().sqrt())


def unet_out(model, x, ctx, chunks):
    """One UNet call as the sampler makes it (model loaded, inputs cast to the UNet's dtype), float32 out."""
    import comfy.model_management as mm

    mm.load_models_gpu([model])
    return unet_call(model, x, timesteps(x.shape[0], device=x.device), ctx, chunks, cast=True).float()


def pack_model(model, adapter, embeds):
    """The pack's patch (Apply Sonic Adapter) at STRENGTH."""
    return apply_adapter(model, adapter, embeds, strength=STRENGTH)


def formula_model(model, adapter, embeds):
    """The straightforward formula (testing/references.py module_term) at STRENGTH."""
    return plain_formula_model(model, adapter, embeds, strength=STRENGTH)
