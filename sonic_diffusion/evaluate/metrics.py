"""The metrics themselves, on embeddings and features (no models, no files).

AIS / IIS (docs/design.md section 9): for query i with its paired embedding p_i and distractors
D_i, score_i = |{d in D_i : cos(q_i, d) < cos(q_i, p_i)}| / |D_i| (strictly less:
a distractor exactly as similar as the pair does not count), averaged over i.
Chance is 0.5; 1.0 means the pair beats every distractor.

AIC: top-1 accuracy of the class with the highest image-text similarity.

FID: ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2) in float64 (the TTUR
formula that torch-fidelity implements in ``fid_statistics_to_metric``; a test
checks that both agree). torch-fidelity takes general eigenvalues of the 2048x2048
product (about a minute on two CPU cores); the nuclear-norm form used here is
exact and takes milliseconds when a set has fewer images than feature dimensions:
with A, B the centred feature matrices scaled by 1/sqrt(n-1), S1 = A'A and
S2 = B'B, the non-zero eigenvalues of S1 S2 are the squared singular values of
A B', so tr sqrt(S1 S2) is the sum of the singular values of A B'.
"""
import hashlib

import numpy as np
import torch


def _unit(x):
    x = torch.as_tensor(x, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def retrieval_scores(queries, candidates, positive, distractors):
    """Per-query fraction of distractors less similar than the positive.

    queries [N, D]; candidates [M, D] (the pool); positive [N] (index into the
    pool of each query's pair); distractors [N, K] (indices into the pool, never
    the positive). Cosine similarity. Returns a float64 tensor [N].
    """
    q = _unit(queries)
    c = _unit(candidates)
    positive = torch.as_tensor(positive, dtype=torch.long)
    distractors = torch.as_tensor(distractors, dtype=torch.long)
    if distractors.ndim != 2 or distractors.shape[0] != q.shape[0] or distractors.shape[1] == 0:
        raise ValueError(f"distractors must be [N={q.shape[0]}, K>0], got {tuple(distractors.shape)}")
    if bool((distractors == positive[:, None]).any()):
        raise ValueError("a distractor set contains the query's own pair")
    sims = q @ c.T  # [N, M]
    pos = sims.gather(1, positive[:, None])
    neg = sims.gather(1, distractors)
    return (neg < pos).to(torch.float64).mean(dim=1)


def classification_hits(image_embeds, class_embeds, labels):
    """Zero-shot top-1: ``labels [N]`` class indices. Returns (hits [N] bool, pred [N])."""
    logits = _unit(image_embeds) @ _unit(class_embeds).T
    return hits_from_logits(logits, labels)


def hits_from_logits(logits, labels):
    pred = torch.as_tensor(logits).argmax(dim=1)
    return pred == torch.as_tensor(labels, dtype=torch.long), pred


def _centred(x):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors per set, got shape {x.shape}")
    mu = x.mean(axis=0)
    return mu, (x - mu) / np.sqrt(x.shape[0] - 1)


def frechet_distance(features_1, features_2):
    """FID between two feature sets [n1, D] and [n2, D] (float64)."""
    mu1, a = _centred(features_1)
    mu2, b = _centred(features_2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    diff = mu1 - mu2
    tr1 = float(np.sum(a * a))
    tr2 = float(np.sum(b * b))
    d = a.shape[1]
    if min(a.shape[0], b.shape[0]) <= d:
        tr_sqrt = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    else:
        s1, s2 = a.T @ a, b.T @ b
        w, v = np.linalg.eigh(s1)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = root @ s2 @ root
        tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    return float(diff @ diff + tr1 + tr2 - 2.0 * tr_sqrt)


def draw_distractors(stems, pool, k, seed):
    """For each stem, ``k`` distinct others from ``pool`` (which holds every stem).

    Each set depends only on (seed, stem, pool): adding items to the evaluation
    leaves the other items' sets alone. ``k`` larger than ``len(pool) - 1`` (or 0)
    takes every other stem. Returns ({stem: [stems]}, k used).
    """
    pool = sorted(pool)
    index = {s: i for i, s in enumerate(pool)}
    others = len(pool) - 1
    if others < 1:
        raise ValueError("distractors need a dataset of at least 2 items")
    k = others if (k <= 0 or k >= others) else int(k)
    sets = {}
    for stem in stems:
        if stem not in index:
            raise KeyError(f"{stem!r} is not in the dataset")
        if k == others:
            sets[stem] = [s for s in pool if s != stem]
            continue
        h = hashlib.sha256(f"{int(seed)}|{stem}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(h[:8], "little"))
        picks = rng.choice(others, size=k, replace=False)
        me = index[stem]
        sets[stem] = [pool[p + 1 if p >= me else p] for p in sorted(picks)]
    return sets, k
