"""k-nearest-neighbour distances of analysis.neighbors against a plain numpy computation."""

import numpy as np
import pytest

from platoscope.analysis.neighbors import knn_distance, mean_k_nearest


def brute(q, p, k, exclude=None, groups=None):
    """Mean of the k smallest Euclidean distances per query, sorted in full (nan: none left)."""
    out = []
    for i, row in enumerate(q):
        d = np.sqrt(((p - row) ** 2).sum(axis=1))
        if exclude is not None:
            d = d[groups != exclude[i]]
        out.append(np.sort(d)[:k].mean() if d.size else np.nan)
    return np.array(out)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_knn_distance_equals_a_full_sort(k):
    rng = np.random.default_rng(3)
    q, p = rng.normal(size=(30, 16)), rng.normal(size=(25, 16))
    got = knn_distance(q, p, k)
    assert np.allclose(got, brute(q, p, k), rtol=1e-12, atol=1e-12)
    # the numpy path on the same distance block gives the same
    d = np.sqrt(((q[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    assert np.allclose(mean_k_nearest(d, k), got, rtol=1e-12, atol=1e-12)


def test_knn_distance_leaves_out_the_query_group_in_every_chunk():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 8))
    groups = np.repeat(np.arange(10), 4)  # 10 "structures" of 4 atoms
    groups[-4:] = 99  # one structure alone: its atoms keep only the other structures' rows
    got = knn_distance(x, x, 3, exclude=groups, groups=groups, chunk=7)  # chunks cut groups
    assert np.allclose(got, brute(x, x, 3, groups, groups), rtol=1e-12, atol=1e-12)
    # the group's own rows (distance 0 to itself) are never among the neighbours
    assert (got > 0).all()


def test_knn_distance_is_nan_where_every_pool_row_is_left_out():
    x = np.arange(12.0).reshape(6, 2)
    same = np.zeros(6, dtype=int)
    assert np.isnan(knn_distance(x, x, 2, exclude=same, groups=same)).all()
    assert np.isnan(knn_distance(x, x[:0], 2)).all()  # empty pool
