"""The DDIM schedule of SonicDiffusion's editing (docs/design.md section 7), in ComfyUI's
sigma space.

A latent at noise level sigma is x = x0 + sigma * eps (the form model.apply_model takes;
it returns the x0 prediction). The authors' diffusers code works with VP latents
sqrt(a) * x0 + sqrt(1 - a) * eps, a = alphas_cumprod[t] = 1 / (1 + sigma_t^2); a VP latent
is a sigma-space latent times sqrt(a).

The authors' DDIMScheduler (SD 1.x config: "leading" spacing, steps_offset 1,
set_alpha_to_one False) samples at t_i = i * (1000 // steps) + 1, i.e. 981, 961, ..., 1 for
50 steps (ComfyUI's "ddim_uniform" gives the same levels), and its last step lands on
alphas_cumprod[0] (sigma_min), not on 0.
"""
import itertools

import torch


class EditInputError(ValueError):
    """Inputs the edit cannot use; the message says how to fix them (without the node name)."""


def ddim_timesteps(num_train_timesteps, steps):
    """Descending DDIM timesteps: diffusers' 'leading' spacing with steps_offset 1, shifted
    down by one where the top step would pass the last training timestep (1000 steps give
    999 ... 0, each once; diffusers itself cannot run that many)."""
    ratio = num_train_timesteps // steps if steps > 0 else 0
    if ratio < 1:
        raise EditInputError(f"{steps} steps exceed the model's {num_train_timesteps} training timesteps")
    offset = min(1, num_train_timesteps - 1 - (steps - 1) * ratio)
    return [i * ratio + offset for i in reversed(range(steps))]


def ddim_sigmas(model_sampling, steps):
    """The sampling levels of ddim_timesteps followed by the level of alphas_cumprod[0]
    where the last step lands (the SIGMAS the one-node edit samples with)."""
    table = model_sampling.sigmas.detach().float().cpu()
    levels = [float(table[t]) for t in ddim_timesteps(len(table), steps)]
    return torch.tensor([*levels, float(table[0])], dtype=torch.float32)


def injection_steps(steps, fraction):
    """How many of the first sampling steps inject: int(steps * fraction) as the authors
    compute it (the epsilon only guards against 0.7 * 10 = 6.999...)."""
    return max(0, min(steps, int(steps * fraction + 1e-6)))


class EditSchedule:
    """sigmas[i]: the level of sampling step i (descending); final_sigma: where the last step
    lands. A last sigma of 0 (ComfyUI's schedulers) stands for the model's lowest level, as
    in the authors' DDIM. Inversion climbs final_sigma -> sigmas[-1] -> ... -> sigmas[0]."""

    def __init__(self, sigmas, model_sampling):
        levels = [float(s) for s in sigmas.flatten()]
        if len(levels) < 2:
            raise EditInputError("the SIGMAS hold no step; connect a scheduler with at least 1 step")
        final = levels[-1] if levels[-1] > 0 else float(model_sampling.sigma_min)
        self.sigmas, self.final_sigma = levels[:-1], final
        descending = all(a > b for a, b in zip(self.sigmas, self.sigmas[1:])) and self.sigmas[-1] >= final
        if not descending or final <= 0:
            raise EditInputError("the SIGMAS must descend to the end of sampling (denoise 1.0); the edit "
                                 "inverts the source along the same levels")

    @property
    def steps(self):
        return len(self.sigmas)

    def sampling_pairs(self):
        """(sigma, sigma_next) per sampling step."""
        return list(zip(self.sigmas, [*self.sigmas[1:], self.final_sigma]))

    def inversion_pairs(self):
        """(sigma_from, sigma_to) per inversion step, ascending."""
        levels = [self.final_sigma, *self.sigmas[::-1]]
        return list(itertools.pairwise(levels))
