"""Tests of the per-element projection prototype (run: python -m pytest research/coverage -q)."""

from __future__ import annotations

import sys
from math import comb
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from elementwise import (
    ElementwiseProjector,
    element_structure_baseline,
    select_per_element,
    sparse_sq_distances,
)

TOL = 1e-10


def _data(seed=0, n=200, d=16):
    rng = np.random.default_rng(seed)
    z = rng.choice([1, 6, 8, 26], size=n)
    centres = {1: rng.normal(size=d), 6: rng.normal(size=d), 8: rng.normal(size=d),
               26: rng.normal(size=d)}
    e = np.stack([centres[int(x)] for x in z]) + 0.3 * rng.normal(size=(n, d))
    return e, z


def _dense_reference(p, e, z):
    """Direct per-element formula, dense (N, K)."""
    out = np.zeros((len(z), p.n_anchors_))
    a = p._raw_anchors
    for i, (x, el) in enumerate(zip(e, z, strict=True)):
        cols = np.flatnonzero(p.anchor_numbers_ == el)
        m = a[cols].mean(axis=0)
        u = (x - m) / np.linalg.norm(x - m)
        v = (a[cols] - m) / np.linalg.norm(a[cols] - m, axis=1, keepdims=True)
        c = v @ u
        w = np.exp((c - c.max()) / p.tau)
        out[i, cols] = np.sqrt(w / w.sum())
    return out


def test_matches_formula_and_blocks_are_disjoint():
    e, z = _data()
    rows, gi = select_per_element(e, z, 10, global_k=6)
    p = ElementwiseProjector(tau=0.05, k_per_element=10, global_k=6, top_k=None)
    p.fit(e[rows], z[rows], global_index=gi)
    p._raw_anchors = e[rows]
    r = p.transform(e, z)
    dense = r.to_csr().toarray()
    assert np.allclose(dense, _dense_reference(p, e, z), atol=TOL)
    assert np.allclose(np.linalg.norm(dense, axis=1), 1.0, atol=TOL)
    # an atom's non-zero entries lie on anchors of its own element only
    assert np.all(p.anchor_numbers_[r.indices] == z[:, None])
    assert np.allclose(r.residual, 0.0, atol=1e-7)
    assert r.global_block.shape == (len(z), 6)
    assert np.allclose(np.linalg.norm(r.global_block, axis=1), 1.0, atol=TOL)
    # anchors are covered perfectly by themselves
    assert np.allclose(r.coverage[rows], 1.0, atol=1e-9)
    assert np.all((r.n_eff >= 1 - 1e-9) & (r.n_eff <= 10 + 1e-9))


def test_truncation_bound_and_distances():
    e, z = _data(1)
    rows, _ = select_per_element(e, z, 40)
    full = ElementwiseProjector(tau=0.1, top_k=None).fit(e[rows], z[rows]).transform(e, z)
    cut = ElementwiseProjector(tau=0.1, top_k=5).fit(e[rows], z[rows]).transform(e, z)
    d_full, d_cut = full.to_csr().toarray(), cut.to_csr().toarray()
    err = np.linalg.norm(d_full - d_cut, axis=1)
    assert np.all(err <= cut.residual + TOL)
    assert cut.residual.max() > 1e-3  # the test is not vacuous: something was dropped
    # sparse distances equal dense ones
    ref = ((d_cut[:, None, :] - d_full[None, :, :]) ** 2).sum(axis=2)
    assert np.allclose(sparse_sq_distances(cut, full), ref, atol=1e-9)
    # atoms of different elements sit at sqrt(2) in the untruncated form
    i, j = np.flatnonzero(z == 1)[0], np.flatnonzero(z == 8)[0]
    assert sparse_sq_distances(full, full)[i, j] == pytest.approx(2.0, abs=1e-9)


def test_state_round_trip():
    e, z = _data(2)
    rows, gi = select_per_element(e, z, 8, global_k=4)
    p = ElementwiseProjector(tau=0.02, k_per_element=8, global_k=4, top_k=4)
    p.fit(e[rows], z[rows], global_index=gi)
    q = ElementwiseProjector.from_state({k: np.asarray(v) for k, v in p.get_state().items()})
    a, b = p.transform(e, z), q.transform(e, z)
    assert np.array_equal(a.indices, b.indices)
    assert np.allclose(a.values, b.values, atol=TOL)
    assert np.allclose(a.global_block, b.global_block, atol=TOL)


def test_missing_element_error_and_flag():
    e, z = _data(3)
    keep = z != 26
    rows, _ = select_per_element(e[keep], z[keep], 8)
    p = ElementwiseProjector().fit(e[keep][rows], z[keep][rows])
    with pytest.raises(ValueError, match="Fe"):
        p.transform(e, z)
    f = ElementwiseProjector(on_missing="flag").fit(e[keep][rows], z[keep][rows])
    r = f.transform(e, z)
    assert not r.covered[z == 26].any() and r.covered[z != 26].all()
    assert np.isnan(r.coverage[z == 26]).all() and (r.indices[z == 26] == -1).all()


def test_bad_input_errors():
    e, z = _data(4)
    p = ElementwiseProjector()
    with pytest.raises(RuntimeError, match="not fitted"):
        p.transform(e, z)
    p.fit(e, z)
    with pytest.raises(ValueError, match="features"):
        p.transform(e[:, :3], z)
    with pytest.raises(ValueError, match="shape"):
        p.transform(e, z[:-1])
    bad = e.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match="row 5"):
        p.transform(bad, z)
    with pytest.raises(ValueError, match="tau"):
        ElementwiseProjector(tau=0)
    with pytest.raises(ValueError, match="global_index"):
        ElementwiseProjector(global_k=3).fit(e, z)


def test_element_structure_baseline_exact():
    # structure 0: element 8 with classes of size 1 and 3 (n = 4); element 1 alone (n = 1)
    # structure 1: element 8, one class of size 2
    numbers = np.array([8, 8, 8, 8, 1, 8, 8])
    struct = np.array([0, 0, 0, 0, 0, 1, 1])
    groups = np.array([0, 1, 1, 1, 2, 3, 3])
    top1 = element_structure_baseline(numbers, struct, groups, 1)
    assert top1 == pytest.approx(np.mean([1 / 4, 3 / 4, 1.0, 1.0]))
    top2 = element_structure_baseline(numbers, struct, groups, 2)
    assert top2 == pytest.approx(np.mean([1 - comb(3, 2) / comb(4, 2), 1.0, 1.0, 1.0]))
    site = element_structure_baseline(numbers, struct, groups, 1, site_resolved=True)
    assert site == pytest.approx(np.mean([1 / 4, 3 / 4]))
    # Monte Carlo check of the top-2 formula on the first pool
    rng = np.random.default_rng(0)
    hits = np.mean([0 in rng.permutation(4)[:2] for _ in range(20000)])
    assert hits == pytest.approx(1 - comb(3, 2) / comb(4, 2), abs=0.02)


def test_select_is_deterministic_and_per_element():
    e, z = _data(5)
    r1, g1 = select_per_element(e, z, 7, global_k=5)
    r2, g2 = select_per_element(e, z, 7, global_k=5)
    assert np.array_equal(r1, r2) and np.array_equal(g1, g2)
    counts = np.unique(z[r1], return_counts=True)[1]
    assert np.all(counts == 7) and len(np.unique(r1)) == len(r1)
