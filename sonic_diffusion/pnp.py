"""SonicDiffusion's image editing: DDIM inversion of a source latent, then DDIM
sampling with Plug-and-Play (PnP) injection from the inverted source (docs/design.md section 7).

Everything runs in ComfyUI's sigma space: a latent at noise level sigma is
x = x0 + sigma * eps (the form model.apply_model takes; it returns the x0 prediction,
so eps = (x - x0) / sigma). The authors' diffusers code works with VP latents
sqrt(a) * x0 + sqrt(1 - a) * eps, a = alphas_cumprod[t] = 1 / (1 + sigma_t^2); a VP
latent is a sigma-space latent times sqrt(a).

Schedule (the authors' DDIMScheduler with the SD 1.4 scheduler config: "leading"
spacing, steps_offset 1, set_alpha_to_one False): timesteps t_i = i * (1000 // steps) + 1,
i.e. 981, 961, ..., 1 for 50 steps (the same timesteps as ComfyUI's "ddim_uniform" for
50 steps). The last sampling step lands on alphas_cumprod[0] (sigma_min ~ 0.029), not
on 0, and the VP latent there is what the authors decode; we return the same.

Inversion (the authors' preprocess.py): the clean latent is taken as the VP latent at
level alphas_cumprod[0]; step j evaluates the UNet on the current latent with the *next*
timestep t_j (ascending), then x <- x0_pred + sigma_next * eps. Empty prompt, no
guidance, audio off. Every intermediate latent is kept: the one at t is the source row
while sampling step t.

Sampling: batch [source_t, x, x], text ["", "", prompt], audio [null, null, tokens]
(cond_or_uncond [1, 1, 0]); eps = e_u + cfg * (e_c - e_u) from rows 1 and 2. During
the first int(attention_injection * steps) steps the self-attention Q and K of the
source row replace those of the other rows in output blocks 4-11; during the first
int(feature_injection * steps) steps the ResBlock residual branch (after conv2, before
the skip add) of output blocks 4 and 5 is replaced likewise. Once no injection is
active the source row is dropped (it no longer influences the other rows).
"""
import collections
import hashlib
import logging
import math
import weakref

import torch
import torch.nn as nn

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management as mm
import comfy.model_sampling
import comfy.utils

from .batching import rows_for_batch
from .compat import IncompatibleModelError, check_unet_fits
from .patch import AUDIO_OFF, SonicAudioPatch, StreamCapture

ATTENTION_BLOCKS = tuple(range(4, 12))   # output blocks whose attn1 Q/K come from the source
FEATURE_BLOCKS = (4, 5)                   # output blocks whose ResBlock residual branch comes from the source
LATENT_CHANNELS = 4
CONTEXT_DIM = 768
CACHE_SIZE = 2

# Counters for tests and benchmarks.
stats = collections.Counter()  # "inversions", "inversion_cache_hits", "edits"


class EditInputError(ValueError):
    """Inputs the edit cannot use; the message says how to fix them (without the node name)."""


# --- schedule -----------------------------------------------------------------------

def ddim_timesteps(num_train_timesteps, steps):
    """Descending DDIM timesteps of diffusers' DDIMScheduler with 'leading' spacing and
    steps_offset 1 (the SD 1.x scheduler config the authors load)."""
    ratio = num_train_timesteps // steps
    if ratio < 1:
        raise EditInputError(f"{steps} steps exceed the model's {num_train_timesteps} training timesteps")
    return [min(i * ratio + 1, num_train_timesteps - 1) for i in reversed(range(steps))]


def injection_steps(steps, fraction):
    """How many of the first sampling steps inject: int(steps * fraction) as the authors
    compute it (the epsilon only guards against 0.7 * 10 = 6.999...)."""
    return max(0, min(steps, int(steps * fraction + 1e-6)))


class DDIMSchedule:
    """sigmas[i] is the level of sampling step i (descending); final_sigma the level the
    last step lands on; inversion climbs final_sigma -> sigmas[-1] -> ... -> sigmas[0]."""

    def __init__(self, model_sampling, steps):
        table = model_sampling.sigmas.detach().float().cpu()
        self.timesteps = ddim_timesteps(len(table), steps)
        self.sigmas = [float(table[t]) for t in self.timesteps]
        self.final_sigma = float(table[0])
        self.steps = steps

    def sampling_pairs(self):
        """(sigma, sigma_next) per sampling step."""
        nxt = self.sigmas[1:] + [self.final_sigma]
        return list(zip(self.sigmas, nxt))

    def inversion_pairs(self):
        """(sigma_from, sigma_to) per inversion step, ascending."""
        levels = [self.final_sigma] + self.sigmas[::-1]
        return list(zip(levels[:-1], levels[1:]))

    def all_sigmas(self):
        return torch.tensor(self.sigmas + [self.final_sigma], dtype=torch.float32)


# --- model calls ----------------------------------------------------------------------

def call_model(model, x, sigma, context, transformer_options, cond_or_uncond):
    """The model's x0 prediction for the sigma-space latent x at level sigma, called the
    way ComfyUI's samplers call it (model_function_wrapper honoured)."""
    sigma_t = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
    to = dict(transformer_options)
    to["cond_or_uncond"] = list(cond_or_uncond)
    to["sigmas"] = sigma_t
    c = {"c_crossattn": context, "transformer_options": to}
    wrapper = model.model_options.get("model_function_wrapper")
    if wrapper is not None:
        return wrapper(model.model.apply_model, {"input": x, "timestep": sigma_t, "c": c,
                                                 "cond_or_uncond": list(cond_or_uncond)})
    return model.model.apply_model(x, sigma_t, **c)


def model_eps(model, x, sigma, context, transformer_options, cond_or_uncond):
    """eps predicted for x at level sigma: (x - x0) / sigma."""
    denoised = call_model(model, x, sigma, context, transformer_options, cond_or_uncond)
    return (x - denoised) / sigma


def inversion_step(model, x, sigma_from, sigma_to, context, transformer_options):
    """One inversion step as the authors run it: the UNet sees the VP latent of level
    sigma_from with the timestep of sigma_to; x_to = x0_pred + sigma_to * eps.
    Returns the sigma-space latent at sigma_to."""
    scale = math.sqrt(1.0 + sigma_to ** 2) / math.sqrt(1.0 + sigma_from ** 2)
    x_in = x * scale  # apply_model divides by sqrt(1 + sigma_to^2): the UNet gets x / sqrt(1 + sigma_from^2)
    to = dict(transformer_options)
    to[AUDIO_OFF] = True
    eps = model_eps(model, x_in, sigma_to, context, to, [1])
    x0 = x - sigma_from * eps
    return x0 + sigma_to * eps


def ddim_step(x, eps, sigma, sigma_next):
    """Deterministic DDIM (eta 0) in sigma space: x_next = x0 + sigma_next * eps."""
    x0 = x - sigma * eps
    return x0 + sigma_next * eps


# --- injection ------------------------------------------------------------------------

class InjectionState:
    """Shared by the patches of one edit; the sampling loop sets it before each call."""

    def __init__(self):
        self.step = -1
        self.attention = False
        self.features = False
        self.batch = 0  # B: the model batch is [source(B), uncond(B), cond(B)] while injecting
        self.calls = collections.Counter()  # (kind, output block, step) -> injections

    def reset(self):
        self.step, self.attention, self.features, self.batch = -1, False, False, 0

    def __deepcopy__(self, memo):
        return self


def _from_source(t, batch):
    """[src, a, b] -> [src, src, src] along dim 0 (B rows each)."""
    src = t[:batch]
    return torch.cat((src, src, src), dim=0)


class AttentionInjection:
    """attn1 replace patch of one output block: receives q, k, v after projection; while
    the state says so, the source rows' Q and K replace those of the other rows."""

    def __init__(self, state, block, previous=None):
        self.state = state
        self.block = block
        self.previous = previous  # another node's attn1 replace on this block, called with our q/k

    def __call__(self, q, k, v, extra_options):
        st = self.state
        if st.attention and st.batch and q.shape[0] == 3 * st.batch:
            q = _from_source(q, st.batch)
            k = _from_source(k, st.batch)
            st.calls[("attention", self.block, st.step)] += 1
        if self.previous is not None:
            return self.previous(q, k, v, extra_options)
        kwargs = {}
        if "attn_precision" in extra_options:  # cores that pass it also accept these keywords
            kwargs = {"attn_precision": extra_options["attn_precision"], "transformer_options": extra_options}
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"], **kwargs)

    def __deepcopy__(self, memo):
        return self


class FeatureInjection(nn.Sequential):
    """Stands in for a ResBlock's out_layers (norm, SiLU, dropout, conv2): the same child
    modules under the same names (weights, LoRA keys and offloading are unaffected); while
    the state says so, the source rows' residual-branch output replaces the other rows'.
    Installed as an object patch of a clone, so the original module comes back when
    ComfyUI unpatches (and an idle state makes it an exact pass-through)."""

    def __init__(self, original, state=None, block=None):
        if isinstance(original, nn.Sequential):
            original = collections.OrderedDict(original._modules)
        super().__init__(original)
        self.sonic_state = state
        self.sonic_block = block

    def forward(self, h):
        out = super().forward(h)
        st = self.sonic_state
        if st is not None and st.features and st.batch and out.shape[0] == 3 * st.batch:
            out = _from_source(out, st.batch)
            st.calls[("features", self.sonic_block, st.step)] += 1
        return out


def install_injection(model, state):
    """Returns a clone of the ModelPatcher with the PnP patches; the input is untouched."""
    clone = model.clone()
    to = clone.model_options.get("transformer_options", {})
    replace = to.get("patches_replace", {}).get("attn1", {})
    for k in ATTENTION_BLOCKS:
        key3 = ("output", k, 0)
        if key3 in replace:
            clone.set_model_attn1_replace(AttentionInjection(state, k, replace[key3]), "output", k, 0)
        else:
            clone.set_model_attn1_replace(AttentionInjection(state, k, replace.get(("output", k))), "output", k)
    for k in FEATURE_BLOCKS:
        name = f"diffusion_model.output_blocks.{k}.0.out_layers"
        original = clone.get_model_object(name)
        if not isinstance(original, nn.Sequential):
            raise EditInputError(f"output block {k} has no ResBlock with out_layers; use an SD 1.x checkpoint")
        if isinstance(original, FeatureInjection):  # a leftover of an earlier edit: wrap what it wraps
            original = nn.Sequential(collections.OrderedDict(original._modules))
        clone.add_object_patch(name, FeatureInjection(original, state, k))
    return clone


# --- inputs ---------------------------------------------------------------------------

def context_of(conditioning, what):
    """The cross-attention tensor of a one-entry CONDITIONING."""
    if not isinstance(conditioning, (list, tuple)) or len(conditioning) == 0:
        raise EditInputError(f"{what} is empty; connect a CLIP Text Encode")
    if len(conditioning) > 1:
        raise EditInputError(f"{what} holds {len(conditioning)} conditionings (combined or area conditioning); "
                             f"connect a single CLIP Text Encode")
    ctx = conditioning[0][0]
    if not torch.is_tensor(ctx) or ctx.ndim != 3 or ctx.shape[-1] != CONTEXT_DIM:
        shape = list(ctx.shape) if torch.is_tensor(ctx) else type(ctx).__name__
        raise EditInputError(f"{what} is {shape}, not SD 1.x text embeddings [B, 77, 768]; "
                             f"encode it with the SD 1.x checkpoint's CLIP")
    extras = sorted(k for k in conditioning[0][1] if k in ("control", "gligen", "area", "mask"))
    if extras:
        logging.warning("Audio Edit (Sonic): %s carries %s, which the edit ignores", what, ", ".join(extras))
    return ctx


def _rows(ctx, batch, what):
    return rows_for_batch(ctx, batch, lambda n, b: EditInputError(
        f"{what} has a batch of {n} for {b} latents; give one prompt (it serves every latent) or exactly {b}"))


def _same_length(contexts):
    """Repeats token sequences to a common length (as ComfyUI does for prompts > 77 tokens)."""
    lengths = [c.shape[1] for c in contexts]
    lcm = lengths[0]
    for n in lengths[1:]:
        lcm = lcm * n // math.gcd(lcm, n)
    return [c.repeat(1, lcm // c.shape[1], 1) if c.shape[1] != lcm else c for c in contexts]


def check_model(model):
    try:
        check_unet_fits(model, "")
    except IncompatibleModelError as e:
        raise EditInputError(str(e).lstrip(": ")) from None
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
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not torch.is_tensor(samples) or samples.ndim != 4 or samples.shape[1] != LATENT_CHANNELS:
        shape = list(samples.shape) if torch.is_tensor(samples) else None
        raise EditInputError(f"the latent is {shape}, not an SD 1.x VAE latent [B, 4, H/8, W/8]; "
                             f"encode the image with VAE Encode and the SD 1.x checkpoint's VAE")
    if latent.get("noise_mask") is not None:
        logging.warning("Audio Edit (Sonic): the latent's noise mask is ignored; the whole image is edited")
    return samples


# --- inversion cache ------------------------------------------------------------------

_cache = collections.OrderedDict()  # key -> (model weakref, patch refs, inverted latents on the CPU)


def _digest(t):
    t = t.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha1(t.numpy().tobytes()).hexdigest() + str(tuple(t.shape))


def _model_fingerprint(model):
    """What the inversion depends on besides inputs: the weights (model, weight patches),
    the non-Sonic transformer patches and object patches, the compute dtype and device.
    Sonic patches are left out: the inversion runs with the audio off."""
    to = model.model_options.get("transformer_options", {})
    refs, parts = [], [id(model.model), str(model.patches_uuid), str(model.load_device),
                       str(model.model.get_dtype()), str(getattr(model.model, "manual_cast_dtype", None))]
    for name in sorted(to.get("patches", {})):
        ps = [p for p in to["patches"][name] if not isinstance(p, (SonicAudioPatch, StreamCapture))]
        refs += ps
        parts.append((name, tuple(id(p) for p in ps)))
    for name in sorted(to.get("patches_replace", {})):
        items = to["patches_replace"][name]
        refs += list(items.values())
        parts.append((name, tuple(sorted((repr(k), id(v)) for k, v in items.items()))))
    for name in sorted(model.object_patches):
        refs.append(model.object_patches[name])
        parts.append(("object", name, id(model.object_patches[name])))
    for name in ("model_function_wrapper",):
        if model.model_options.get(name) is not None:
            refs.append(model.model_options[name])
            parts.append((name, id(model.model_options[name])))
    return tuple(parts), refs


def _cache_get(key, model):
    entry = _cache.get(key)
    if entry is None:
        return None
    model_ref, _refs, latents = entry
    if model_ref() is not model.model:
        del _cache[key]
        return None
    _cache.move_to_end(key)
    return latents


def _cache_put(key, model, refs, latents):
    _cache[key] = (weakref.ref(model.model), refs, latents)
    _cache.move_to_end(key)
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)


def clear_cache():
    _cache.clear()


# --- the edit -------------------------------------------------------------------------

def _transformer_options(model, sched):
    to = dict(model.model_options.get("transformer_options", {}))
    to["sample_sigmas"] = sched.all_sigmas().to(model.load_device)
    return to


@torch.no_grad()
def invert(model, x0, negative, sched, progress=None):
    """DDIM inversion of the sigma-space latent x0 (already process_latent_in'd).
    Returns the latents at the inversion levels (ascending: index j is at the level of
    sched.inversion_pairs()[j][1]), on the model's device."""
    to = _transformer_options(model, sched)
    x = x0 * math.sqrt(1.0 + sched.final_sigma ** 2)  # the clean VP latent taken as the level alphas_cumprod[0]
    out = []
    for s_from, s_to in sched.inversion_pairs():
        mm.throw_exception_if_processing_interrupted()
        x = inversion_step(model, x, s_from, s_to, negative, to)
        out.append(x)
        if progress is not None:
            progress.update(1)
    stats["inversions"] += 1
    return out


@torch.no_grad()
def sample(model, inverted, positive, negative, sched, cfg, n_attention, n_features, state, progress=None):
    """PnP DDIM sampling from inverted[-1]; model must carry install_injection's patches
    bound to `state`. Returns the sigma-space latent at sched.final_sigma."""
    to = _transformer_options(model, sched)
    batch = inverted[-1].shape[0]
    x = inverted[-1]
    pairs = sched.sampling_pairs()
    try:
        for i, (s, s_next) in enumerate(pairs):
            mm.throw_exception_if_processing_interrupted()
            attention, features = i < n_attention, i < n_features
            if attention or features:
                src = inverted[len(pairs) - 1 - i]  # the source latent at this step's level
                xin = torch.cat((src, x, x))
                ctx = torch.cat((negative, negative, positive))
                chunks = [1, 1, 0]
            else:
                xin = torch.cat((x, x))
                ctx = torch.cat((negative, positive))
                chunks = [1, 0]
            state.step, state.attention, state.features, state.batch = i, attention, features, batch
            eps = model_eps(model, xin, s, ctx, to, chunks)
            e_u, e_c = eps[-2 * batch:-batch], eps[-batch:]
            x = ddim_step(x, e_u + cfg * (e_c - e_u), s, s_next)
            if progress is not None:
                progress.update(1)
    finally:
        state.reset()
    return x


def audio_edit(model, positive, negative, latent, steps=50, cfg=7.5, attention_injection=0.8,
               feature_injection=0.8, state=None):
    """The whole edit. positive/negative: CONDITIONING; latent: LATENT (VAE Encode).
    Returns (LATENT dict, InjectionState)."""
    if not 1 <= int(steps) <= 1000:
        raise EditInputError(f"steps is {steps}; use 1 to 1000 (50 as in the paper)")
    steps = int(steps)
    if not (math.isfinite(cfg) and 0.0 <= cfg <= 100.0):
        raise EditInputError(f"cfg is {cfg}; use a guidance scale from 0 to 100 (7.5 as in the paper)")
    for name, v in (("attention_injection", attention_injection), ("feature_injection", feature_injection)):
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise EditInputError(f"{name} is {v}; it is a fraction of the steps from 0 to 1 (0.8 as in the paper)")
    sampling = check_model(model)
    samples = check_latent(latent)
    batch = samples.shape[0]
    pos = _rows(context_of(positive, "positive"), batch, "positive")
    neg = _rows(context_of(negative, "negative"), batch, "negative")
    pos, neg = _same_length([pos, neg])

    sched = DDIMSchedule(sampling, steps)
    n_attention = injection_steps(steps, attention_injection)
    n_features = injection_steps(steps, feature_injection)
    state = state or InjectionState()
    clone = install_injection(model, state)

    device = model.load_device
    dtype = model.model.get_dtype()
    if getattr(model.model, "manual_cast_dtype", None) is not None:
        dtype = model.model.manual_cast_dtype
    x0 = model.model.process_latent_in(samples.to(device=device, dtype=torch.float32))
    pos = pos.to(device=device, dtype=dtype)
    neg = neg.to(device=device, dtype=dtype)

    fingerprint, refs = _model_fingerprint(model)
    key = (_digest(x0), _digest(neg), fingerprint, steps)
    inverted = _cache_get(key, model)
    if inverted is not None:
        stats["inversion_cache_hits"] += 1
    progress = comfy.utils.ProgressBar(steps + (steps if inverted is None else 0))

    models = [clone]
    if hasattr(clone, "get_nested_additional_models"):
        models += clone.get_nested_additional_models()
    try:
        memory = clone.memory_required([3 * batch] + list(samples.shape[1:]))
    except Exception:  # signature differs between cores; let ComfyUI pick
        memory = 0
    mm.load_models_gpu(models, memory_required=memory)
    if hasattr(clone, "pre_run"):
        clone.pre_run()
    try:
        if inverted is None:
            # The PnP patches are idle during the inversion (state.batch is 0); the audio is off.
            inverted = [t.cpu() for t in invert(clone, x0, neg, sched, progress)]
            _cache_put(key, model, refs, inverted)
        inverted_dev = [t.to(device) for t in inverted]
        x = sample(clone, inverted_dev, pos, neg, sched, float(cfg), n_attention, n_features, state, progress)
    finally:
        state.reset()
        if hasattr(clone, "cleanup"):
            clone.cleanup()
    stats["edits"] += 1
    # The authors decode the VP latent at the final level alphas_cumprod[0].
    x = x / math.sqrt(1.0 + sched.final_sigma ** 2)
    out = dict(latent)
    out.pop("noise_mask", None)
    out["samples"] = model.model.process_latent_out(x.float()).to(mm.intermediate_device())
    return out, state
