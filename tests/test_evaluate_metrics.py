"""AIS/IIS ranking, AIC, FID and distractor draws against hand-computed values (no models)."""
import math

import numpy as np
import pytest
import torch

from sonic_diffusion.evaluate import metrics as M
from sonic_diffusion.evaluate.cache import EmbeddingCache
from sonic_diffusion.evaluate.data import DataError, by_stem, read_labels


def _at_cos(c, d=4):
    """Unit vector at cosine c from e1 (in the e1-e2 plane)."""
    v = torch.zeros(d, dtype=torch.float64)
    v[0], v[1] = c, math.sqrt(1 - c * c)
    return v


def test_ranking_hand_computed_fractions():
    q = torch.zeros(2, 4, dtype=torch.float64)
    q[:, 0] = 1.0
    # Pool: cosines to e1 of 0.5 (pair of query 0), 0.9, 0.1, -0.2, 0.6, 0.95 (pair of query 1).
    pool = torch.stack([_at_cos(c) for c in (0.5, 0.9, 0.1, -0.2, 0.6, 0.95)]) * 3.0  # norms do not matter
    scores = M.retrieval_scores(q, pool, positive=[0, 5], distractors=[[1, 2, 3, 4], [0, 1, 2, 3]])
    # query 0: 0.1 and -0.2 are below 0.5 -> 2/4; query 1: everything is below 0.95 -> 4/4.
    assert scores.tolist() == [0.5, 1.0]


def test_ais_is_one_when_the_pair_is_nearest():
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(50, 32, generator=g)
    queries = pool + 0.01 * torch.randn(50, 32, generator=g)  # each image next to its own audio
    sets, k = M.draw_distractors([f"s{i:02d}" for i in range(50)], [f"s{i:02d}" for i in range(50)], 10, seed=1)
    idx = [[int(s[1:]) for s in sets[f"s{i:02d}"]] for i in range(50)]
    scores = M.retrieval_scores(queries, pool, list(range(50)), idx)
    assert k == 10 and float(scores.mean()) == 1.0


def test_ais_is_near_half_for_independent_embeddings():
    g = torch.Generator().manual_seed(1)
    means = []
    for _ in range(20):
        queries, pool = torch.randn(100, 16, generator=g), torch.randn(100, 16, generator=g)
        names = [str(i) for i in range(100)]
        sets, _ = M.draw_distractors(names, names, 20, seed=int(torch.randint(0, 1 << 30, (1,), generator=g)))
        idx = [[int(s) for s in sets[n]] for n in names]
        means.append(float(M.retrieval_scores(queries, pool, list(range(100)), idx).mean()))
    # 20 x 100 items x 20 distractors: the std of the mean is about 0.007.
    assert abs(np.mean(means) - 0.5) < 0.025


def test_ties_do_not_count_and_own_pair_is_refused():
    q = torch.tensor([[1.0, 0.0]])
    pool = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 1.0]])  # the pair ties with distractor 1
    assert M.retrieval_scores(q, pool, [0], [[1, 2]]).tolist() == [0.5]
    with pytest.raises(ValueError, match="own pair"):
        M.retrieval_scores(q, pool, [0], [[0, 1]])


def test_aic_on_constructed_logits_and_embeddings():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.4, 0.3, 0.3]])
    hits, pred = M.hits_from_logits(logits, [1, 0, 0, 0])
    assert pred.tolist() == [1, 0, 2, 0] and hits.tolist() == [True, True, False, True]
    assert float(hits.double().mean()) == 0.75
    classes = torch.eye(3)
    images = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 1.0], [0.3, 0.2, 0.1]])
    hits, pred = M.classification_hits(images, classes, [0, 1, 0])
    assert pred.tolist() == [0, 2, 0] and hits.tolist() == [True, False, True]


@pytest.mark.parametrize("n", [10, 300])  # fewer / more samples than dimensions (both code paths)
def test_fid_zero_on_itself_and_grows_with_a_shift(n):
    rng = np.random.default_rng(n)
    d = 64
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3
    assert abs(M.frechet_distance(x, x)) < 1e-8 * float(np.trace(np.cov(x, rowvar=False)))
    prev = 0.0
    for c in (0.1, 0.5, 1.0, 2.0):
        fid = M.frechet_distance(x, x + c)  # same covariance: FID = ||shift||^2 = d c^2
        assert fid == pytest.approx(d * c * c, rel=1e-6, abs=1e-6)
        assert fid > prev
        prev = fid


@pytest.mark.parametrize(("n1", "n2"), [(12, 9), (200, 150)])
def test_fid_matches_torch_fidelity(n1, n2):
    fid_mod = pytest.importorskip("torch_fidelity.metric_fid")
    rng = np.random.default_rng(n1)
    d = 48
    a = rng.standard_normal((n1, d)) @ rng.standard_normal((d, d)) * 0.2
    b = rng.standard_normal((n2, d)) @ rng.standard_normal((d, d)) * 0.25 + 0.3
    ours = M.frechet_distance(a, b)
    theirs = fid_mod.fid_statistics_to_metric(fid_mod.fid_features_to_statistics(torch.from_numpy(a)),
                                              fid_mod.fid_features_to_statistics(torch.from_numpy(b)),
                                              verbose=False)[fid_mod.KEY_METRIC_FID]
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_distractor_draws_are_seeded_per_item():
    pool = [f"a{i:03d}" for i in range(40)]
    sets, k = M.draw_distractors(pool, pool, 7, seed=3)
    again, _ = M.draw_distractors(pool[:5], pool, 7, seed=3)
    other, _ = M.draw_distractors(pool, pool, 7, seed=4)
    assert k == 7
    assert all(again[s] == sets[s] for s in pool[:5])  # independent of the other items
    assert any(other[s] != sets[s] for s in pool)
    for s, ds in sets.items():
        assert len(ds) == 7 == len(set(ds)) and s not in ds and set(ds) <= set(pool)
    everything, k = M.draw_distractors(pool[:2], pool, 0, seed=3)
    assert k == 39 and everything[pool[0]] == pool[1:]
    assert M.draw_distractors(pool[:1], pool, 500, seed=3)[1] == 39
    with pytest.raises(ValueError, match="at least 2 items"):
        M.draw_distractors(["x"], ["x"], 3, seed=0)


def test_cache_computes_only_new_items(tmp_path):
    cache = EmbeddingCache(tmp_path)
    calls = []

    def compute(payloads):
        calls.append(list(payloads))
        return np.array([[float(p), 2.0 * p] for p in payloads])

    out = cache.embed("x", "m1", [("k1", 1), ("k2", 2)], compute, batch_size=1, progress=False)
    assert out.tolist() == [[1, 2], [2, 4]] and calls == [[1], [2]]
    out = cache.embed("x", "m1", [("k1", 1), ("k2", 2), ("k3", 3)], compute, batch_size=8, progress=False)
    assert out.tolist() == [[1, 2], [2, 4], [3, 6]] and calls[-1] == [3]
    assert cache.computed == {"x": 3} and cache.reused == {"x": 2}
    cache.embed("x", "m2", [("k1", 1)], compute, batch_size=8, progress=False)  # other model: recomputed
    assert calls[-1] == [1]


def test_labels_and_stems(tmp_path):
    (tmp_path / "labels.csv").write_text("stem,class\n# comment\na,rain\n\nb, thunder storm\n")
    assert read_labels(tmp_path / "labels.csv") == {"a": "rain", "b": "thunder storm"}
    (tmp_path / "bad.csv").write_text("a,rain\na,wind\n")
    with pytest.raises(DataError, match="labelled twice"):
        read_labels(tmp_path / "bad.csv")
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "x.png").write_bytes(b"")
    (d / "y.txt").write_bytes(b"")
    assert list(by_stem(d, (".png",), "images")) == ["x"]
    (d / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="share the stem"):
        by_stem(d, (".png", ".jpg"), "images")
