"""Optimal transport between atom clouds and the out-of-sample transport map."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import scipy.sparse as sp

from platoscope.analysis import TransportMap, transport


def _cloud(n: int = 200, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _clustered(n: int, d: int, n_el: int, noise: float, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atoms around n_el element centres; Y = the same atoms seen with noise (row i = atom i)."""
    rng = np.random.default_rng(seed)
    el = rng.integers(1, n_el + 1, size=n)
    centres = rng.normal(size=(n_el + 1, d)) * 4.0
    x = centres[el] + rng.normal(size=(n, d))
    return x, x + noise * rng.normal(size=(n, d)), el


def _dense(plan) -> np.ndarray:
    return plan.toarray() if sp.issparse(plan) else np.asarray(plan)


def _assert_coupling(plan, a: np.ndarray, b: np.ndarray, tol: float = 1e-9) -> None:
    p = _dense(plan)
    assert (p >= -1e-15).all()
    np.testing.assert_allclose(p.sum(axis=1), a, atol=tol)
    np.testing.assert_allclose(p.sum(axis=0), b, atol=tol)


def test_emd_permuted_copy_puts_all_mass_on_partners():
    x = _cloud(300)
    perm = np.random.default_rng(1).permutation(300)
    res = transport(x, x[perm], method="emd")
    partner = np.argsort(perm)  # Y[partner[i]] == X[i]
    p = _dense(res.plan)
    np.testing.assert_allclose(p[np.arange(300), partner], 1 / 300)
    assert p.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(res.matching, partner)
    np.testing.assert_allclose(res.images, x, atol=1e-12)
    assert res.cost == pytest.approx(0.0, abs=1e-9)
    assert res.method.startswith("emd: scipy linear_sum_assignment")


def test_emd_unequal_sizes_and_masses_uses_ot_emd():
    x = _cloud(120)
    rng = np.random.default_rng(2)
    a = rng.random(120)
    perm = rng.permutation(120)
    y = np.vstack([x[perm], x[:30] + 50.0])  # 30 far decoys with zero mass
    b = np.concatenate([a[perm], np.zeros(30)])
    res = transport(x, y, a, b, method="emd")
    assert "ot.emd" in res.method
    _assert_coupling(res.plan, a / a.sum(), b / b.sum())
    np.testing.assert_array_equal(res.matching, np.argsort(perm))
    assert res.same_atom_mass is None  # N != M


def test_auto_small_is_exact_and_reports_masses():
    x, y, el = _clustered(400, 10, 5, noise=0.05)
    res = transport(x, y, elements=el)
    assert res.method.startswith("emd") and "auto" in res.method
    assert isinstance(res.plan, np.ndarray)  # exact plans come dense
    assert res.same_atom_mass == pytest.approx(1.0)
    assert res.same_element_mass == pytest.approx(1.0)
    shuffled = transport(x, y[::-1], elements=(el, el[::-1]))
    assert shuffled.same_atom_mass < 0.05 and shuffled.same_element_mass == pytest.approx(1.0)


def test_auto_is_an_exact_assignment_up_to_4000_atoms_per_side():
    """compare's scored sets (thousands of atoms, many symmetry-equivalent duplicates) get
    scipy's dense assignment, not the sparse LAPJV that looped for ever on Perov-5's 3,000."""
    from scipy.optimize import linear_sum_assignment

    from platoscope.analysis.optimal_transport import MAX_ASSIGNMENT, MAX_EXACT

    assert MAX_ASSIGNMENT == MAX_EXACT == 4000 * 4000
    x, y, _ = _clustered(2200, 10, 5, noise=0.05)
    y = np.repeat(y[:1100], 2, axis=0)  # exact duplicates, as equivalent sites give
    res = transport(x, y)
    assert res.method.startswith("emd") and "linear_sum_assignment" in res.method
    rows, cols = linear_sum_assignment(((x[:, None] - y[None]) ** 2).sum(-1))
    # ot.dist forms |x|^2 + |y|^2 - 2 x.y: rounding differs from the direct sum, not the optimum
    assert res.cost == pytest.approx(((x[rows] - y[cols]) ** 2).sum(-1).mean(), rel=1e-9)


def test_blocks_match_exact_when_elements_separate():
    x, y, el = _clustered(400, 10, 6, noise=0.3)
    exact = transport(x, y, method="emd", elements=el)
    blocks = transport(x, y, method="blocks", elements=el)
    assert exact.same_element_mass == pytest.approx(1.0)
    assert blocks.cost == pytest.approx(exact.cost, rel=1e-9)
    _assert_coupling(blocks.plan, np.full(400, 1 / 400), np.full(400, 1 / 400))
    auto = transport(x, y, elements=el, max_exact=100 * 100)
    assert auto.method.startswith("blocks") and "auto" in auto.method
    assert "blocks solved by emd (6)" in auto.method
    assert sp.issparse(auto.plan)
    assert auto.cost == pytest.approx(exact.cost, rel=1e-9)
    big = transport(x, y, elements=el, max_exact=100 * 100, max_assignment=40 * 40)
    assert "knn (6)" in big.method and big.cost == pytest.approx(exact.cost, rel=1e-9)


def test_blocks_with_elements_on_one_side_only():
    x, y, el = _clustered(200, 6, 4, noise=0.1)
    ey = el.copy()
    ey[ey == 4] = 9  # element 4 only in X, element 9 only in Y: pooled as one block
    res = transport(x, y, method="blocks", elements=(el, ey))
    assert "unshared" in res.method
    _assert_coupling(res.plan, np.full(200, 1 / 200), np.full(200, 1 / 200))
    assert res.same_atom_mass == pytest.approx(1.0)


def test_knn_matching_equals_exact_emd():
    x, y, _ = _clustered(500, 12, 8, noise=1.5, seed=3)
    exact = transport(x, y, method="emd")
    assert 0.2 < exact.same_atom_mass < 0.99  # a hard instance: noise mixes partners
    auto = transport(x, y, max_assignment=1000)
    assert auto.method.startswith("knn") and "no elements" in auto.method
    a = np.full(500, 1 / 500)
    _assert_coupling(auto.plan, a, a)
    assert auto.cost == pytest.approx(exact.cost, rel=1e-9)
    assert auto.same_atom_mass == pytest.approx(exact.same_atom_mass)
    # independent clouds: the optimal matching still lies within the 30-NN graph
    x2, y2 = _cloud(300, 10, seed=5), _cloud(300, 10, seed=6)
    knn = transport(x2, y2, method="knn")
    assert knn.cost == pytest.approx(transport(x2, y2, method="emd").cost, rel=1e-3)


def test_knn_without_perfect_matching_falls_back():
    x = np.array([[0.0], [0.1], [0.2]])
    y = np.array([[0.06], [5.0], [10.0]])  # every X atom's nearest target is y0
    with pytest.raises(ValueError, match="no perfect matching"):
        transport(x, y, method="knn", knn=1)
    res = transport(x, y, max_exact=1, max_assignment=1, knn=1)
    assert res.method.startswith("multiscale") and "no perfect matching" in res.method
    _assert_coupling(res.plan, np.full(3, 1 / 3), np.full(3, 1 / 3))
    with pytest.raises(ValueError, match="N == M"):
        transport(x, y[:2], method="knn")


def test_multiscale_is_a_valid_near_optimal_coupling():
    x, y, _ = _clustered(1000, 12, 8, noise=0.5, seed=3)
    y = y[:800]  # different sizes: no permutation, so multiscale
    exact = transport(x, y, method="emd")
    multi = transport(x, y, max_exact=1000, block_size=150)
    assert multi.method.startswith("multiscale") and "no elements" in multi.method
    _assert_coupling(multi.plan, np.full(1000, 1 / 1000), np.full(800, 1 / 800))
    assert exact.cost - 1e-9 <= multi.cost <= 1.1 * exact.cost
    assert multi.same_atom_mass is None


def test_sinkhorn_and_sliced():
    x, y = _cloud(200, 6), _cloud(200, 6, seed=1)  # independent clouds: cost ~ mean cost
    a = np.full(200, 1 / 200)
    exact = transport(x, y, method="emd")
    sk = transport(x, y, method="sinkhorn", reg=0.01)
    assert "NOT converged" not in sk.method  # promises an L1 marginal error below 1e-4
    p = _dense(sk.plan)
    assert np.abs(p.sum(axis=0) - a).sum() + np.abs(p.sum(axis=1) - a).sum() < 1e-4
    assert exact.cost - 1e-9 <= sk.cost <= 1.2 * exact.cost
    blurry = transport(x, y, method="sinkhorn", reg=1e-5)
    assert "NOT converged" in blurry.method  # too small epsilon is reported, not hidden
    sl = transport(x, y, method="sliced")
    _assert_coupling(sl.plan, a, a)
    assert sl.cost >= exact.cost - 1e-9


def test_transport_map_carries_new_points_of_translated_cloud():
    x = _cloud(400, 6)
    shift = np.array([3.0, -1.0, 0.5, 0.0, 2.0, 1.0])
    perm = np.random.default_rng(4).permutation(400)
    tm = TransportMap().fit(x, (x + shift)[perm])
    np.testing.assert_allclose(tm.images_, x + shift, atol=1e-10)
    new = _cloud(50, 6, seed=8)
    np.testing.assert_allclose(tm.transform(new), new + shift, atol=1e-9)
    np.testing.assert_allclose(tm.transform(x[:5]), x[:5] + shift, atol=1e-10)


def test_transport_map_one_neighbour_matches_pot_da():
    x = _cloud(150, 4)
    y = 0.5 * _cloud(180, 4, seed=1) ** 2  # a different, non-Gaussian target cloud
    new = _cloud(40, 4, seed=2)
    ours = TransportMap(method="emd", n_neighbors=1).fit(x, y).transform(new)
    pot = ot.da.EMDTransport().fit(Xs=x, Xt=y).transform(Xs=new)
    np.testing.assert_allclose(ours, pot, atol=1e-9)


def test_transport_map_per_element_neighbours():
    x, _, el = _clustered(300, 5, 3, noise=0.0)
    shifts = np.array([0.0, 1.0, -2.0, 5.0])[:, None] * np.ones(5)
    y = x + shifts[el]  # each element moved by its own offset
    tm = TransportMap(method="blocks").fit(x, y, elements=el)
    new = x[:20] + 0.01
    np.testing.assert_allclose(tm.transform(new, elements=el[:20]), new + shifts[el[:20]],
                               atol=1e-9)


def test_bad_input_raises():
    x = _cloud(20, 4)
    with pytest.raises(ValueError, match=r"X has shape \(20, 4\) and Y has shape \(20, 3\)"):
        transport(x, x[:, :3])
    with pytest.raises(ValueError, match=r"Y .*NaN"):
        transport(x, np.full((5, 4), np.nan))
    with pytest.raises(ValueError, match="X has shape"):
        transport(np.empty((0, 4)), x)
    with pytest.raises(ValueError, match="a has shape"):
        transport(x, x, a=np.ones(19))
    with pytest.raises(ValueError, match="needs elements"):
        transport(x, x, method="blocks")
    with pytest.raises(ValueError, match=r"elements\[1\] has shape"):
        transport(x, x[:10], elements=(np.ones(20, int), np.ones(11, int)))
    with pytest.raises(ValueError, match="method"):
        transport(x, x, method="exact")
    with pytest.raises(ValueError, match="not fitted"):
        TransportMap().transform(x)
    with pytest.raises(ValueError, match="features"):
        TransportMap().fit(x, x).transform(x[:, :3])
