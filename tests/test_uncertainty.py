"""Force-error model and uncertainty monitor (issue 11), with real CHGNet 0.3.0 on a few mlearn
Li/Si training structures."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from click.testing import CliRunner

from platoscope.cli import main
from platoscope.errors import ConfigError, InputError
from platoscope.readers import read_structures
from platoscope.uncertainty import ForceErrorModel, calibrate, default_file

pytestmark = [pytest.mark.backend("chgnet"), pytest.mark.usefixtures("one_torch_thread")]
MLEARN = Path(__file__).resolve().parents[1] / "data" / "mlearn"


@pytest.fixture(scope="module")
def structures():
    li = list(read_structures(MLEARN / "Li_training.json.gz", limit=4))
    si = list(read_structures(MLEARN / "Si_training.json.gz", limit=4))
    return li + si


@pytest.fixture(scope="module")
def bank(chgnet_backend):
    from platoscope import AnchorSet
    from platoscope.reference import default_bank

    return default_bank(chgnet_backend, AnchorSet.default(), progress=False)


@pytest.fixture(scope="module")
def fitted(chgnet_backend, bank, structures):
    return calibrate(chgnet_backend, bank, structures, dft_forces_key="dft_forces")


def test_fit_predict_shapes_units_and_round_trip(chgnet_backend, bank, structures, fitted):
    est, report = fitted
    assert est.provenance_["model"] == "chgnet:0.3.0"
    assert est.provenance_["n_structures"] == len(structures)
    assert 0.0 <= report["held_out_coverage_1sigma"] <= report["held_out_coverage_2sigma"] <= 1
    atoms = structures[5].copy()
    res, feats = chgnet_backend.compute(atoms, ["energy", "forces"])
    sigma = est.predict(feats, res["forces"], atoms.numbers)
    assert sigma.shape == (len(atoms),)
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)
    assert np.all(sigma < 50.0)  # eV/Å: a force error, not a log or a squared norm
    back = ForceErrorModel.from_state(est.get_state(), bank)
    np.testing.assert_allclose(back.predict(feats, res["forces"], atoms.numbers), sigma,
                               rtol=1e-9)
    # an element outside the calibration (Cu): largest element offset, and flagged
    from ase.build import bulk

    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    r2, f2 = chgnet_backend.compute(cu, ["energy", "forces"])
    s2 = back.predict(f2, r2["forces"], cu.numbers)
    assert np.all(np.isfinite(s2)) and np.all(s2 > 0)
    assert back.uncalibrated_elements_ == [29]
    # larger own force -> larger sigma when the force term has a positive slope
    if est.coef_[1] > 0:
        big = est.predict(feats, np.asarray(res["forces"]) * 10 + 1.0, atoms.numbers)
        assert np.all(big > sigma)


def test_bad_input(bank, structures, fitted):
    est, _ = fitted
    x = np.zeros((3, bank.embeddings.shape[1]))
    with pytest.raises(InputError, match="must both be"):
        est.fit(x, np.zeros((3, 3)), np.zeros((2, 3)), np.array([3, 3, 3]), np.arange(3))
    with pytest.raises(InputError, match="at least 2 structures"):
        ForceErrorModel(bank).fit(x, np.zeros((3, 3)), np.ones((3, 3)), np.array([3, 3, 3]),
                                  np.zeros(3))
    with pytest.raises(InputError, match="expected"):
        est.predict(np.zeros((3, 7)), np.zeros((3, 3)), np.array([3, 3, 3]))
    with pytest.raises(InputError, match="no per-atom array 'nope'"):
        calibrate(None, bank, structures, dft_forces_key="nope")
    with pytest.raises(InputError, match="at least 4"):
        calibrate(None, bank, structures[:2], dft_forces_key="dft_forces")
    other = copy.copy(bank)
    other.data_hash = "0" * 64
    with pytest.raises(ConfigError, match="reference bank"):
        ForceErrorModel.from_state(est.get_state(), other)
    with pytest.raises(ConfigError, match="platoscope calibrate"):
        ForceErrorModel.default(SimpleNamespace(spec="sevenn:7net-0"), bank)


def test_shipped_default(chgnet_backend, bank):
    assert default_file("chgnet:0.3.0").is_file()
    est = ForceErrorModel.default(chgnet_backend, bank)
    assert est.provenance_["data"] == "mlearn Li+Si training"


def test_calibrate_cli_and_monitor_in_md(tmp_path, structures):
    frames = []
    for a in structures:
        b = a.copy()
        b.calc = SinglePointCalculator(b, forces=a.arrays["dft_forces"])
        del b.arrays["dft_forces"]
        frames.append(b)
    write(tmp_path / "dft.extxyz", frames)
    r = CliRunner()
    res = r.invoke(main, ["calibrate", str(tmp_path / "dft.extxyz"), "--model", "chgnet",
                          "--out", str(tmp_path / "m.npz")])
    assert res.exit_code == 0, res.output
    assert "held-out check" in res.output and (tmp_path / "m.npz").is_file()
    bad = r.invoke(main, ["calibrate", str(tmp_path / "dft.extxyz"), "--model", "chgnet",
                          "--dft-forces-key", "dft_f", "--out", str(tmp_path / "x.npz")])
    assert bad.exit_code != 0 and "no per-atom array 'dft_f'" in bad.output

    start = structures[4].copy()  # Si
    del start.arrays["dft_forces"]
    write(tmp_path / "start.xyz", start)
    for extra, name in ((["--max-force-error", "1e-4"], "shipped"),
                        (["--uncertainty-max-force-error", "1e-4", "--uncertainty-model",
                          str(tmp_path / "m.npz")], "user")):
        out = tmp_path / name
        res = r.invoke(main, ["md", str(tmp_path / "start.xyz"), "--model", "chgnet",
                              "--monitor", "uncertainty", "--steps", "2", "--out", str(out),
                              "--no-report", *extra])
        assert res.exit_code == 0, res.output
        summary = json.loads((out / "summary.json").read_text())
        (mon,) = summary["monitoring"]["monitors"]
        assert mon["name"] == "uncertainty" and mon["threshold"] == 1e-4
        assert mon["units"] == {"uncertainty": "eV/Å"}
        assert mon["estimator"]["model"] == "chgnet:0.3.0"
        events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
        assert events and all(e["monitor"] == "uncertainty" for e in events)
        assert all(np.isfinite(e["score"]) and e["score"] > 1e-4 for e in events)
