"""Element mean vectors and periodic-table structure."""

from __future__ import annotations

import numpy as np
import pytest

from platoscope.analysis import (
    element_means,
    group_period,
    nearest_element_table,
    periodicity_score,
    plot_periodicity_heatmap,
)

ALKALI, ALKALINE_EARTH = [3, 11, 19, 37, 55], [4, 12, 20, 38, 56]
CHALCOGEN, HALOGEN = [8, 16, 34, 52], [9, 17, 35, 53]


def test_group_period_table():
    z = [1, 2, 6, 26, 29, 57, 58, 71, 72, 80, 86, 87, 92, 94]
    g, p = group_period(z)
    np.testing.assert_array_equal(g, [1, 18, 14, 8, 11, 3, 3, 3, 4, 12, 18, 1, 3, 3])
    np.testing.assert_array_equal(p, [1, 1, 2, 4, 4, 6, 6, 6, 6, 6, 6, 7, 7, 7])
    g2, p2 = group_period(z, f_block="separate")
    np.testing.assert_array_equal(g2, [1, 18, 14, 8, 11, 19, 19, 19, 4, 12, 18, 1, 20, 20])
    np.testing.assert_array_equal(p2, p)
    full_g, full_p = group_period(np.arange(1, 95))
    assert np.bincount(full_p)[1:].tolist() == [2, 8, 8, 18, 18, 32, 8]
    assert np.bincount(full_g)[18] == 6  # He Ne Ar Kr Xe Rn


def test_group_period_matches_pymatgen():
    core = pytest.importorskip("pymatgen.core")
    g, p = group_period(np.arange(1, 95))
    for z in range(1, 95):
        el = core.Element.from_Z(z)
        assert (g[z - 1], p[z - 1]) == (el.group, el.row), el.symbol


def test_element_means():
    z = np.array([8, 1, 8, 1, 26])
    x = np.arange(10.0).reshape(5, 2)
    elements, means = element_means(z, x)
    np.testing.assert_array_equal(elements, [1, 8, 26])
    np.testing.assert_allclose(means, [[4.0, 5.0], [2.0, 3.0], [8.0, 9.0]])


def test_nearest_element_table():
    elements = np.array([1, 2, 3])
    means = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    np.testing.assert_array_equal(nearest_element_table(elements, means), [2, 1, 2])
    far = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    np.testing.assert_array_equal(nearest_element_table(elements, far, "euclidean"), [2, 1, 2])


def test_same_group_elements_together_score_one():
    rng = np.random.default_rng(0)
    groups = [ALKALI, ALKALINE_EARTH, CHALCOGEN, HALOGEN]
    centres = rng.normal(size=(len(groups), 32))
    elements = np.concatenate(groups)
    means = np.vstack([centres[i] + 0.05 * rng.normal(size=(len(g), 32))
                       for i, g in enumerate(groups)])
    score = periodicity_score(elements, means)
    assert score["group"] == 1.0
    assert score["period"] == 0.0  # the nearest is never in the same period here
    assert score["n_elements"] == 18
    # counted chance: 4 or 3 same-group partners out of 17 others
    assert score["group_chance"] == pytest.approx((10 * 4 + 8 * 3) / 18 / 17)


def test_random_means_score_near_chance():
    rng = np.random.default_rng(1)
    elements = np.arange(1, 57)
    fractions, chance = [], None
    for _ in range(150):
        s = periodicity_score(elements, rng.normal(size=(elements.size, 16)))
        fractions.append((s["group"], s["period"]))
        chance = (s["group_chance"], s["period_chance"])
    mean = np.mean(fractions, axis=0)
    assert mean[0] == pytest.approx(chance[0], abs=0.02)
    assert mean[1] == pytest.approx(chance[1], abs=0.03)
    assert chance[0] < 0.1 < chance[1]


def test_heatmap_png(tmp_path):
    rng = np.random.default_rng(2)
    elements = np.array([26, 8, 1, 14, 92])
    path = plot_periodicity_heatmap(elements, rng.normal(size=(5, 8)), tmp_path / "heat.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"Z has shape \(3,\) but 4 rows"):
        element_means([1, 2, 3], np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"coords .*NaN"):
        element_means([1, 2], np.array([[0.0, np.nan], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="repeated"):
        periodicity_score([1, 1, 2], np.eye(3))
    with pytest.raises(ValueError, match=r"1\.\.94"):
        periodicity_score([1, 2, 95], np.eye(3))
    with pytest.raises(ValueError, match="means has shape"):
        nearest_element_table([1], np.ones((1, 3)))
    with pytest.raises(ValueError, match="elements has shape"):
        nearest_element_table([1, 2, 3], np.ones((2, 3)))
    with pytest.raises(ValueError, match="f_block"):
        group_period([1], f_block="own")
