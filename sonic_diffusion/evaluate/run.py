"""One evaluation: files -> embeddings (cached) -> AIS, IIS, AIC, FID -> a result dict."""
import hashlib
import importlib.util
import json
import logging
from pathlib import Path


from . import metrics as M
from ..files import file_sha256
from .cache import EmbeddingCache
from .data import AUDIO_EXTS, IMAGE_EXTS, DataError, by_stem, read_labels
from .models import (CLIP_B32, CLIP_L14, INCEPTION, WAV2CLIP, ClipEmbedder, InceptionFeatures, ModelMissingError,
                     Wav2ClipEmbedder, pick_device, require)

ALL_METRICS = ("ais", "iis", "aic", "fid")
DEFAULT_TEMPLATE = "a photo of {class}"
RESULT_VERSION = 1
log = logging.getLogger("sonic_diffusion.evaluate")


def needed_models(metrics):
    need = set()
    if "ais" in metrics:
        need |= {WAV2CLIP, CLIP_B32}
    if "iis" in metrics or "aic" in metrics:
        need.add(CLIP_L14)
    if "fid" in metrics:
        need.add(INCEPTION)
    return need


def _load_distractor_file(path):
    data = json.loads(Path(path).read_text())
    d = data.get("distractors", data)
    if not isinstance(d, dict) or "sets" not in d:
        raise DataError(f"{path} holds no distractor sets (expected a result JSON of this tool)")
    return d


def evaluate(generated, audio_dir, reference_dir, labels=None, metrics=ALL_METRICS, model_paths=None,
             distractors=100, seed=0, distractors_from=None, template=DEFAULT_TEMPLATE, cache_dir=None,
             batch_size=16, device=None, audio_seconds=10.0, progress=True):
    metrics = tuple(m for m in ALL_METRICS if m in set(metrics))
    if not metrics:
        raise DataError(f"no metric selected; choose from {ALL_METRICS}")
    if "aic" in metrics and not labels:
        raise DataError("AIC needs class labels: pass --labels labels.csv (stem,class), or leave aic out of --metrics")
    if "aic" in metrics and "{class}" not in template:
        raise DataError(f"the AIC prompt template must contain {{class}}, got {template!r}")
    model_paths = dict(model_paths or {})
    problems = []
    for kind in sorted(needed_models(metrics)):  # fail before any work, naming every missing model
        try:
            require(kind, model_paths[kind])
        except ModelMissingError as e:
            problems.append(str(e))
    if "fid" in metrics and importlib.util.find_spec("torch_fidelity") is None:
        problems.append("FID uses torch-fidelity's Inception-v3: pip install torch-fidelity==0.4.0, "
                        "or leave fid out of --metrics")
    if problems:
        raise ModelMissingError("\n".join(problems))

    gen = by_stem(generated, IMAGE_EXTS, "generated images")
    aud = by_stem(audio_dir, AUDIO_EXTS, "audio")
    ref = by_stem(reference_dir, IMAGE_EXTS, "reference images")
    pool = sorted(set(aud) & set(ref))
    if len(pool) < 2:
        raise DataError(f"the dataset needs at least 2 stems with both an audio file and a reference image; "
                        f"found {len(pool)} ({len(aud)} audio files in {audio_dir}, {len(ref)} images in {reference_dir})")
    items = sorted(s for s in gen if s in set(pool))
    skipped = sorted(s for s in gen if s not in set(pool))
    if skipped:
        log.warning("%d generated images have no audio + reference pair and are skipped, e.g. %s",
                    len(skipped), skipped[:3])
    if not items:
        raise DataError(f"no generated image in {generated} is named after a dataset audio file "
                        f"(e.g. {pool[0]}.png for {aud[pool[0]].name})")
    label_map = read_labels(labels) if labels else {}
    if "aic" in metrics:
        unlabeled = [s for s in items if s not in label_map]
        if unlabeled:
            raise DataError(f"{len(unlabeled)} items have no class in {labels}, e.g. {unlabeled[:3]}")

    # Distractors: drawn per item from the dataset (seeded), or reused from a saved result.
    saved = _load_distractor_file(distractors_from) if distractors_from else None
    if saved is not None:
        seed, k_req = int(saved.get("seed", seed)), int(saved.get("k", distractors))
    else:
        k_req = int(distractors)
    sets, k = M.draw_distractors(items, pool, k_req, seed)
    reused = 0
    if saved is not None:
        for stem in items:
            old = saved["sets"].get(stem)
            if old is None:
                continue
            bad = [d for d in old if d not in set(pool) or d == stem]
            if bad or len(old) != k:
                raise DataError(f"{distractors_from}: the saved set of {stem!r} does not fit this dataset "
                                f"({len(old)} stems, {len(bad)} not in it; {k} expected)")
            sets[stem] = list(old)
            reused += 1

    device = pick_device(device)
    cache = EmbeddingCache(cache_dir)
    hashes = {}

    def keyed(paths):
        out = []
        for p in paths:
            if p not in hashes:
                hashes[p] = file_sha256(p)
            out.append((hashes[p], p))
        return out

    needed = sorted(set(items) | {d for s in items for d in sets[s]})
    index = {s: i for i, s in enumerate(needed)}
    positive = [index[s] for s in items]
    dist_idx = [[index[d] for d in sets[s]] for s in items]
    per_item = {s: {} for s in items}
    values, info, ids = {}, {}, {}

    if "ais" in metrics:
        w2c = Wav2ClipEmbedder(model_paths[WAV2CLIP], device, seconds=audio_seconds)
        b32 = ClipEmbedder(CLIP_B32, model_paths[CLIP_B32], device)
        if b32.dim != 512:
            raise DataError(f"AIS compares Wav2CLIP's 512-d audio embeddings with CLIP ViT-B/32 image embeddings; "
                            f"the model at {b32.path} projects to {b32.dim} dimensions (not ViT-B/32)")
        ids.update(wav2clip=w2c.id, clip_b32=b32.image_id)
        img = cache.embed("CLIP ViT-B/32 images", b32.image_id, keyed([gen[s] for s in items]),
                          b32.images, batch_size, progress)
        snd = cache.embed("Wav2CLIP audio", w2c.id, keyed([aud[s] for s in needed]), w2c.audios,
                          batch_size, progress)
        scores = M.retrieval_scores(img, snd, positive, dist_idx).numpy()
        values["AIS"] = float(scores.mean())
        for s, v in zip(items, scores):
            per_item[s]["ais"] = float(v)
        info["AIS"] = {"chance": 0.5, "models": ["Wav2CLIP", "CLIP ViT-B/32"]}
        del w2c, b32

    if "iis" in metrics or "aic" in metrics:
        l14 = ClipEmbedder(CLIP_L14, model_paths[CLIP_L14], device)
        ids.update(clip_l14=l14.image_id)
        img = cache.embed("CLIP ViT-L/14 images", l14.image_id, keyed([gen[s] for s in items]),
                          l14.images, batch_size, progress)
        if "iis" in metrics:
            refs = cache.embed("CLIP ViT-L/14 references", l14.image_id, keyed([ref[s] for s in needed]),
                               l14.images, batch_size, progress)
            scores = M.retrieval_scores(img, refs, positive, dist_idx).numpy()
            values["IIS"] = float(scores.mean())
            for s, v in zip(items, scores):
                per_item[s]["iis"] = float(v)
            info["IIS"] = {"chance": 0.5, "models": ["CLIP ViT-L/14"]}
        if "aic" in metrics:
            classes = sorted(set(label_map.values()))  # every class named in labels.csv
            prompts = [template.replace("{class}", c) for c in classes]
            text_items = [(hashlib.sha256(p.encode()).hexdigest(), p) for p in prompts]
            txt = cache.embed("CLIP ViT-L/14 prompts", l14.text_id, text_items, l14.texts, batch_size, progress)
            cidx = {c: i for i, c in enumerate(classes)}
            hits, pred = M.classification_hits(img, txt, [cidx[label_map[s]] for s in items])
            values["AIC"] = float(hits.double().mean())
            for s, h, p in zip(items, hits.tolist(), pred.tolist()):
                per_item[s].update(label=label_map[s], predicted=classes[p], correct=bool(h))
            info["AIC"] = {"chance": 1.0 / len(classes), "models": ["CLIP ViT-L/14"], "classes": classes,
                           "template": template}
        del l14

    if "fid" in metrics:
        if len(items) < 2:
            raise DataError("FID needs at least 2 generated images")
        inc = InceptionFeatures(model_paths[INCEPTION], device)
        ref_stems = sorted(ref)
        ids.update(inception=inc.id)
        fg = cache.embed("Inception generated", inc.id, keyed([gen[s] for s in items]), inc.images,
                         batch_size, progress)
        fr = cache.embed("Inception references", inc.id, keyed([ref[s] for s in ref_stems]), inc.images,
                         batch_size, progress)
        values["FID"] = M.frechet_distance(fg, fr)
        info["FID"] = {"chance": None, "models": ["Inception-v3 (torch-fidelity, pool 2048)"],
                       "n_generated": len(items), "n_reference": len(ref_stems)}
        if len(items) < 2048 or len(ref_stems) < 2048:
            info["FID"]["note"] = ("fewer than 2048 images in a set: the covariance is rank-deficient and FID "
                                   "is biased upwards; compare only runs with the same counts")
        del inc

    return {
        "version": RESULT_VERSION,
        "metrics": values,
        "metric_info": info,
        "n_items": len(items),
        "n_distractors": k,
        "n_dataset": len(pool),
        "skipped_generated": skipped,
        "distractors": {"seed": int(seed), "k": k, "pool_size": len(pool), "reused_from_file": reused,
                        "rule": "per item: numpy default_rng(sha256(f'{seed}|{stem}')[:8]) draws k of the other "
                                "dataset stems without replacement (all of them when k = 0 or k >= pool - 1)",
                        "sets": sets},
        "inputs": {"generated": str(generated), "audio": str(audio_dir), "reference": str(reference_dir),
                   "labels": str(labels) if labels else None, "audio_seconds": float(audio_seconds)},
        "models": {k_: {"path": str(v), "id": ids.get(k_)} for k_, v in sorted(model_paths.items())
                   if k_ in needed_models(metrics)},
        "cache": {"dir": str(cache_dir) if cache_dir else None, "computed": cache.computed, "reused": cache.reused},
        "per_item": per_item,
    }


def format_table(result):
    rows = [("metric", "value", "chance", "items", "distractors", "models")]
    info = result["metric_info"]
    for name in ("AIS", "IIS", "AIC", "FID"):
        if name not in result["metrics"]:
            continue
        v = result["metrics"][name]
        i = info[name]
        chance = "-" if i.get("chance") is None else f"{i['chance']:.4f}"
        if name in ("AIS", "IIS"):
            dis = str(result["n_distractors"])
        elif name == "AIC":
            dis = f"{len(i['classes'])} classes"
        else:
            dis = f"vs {i['n_reference']} ref"
        models = ", ".join(i["models"])
        if name == "AIC":
            models += f" ('{i['template']}')"
        rows.append((name, f"{v:.4f}" if name != "FID" else f"{max(v, 0.0):.2f}", chance, str(result["n_items"]), dis, models))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    comp = result["cache"]["computed"]
    lines.append("")
    lines.append(f"{result['n_items']} items, {result['n_distractors']} distractors each from a dataset of "
                 f"{result['n_dataset']} (seed {result['distractors']['seed']}); embeddings computed "
                 f"{sum(comp.values())}, from cache {sum(result['cache']['reused'].values())}")
    return "\n".join(lines)
