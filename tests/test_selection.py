"""Anchor selection: DIRECT, farthest-point and random sampling on plain feature arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from platoscope.selection import (
    METHODS,
    SelectionResult,
    covering_radius,
    select_anchors,
    select_direct,
    select_fps,
    select_random,
)


def blobs(n_blobs: int = 10, dim: int = 8, seed: int = 0, spread: float = 0.3):
    """Well-separated Gaussian blobs of unequal sizes: (features, blob label)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_blobs, dim)) * 20.0
    sizes = rng.integers(20, 200, size=n_blobs)
    labels = np.repeat(np.arange(n_blobs), sizes)
    x = centres[labels] + rng.normal(size=(len(labels), dim)) * spread
    return x, labels


def check_indices(res: SelectionResult, n: int, k: int) -> None:
    assert isinstance(res, SelectionResult)
    assert res.k == k and len(res.indices) == k
    assert res.indices.dtype == np.int64
    assert len(np.unique(res.indices)) == k
    assert res.indices.min() >= 0 and res.indices.max() < n


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("k", [1, 7, 50])
def test_exactly_k_unique_indices(method, k):
    x, _ = blobs(n_blobs=5, seed=1)
    res = select_anchors(x, k, method=method)
    check_indices(res, len(x), k)
    assert res.method == method
    d = json.loads(json.dumps(res.to_dict()))
    assert d["indices"] == res.indices.tolist() and d["k"] == k
    back = SelectionResult.from_dict(d)
    np.testing.assert_array_equal(back.indices, res.indices)
    assert back == res and len(res) == k


def test_k_equals_n_and_duplicate_rows_still_give_k_unique():
    x = np.repeat(np.arange(6, dtype=float)[:, None] * [1.0, -2.0], 5, axis=0)  # 6 distinct x5
    for method in METHODS:
        check_indices(select_anchors(x, 12, method=method), len(x), 12)
        check_indices(select_anchors(x, len(x), method=method), len(x), len(x))
    res = select_direct(x, 12)
    assert res.params["n_filled_by_fps"] >= 6  # only 6 distinct points can form clusters
    assert len(np.unique(x[res.indices[:6]], axis=0)) == 6  # the clusters come first


@pytest.mark.parametrize("subsample", [None, 300])
def test_direct_picks_one_point_per_blob(subsample):
    x, labels = blobs(n_blobs=10, seed=2)
    res = select_direct(x, 10, birch_subsample=subsample)
    check_indices(res, len(x), 10)
    assert sorted(labels[res.indices]) == list(range(10))
    p = res.params
    assert p["n_clusters_populated"] == 10 and p["n_clusters_dropped"] == 0
    assert p["threshold"] > 0 and p["threshold_trace"][-1][0] > 0
    # 10 blobs span 9 directions: the Kaiser criterion keeps at most those
    assert 1 <= p["n_pca_components"] <= 9
    # each pick is its blob's most central member in DIRECT's space, cross-checked against
    # scikit-learn's PCA (standardise, eigenvalue > 1, weight by explained-variance ratio)
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    pca = PCA().fit(StandardScaler().fit_transform(x))
    m = int((pca.explained_variance_ > 1).sum())
    assert m == p["n_pca_components"]
    np.testing.assert_allclose(p["pca_weights"], pca.explained_variance_ratio_[:m], rtol=1e-8)
    z = pca.transform(StandardScaler().fit_transform(x))[:, :m] * pca.explained_variance_ratio_[:m]
    for i in res.indices:
        members = np.flatnonzero(labels == labels[i])
        d = np.linalg.norm(z[members] - z[members].mean(axis=0), axis=1)
        assert i == members[np.argmin(d)]
    json.dumps(res.to_dict())


def test_direct_more_clusters_than_k_keeps_the_most_populated():
    # five distinct points with multiplicities 1, 50, 5, 30, 10: a tiny threshold gives
    # exactly five clusters, and k=3 must keep the three most populated, largest first
    corners = np.eye(5) * 10.0
    mult = np.array([1, 50, 5, 30, 10])
    x = np.repeat(corners, mult, axis=0)
    which = np.repeat(np.arange(5), mult)
    res = select_direct(x, 3, threshold=1e-6)
    assert which[res.indices].tolist() == [1, 3, 4]
    p = res.params
    assert p["n_clusters_populated"] == 5 and p["n_clusters_dropped"] == 2
    assert p["cluster_sizes"] == [50, 30, 10] and p["dropped_cluster_sizes"] == [5, 1]
    # the search stops at the largest threshold with >= 3 clusters; standardising makes the
    # rare corners (1 and 5 rows) outliers, so there the three common corners form one cluster
    found = select_direct(x, 3)
    assert sorted(which[found.indices].tolist()) == [0, 1, 2]
    assert found.params["cluster_sizes"] == [90, 5, 1]
    assert found.params["threshold"] > 1e3 * 1e-6
    # re-running with the threshold that was found reproduces the selection
    again = select_direct(x, 3, threshold=found.params["threshold"])
    np.testing.assert_array_equal(again.indices, found.indices)
    with pytest.raises(ValueError, match="threshold"):
        select_direct(x, 3, threshold=0.0)


def test_direct_pca_cap_and_weights():
    x, _ = blobs(n_blobs=10, seed=4, dim=12)
    res = select_direct(x, 10, max_pca_components=2)
    p = res.params
    assert p["n_pca_components"] == 2
    ev = np.asarray(p["pca_eigenvalues"])
    assert (ev > 1).all() and ev[0] >= ev[1]
    # weights are eigenvalue / trace; the correlation matrix (ddof=1) has trace D N / (N - 1)
    np.testing.assert_allclose(np.asarray(p["pca_weights"]) * x.shape[1] * len(x) / (len(x) - 1),
                               ev, rtol=1e-9)
    with pytest.raises(ValueError, match="max_pca_components"):
        select_direct(x, 10, max_pca_components=0)


def test_fps_picks_extreme_points():
    rng = np.random.default_rng(5)
    interior = rng.uniform(-0.9, 0.9, size=(400, 2))
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], dtype=float) * 1.0
    x = np.vstack([interior, corners])
    res = select_fps(x, 4)
    assert sorted(res.indices.tolist()) == [400, 401, 402, 403]
    # from a given interior start the next two picks are still corners
    res2 = select_fps(x, 3, start=0)
    assert res2.indices[0] == 0 and set(res2.indices[1:].tolist()) <= {400, 401, 402, 403}


def test_fps_covers_blobs_and_beats_random_covering_radius():
    x, labels = blobs(n_blobs=10, seed=6)
    res = select_fps(x, 10)
    assert sorted(labels[res.indices]) == list(range(10))
    r_fps = covering_radius(x, res.indices)
    np.testing.assert_allclose(res.params["covering_radius"], r_fps, rtol=1e-9)
    for seed in range(5):
        assert r_fps <= covering_radius(x, select_random(x, 10, random_state=seed).indices)
    # more anchors never make the covering radius worse (greedy prefix property)
    r30 = covering_radius(x, select_fps(x, 30).indices)
    assert r30 <= r_fps
    np.testing.assert_array_equal(select_fps(x, 30).indices[:10], res.indices)


def test_fps_cosine_ignores_scale():
    x, _ = blobs(n_blobs=6, seed=7)
    scaled = x * np.random.default_rng(7).uniform(0.5, 5.0, size=(len(x), 1))
    a = select_fps(x, 6, metric="cosine")
    b = select_fps(scaled, 6, metric="cosine")
    np.testing.assert_array_equal(a.indices, b.indices)
    assert select_fps(x, 6, metric="euclidean").params["metric"] == "euclidean"
    with pytest.raises(ValueError, match="metric"):
        select_fps(x, 6, metric="manhattan")
    z = x.copy()
    z[11] = 0.0
    with pytest.raises(ValueError, match="row 11"):
        select_fps(z, 6, metric="cosine")


def rare_element_data():
    """Two big blobs of Si (14) and O (8); three Li (3) atoms hidden inside the Si blob."""
    rng = np.random.default_rng(8)
    x = np.vstack([rng.normal(size=(500, 6)), rng.normal(size=(500, 6)) + 30.0])
    numbers = np.array([14] * 500 + [8] * 500)
    numbers[[17, 123, 321]] = 3
    return x, numbers


@pytest.mark.parametrize("method", METHODS)
def test_per_element_coverage_with_a_rare_element(method):
    x, numbers = rare_element_data()
    k = 5
    plain = select_anchors(x, k, method=method, random_state=1)
    assert 3 not in numbers[plain.indices]  # the rare element is not picked by itself
    res = select_anchors(x, k, method=method, random_state=1, per_element=numbers)
    check_indices(res, len(x), k)
    assert set(numbers[res.indices]) == {3, 8, 14}
    added = res.params["per_element_added"]
    assert [a["element"] for a in added] == [3] and numbers[added[0]["index"]] == 3
    # only the last pick was swapped out
    np.testing.assert_array_equal(res.indices[: k - 1], plain.indices[: k - 1])
    # k = number of elements: one anchor each
    exact = select_anchors(x, 3, method=method, per_element=numbers)
    assert sorted(numbers[exact.indices]) == [3, 8, 14]


def test_per_element_direct_picks_the_typical_atom():
    # blobs A (300 Si and one stray Li at its edge), B (200 O and 20 Li), C (100 O)
    rng = np.random.default_rng(9)
    centres = np.array([[0.0, 0.0, 0.0], [40.0, 0.0, 0.0], [0.0, 40.0, 0.0]])
    blob = np.repeat([0, 1, 2], [301, 220, 100])
    x = centres[blob] + rng.normal(size=(len(blob), 3))
    numbers = np.select([blob == 0, blob == 1, blob == 2], [14, 8, 8])
    numbers[300] = 3
    x[300] = centres[0] + [2.5, 2.5, 0.0]
    numbers[rng.choice(np.flatnonzero(blob == 1), 20, replace=False)] = 3
    plain = select_direct(x, 3)
    assert sorted(blob[plain.indices]) == [0, 1, 2]
    assert 3 not in numbers[plain.indices]
    res = select_direct(x, 3, per_element=numbers)
    assert sorted(numbers[res.indices]) == [3, 8, 14]
    (added,) = res.params["per_element_added"]
    # the Li anchor comes from the blob holding most Li atoms, not the stray one
    assert numbers[added["index"]] == 3 and blob[added["index"]] == 1
    # one element only: nothing to add
    same = select_direct(x, 3, per_element=np.full(len(x), 14))
    assert same.params["per_element_added"] == []
    np.testing.assert_array_equal(same.indices, plain.indices)


def test_deterministic_for_fixed_random_state():
    x, _ = blobs(n_blobs=8, seed=10)
    numbers = np.random.default_rng(10).integers(1, 6, size=len(x))
    for method in METHODS:
        a = select_anchors(x, 12, method=method, random_state=3, per_element=numbers)
        b = select_anchors(x, 12, method=method, random_state=3, per_element=numbers)
        np.testing.assert_array_equal(a.indices, b.indices)
        assert a.to_dict() == b.to_dict()
    r1 = select_random(x, 12, random_state=1).indices
    r2 = select_random(x, 12, random_state=2).indices
    assert not np.array_equal(r1, r2)
    s = select_fps(x, 12, start="random", random_state=4)
    assert s.params["start"] == "random"
    np.testing.assert_array_equal(
        s.indices, select_fps(x, 12, start="random", random_state=4).indices)


@pytest.mark.parametrize("method", METHODS)
def test_errors(method):
    x, _ = blobs(n_blobs=3, seed=11)
    n = len(x)
    with pytest.raises(ValueError, match="larger than the number of rows"):
        select_anchors(x, n + 1, method=method)
    with pytest.raises(ValueError, match="at least 1"):
        select_anchors(x, 0, method=method)
    with pytest.raises(TypeError, match="integer"):
        select_anchors(x, 2.5, method=method)
    with pytest.raises(ValueError, match="empty"):
        select_anchors(np.zeros((0, 4)), 1, method=method)
    with pytest.raises(ValueError, match="empty"):
        select_anchors(np.zeros((5, 0)), 1, method=method)
    with pytest.raises(ValueError, match="2-D"):
        select_anchors(np.zeros(5), 1, method=method)
    bad = x.copy()
    bad[42, 3] = np.nan
    bad[77, 0] = np.inf
    with pytest.raises(ValueError, match="first is row 42"):
        select_anchors(bad, 3, method=method)
    numbers = np.arange(n) % 4 + 1
    with pytest.raises(ValueError, match="4 distinct elements but k=3"):
        select_anchors(x, 3, method=method, per_element=numbers)
    with pytest.raises(ValueError, match="shape"):
        select_anchors(x, 3, method=method, per_element=numbers[:-1])


def test_unknown_method_lists_valid_ones():
    x, _ = blobs(n_blobs=3)
    with pytest.raises(ValueError, match=r"'kmeans'.*direct, fps, random"):
        select_anchors(x, 3, method="kmeans")


def test_fps_start_validation():
    x, _ = blobs(n_blobs=3)
    with pytest.raises(ValueError, match="out of range"):
        select_fps(x, 3, start=len(x))
    with pytest.raises(ValueError, match="start"):
        select_fps(x, 3, start="middle")


def test_single_row_and_constant_features():
    check_indices(select_direct(np.ones((1, 3)), 1), 1, 1)
    const = np.ones((20, 3))
    for method in METHODS:
        check_indices(select_anchors(const, 4, method=method), 20, 4)
