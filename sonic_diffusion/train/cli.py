"""Command line: `python -m sonic_diffusion.train {check,stage1,stage2} ...`.

Run it from the pack's folder (or anywhere with the pack on PYTHONPATH); ComfyUI is
found as the folder the pack is installed in, or through SONIC_COMFYUI_DIR. Several
GPUs: `torchrun --nproc_per_node N -m sonic_diffusion.train stage2 ...` (the batch size
is per process).
"""
import argparse
import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger("sonic_diffusion.train")


# -- arguments ------------------------------------------------------------------------

def _positive_int(v):
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return n


def _probability(v):
    x = float(v)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return x


def build_parser():
    p = argparse.ArgumentParser(prog="python -m sonic_diffusion.train",
                                description="Train SonicDiffusion projectors (stage 1) and adapters (stage 2) "
                                            "from a folder of audio-image pairs. See docs/training.md.")
    sub = p.add_subparsers(dest="command", required=True)

    chk = sub.add_parser("check", help="report the pairs, missing halves, unreadable files and classes of a folder")
    chk.add_argument("--data", type=Path, required=True, help="the folder of x.wav + x.png|jpg (+ x.txt) pairs")
    chk.add_argument("--json", action="store_true", help="print the report as JSON")
    chk.add_argument("--no-decode", action="store_true", help="only look at file names (fast; no decode test)")

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("data and models")
    g.add_argument("--data", type=Path, required=True, help="folder of pairs x.wav + x.png|jpg, optional x.txt "
                   "captions and labels.csv (stem,class)")
    g.add_argument("--out", type=Path, required=True, help="output folder (checkpoints, log, final weights)")
    g.add_argument("--checkpoint", type=Path, required=True, help="SD 1.x checkpoint (.safetensors/.ckpt): its "
                   "text encoder gives the caption tokens; in stage 2 its UNet and VAE are used")
    g.add_argument("--clap", type=Path, required=True, help="MS-CLAP 2022 weights (CLAP_weights_2022.pth or a "
                   "converted .safetensors)")
    g.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: DATA/.sonic_cache)")
    g.add_argument("--window", choices=["center", "start"], default="center",
                   help="which 10 s of longer clips CLAP hears (as Audio Encode (Sonic)); default center")
    g.add_argument("--init", type=Path, nargs="+", default=None, metavar="FILE",
                   help="start from these weights: stage 1 a projector (or bundle); stage 2 a bundle or the "
                        "official pair GATES PROJECTOR (default: fresh weights, gates 0)")
    t = common.add_argument_group("optimisation")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps (or give --epochs)")
    t.add_argument("--epochs", type=float, default=None, help="passes over the data (used when --steps is absent)")
    t.add_argument("--batch-size", type=_positive_int, default=6, help="per process (paper: 6)")
    t.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decoupled weight decay (0: Adam)")
    t.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                   help="adam (AdamW; the paper's Adam with --weight-decay 0) or plain sgd")
    t.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up")
    t.add_argument("--max-grad-norm", type=float, default=0.0, help="clip the gradient norm (0: off)")
    t.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
                   help="compute precision; weights being trained stay float32 (auto: bf16 on GPUs that have "
                        "it, else fp16 on GPUs, fp32 on the CPU)")
    t.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute UNet activations in the backward pass (stage 2: less memory, ~30%% slower)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    t.add_argument("--repeat-first-batch", action="store_true",
                   help="sanity check: train on the first batch only, with the same noise and drops every step "
                        "(the loss should fall towards 0)")
    o = common.add_argument_group("output")
    o.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (0: only at the end)")
    o.add_argument("--keep-checkpoints", type=int, default=2, help="how many checkpoints to keep (0: all)")
    o.add_argument("--log-every", type=_positive_int, default=10, help="CSV/TensorBoard row every N steps")
    o.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    o.add_argument("--overwrite", action="store_true", help="replace earlier output in --out")
    o.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard (needs tensorboard)")
    o.add_argument("--quiet", action="store_true", help="only warnings")

    s1 = sub.add_parser("stage1", parents=[common], help="train the audio projector",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s1.add_argument("--negatives", type=int, default=128,
                    help="InfoNCE negatives per step (fewer when the dataset is smaller)")
    s1.add_argument("--temperature", type=float, default=0.07, help="InfoNCE temperature")
    s1.add_argument("--nce-weight", type=float, default=1.0)
    s1.add_argument("--mse-weight", type=float, default=1.0)
    s1.add_argument("--token-weight-center", type=float, default=20.0,
                    help="reverse-sigmoid token weights: the token index where the weight halves")
    s1.add_argument("--token-weight-scale", type=float, default=5.0, help="... and how fast it falls")

    s2 = sub.add_parser("stage2", parents=[common], help="train the gated audio attention adapters",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s2.add_argument("--projector", type=Path, default=None,
                    help="the projector to use: the stage-1 projector.safetensors, an official "
                         "audio_projector_*.pth, or a bundle (its projector)")
    s2.add_argument("--train-projector", action="store_true", help="train the projector too")
    s2.add_argument("--audio-drop", type=_probability, default=0.1,
                    help="probability of the null audio Projector(zeros) (for a separate audio guidance)")
    s2.add_argument("--caption-drop", type=_probability, default=0.5, help="probability of the empty caption")
    s2.add_argument("--resolution", type=int, default=512, help="images: shorter side resized, centre crop")
    s2.add_argument("--no-hflip", dest="hflip", action="store_false", help="no random horizontal flips")
    return p


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
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _load_sd(path, precision, device, output_model, output_clip, output_vae):
    import comfy.sd

    options = {}
    if output_model and (device.type != "cpu" or precision != "fp32"):
        options["dtype"] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    out = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=output_vae, output_clip=output_clip,
                                                output_model=output_model, model_options=options)
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


def _usable_items(args, cache, need_latents, get_vae=None, vae_id=None):
    """Pairs whose files are there and decode; the rest skipped and counted."""
    from .cache import clap_embeddings, vae_latents
    from .dataset import scan_folder

    scan = scan_folder(args.data)
    if not scan.items:
        raise ValueError(f"{args.data}: no pairs found (x.wav + x.png|jpg with the same stem); "
                         f"run `python -m sonic_diffusion.train check --data {args.data}`")
    items = scan.items
    skipped = {}
    embeds, failed = clap_embeddings(items, cache, args.clap, args.window)
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
        raise ValueError("no usable pairs left after skipping unreadable files")
    return usable, embeds, latents, len(skipped)


# -- commands ---------------------------------------------------------------------------

def cmd_check(args):
    from .dataset import check_folder

    report = check_folder(args.data, decode=not args.no_decode)
    print(report.json() if args.json else report.text())
    return 0 if report.usable else 1


def cmd_train(args, preloaded=None):
    """Runs stage 1 or 2. `preloaded` = (model, clip, vae) from load_checkpoint_guess_config
    lets an in-process caller (tests) load the SD checkpoint once."""
    from . import distributed as D
    from . import loop
    from .cache import FeatureCache, text_tokens
    from .checkpoint import prepare_output

    device = D.init(args.device)
    _setup_logging(args.quiet)
    try:
        if args.steps is None and args.epochs is None:
            raise ValueError("give --steps or --epochs")
        args.precision = _resolve_precision(args, device)
        stage = args.command
        final = "projector.safetensors" if stage == "stage1" else "sonic_adapter.safetensors"
        if D.is_main():
            prepare_output(args.out, final, args.resume, args.overwrite)
        D.barrier()
        cache = FeatureCache(args.cache or Path(args.data) / ".sonic_cache")
        ckpt_id = cache.file_hash(args.checkpoint)
        sources = [str(Path(args.checkpoint).name), str(Path(args.clap).name)]
        torch.manual_seed(args.seed)

        sd_objs = {}

        def sd_models():
            if "m" not in sd_objs:
                if preloaded is not None:
                    sd_objs["m"] = preloaded
                else:
                    log.info("loading %s", args.checkpoint)
                    sd_objs["m"] = _load_sd(args.checkpoint, args.precision, device, stage == "stage2", True,
                                            stage == "stage2")
                _check_sd1_clip(sd_objs["m"][1], args.checkpoint)
            return sd_objs["m"]

        if stage == "stage1":
            from .stage1 import Stage1Task

            items, embeds, _, _ = _usable_items(args, cache, need_latents=False)
            captions = [it.caption for it in items if it.caption is not None]
            text = text_tokens(captions, cache, lambda: sd_models()[1], ckpt_id) if captions else {}
            proj_sd = None
            if args.init:
                proj_sd = _projector_from_file(args.init[0])
                sources.append(Path(args.init[0]).name)
            task = Stage1Task(args, device, items, embeds, text, proj_sd, sources)
        else:
            from .stage2 import Stage2Task, build_adapter
            from ..compat import check_unet_fits

            model, clip, vae = sd_models()
            check_unet_fits(model, "train stage2")
            items, embeds, latents, _ = _usable_items(args, cache, need_latents=True, get_vae=lambda: vae,
                                                      vae_id=ckpt_id)
            captions = [it.caption for it in items if it.caption] + [""]
            text = text_tokens(captions, cache, lambda: clip, ckpt_id)
            proj_sd = _projector_from_file(args.projector) if args.projector else None
            init = _init_pair(args.init) if args.init else None
            sources += [Path(f).name for f in (args.init or [])] + ([args.projector.name] if args.projector else [])
            adapter_model = build_adapter(args, proj_sd, init)
            if preloaded is None:
                # Text encoder and VAE are done: free them before the UNet trains.
                sd_objs.clear()
                del clip, vae
                import comfy.model_management as mm

                mm.unload_all_models()
                mm.soft_empty_cache()
            _place_unet(model, device)
            task = Stage2Task(args, device, items, embeds, latents, text, text[""], model, adapter_model, sources)
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
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
