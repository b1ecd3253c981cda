"""Alignment scores between two coordinate arrays of the same atoms."""

from __future__ import annotations

import numpy as np
import pytest

from platoscope.analysis import (
    alignment_matrix,
    cosine_agreement,
    linear_cka,
    mutual_knn,
    procrustes,
    retrieval_accuracy,
    retrieval_chance,
)


def _cloud(n: int = 300, d: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _rotation(d: int, seed: int = 1) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_identical_inputs_score_one(metric):
    x = _cloud()
    assert mutual_knn(x, x, k=10, metric=metric) == 1.0
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_mutual_knn_self_excluded_with_duplicate_rows():
    x = _cloud(50, 4)
    x = np.vstack([x, x[:10]])  # ten exact duplicates: self may not come first
    from platoscope.analysis.neighbors import knn_membership

    w = knn_membership(x, 5, "euclidean")  # a duplicate at the cut ties with its twin
    assert np.all(np.diag(w) == 0)  # self is never a neighbour
    assert mutual_knn(x, x.copy(), k=5, metric="euclidean") == pytest.approx(
        float(((w * w).sum(axis=1) / 5).mean()), abs=1e-12)


def test_mutual_knn_across_dimensions_and_chance():
    x = _cloud(400, 6)
    embed = np.linalg.qr(np.random.default_rng(3).normal(size=(9, 6)))[0]  # (9, 6) isometry
    assert mutual_knn(x, x @ embed.T, k=10, metric="euclidean") == pytest.approx(1.0)
    y = _cloud(400, 6, seed=5)
    assert mutual_knn(x, y, k=10) < 0.1  # chance is 10 / 399


def test_cka_invariances_and_independent_data():
    x = _cloud()
    y = 3.0 * x @ _rotation(x.shape[1]) + 7.0
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, _cloud(seed=9)) < 0.2


def test_cka_gram_form_equals_feature_form():
    """Fewer rows than features: CKA from the N x N Gram matrices, the same value."""
    x, y = _cloud(40, 12), _cloud(40, 12, seed=5)
    wide_x = np.hstack([x, np.zeros((40, 100))])  # 40 rows < 112 features: the Gram form
    wide_y = np.hstack([y, x[:, :3], np.zeros((40, 60))])
    narrow_y = np.hstack([y, x[:, :3]])  # 15 features: the feature form
    assert linear_cka(wide_x, wide_y) == pytest.approx(linear_cka(x, narrow_y), rel=1e-12)


def test_procrustes_recovers_rotation():
    x = _cloud(200, 8)
    q = _rotation(8)
    r, residual = procrustes(x, 2.5 * x @ q - 4.0)
    np.testing.assert_allclose(r, q, atol=1e-10)
    assert residual < 1e-20
    _, noisy = procrustes(x, x @ q + 0.3 * _cloud(200, 8, seed=4))
    assert 1e-3 < noisy < 2.0


def test_cosine_agreement():
    x = _cloud(20, 5)
    np.testing.assert_allclose(cosine_agreement(x, 3 * x), 1.0)
    np.testing.assert_allclose(cosine_agreement(x, -x), -1.0)
    y = x.copy()
    y[3] = 0.0
    assert cosine_agreement(x, y)[3] == 0.0


def test_retrieval_with_known_permutation():
    n = 200
    x = _cloud(n, 10)
    perm = np.arange(n)
    moved = np.arange(0, 60)  # atoms 0..59 swapped pairwise: their own row lies elsewhere
    perm[moved] = moved.reshape(-1, 2)[:, ::-1].ravel()
    y = x[perm] + 1e-3 * _cloud(n, 10, seed=2)
    assert retrieval_accuracy(x, y, k=1) == pytest.approx(140 / 200)
    assert retrieval_accuracy(x, y, k=1, metric="cosine") == pytest.approx(140 / 200)
    assert retrieval_accuracy(x, x + 1e-3 * _cloud(n, 10, seed=3), k=1) == 1.0


def test_retrieval_symmetry_groups():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 6)) * 5
    groups = np.repeat(np.arange(10), 4)  # 10 environments, 4 equivalent atoms each
    x = centres[groups]
    y = x + 1e-3 * rng.normal(size=x.shape)  # symmetry broken only numerically
    assert retrieval_accuracy(x, y, k=1) < 0.6  # a coin toss among 4 equivalent atoms
    assert retrieval_accuracy(x, y, k=4) == 1.0
    assert retrieval_accuracy(x, y, k=1, groups=groups) == 1.0


def test_retrieval_groups_score_one_query_per_environment():
    p, q = np.zeros(3), np.array([1.0, 0.0, 0.0])
    x = np.vstack([np.tile(p, (9, 1)), q])  # nine equivalent atoms of class A, one of class B
    groups = np.array([0] * 9 + [1])
    rng = np.random.default_rng(1)
    y = np.vstack([p + 1e-4 * rng.normal(size=(9, 3)), p - 0.1 * q])  # B's own row moved away
    # top 9 from any A query: the nine A rows; from B: nine A rows, B's own row is 10th
    assert retrieval_accuracy(x, y, k=9) == pytest.approx(0.9)  # per atom: A dominates
    assert retrieval_accuracy(x, y, k=9, groups=groups) == pytest.approx(0.5)


def test_alignment_matrix():
    x = _cloud(100, 5)
    coords = {"a": x, "b": x @ _rotation(5), "c": _cloud(100, 5, seed=7)}
    names, m = alignment_matrix(coords, linear_cka, symmetric=True)
    assert names == ["a", "b", "c"]
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    assert m[0, 1] == pytest.approx(1.0) and m[0, 2] < 0.5
    _, r = alignment_matrix(coords, retrieval_accuracy, k=1)
    assert r.shape == (3, 3) and r[0, 0] == 1.0


@pytest.mark.parametrize("fn", [mutual_knn, linear_cka, procrustes, cosine_agreement,
                                retrieval_accuracy])
def test_bad_input_raises(fn):
    x = _cloud(30, 4)
    with pytest.raises(ValueError, match=r"X has shape \(30, 4\) and Y has shape \(29, 4\)"):
        fn(x, x[:29])
    bad = x.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"Y .*NaN"):
        fn(x, bad)
    with pytest.raises(ValueError, match="X has shape"):
        fn(np.empty((0, 4)), np.empty((0, 4)))


def test_bad_parameters_raise():
    x = _cloud(30, 4)
    with pytest.raises(ValueError, match="Y has shape"):
        cosine_agreement(x, x[:, :3])
    with pytest.raises(ValueError, match="groups"):
        retrieval_accuracy(x, x, groups=np.zeros(29, int))
    with pytest.raises(ValueError, match="metric"):
        mutual_knn(x, x, metric="manhattan")
    with pytest.raises(ValueError, match="at least 31"):
        mutual_knn(x, x, k=30)
    with pytest.raises(ValueError, match="zero variance"):
        linear_cka(np.ones((10, 3)), x[:10])


def test_retrieval_chance_matches_random_rankings():
    groups = np.repeat(np.arange(12), [1, 1, 2, 2, 3, 3, 4, 4, 6, 6, 8, 8])  # 48 atoms
    n = len(groups)
    assert retrieval_chance(n, 5) == pytest.approx(5 / n)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4))
    hits = [retrieval_accuracy(x, rng.normal(size=(n, 4)), k=5, groups=groups)
            for _ in range(3000)]  # unrelated clouds: a random ranking
    exact = retrieval_chance(n, 5, groups)
    assert exact > 5 / n  # larger classes are easier to hit
    assert np.mean(hits) == pytest.approx(exact, abs=0.01)
    assert retrieval_chance(n, n, groups) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        retrieval_chance(n, 0)
