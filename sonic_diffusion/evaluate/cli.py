"""Command line: ``python -m sonic_diffusion.evaluate --generated G --audio A --reference R --labels L``."""
import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..files import write_text_atomic
from .data import AUDIO_EXTS, DataError, by_stem
from .generate import GenerationError
from .models import CLIP_B32, CLIP_L14, INCEPTION, WAV2CLIP, ModelFileError, ModelMissingError, default_model_paths
from .run import ALL_METRICS, DEFAULT_TEMPLATE, evaluate, format_table


def default_cache_dir():
    env = os.environ.get("SONIC_EVAL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sonic_diffusion" / "evaluate"


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m sonic_diffusion.evaluate",
        description="AIS, IIS, AIC and FID of images generated from audio (docs/design.md section 9). "
                    "Images are matched to their audio and reference image by file stem.")
    d = p.add_argument_group("data")
    d.add_argument("--generated", required=True, type=Path, help="folder of generated images, <audio stem>.png")
    d.add_argument("--audio", required=True, type=Path, help="folder of the dataset's audio files")
    d.add_argument("--reference", required=True, type=Path,
                   help="folder of the dataset's ground-truth images, <audio stem>.<ext> (IIS pairs, FID reference)")
    d.add_argument("--labels", type=Path, help="labels.csv with rows 'stem,class' (needed for AIC)")
    d.add_argument("--out", type=Path, help="result JSON (default: <generated>/evaluation.json)")
    d.add_argument("--metrics", default=",".join(ALL_METRICS),
                   help="comma-separated subset of {} (default: all)".format(",".join(ALL_METRICS)))

    m = p.add_argument_group("models (local files only; nothing is downloaded)")
    m.add_argument("--models-dir", type=Path,
                   help="folder holding the defaults below (default: $SONIC_EVAL_MODELS or ./eval_models)")
    m.add_argument("--clip-b32", type=Path, help="Hugging Face folder of CLIP ViT-B/32 (default: MODELS/clip-vit-base-patch32)")
    m.add_argument("--clip-l14", type=Path, help="Hugging Face folder of CLIP ViT-L/14 (default: MODELS/clip-vit-large-patch14)")
    m.add_argument("--wav2clip", type=Path, help="Wav2CLIP.pt (default: MODELS/Wav2CLIP.pt)")
    m.add_argument("--inception", type=Path,
                   help="torch-fidelity's FID Inception weights (default: MODELS/weights-inception-2015-12-05-6726825d.pth)")

    r = p.add_argument_group("protocol")
    r.add_argument("--distractors", type=int, default=100,
                   help="distractors per item for AIS/IIS, drawn from the dataset (0 or more than there are: all others)")
    r.add_argument("--seed", type=int, default=0, help="seed of the distractor draw")
    r.add_argument("--distractors-from", type=Path,
                   help="reuse the distractor sets (and seed, count) saved in an earlier result JSON")
    r.add_argument("--aic-template", default=DEFAULT_TEMPLATE, help="AIC prompt; {class} is replaced by the class name")
    r.add_argument("--audio-seconds", type=float, default=10.0,
                   help="Wav2CLIP input: the centred window of this length (0 = whole clip)")

    x = p.add_argument_group("execution")
    x.add_argument("--cache-dir", type=Path, help="embedding cache (default: $SONIC_EVAL_CACHE or ~/.cache/sonic_diffusion/evaluate)")
    x.add_argument("--no-cache", action="store_true", help="compute every embedding, store nothing")
    x.add_argument("--batch-size", type=int, default=16)
    x.add_argument("--device", help="torch device, e.g. cpu, cuda:1, mps (default: the device ComfyUI picks)")
    x.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_generate_options(p.add_argument_group("--generate: render the images first through the pack's "
                                               "ComfyUI graph"))
    return p


def _add_generate_options(g):
    g.add_argument("--generate", action="store_true", help="render <generated>/<stem>.png for the audio files first")
    g.add_argument("--generate-list", type=Path,
                   help="text file, one audio file per line (name in --audio, or a path); default: every dataset item")
    g.add_argument("--checkpoint", type=Path, help="SD 1.x checkpoint (.safetensors / .ckpt)")
    g.add_argument("--adapter", type=Path, help="landscape.pt / greatest_hits.pt or a .safetensors bundle")
    g.add_argument("--projector", type=Path, help="audio_projector_*.pth (omit for a bundle that holds it)")
    g.add_argument("--clap", type=Path, help="CLAP_weights_2022.pth or its audio-only .safetensors")
    g.add_argument("--gen-seed", type=int, default=0, help="base seed; each image uses base + a hash of its stem")
    g.add_argument("--steps", type=int, default=50)
    g.add_argument("--cfg", type=float, default=7.5)
    g.add_argument("--width", type=int, default=512)
    g.add_argument("--height", type=int, default=512)
    g.add_argument("--sampler", default="euler")
    g.add_argument("--scheduler", default="normal")
    g.add_argument("--prompt", default="", help="text prompt (empty: audio only, as the paper's metrics)")
    g.add_argument("--negative", default="")
    g.add_argument("--strength", type=float, default=1.0)
    g.add_argument("--overwrite", action="store_true", help="re-render images made with other settings")


def _generate_list(ns):
    audio = by_stem(ns.audio, AUDIO_EXTS, "audio")
    if ns.generate_list is None:
        from .data import IMAGE_EXTS

        ref = by_stem(ns.reference, IMAGE_EXTS, "reference images")
        return [audio[s] for s in sorted(set(audio) & set(ref))]
    out = []
    for line in ns.generate_list.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cand = Path(line)
        if not cand.is_absolute():
            cand = ns.audio / line if (ns.audio / line).is_file() else cand
        if not cand.is_file() and Path(line).stem in audio:
            cand = audio[Path(line).stem]
        if not cand.is_file():
            raise DataError(f"{ns.generate_list}: no audio file {line!r} (looked in {ns.audio})")
        out.append(cand)
    return out


def main(argv=None):
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    metrics = [m.strip().lower() for m in ns.metrics.split(",") if m.strip()]
    bad = [m for m in metrics if m not in ALL_METRICS]
    if bad:
        parser.error(f"unknown metric(s) {bad}; choose from {','.join(ALL_METRICS)}")
    paths = default_model_paths(ns.models_dir)
    for kind, opt in ((CLIP_B32, ns.clip_b32), (CLIP_L14, ns.clip_l14), (WAV2CLIP, ns.wav2clip),
                      (INCEPTION, ns.inception)):
        if opt is not None:
            paths[kind] = opt
    try:
        generation = None
        if ns.generate:
            missing = [o for o, v in (("--checkpoint", ns.checkpoint), ("--adapter", ns.adapter),
                                      ("--clap", ns.clap)) if v is None]
            if missing:
                parser.error(f"--generate needs {' '.join(missing)}")
            from .generate import generate

            generation = generate(
                _generate_list(ns), ns.generated, ns.checkpoint, ns.adapter, ns.clap, projector=ns.projector,
                seed=ns.gen_seed, steps=ns.steps, cfg=ns.cfg, width=ns.width, height=ns.height,
                sampler=ns.sampler, scheduler=ns.scheduler, prompt=ns.prompt, negative=ns.negative,
                strength=ns.strength, overwrite=ns.overwrite, progress=not ns.no_progress)
        result = evaluate(
            ns.generated, ns.audio, ns.reference, labels=ns.labels, metrics=metrics, model_paths=paths,
            distractors=ns.distractors, seed=ns.seed, distractors_from=ns.distractors_from,
            template=ns.aic_template, cache_dir=None if ns.no_cache else (ns.cache_dir or default_cache_dir()),
            batch_size=max(1, ns.batch_size), device=ns.device, audio_seconds=ns.audio_seconds,
            progress=not ns.no_progress)
    except (ModelMissingError, ModelFileError, DataError, GenerationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if generation is not None:
        result["generation"] = dict(generation, record=str(Path(ns.generated) / "generation.json"))
    out = ns.out or Path(ns.generated) / "evaluation.json"
    write_text_atomic(out, json.dumps(result, indent=2, sort_keys=False))
    print(format_table(result))
    print(f"\nresults: {out}")
    return 0
