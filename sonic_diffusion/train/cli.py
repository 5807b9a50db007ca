"""Command line: `python -m sonic_diffusion.train {check,stage1,stage2} ...`.

Run it from the pack's folder (or anywhere with the pack on PYTHONPATH); ComfyUI is
found as the folder the pack is installed in, or through SONIC_COMFYUI_DIR. Several
GPUs: `torchrun --nproc_per_node N -m sonic_diffusion.train stage2 ...` (the batch size
is per process).
"""
import logging
import sys
from pathlib import Path

import torch

from .options import build_parser

log = logging.getLogger("sonic_diffusion.train")


# -- helpers ----------------------------------------------------------------------------

def _setup_logging(quiet):
    from . import distributed as D

    level = logging.WARNING if quiet or not D.is_main() else logging.INFO
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[train] %(message)s"))
        log.addHandler(h)
        log.propagate = False
    log.setLevel(level)


def _resolve_precision(args, device):
    if args.precision != "auto":
        if device.type == "cpu" and args.precision == "fp16":
            log.warning("--precision fp16 on the CPU is slow and imprecise; bf16 or fp32 is better there")
        return args.precision
    if device.type == "cpu":
        return "fp32"
    import comfy.model_management as mm

    if mm.should_use_bf16(device):
        return "bf16"
    return "fp16" if mm.should_use_fp16(device) else "fp32"


def _precheck_checkpoint(path):
    """The SD checkpoint, checked before ComfyUI reads it (header limits; a hostile
    pickle refused): a one-line error instead of a traceback from deep inside."""
    from ..safe_load import inspect_weights_file

    try:
        inspect_weights_file(path)
    except ValueError as e:
        raise ValueError(f"--checkpoint: {e}") from None


def _load_sd(path, precision, device, output_model, output_clip, output_vae):
    import pickle

    import comfy.sd

    from ..safe_load import UnsafeWeightsError

    _precheck_checkpoint(path)
    options = {}
    if output_model and (device.type != "cpu" or precision != "fp32"):
        options["dtype"] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    try:
        out = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=output_vae, output_clip=output_clip,
                                                    output_model=output_model, model_options=options)
    except pickle.UnpicklingError as e:
        raise UnsafeWeightsError(f"--checkpoint {path} holds non-tensor Python objects (code or classes), so it is "
                                 f"refused for safety ({str(e).splitlines()[0][:200]})") from None
    except (RuntimeError, KeyError, AttributeError, TypeError, EOFError) as e:
        raise ValueError(f"--checkpoint {path} could not be loaded as an SD 1.x checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if out is None or (out[0] is None and output_model):
        raise ValueError(f"--checkpoint {path}: ComfyUI found no SD model in it")
    model, clip, vae = out[0], out[1], out[2]
    if output_clip and clip is None:
        raise ValueError(f"{path} holds no text encoder; stage training needs a full SD 1.x checkpoint")
    return model, clip, vae


def _check_sd1_clip(clip, path):
    """The caption targets must be SD1's CLIP-L tokens: [77,768]."""
    from .cache import encode_text

    t = encode_text(clip, "")
    if tuple(t.shape) != (77, 768):
        raise ValueError(f"{path}: its text encoder gives {list(t.shape)} tokens, not SD 1.x CLIP-L [77, 768]")


def _read_weights(path, what):
    from ..safe_load import load_weights_file

    sd, _ = load_weights_file(path)
    return sd


def _projector_from_file(path):
    from .. import checkpoints as ck

    sd = _read_weights(path, "projector")
    if ck.looks_like_bundle(sd):
        proj, _ = ck.split_bundle(sd, str(path))
        if proj is None:
            raise ValueError(f"{path} is a bundle without a projector")
        return proj
    return ck.projector_state(sd, str(path))


def _init_pair(files):
    """--init for stage 2: a bundle, or gates [+ projector] -> (projector or None, gates)."""
    from .. import checkpoints as ck

    sds = [(_read_weights(f, "init"), f) for f in files]
    proj, gates = None, None
    for sd, f in sds:
        if ck.looks_like_bundle(sd):
            p, g = ck.split_bundle(sd, str(f))
            proj, gates = p or proj, g
        elif ck.looks_like_projector(sd):
            proj = ck.projector_state(sd, str(f))
        else:
            gates = ck.gates_state(sd, str(f))
    if gates is None:
        raise ValueError("--init: none of the files holds adapter gates (landscape.pt, greatest_hits.pt or a bundle)")
    return proj, gates


def _bad_images(items):
    """{stem: reason} of the images that do not decode (stage 1 reads no pixels, but a
    pair whose image is broken is not a pair: `check` and training agree)."""
    from .dataset import check_image

    bad = {}
    for it in items:
        reason = check_image(it.image)
        if reason is not None:
            bad[it.stem] = f"{it.image.name}: {reason}"
    return bad


def _usable_items(args, cache, need_latents, get_vae=None, vae_id=None):
    """Pairs whose files are there and decode; the rest skipped and counted."""
    from .cache import clap_embeddings, vae_latents
    from .dataset import scan_folder

    scan = scan_folder(args.data)
    if not scan.items:
        raise ValueError(f"{args.data}: no pairs found (x.wav + x.png|jpg with the same stem); "
                         f"run `python -m sonic_diffusion.train check --data {args.data}`")
    items = scan.items
    skipped = {} if need_latents else _bad_images(items)
    remaining = [it for it in items if it.stem not in skipped]
    embeds, failed = clap_embeddings(remaining, cache, args.clap, args.window) if remaining else ({}, {})
    skipped.update(failed)
    latents = {}
    if need_latents:
        latents, failed = vae_latents([it for it in items if it.stem not in skipped], cache, get_vae, vae_id,
                                      args.resolution, args.hflip)
        skipped.update(failed)
    usable = [it for it in items if it.stem not in skipped]
    missing = len(scan.audio_only) + len(scan.image_only)
    log.info("data: %d pairs, %d usable, %d unreadable (skipped), %d incomplete (ignored), %d with captions",
             len(items), len(usable), len(skipped), missing, sum(it.caption is not None for it in usable))
    for stem, why in list(skipped.items())[:10]:
        log.warning("skipped %s: %s", stem, why)
    if not usable:
        raise ValueError(f"no usable pairs left after skipping {len(skipped)} unreadable ones; run "
                         f"`python -m sonic_diffusion.train check --data {args.data}` for the reasons")
    return usable, embeds, latents, len(skipped)


# -- commands ---------------------------------------------------------------------------

def cmd_check(args):
    from .dataset import check_folder

    report = check_folder(args.data, decode=not args.no_decode)
    print(report.json() if args.json else report.text())
    return 0 if report.usable else 1


def _sd_models(args, device, preloaded):
    """A memoising loader of (model, clip, vae) from --checkpoint (or `preloaded`)."""
    held = {}

    def get():
        if "m" not in held:
            if preloaded is not None:
                held["m"] = preloaded
            else:
                log.info("loading %s", args.checkpoint)
                stage2 = args.command == "stage2"
                held["m"] = _load_sd(args.checkpoint, args.precision, device, stage2, True, stage2)
            _check_sd1_clip(held["m"][1], args.checkpoint)
        return held["m"]

    get.release = held.clear
    return get


def _stage1_task(args, device, cache, sd_models, ckpt_id, sources):
    from .cache import text_tokens
    from .stage1 import Stage1Task

    items, embeds, _, _ = _usable_items(args, cache, need_latents=False)
    captions = [it.caption for it in items if it.caption is not None]
    text = text_tokens(captions, cache, lambda: sd_models()[1], ckpt_id) if captions else {}
    proj_sd = None
    if args.init:
        proj_sd = _projector_from_file(args.init[0])
        sources.append(Path(args.init[0]).name)
    return Stage1Task(args, device, items, embeds, text, proj_sd, sources)


def _stage2_task(args, device, cache, sd_models, ckpt_id, sources, preloaded):
    from ..compat import IncompatibleModelError, check_unet_fits
    from .cache import text_tokens
    from .stage2 import Stage2Task, build_adapter

    model, clip, vae = sd_models()
    try:
        check_unet_fits(model)
    except IncompatibleModelError as e:
        raise IncompatibleModelError(f"train stage2: {e}") from None
    items, embeds, latents, _ = _usable_items(args, cache, need_latents=True, get_vae=lambda: vae, vae_id=ckpt_id)
    captions = [it.caption for it in items if it.caption] + [""]
    text = text_tokens(captions, cache, lambda: clip, ckpt_id)
    proj_sd = _projector_from_file(args.projector) if args.projector else None
    init = _init_pair(args.init) if args.init else None
    sources += [Path(f).name for f in (args.init or [])] + ([args.projector.name] if args.projector else [])
    adapter_model = build_adapter(args, proj_sd, init)
    if preloaded is None:
        # Text encoder and VAE are done: free them before the UNet trains.
        sd_models.release()
        del clip, vae
        import comfy.model_management as mm

        mm.unload_all_models()
        mm.soft_empty_cache()
    _place_unet(model, device)
    return Stage2Task(args, device, items, embeds, latents, text, text[""], model, adapter_model, sources)


def cmd_train(args, preloaded=None):
    """Runs stage 1 or 2. `preloaded` = (model, clip, vae) from load_checkpoint_guess_config
    lets an in-process caller (tests) load the SD checkpoint once."""
    from . import distributed as D
    from . import loop
    from .cache import FeatureCache
    from .checkpoint import prepare_output

    device = D.init(args.device)
    _setup_logging(args.quiet)
    try:
        if args.steps is None and args.epochs is None:
            raise ValueError("give --steps or --epochs")
        _precheck_checkpoint(args.checkpoint)
        args.precision = _resolve_precision(args, device)
        final = "projector.safetensors" if args.command == "stage1" else "sonic_adapter.safetensors"
        if D.is_main():
            prepare_output(args.out, final, args.resume, args.overwrite)
        D.barrier()
        cache = FeatureCache(args.cache or Path(args.data) / ".sonic_cache")
        ckpt_id = cache.file_hash(args.checkpoint)
        sources = [str(Path(args.checkpoint).name), str(Path(args.clap).name)]
        torch.manual_seed(args.seed)
        sd_models = _sd_models(args, device, preloaded)
        if args.command == "stage1":
            task = _stage1_task(args, device, cache, sd_models, ckpt_id, sources)
        else:
            task = _stage2_task(args, device, cache, sd_models, ckpt_id, sources, preloaded)
        task.global_batch = args.batch_size * D.world_size() * args.grad_accum
        summary = loop.run(task, args, device)
        if D.is_main():
            log.info("done: %s (step %d, %.2f %s)", summary["final"], summary["steps"],
                     summary["samples_per_s"] or float("nan"), task.rate_unit)
        summary["task"] = task
        return summary
    finally:
        D.shutdown()


def _place_unet(model, device):
    """The UNet on the training device, through ComfyUI's loader (which applies any
    weight patches), falling back to a plain move."""
    import comfy.model_management as mm

    if device.type == "cpu":
        return
    try:
        mm.load_models_gpu([model], force_full_load=True)
    except TypeError:
        mm.load_models_gpu([model])
    unet = model.model.diffusion_model
    if any(p.device != device for p in unet.parameters()):
        unet.to(device)


def main(argv=None, preloaded=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return cmd_check(args)
        cmd_train(args, preloaded)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)  # once: the logger is not also given it
        return 2
    return 0
