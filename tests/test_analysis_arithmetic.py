"""Element substitution vectors and arithmetic retrieval."""

from __future__ import annotations

import numpy as np
import pytest

from platoscope.analysis import arithmetic_retrieval, substitution_vector

D = 24


def _substitution_data(n_struct: int = 40, noise: float = 0.0, seed: int = 0):
    """Atom = element vector + site environment: Na-X and K-X versions of each structure.

    Returns source (Na atoms, n x D), target (K atoms at the same sites), a pool (targets first,
    then the sources and decoy Rb atoms) and the targets' pool indices.
    """
    rng = np.random.default_rng(seed)
    e_na, e_k, e_rb = rng.normal(size=(3, D))
    sites = rng.normal(size=(n_struct, D))
    source = e_na + sites + noise * rng.normal(size=(n_struct, D))
    target = e_k + sites + noise * rng.normal(size=(n_struct, D))
    decoys = e_rb + rng.normal(size=(n_struct, D))
    pool = np.vstack([target, source, decoys])
    return source, target, pool, np.arange(n_struct), e_k - e_na


def test_substitution_vector():
    z = np.array([11, 17, 19, 17, 11])
    x = np.array([[1.0, 0.0], [5.0, 5.0], [4.0, 2.0], [5.0, 5.0], [3.0, 2.0]])
    np.testing.assert_allclose(substitution_vector(z, x, 11, 19), [2.0, 1.0])
    np.testing.assert_allclose(substitution_vector(z, x, 19, 11), [-2.0, -1.0])


def test_exact_shift_retrieves_every_target_and_beats_baseline():
    source, target, pool, idx, v = _substitution_data()
    res = arithmetic_retrieval(source, target, pool, idx)  # leave-one-out vector
    np.testing.assert_allclose(res.vectors, np.broadcast_to(v, res.vectors.shape), atol=1e-12)
    assert res.accuracy == {1: 1.0, 5: 1.0}
    assert res.baseline[1] < 0.5  # unshifted: the source itself sits in the pool
    assert res.chance[1] == pytest.approx(1 / 120)
    np.testing.assert_array_equal(res.ranks, 0)


def test_noisy_pairs_and_explicit_vectors():
    source, target, pool, idx, v = _substitution_data(noise=0.3, seed=1)
    res = arithmetic_retrieval(source, None, pool, idx)  # targets read from the pool
    assert res.accuracy[1] >= 0.9 and res.accuracy[5] == 1.0
    assert res.accuracy[1] > res.baseline[1]
    given = arithmetic_retrieval(source, target, pool, idx, vector=v, ks=(1, 3))
    assert set(given.accuracy) == {1, 3} and given.accuracy[1] >= 0.9
    per_pair = arithmetic_retrieval(source, target, pool, idx, vector=target - source)
    assert per_pair.accuracy[1] == 1.0  # the oracle offset lands on the target itself
    wrong = arithmetic_retrieval(source, target, pool, idx, vector=-v)
    assert wrong.accuracy[1] < res.accuracy[1]


def test_cosine_ranking():
    source, target, pool, idx, _ = _substitution_data(seed=2)
    res = arithmetic_retrieval(source, target, pool, idx, metric="cosine")
    assert res.accuracy[1] == 1.0


def test_bad_input_raises():
    source, target, pool, idx, _ = _substitution_data(n_struct=5)
    with pytest.raises(ValueError, match="element b=19 has no atoms"):
        substitution_vector([11, 11], np.zeros((2, 3)), 11, 19)
    with pytest.raises(ValueError, match=r"target_index has shape \(4,\) but 5 rows"):
        arithmetic_retrieval(source, target, pool, idx[:4])
    with pytest.raises(ValueError, match="must index pool rows"):
        arithmetic_retrieval(source, target, pool, idx + 100)
    with pytest.raises(ValueError, match=r"source has shape \(5, 24\) and pool has shape"):
        arithmetic_retrieval(source, target, pool[:, :3], idx)
    with pytest.raises(ValueError, match="vector"):
        arithmetic_retrieval(source, target, pool, idx, vector=np.zeros(3))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        arithmetic_retrieval(source[:1], target[:1], pool, idx[:1])
    with pytest.raises(ValueError, match=r"target .*NaN"):
        arithmetic_retrieval(source, np.full_like(target, np.nan), pool, idx)
