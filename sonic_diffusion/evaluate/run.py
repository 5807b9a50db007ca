"""One evaluation: files -> embeddings (cached) -> AIS, IIS, AIC, FID -> a result dict."""
import hashlib
import importlib.util
import json
import logging
from pathlib import Path

from ..files import file_sha256
from . import metrics as M
from .cache import EmbeddingCache
from .data import AUDIO_EXTS, IMAGE_EXTS, DataError, by_stem, read_labels
from .models import (
    CLIP_B32,
    CLIP_L14,
    INCEPTION,
    WAV2CLIP,
    ClipEmbedder,
    InceptionFeatures,
    ModelMissingError,
    Wav2ClipEmbedder,
    pick_device,
    require,
)

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


def _check_request(metrics, labels, template, model_paths):
    """Fails before any work, naming every missing model at once."""
    if not metrics:
        raise DataError(f"no metric selected; choose from {ALL_METRICS}")
    if "aic" in metrics and not labels:
        raise DataError("AIC needs class labels: pass --labels labels.csv (stem,class), or leave aic out of --metrics")
    if "aic" in metrics and "{class}" not in template:
        raise DataError(f"the AIC prompt template must contain {{class}}, got {template!r}")
    problems = []
    for kind in sorted(needed_models(metrics)):
        try:
            require(kind, model_paths[kind])
        except ModelMissingError as e:
            problems.append(str(e))
    if "fid" in metrics and importlib.util.find_spec("torch_fidelity") is None:
        problems.append("FID uses torch-fidelity's Inception-v3: pip install torch-fidelity==0.4.0, "
                        "or leave fid out of --metrics")
    if problems:
        raise ModelMissingError("\n".join(problems))


class _Files:
    """The dataset by stem: generated images, audio, references; the evaluated items."""

    def __init__(self, generated, audio_dir, reference_dir):
        self.gen = by_stem(generated, IMAGE_EXTS, "generated images")
        self.aud = by_stem(audio_dir, AUDIO_EXTS, "audio")
        self.ref = by_stem(reference_dir, IMAGE_EXTS, "reference images")
        self.pool = sorted(set(self.aud) & set(self.ref))
        if len(self.pool) < 2:
            raise DataError(f"the dataset needs at least 2 stems with both an audio file and a reference image; "
                            f"found {len(self.pool)} ({len(self.aud)} audio files in {audio_dir}, {len(self.ref)} "
                            f"images in {reference_dir})")
        self.items = sorted(s for s in self.gen if s in set(self.pool))
        self.skipped = sorted(s for s in self.gen if s not in set(self.pool))
        if self.skipped:
            log.warning("%d generated images have no audio + reference pair and are skipped, e.g. %s",
                        len(self.skipped), self.skipped[:3])
        if not self.items:
            first = self.pool[0]
            raise DataError(f"no generated image in {generated} is named after a dataset audio file "
                            f"(e.g. {first}.png for {self.aud[first].name})")


def _distractor_sets(files, distractors, seed, distractors_from):
    """(sets {stem: [stems]}, k, seed, reused): drawn per item, or reused from a saved result."""
    saved = _load_distractor_file(distractors_from) if distractors_from else None
    if saved is not None:
        seed, k_req = int(saved.get("seed", seed)), int(saved.get("k", distractors))
    else:
        k_req = int(distractors)
    sets, k = M.draw_distractors(files.items, files.pool, k_req, seed)
    reused = 0
    for stem in files.items if saved is not None else ():
        old = saved["sets"].get(stem)
        if old is None:
            continue
        bad = [d for d in old if d not in set(files.pool) or d == stem]
        if bad or len(old) != k:
            raise DataError(f"{distractors_from}: the saved set of {stem!r} does not fit this dataset "
                            f"({len(old)} stems, {len(bad)} not in it; {k} expected)")
        sets[stem] = list(old)
        reused += 1
    return sets, k, seed, reused


class _Run:
    """Embeddings (cached by file content) and the metrics computed from them."""

    def __init__(self, files, sets, model_paths, device, cache, batch_size, progress, audio_seconds):
        self.f, self.sets, self.paths = files, sets, model_paths
        self.device, self.cache, self.bs, self.progress = device, cache, batch_size, progress
        self.audio_seconds = audio_seconds
        self.hashes = {}
        self.needed = sorted(set(files.items) | {d for s in files.items for d in sets[s]})
        index = {s: i for i, s in enumerate(self.needed)}
        self.positive = [index[s] for s in files.items]
        self.dist_idx = [[index[d] for d in sets[s]] for s in files.items]
        self.per_item = {s: {} for s in files.items}
        self.values, self.info, self.ids = {}, {}, {}

    def keyed(self, paths):
        out = []
        for p in paths:
            if p not in self.hashes:
                self.hashes[p] = file_sha256(p)
            out.append((self.hashes[p], p))
        return out

    def embed(self, name, mid, paths, compute):
        return self.cache.embed(name, mid, self.keyed(paths), compute, self.bs, self.progress)

    def retrieval(self, name, queries, candidates, models):
        scores = M.retrieval_scores(queries, candidates, self.positive, self.dist_idx).numpy()
        self.values[name] = float(scores.mean())
        for s, v in zip(self.f.items, scores):
            self.per_item[s][name.lower()] = float(v)
        self.info[name] = {"chance": 0.5, "models": models}

    def ais(self):
        w2c = Wav2ClipEmbedder(self.paths[WAV2CLIP], self.device, seconds=self.audio_seconds)
        b32 = ClipEmbedder(CLIP_B32, self.paths[CLIP_B32], self.device)
        if b32.dim != 512:
            raise DataError(f"AIS compares Wav2CLIP's 512-d audio embeddings with CLIP ViT-B/32 image embeddings; "
                            f"the model at {b32.path} projects to {b32.dim} dimensions (not ViT-B/32)")
        self.ids.update(wav2clip=w2c.id, clip_b32=b32.image_id)
        img = self.embed("CLIP ViT-B/32 images", b32.image_id, [self.f.gen[s] for s in self.f.items], b32.images)
        snd = self.embed("Wav2CLIP audio", w2c.id, [self.f.aud[s] for s in self.needed], w2c.audios)
        self.retrieval("AIS", img, snd, ["Wav2CLIP", "CLIP ViT-B/32"])

    def clip_l14(self, metrics, label_map, template):
        l14 = ClipEmbedder(CLIP_L14, self.paths[CLIP_L14], self.device)
        self.ids.update(clip_l14=l14.image_id)
        img = self.embed("CLIP ViT-L/14 images", l14.image_id, [self.f.gen[s] for s in self.f.items], l14.images)
        if "iis" in metrics:
            refs = self.embed("CLIP ViT-L/14 references", l14.image_id, [self.f.ref[s] for s in self.needed],
                              l14.images)
            self.retrieval("IIS", img, refs, ["CLIP ViT-L/14"])
        if "aic" in metrics:
            self.aic(l14, img, label_map, template)

    def aic(self, l14, img, label_map, template):
        classes = sorted(set(label_map.values()))  # every class named in labels.csv
        prompts = [template.replace("{class}", c) for c in classes]
        text_items = [(hashlib.sha256(p.encode()).hexdigest(), p) for p in prompts]
        txt = self.cache.embed("CLIP ViT-L/14 prompts", l14.text_id, text_items, l14.texts, self.bs, self.progress)
        cidx = {c: i for i, c in enumerate(classes)}
        hits, pred = M.classification_hits(img, txt, [cidx[label_map[s]] for s in self.f.items])
        self.values["AIC"] = float(hits.double().mean())
        for s, h, p in zip(self.f.items, hits.tolist(), pred.tolist()):
            self.per_item[s].update(label=label_map[s], predicted=classes[p], correct=bool(h))
        self.info["AIC"] = {"chance": 1.0 / len(classes), "models": ["CLIP ViT-L/14"], "classes": classes,
                            "template": template}

    def fid(self):
        items, ref_stems = self.f.items, sorted(self.f.ref)
        if len(items) < 2:
            raise DataError("FID needs at least 2 generated images")
        inc = InceptionFeatures(self.paths[INCEPTION], self.device)
        self.ids.update(inception=inc.id)
        fg = self.embed("Inception generated", inc.id, [self.f.gen[s] for s in items], inc.images)
        fr = self.embed("Inception references", inc.id, [self.f.ref[s] for s in ref_stems], inc.images)
        self.values["FID"] = M.frechet_distance(fg, fr)
        self.info["FID"] = {"chance": None, "models": ["Inception-v3 (torch-fidelity, pool 2048)"],
                            "n_generated": len(items), "n_reference": len(ref_stems)}
        if len(items) < 2048 or len(ref_stems) < 2048:
            self.info["FID"]["note"] = ("fewer than 2048 images in a set: the covariance is rank-deficient and "
                                        "FID is biased upwards; compare only runs with the same counts")


def evaluate(generated, audio_dir, reference_dir, labels=None, metrics=ALL_METRICS, model_paths=None,
             distractors=100, seed=0, distractors_from=None, template=DEFAULT_TEMPLATE, cache_dir=None,
             batch_size=16, device=None, audio_seconds=10.0, progress=True):
    metrics = tuple(m for m in ALL_METRICS if m in set(metrics))
    model_paths = dict(model_paths or {})
    _check_request(metrics, labels, template, model_paths)
    files = _Files(generated, audio_dir, reference_dir)
    label_map = read_labels(labels) if labels else {}
    if "aic" in metrics:
        unlabeled = [s for s in files.items if s not in label_map]
        if unlabeled:
            raise DataError(f"{len(unlabeled)} items have no class in {labels}, e.g. {unlabeled[:3]}")
    sets, k, seed, reused = _distractor_sets(files, distractors, seed, distractors_from)
    cache = EmbeddingCache(cache_dir)
    run = _Run(files, sets, model_paths, pick_device(device), cache, batch_size, progress, audio_seconds)
    if "ais" in metrics:
        run.ais()
    if "iis" in metrics or "aic" in metrics:
        run.clip_l14(metrics, label_map, template)
    if "fid" in metrics:
        run.fid()
    return {
        "version": RESULT_VERSION,
        "metrics": run.values,
        "metric_info": run.info,
        "n_items": len(files.items),
        "n_distractors": k,
        "n_dataset": len(files.pool),
        "skipped_generated": files.skipped,
        "distractors": {"seed": int(seed), "k": k, "pool_size": len(files.pool), "reused_from_file": reused,
                        "rule": "per item: numpy default_rng(sha256(f'{seed}|{stem}')[:8]) draws k of the other "
                                "dataset stems without replacement (all of them when k = 0 or k >= pool - 1)",
                        "sets": sets},
        "inputs": {"generated": str(generated), "audio": str(audio_dir), "reference": str(reference_dir),
                   "labels": str(labels) if labels else None, "audio_seconds": float(audio_seconds)},
        "models": {k_: {"path": str(v), "id": run.ids.get(k_)} for k_, v in sorted(model_paths.items())
                   if k_ in needed_models(metrics)},
        "cache": {"dir": str(cache_dir) if cache_dir else None, "computed": cache.computed, "reused": cache.reused},
        "per_item": run.per_item,
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
