"""The edit's GUIDER and the one-call edit the Audio Edit (Sonic) node runs.

SonicEditGuider is ComfyUI's CFGGuider over a clone of the model that carries the idle
injection hooks: the guided rows are computed exactly as KSampler computes them."""
import comfy.samplers
import torch

from .cache import attach, inversions_for
from .injection import InjectionState, install_injection
from .inputs import check_latent, check_model, check_numbers
from .sampler import PnPDDIMSampler
from .schedule import EditInputError, ddim_sigmas


class SonicEditGuider(comfy.samplers.CFGGuider):
    """CFGGuider whose model carries the PnP hooks (idle unless PnPDDIMSampler drives them)."""

    def __init__(self, model_patcher):
        check_model(model_patcher)
        self.injection = InjectionState()
        clone = install_injection(model_patcher, self.injection)
        attach(clone, inversions_for(clone.model))  # unloading the model empties its inversion cache
        super().__init__(clone)

    def prepare_areas(self, latent_hw):
        """Tells the hooks where each area conditioning sits (they crop the source there)."""
        self.injection.latent_hw = tuple(int(n) for n in latent_hw)
        self.injection.areas = {}
        for conds in self.conds.values():
            for c in conds:
                area = c.get("area")
                if area is not None and "uuid" in c and len(area) == 4:
                    self.injection.areas[c["uuid"]] = (int(area[2]), int(area[3]))


def edit_guider(model, positive, negative, cfg):
    guider = SonicEditGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(float(cfg))
    return guider


def audio_edit(model, positive, negative, latent, steps, cfg, attention_injection, feature_injection,
               inversions=None, callback=None):
    """The whole edit through ComfyUI's sampling: returns the edited LATENT (on the
    model's device; the caller moves it). ``inversions``: None for the model's own cache."""
    if not 1 <= int(steps) <= 1000:
        raise EditInputError(f"steps is {steps}; use 1 to 1000 (50 as in the paper)")
    check_numbers(cfg, attention_injection, feature_injection)
    samples = check_latent(latent)
    guider = edit_guider(model, positive, negative, cfg)
    if inversions is not None:
        attach(guider.model_patcher, inversions)
    sampler = PnPDDIMSampler(attention_injection, feature_injection, inversions)
    sigmas = ddim_sigmas(guider.model_patcher.get_model_object("model_sampling"), int(steps))
    noise = torch.zeros_like(samples)  # unused: the edit starts from the inversion
    out = guider.sample(noise, samples, sampler, sigmas, callback=callback, disable_pbar=True, seed=0)
    result = dict(latent)
    result["samples"] = out
    return result
