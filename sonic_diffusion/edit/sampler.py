"""The edit as a ComfyUI SAMPLER: DDIM inversion of the source latent, then DDIM (eta 0)
with Plug-and-Play injection (docs/design.md section 7).

Each step first runs the source row on its own as a plain reconstruction (the negative
prompt, null audio, no conditioning extras; its tensors are recorded), then the edited
rows through the guider, i.e. ComfyUI's own sampling_function / calc_cond_batch, so
ControlNet, T2I, area, GLIGEN, cfg functions and model wrappers act on them as in KSampler.
"""
import math

import comfy.model_management as mm
import comfy.samplers
import torch

from ..patch import AUDIO_OFF
from .cache import dependencies, digest, inversions_for
from .injection import INJECT, RECORD
from .inputs import inversion_context
from .schedule import EditInputError, EditSchedule, injection_steps


def call_model(base_model, model_options, x, sigma, context, cond_or_uncond, extra=None):
    """The x0 prediction for the sigma-space latent x at level sigma, as ComfyUI's
    samplers call the model (model_function_wrapper honoured) but with no conditioning
    extras: the plain source reconstruction."""
    sigma_t = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
    to = dict(model_options.get("transformer_options", {}))
    to.update(extra or {})
    to["cond_or_uncond"] = list(cond_or_uncond)
    to["sigmas"] = sigma_t
    c = {"c_crossattn": context, "transformer_options": to}
    wrapper = model_options.get("model_function_wrapper")
    if wrapper is not None:
        return wrapper(base_model.apply_model, {"input": x, "timestep": sigma_t, "c": c,
                                                "cond_or_uncond": list(cond_or_uncond)})
    return base_model.apply_model(x, sigma_t, **c)


def inversion_step(base_model, model_options, x, sigma_from, sigma_to, context):
    """One inversion step as the authors run it: the UNet sees the VP latent of level
    sigma_from with the timestep of sigma_to; x_to = x0_pred + sigma_to * eps.
    Returns (the sigma-space latent at sigma_to, the x0 prediction)."""
    scale = math.sqrt(1.0 + sigma_to ** 2) / math.sqrt(1.0 + sigma_from ** 2)
    x_in = x * scale  # apply_model divides by sqrt(1 + sigma_to^2): the UNet gets x / sqrt(1 + sigma_from^2)
    denoised = call_model(base_model, model_options, x_in, sigma_to, context, [1], {AUDIO_OFF: True})
    eps = (x_in - denoised) / sigma_to
    x0 = x - sigma_from * eps
    return x0 + sigma_to * eps, x0


def ddim_step(x, denoised, sigma, sigma_next):
    """Deterministic DDIM (eta 0) in sigma space: x_next = x0 + sigma_next * eps."""
    return denoised + sigma_next * ((x - denoised) / sigma)


@torch.no_grad()
def invert(base_model, model_options, x0, context, sched, report):
    """DDIM inversion of the sigma-space latent x0 (process_latent_in'd) with the audio off.
    Returns the latents at the inversion levels, ascending."""
    x = x0 * math.sqrt(1.0 + sched.final_sigma ** 2)  # the clean VP latent taken as the lowest level
    out = []
    for s_from, s_to in sched.inversion_pairs():
        mm.throw_exception_if_processing_interrupted()
        x, x0_pred = inversion_step(base_model, model_options, x, s_from, s_to, context)
        out.append(x)
        report(x0_pred, x)
    return out


@torch.no_grad()
def pnp_sample(guider, model_options, inverted, context, sched, counts, seed, report):
    """DDIM from inverted[-1]; during the first counts = (attention, features) steps the
    source row at the step's level is recorded, then injected into the guided rows."""
    state, base_model = guider.injection, guider.inner_model
    x = inverted[-1]
    pairs = sched.sampling_pairs()
    ones = x.new_ones((x.shape[0],))
    try:
        for i, (s, s_next) in enumerate(pairs):
            mm.throw_exception_if_processing_interrupted()
            state.attention, state.features = i < counts[0], i < counts[1]
            if state.attention or state.features:
                state.mode = RECORD
                call_model(base_model, model_options, inverted[len(pairs) - 1 - i], s, context, [1])
                state.mode = INJECT
            denoised = guider(x, s * ones, model_options=model_options, seed=seed)
            state.reset()
            x = ddim_step(x, denoised, s, s_next)
            report(denoised, x)
    finally:
        state.reset()
    return x


class Progress:
    """Reports inversion and sampling steps to the callback as one count."""

    def __init__(self, callback, total):
        self.callback, self.total, self.done = callback, total, 0

    def __call__(self, x0, x):
        if self.callback is not None:
            self.callback(self.done, x0, x, self.total)
        self.done += 1


class PnPDDIMSampler(comfy.samplers.Sampler):
    """SAMPLER of the edit; it needs the GUIDER of Sonic Edit Guider. The noise is not
    used: the edit starts from the inversion of latent_image."""

    def __init__(self, attention_injection, feature_injection, inversions=None):
        self.fractions = (float(attention_injection), float(feature_injection))
        self.inversions = inversions  # None: the model's own cache (cache.inversions_for)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        guider = model_wrap
        if not hasattr(guider, "injection"):
            raise EditInputError("the GUIDER is not from Sonic Edit Guider; connect Sonic Edit Guider "
                                 "(the edit needs its injection hooks)")
        if denoise_mask is not None:
            raise EditInputError("the latent carries a noise mask, but the edit changes the whole image; "
                                 "remove Set Latent Noise Mask")
        base_model = guider.inner_model
        model_options = extra_args["model_options"]
        sched = EditSchedule(sigmas, base_model.model_sampling)
        context = inversion_context(guider.original_conds.get("negative"), latent_image.shape[0]).to(latent_image.device)
        guider.prepare_areas(latent_image.shape[2:])

        key = (digest(latent_image), digest(context), tuple(sched.sigmas), sched.final_sigma)
        parts, objects = dependencies(base_model, guider.model_patcher, model_options)
        key += (parts,)
        inversions = self.inversions if self.inversions is not None else inversions_for(base_model)
        inverted = inversions.get(key, objects)
        progress = Progress(callback, sched.steps * (1 if inverted is not None else 2))
        if inverted is None:
            inverted = invert(base_model, model_options, latent_image, context, sched, progress)
            inversions.put(key, objects, inverted)
        inverted = [t.to(latent_image.device) for t in inverted]
        counts = tuple(injection_steps(sched.steps, f) for f in self.fractions)
        x = pnp_sample(guider, model_options, inverted, context, sched, counts, extra_args.get("seed"), progress)
        return x / math.sqrt(1.0 + sched.final_sigma ** 2)  # the authors decode the VP latent at that level
