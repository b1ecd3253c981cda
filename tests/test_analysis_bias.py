"""Per-model, per-element deviation from the consensus of several models."""

from __future__ import annotations

import numpy as np
import pytest

from platoscope.analysis import (
    bias_table,
    consensus,
    deviations,
    most_deviant_model,
)

MODELS = ("chgnet", "sevenn", "mace", "orb")


def _models(n: int = 600, k: int = 30, noise: float = 0.02, seed: int = 0):
    """Four models' coordinates of the same atoms: one shared truth plus independent noise."""
    rng = np.random.default_rng(seed)
    z = rng.choice([1, 6, 8, 14, 26], size=n)
    truth = rng.normal(size=(n, k))
    coords = {m: truth + noise * rng.normal(size=(n, k)) for m in MODELS}
    return coords, z


def test_consensus_and_leave_one_out():
    coords = {"a": np.zeros((3, 2)), "b": np.ones((3, 2)), "c": np.full((3, 2), 5.0)}
    np.testing.assert_allclose(consensus(coords), 2.0)
    np.testing.assert_allclose(consensus(coords, exclude="c"), 0.5)
    np.testing.assert_allclose(consensus(coords, statistic="median"), 1.0)
    dev = deviations(coords)
    np.testing.assert_allclose(dev["c"], np.hypot(4.5, 4.5))
    full = deviations(coords, leave_one_out=False)
    np.testing.assert_allclose(full["c"], np.hypot(3.0, 3.0))


def test_two_models_leave_one_out_is_their_distance():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 50, 6))
    dev = deviations({"a": a, "b": b})
    np.testing.assert_allclose(dev["a"], np.linalg.norm(a - b, axis=1))
    np.testing.assert_allclose(dev["a"], dev["b"])


def test_bias_detects_the_perturbed_model_and_element():
    coords, z = _models()
    shift = np.zeros(coords["mace"].shape[1])
    shift[:5] = 0.2
    coords["mace"] = coords["mace"] + (z == 8)[:, None] * shift  # MACE is off for oxygen only
    table = bias_table(coords, z)
    assert table.models == list(MODELS)
    np.testing.assert_array_equal(table.elements, [1, 6, 8, 14, 26])
    assert table.counts.sum() == 600
    worst = most_deviant_model(table)
    assert worst[8] == "mace"
    assert most_deviant_model(table, by="excess")[8] == "mace"
    o = list(table.elements).index(8)
    others = [i for i in range(5) if i != o]
    mace = table.models.index("mace")
    assert table.deviation[mace, o] > 3 * table.deviation[mace, others].max()
    assert table.excess[mace, o] > 3
    # leave-one-out sees the full shift, a consensus including MACE only 3/4 of it
    loo, incl = deviations(coords)["mace"], deviations(coords, leave_one_out=False)["mace"]
    assert incl[z == 8].mean() == pytest.approx(0.75 * loo[z == 8].mean(), rel=0.1)
    d = table.as_dict()
    assert d["mace"][8] == pytest.approx(table.deviation[mace, o])


def test_unperturbed_models_have_no_outlier():
    coords, z = _models(seed=5)
    table = bias_table(coords, z, metric="cosine")
    ratio = table.deviation.max(axis=0) / table.deviation.min(axis=0)
    assert (ratio < 1.5).all()


def test_bad_input_raises():
    coords, z = _models(n=20)
    with pytest.raises(ValueError, match=r"coords\['sevenn'\] has shape \(19, 30\)"):
        bias_table({**coords, "sevenn": coords["sevenn"][:19]}, z)
    with pytest.raises(ValueError, match=r"Z has shape \(19,\) but 20 rows"):
        bias_table(coords, z[:19])
    with pytest.raises(ValueError, match="at least 2"):
        deviations({"a": coords["mace"]})
    with pytest.raises(ValueError, match="NaN"):
        consensus({"a": np.full((3, 2), np.nan)})
    with pytest.raises(ValueError, match="exclude"):
        consensus(coords, exclude="nope")
    with pytest.raises(ValueError, match="by"):
        most_deviant_model(bias_table(coords, z), by="max")
