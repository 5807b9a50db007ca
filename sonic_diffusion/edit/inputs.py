"""What the edit accepts: an SD 1.x model on its discrete schedule, a VAE latent, and a
negative prompt to invert with."""
import comfy.model_sampling
import torch

from ..batching import rows_for_batch
from ..compat import IncompatibleModelError, check_unet_fits
from .schedule import EditInputError

LATENT_CHANNELS = 4
CONTEXT_DIM = 768


def check_model(model):
    """Refuses models the DDIM inversion cannot use; returns the model's sampling object."""
    try:
        check_unet_fits(model)
    except IncompatibleModelError as e:
        raise EditInputError(str(e)) from None
    sampling = model.get_model_object("model_sampling")
    edm = getattr(comfy.model_sampling, "ModelSamplingDiscreteEDM", ())
    if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete) or isinstance(sampling, edm) or \
            len(getattr(sampling, "sigmas", ())) < 2:
        raise EditInputError("the MODEL does not use the discrete SD 1.x noise schedule (a Model Sampling node "
                             "changed it?); DDIM inversion needs the original schedule")
    channels = getattr(model.model.latent_format, "latent_channels", LATENT_CHANNELS)
    if channels != LATENT_CHANNELS or model.model.diffusion_model.in_channels != LATENT_CHANNELS:
        raise EditInputError("the MODEL is not a plain 4-channel SD 1.x model (an inpainting model?); "
                             "use a regular SD 1.x checkpoint")
    return sampling


def check_latent(latent):
    """The latent's samples; a noise mask is refused (the edit changes the whole image)."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not torch.is_tensor(samples) or samples.ndim != 4 or samples.shape[1] != LATENT_CHANNELS:
        shape = list(samples.shape) if torch.is_tensor(samples) else None
        raise EditInputError(f"the latent is {shape}, not an SD 1.x VAE latent [B, 4, H/8, W/8]; "
                             f"encode the image with VAE Encode and the SD 1.x checkpoint's VAE")
    if latent.get("noise_mask") is not None:
        raise EditInputError("the latent carries a noise mask, but the edit changes the whole image; "
                             "remove Set Latent Noise Mask (or use KSampler for masked img2img)")
    return samples


def check_numbers(cfg, attention_injection, feature_injection):
    if not 0.0 <= cfg <= 100.0:
        raise EditInputError(f"cfg is {cfg}; use a guidance scale from 0 to 100 (7.5 as in the paper)")
    for name, v in (("attention_injection", attention_injection), ("feature_injection", feature_injection)):
        if not 0.0 <= v <= 1.0:
            raise EditInputError(f"{name} is {v}; it is a fraction of the steps from 0 to 1 (0.8 as in the paper)")


def inversion_context(negative, batch):
    """The cross-attention tensor of the negative prompt (converted conds), one row per latent:
    the prompt of the inversion and of the source row."""
    if not negative:
        raise EditInputError("negative is empty; connect a CLIP Text Encode of the empty prompt")
    if len(negative) > 1:
        raise EditInputError(f"negative holds {len(negative)} conditionings (combined or area conditioning); "
                             f"the inversion needs one prompt: connect a single CLIP Text Encode")
    ctx = negative[0].get("cross_attn")
    if not torch.is_tensor(ctx) or ctx.ndim != 3 or ctx.shape[-1] != CONTEXT_DIM:
        shape = list(ctx.shape) if torch.is_tensor(ctx) else type(ctx).__name__
        raise EditInputError(f"negative is {shape}, not SD 1.x text embeddings [B, 77, 768]; "
                             f"encode it with the SD 1.x checkpoint's CLIP")
    return rows_for_batch(ctx, batch, lambda n, b: EditInputError(
        f"negative has a batch of {n} for {b} latents; give one prompt (it serves every latent) or exactly {b}"))
