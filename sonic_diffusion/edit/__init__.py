"""SonicDiffusion's image editing: DDIM inversion + Plug-and-Play injection through
ComfyUI's own sampling (docs/design.md section 7).

schedule: the authors' DDIM levels; injection: the hooks on a model clone; sampler: the
SAMPLER (inversion, then the PnP loop); guider: the GUIDER and the one-call edit; cache:
the inversion cache of each model (freed with it); inputs: what the edit accepts."""
from .cache import InversionCache, inversions_for
from .guider import SonicEditGuider, audio_edit, edit_guider
from .injection import AttentionInjection, FeatureInjection, InjectionState, install_injection
from .inputs import check_numbers
from .sampler import PnPDDIMSampler, call_model, ddim_step, inversion_step
from .schedule import EditInputError, EditSchedule, ddim_sigmas, ddim_timesteps, injection_steps

__all__ = [
           "AttentionInjection",
           "EditInputError",
           "EditSchedule",
           "FeatureInjection",
           "InjectionState",
           "InversionCache",
           "PnPDDIMSampler",
           "SonicEditGuider",
           "audio_edit",
           "call_model",
           "check_numbers",
           "ddim_sigmas",
           "ddim_step",
           "ddim_timesteps",
           "edit_guider",
           "injection_steps",
           "install_injection",
           "inversion_step",
           "inversions_for",
]
