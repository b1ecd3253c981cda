"""Mutual k-NN with tied distances: order-free, tie-aware membership weights.

The tied data mimic the ``element`` projection: each element's rows live on that element's own
columns (non-negative unit rows), so every pair of atoms of different elements sits at distance
sqrt(2) and an element with at most k rows has tied k-th neighbours.
"""

from __future__ import annotations

import numpy as np
import pytest

from platoscope.analysis import mutual_knn, mutual_knn_interval
from platoscope.analysis import neighbors as nb
from platoscope.analysis.alignment import _knn_overlaps
from platoscope.analysis.neighbors import KnnSpace, knn_membership

K = 10
SIZES = (1, 2, 3, 4, 6, 9, 25, 40)  # elements with <= K rows: tied neighbours at sqrt(2)


def _element_blocks(sizes=SIZES, dim: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((sum(sizes), dim * len(sizes)))
    row = 0
    for e, s in enumerate(sizes):
        v = np.abs(rng.normal(size=(s, dim)))
        x[row:row + s, e * dim:(e + 1) * dim] = v / np.linalg.norm(v, axis=1, keepdims=True)
        row += s
    return x


def _tie_free(x: np.ndarray, seed: int = 1) -> np.ndarray:
    """x plus dense noise: no two distances from a row are equal."""
    return x + 0.05 * np.random.default_rng(seed).normal(size=x.shape)


def _distances(x: np.ndarray) -> np.ndarray:
    """Exact Euclidean distances from explicit differences (not the library's kernel)."""
    d = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)
    return d


def _set_overlap(nx: np.ndarray, ny: np.ndarray) -> np.ndarray:
    return (nx[:, :, None] == ny[:, None, :]).any(axis=2).sum(axis=1) / nx.shape[1]


def _random_tie_sets(d: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k nearest per row, distances equal to 9 decimals broken by a fresh random order."""
    key = rng.random(d.shape)
    return np.lexsort((key, np.round(d, 9)), axis=1)[:, :k]


def test_data_has_ties_and_weights_are_probabilities():
    x = _element_blocks()
    w = knn_membership(x, K, "euclidean")
    np.testing.assert_allclose(w.sum(axis=1), K, rtol=0, atol=1e-12)
    assert np.all((w >= 0) & (w <= 1)) and np.all(np.diag(w) == 0)
    frac = (w > 0) & (w < 1)
    small = np.repeat(np.array(SIZES) <= K, SIZES)
    assert frac[small].any(axis=1).all()  # every row of a small element has tied neighbours
    assert not frac[~small].any()  # rows of large elements have none
    # a lone atom (first element): all other 152 rows tied, each with weight 10 / 152
    np.testing.assert_allclose(w[0, 1:], K / (x.shape[0] - 1), rtol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_without_ties_equals_the_set_overlap(metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6))
    y = x + 0.6 * rng.normal(size=x.shape)
    if metric == "cosine":
        dist = [1 - (u := x / np.linalg.norm(x, axis=1, keepdims=True)) @ u.T,
                1 - (v := y / np.linalg.norm(y, axis=1, keepdims=True)) @ v.T]
        for d in dist:
            np.fill_diagonal(d, np.inf)
    else:
        dist = [_distances(x), _distances(y)]
    for d in dist:  # no near tie at the k-th neighbour: the plain set overlap is defined
        s = np.sort(d, axis=1)
        # (well above the tie tolerance, 1e-13 relative)
        assert np.all(s[:, K] - s[:, K - 1] > 4e-6 * s[:, K - 1])
    nx, ny = (np.argsort(d, axis=1)[:, :K] for d in dist)
    expected = _set_overlap(nx, ny)
    assert 0.2 < expected.mean() < 0.9
    np.testing.assert_allclose(_knn_overlaps(x, y, K, metric), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_identical_tied_spaces_earn_chance_credit_for_ties(metric):
    """A rotated copy has the same distances up to rounding; its overlap with the original is
    sum_j p(j)^2 / k per row (independent tie breaks): 1 on untied rows, below 1 on tied rows
    (ties are no agreement), the same whatever rounding the rotation adds."""
    from platoscope.analysis.neighbors import knn_membership

    x = _element_blocks()
    q, r = np.linalg.qr(np.random.default_rng(3).normal(size=(x.shape[1],) * 2))
    y = x @ (q * np.sign(np.diag(r)))
    w = knn_membership(x, K, metric)
    expected = (w * w).sum(axis=1) / K
    tied = ((w > 0) & (w < 1)).any(axis=1)
    assert tied.any() and (~tied).any()
    np.testing.assert_allclose(_knn_overlaps(x, y, K, metric), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(expected[~tied], 1.0, rtol=0, atol=1e-12)
    assert np.all(expected[tied] < 1 - 1e-3)
    assert mutual_knn(x, x, K, metric) == pytest.approx(expected.mean(), abs=1e-12)
    value, lo, hi = mutual_knn_interval(x, y, K, metric, n_boot=50)
    assert value == pytest.approx(expected.mean(), abs=1e-12) and lo <= value <= hi


def test_against_a_tie_free_space_equals_random_tie_breaking():
    """Monte-Carlo: ties in X broken by a fresh uniform random order per draw, Y tie-free.
    Per row, the tie-aware overlap must lie within 5 standard errors of the Monte-Carlo mean
    (plus 1e-9 where every draw agreed), and the mean over rows within 4."""
    x = _element_blocks()
    y = _tie_free(x)
    k = K
    got = _knn_overlaps(x, y, k, "euclidean")
    dx, dy = _distances(x), _distances(y)
    ny = np.argsort(dy, axis=1)[:, :k]
    rng = np.random.default_rng(42)
    draws = np.array([_set_overlap(_random_tie_sets(dx, k, rng), ny) for _ in range(3000)])
    mc = draws.mean(axis=0)
    se = draws.std(axis=0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(got - mc) <= 5 * se + 1e-9), np.max(np.abs(got - mc) / (se + 1e-12))
    se_mean = draws.mean(axis=1).std(ddof=1) / np.sqrt(len(draws))
    assert abs(got.mean() - mc.mean()) <= 4 * se_mean + 1e-12
    tied_rows = np.repeat(np.array(SIZES) <= k, SIZES)
    assert np.any(se[tied_rows] > 0)  # the draws did differ where there are ties


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_invariant_to_row_permutation(metric):
    x = _element_blocks()
    y = _tie_free(x)
    base = _knn_overlaps(x, y, K, metric)
    for seed in (1, 2, 3):
        perm = np.random.default_rng(seed).permutation(x.shape[0])
        np.testing.assert_allclose(_knn_overlaps(x[perm], y[perm], K, metric), base[perm],
                                   rtol=0, atol=1e-12)
        # both spaces tied and permuted together
        both = _knn_overlaps(x, x[:, ::-1], K, metric)
        np.testing.assert_allclose(_knn_overlaps(x[perm], x[perm][:, ::-1], K, metric),
                                   both[perm], rtol=0, atol=1e-12)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_robust_to_float_noise_on_tied_distances(metric):
    x = _element_blocks()
    y = _tie_free(x)
    noisy = x + 1e-15 * np.random.default_rng(9).normal(size=x.shape)  # ~10 x rounding
    d_noisy, d_x = _distances(noisy), _distances(x)
    np.fill_diagonal(d_noisy, 0)
    np.fill_diagonal(d_x, 0)
    d_change = np.abs(d_noisy - d_x)
    assert 1e-16 < d_change.max() < 1e-14  # the tied sqrt(2) distances moved by ~1e-15
    np.testing.assert_allclose(_knn_overlaps(noisy, y, K, metric), _knn_overlaps(x, y, K, metric),
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(_knn_overlaps(x, noisy, K, metric), _knn_overlaps(x, x, K, metric),
                               rtol=0, atol=1e-9)


def test_row_chunks_give_the_same_values(monkeypatch):
    x = _element_blocks()
    y = _tie_free(x)
    whole = _knn_overlaps(x, y, K, "euclidean")
    monkeypatch.setattr(nb, "_CHUNK_BYTES", 8 * x.shape[0] * 8 * 7)  # 7-row chunks
    assert nb.chunk_rows(x.shape[0]) // 8 == 7
    np.testing.assert_allclose(_knn_overlaps(x, y, K, "euclidean"), whole, rtol=0, atol=1e-15)
    space = KnnSpace(x, "euclidean")
    parts = np.vstack([space.membership(s, min(s + 7, len(x)), K) for s in range(0, len(x), 7)])
    np.testing.assert_allclose(parts, knn_membership(x, K, "euclidean"), rtol=0, atol=0)


def test_exact_duplicates_are_neighbours_not_self():
    x = np.abs(np.random.default_rng(5).normal(size=(30, 3)))
    x = np.vstack([x, x[:3], x[:3]])  # rows 0-2 have two exact copies each
    w = knn_membership(x, 2, "euclidean")
    for i in range(3):
        assert w[i, i] == 0
        np.testing.assert_allclose(w[i, [30 + i, 33 + i]], 1.0, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="metric"):
        KnnSpace(x, "manhattan")
