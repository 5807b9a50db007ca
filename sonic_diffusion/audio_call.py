"""How the audio reaches each UNet call (docs/design.md section 10.6).

Two wrappers, registered once per model by Apply Sonic Adapter:
- OUTER_SAMPLE (attach_audio): at the start of each sampling run, gives every cond of the
  guider its audio as a model cond, by the role the guider gave the cond ("positive" gets
  the adapter's audio, every other role its negative audio; audio attached to the
  conditioning by Audio Conditioning (Sonic) wins), and resolves each patch's sigma window
  from the model sampling then in force.
- DIFFUSION_MODEL (route_audio): on every UNet call, moves that model cond from the
  keyword arguments into transformer_options, keeps the stream capture behind every other
  middle_patch and reads the call's sigma once.
"""
import comfy.patcher_extension

from .audio_rows import COND_KEY, MODEL_COND_KEY, AudioTable, PatchRows, RunContext, attach, direct_batch
from .patch import CALL_AUDIO, CALL_SIGMA, STREAM_ORDERED, SonicAudioPatch, StreamCapture

STREAM_WRAPPER_KEY = "sonic_diffusion_stream_order"
ROLES_WRAPPER_KEY = "sonic_diffusion_audio_roles"
# Roles that are the positive prompt evaluated without its audio (the pack's Dual Guider).
WITHOUT_AUDIO_ROLES = ("positive_without_audio",)
CAPTURE = StreamCapture()


def sonic_patches(model_options):
    """The Sonic audio patches registered in a MODEL's model_options."""
    return _sonic_in(model_options.get("transformer_options", {}).get("patches", {}))


def _sonic_in(patches):
    """The Sonic audio patches of a transformer_options["patches"] dict."""
    return [p for p in patches.get("attn2_output_patch", []) if isinstance(p, SonicAudioPatch)]


def register(model_patcher, patch):
    """Adds `patch`, the shared stream capture and (once per model) both wrappers."""
    present = model_patcher.model_options.get("transformer_options", {}).get("patches", {}).get("middle_patch", [])
    if not any(isinstance(p, StreamCapture) for p in present):
        model_patcher.set_model_patch(CAPTURE, "middle_patch")
    model_patcher.set_model_attn2_output_patch(patch)
    for kind, key, fn in ((comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, STREAM_WRAPPER_KEY, route_audio),
                          (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, ROLES_WRAPPER_KEY, attach_audio)):
        if fn not in comfy.patcher_extension.get_all_wrappers(kind, model_patcher.model_options, is_model_options=True):
            comfy.patcher_extension.add_wrapper_with_key(kind, key, fn, model_patcher.model_options,
                                                         is_model_options=True)
    return model_patcher


# Start of a sampling run ---------------------------------------------------------------
def rows_for(patch, cond, role):
    """The audio `patch` gives one cond of `role`. Audio attached to the conditioning brings
    its own per-row factors (strength x curve), in place of the patch's strength_curve."""
    if role in WITHOUT_AUDIO_ROLES:
        return patch.rows_for_role("negative")
    attached = (cond.get(COND_KEY) or {}).get(patch.adapter_uid)
    if attached is None:
        return patch.rows_for_role(role)
    return PatchRows(attached.tokens, attached.factors, attached.source)


def cond_with_audio(cond, role, patches, run):
    """A copy of one cond dict whose model conds carry its audio for every patch."""
    table = AudioTable({p.uid: rows_for(p, cond, role) for p in patches}, run)
    twin = None
    if role not in WITHOUT_AUDIO_ROLES:
        twin = AudioTable({p.uid: rows_for(p, cond, WITHOUT_AUDIO_ROLES[0]) for p in patches}, run)
    out = dict(cond)
    out["model_conds"] = {**cond.get("model_conds", {}), MODEL_COND_KEY: attach(table.rows, table, twin)}
    return out


def attach_audio(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: the guider's conds (its per-run copies) get their audio."""
    guider = executor.class_obj
    patches = sonic_patches(guider.model_options)
    if not patches:
        return executor(*args, **kwargs)
    sampling = guider.model_patcher.get_model_object("model_sampling")
    run = RunContext({p.uid: p.window(sampling) for p in patches})
    for role, conds in list(guider.conds.items()):
        guider.conds[role] = [cond_with_audio(c, role, patches, run) for c in conds]
    try:
        return executor(*args, **kwargs)
    finally:
        run.release()


# Every UNet call -----------------------------------------------------------------------
def route_audio(executor, *args, **kwargs):
    """DIFFUSION_MODEL wrapper: the call's audio into transformer_options (built from the
    chunk labels for a call made outside a sampling run), the capture last, sigma read once."""
    args = list(args)
    in_args = len(args) > 5
    to = dict(args[5] if in_args else kwargs.get("transformer_options", {}))
    audio = kwargs.pop(MODEL_COND_KEY, None)
    patches = to.get("patches", {})
    middle = patches.get("middle_patch", [])
    captures = [p for p in middle if isinstance(p, StreamCapture)]
    others = [p for p in middle if not isinstance(p, StreamCapture)]
    if any(a is not b for a, b in zip(middle, others + captures)):
        to["patches"] = {**patches, "middle_patch": others + captures}
    to[STREAM_ORDERED] = True
    sonic = _sonic_in(patches)
    if audio is None and sonic:
        x = args[0] if args else kwargs["x"]
        chunks = list(to.get("cond_or_uncond") or [0])
        audio = direct_batch(sonic, chunks, x.shape[0] // len(chunks))
    if audio is not None:
        to[CALL_AUDIO] = audio
        sigmas = to.get("sigmas")
        if sigmas is not None and any(audio.run.windows.get(p.uid) for p in sonic):
            to[CALL_SIGMA] = float(sigmas.reshape(-1)[0])
    if in_args:
        args[5] = to
    else:
        kwargs["transformer_options"] = to
    return executor(*args, **kwargs)


def labelled_call_audio(model_patcher, chunks, batch):
    """The audio of a UNet call made outside a sampling run (tools, benchmarks, tests), as
    a run would give it by chunk labels (1: negative prompt, other: positive), with the
    windows resolved from the model's sampling. Reusable across calls: its derived tensors
    are built once."""
    patches = sonic_patches(model_patcher.model_options)
    sampling = model_patcher.get_model_object("model_sampling")
    return direct_batch(patches, list(chunks), batch, RunContext({p.uid: p.window(sampling) for p in patches}))
