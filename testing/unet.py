"""One direct call of a MODEL's UNet, as a sampling run makes it, for the tests and the
benchmarks: the rows in `chunks` order (1 = negative prompt, 0 = positive), the call's
audio built once from the chunk labels (labelled_call_audio) when the model carries
Sonic patches, and the adapter applied through its node as a graph applies it."""
import copy

import torch

# The UNet call of the tests and benchmarks: the timestep every direct call uses unless given.
TIMESTEP = 421


def call_audio(model, chunks, batch):
    """Keyword arguments that give a direct UNet call its audio as a sampling run would.
    Built once per runner, so derived tensors are cached across calls as within a run."""
    from sonic_diffusion.audio_call import labelled_call_audio, sonic_patches

    if not sonic_patches(model.model_options):
        return {}
    return {"sonic_audio": labelled_call_audio(model, list(chunks), batch)}


def unet_runner(model, x, t, ctx, chunks=(1, 0), *, sigmas=None, options=None, cast=False):
    """A no-argument function that makes the call (under no_grad) and returns the UNet output.
    t: the timesteps [rows] (also the sigmas unless `sigmas` is given); options: extra
    transformer_options entries; cast: inputs cast to the UNet's dtype (as the sampler does)."""
    to = copy.copy(model.model_options["transformer_options"])
    to["cond_or_uncond"] = list(chunks)
    to["sigmas"] = (t if sigmas is None else sigmas).float()
    to.update(options or {})
    dm = model.model.diffusion_model
    if cast:
        x, ctx = x.to(dm.dtype), ctx.to(dm.dtype)
    audio = call_audio(model, chunks, x.shape[0] // len(chunks))

    def run():
        with torch.no_grad():
            return dm(x, timesteps=t, context=ctx, transformer_options=to, **audio)
    return run


def unet_call(model, x, t, ctx, chunks=(1, 0), **kw):
    """One call now: unet_runner(...)()."""
    return unet_runner(model, x, t, ctx, chunks, **kw)()


def timesteps(rows, t=TIMESTEP, device=None):
    return torch.full((rows,), t, dtype=torch.long, device=device)


def apply_adapter(model, adapter, embeds, **inputs):
    """Apply Sonic Adapter as a graph runs it: strength 1 over all steps unless given."""
    import nodes

    args = {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0, **inputs}
    node = nodes.NODE_CLASS_MAPPINGS["SonicApplyAdapter"]
    return node.execute(model=model, sonic_adapter=adapter, audio_embeds=embeds, **args).result[0]


def unet_inputs(rows, seed=0, audios=1, size=16):
    """Random UNet inputs for `rows` rows of size x size latents at TIMESTEP, and `audios`
    unit-length audio embeddings: (x, t, ctx, embeds)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, size, size, generator=g)
    ctx = torch.randn(rows, 77, 768, generator=g)
    e = torch.nn.functional.normalize(torch.randn(audios, 1024, generator=g), dim=-1)
    return x, timesteps(rows), ctx, e
