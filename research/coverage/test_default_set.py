"""Tests of the metric helpers in default_set.py (no cached embeddings needed).

    PYTHONPATH=src python -m pytest research/coverage/test_default_set.py -q
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_set import csls, mass_entries, mknn_random_ties, source_group


def _dist(x: np.ndarray) -> np.ndarray:
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def test_mknn_identical_spaces_is_one():
    x = np.random.default_rng(0).normal(size=(60, 5))
    d = _dist(x)
    assert np.allclose(mknn_random_ties(d, d, k=5), 1.0)


def test_mknn_ties_agree_only_by_chance():
    # every pair tied: a shared row order would report 1.0; independent orders give ~k/(n-1)
    n, k = 200, 10
    d = np.ones((n, n))
    m = mknn_random_ties(d, d, k=k).mean()
    assert abs(m - k / (n - 1)) < 0.03


def test_csls_demotes_a_hub():
    # 3 queries, pool of 4: item 3 is a hub, slightly more similar to every query than the
    # true match (item i for query i); CSLS must prefer the true match
    s = np.array([[0.80, 0.10, 0.10, 0.85],
                  [0.10, 0.80, 0.10, 0.85],
                  [0.10, 0.10, 0.80, 0.85]])
    s_pool_to_a = s.T.copy()  # pool items' similarities to the A atoms (the 3 queries)
    plain = np.argmax(s, axis=1)
    c = csls(s, s_pool_to_a, s, k=2)
    assert (plain == 3).all()
    assert (np.argmax(c, axis=1) == np.arange(3)).all()


def test_mass_entries():
    one_hot = np.zeros((2, 6))
    one_hot[:, 2] = 1.0
    uniform = np.full((3, 4), 0.5)  # squared mass 0.25 each: all 4 needed for 99.99 %
    r = mass_entries({6: (np.arange(2), one_hot), 8: (np.arange(3), uniform)})
    assert r["max"] == 4
    assert r["median"] == 4.0  # 3 of 5 atoms need 4 entries


def test_source_group():
    assert source_group("mp20_train") == "mp20"
    assert source_group("perov5_anchor") == "perov5"
    assert source_group("mlearn_Si_train") == "mlearn"
    assert source_group("proto_fcc_distorted") == "generated"
