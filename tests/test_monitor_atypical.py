"""Atypical-environment monitor with a real model (CHGNet 0.3.0): raw vs projected space, the
own-force extra score, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from platoscope.coords import dense_rows
from platoscope.errors import ModelMismatchError
from platoscope.monitors import Frame, build_monitors
from platoscope.monitors.atypical import AtypicalMonitor
from platoscope.reference import ReferenceBank, reference_structures

pytestmark = [pytest.mark.backend("chgnet"), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def setup(chgnet_backend, small_anchors):
    """CHGNet's bank of the small Si-bearing reference structures (239 atoms) and its calc."""
    from platoscope.calculator import PlatonicCalculator

    refs = [a for a in reference_structures() if 14 in a.numbers and len(a) <= 12]
    bank = ReferenceBank.build(chgnet_backend, refs, small_anchors)
    return bank, PlatonicCalculator(chgnet_backend, small_anchors, projection=bank.projector)


def frame(calc, atoms) -> Frame:
    """A Frame as the Watcher makes it: one calculation gives coordinates, embeddings, forces."""
    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_forces()
    r = calc.results
    return Frame(step=0, atoms=atoms, platonic=r["platonic"], embeddings=r["embeddings"],
                 forces=r["forces"], energy=r["energy"], calc=calc)


def si() -> Atoms:
    return bulk("Si", "diamond", a=5.43, cubic=True)


def test_raw_space_is_default_and_differs_from_projected(setup):
    """Raw: k-NN on the (N, 64) embeddings against bank.embeddings (checked by brute force);
    projected: on the (N, K) coordinates; the scores and thresholds differ."""
    bank, calc = setup
    raw, proj = AtypicalMonitor(bank), AtypicalMonitor(bank, space="projected")
    assert raw.space == "raw" and raw.summary()["space"] == "raw"
    assert proj.summary()["space"] == "projected"
    a = si()
    a.rattle(0.05, seed=0)
    f = frame(calc, a)
    s_raw, s_proj = raw.score(f), proj.score(f)
    assert s_raw.shape == s_proj.shape == (8,)
    pool = bank.embeddings[bank.numbers == 14].astype(np.float64)
    d = np.linalg.norm(f.embeddings[:, None, :] - pool[None], axis=2)
    np.testing.assert_allclose(s_raw, np.sort(d, axis=1)[:, :5].mean(axis=1), rtol=1e-10)
    pool = dense_rows(bank.coords[bank.numbers == 14])
    d = np.linalg.norm(dense_rows(f.platonic)[:, None, :] - pool[None], axis=2)
    np.testing.assert_allclose(s_proj, np.sort(d, axis=1)[:, :5].mean(axis=1), rtol=1e-10)
    assert not np.allclose(s_raw, s_proj)
    assert raw.element_thresholds_[14] != pytest.approx(proj.element_thresholds_[14])
    assert set(raw.element_thresholds_) == set(proj.element_thresholds_)


def test_distorted_silicon_scores_higher_in_raw_space(setup):
    """Rattled (0.2 Å) and compressed (-10 %) diamond Si sit farther from the bank than the
    perfect crystal, every compressed atom above every perfect one."""
    bank, calc = setup
    mon = AtypicalMonitor(bank)
    perfect = mon.score(frame(calc, si()))
    rattled = si()
    rattled.rattle(0.2, seed=1)
    compressed = si()
    compressed.set_cell(compressed.cell * 0.9, scale_atoms=True)
    s_rattled = mon.score(frame(calc, rattled))
    s_compressed = mon.score(frame(calc, compressed))
    assert s_rattled.mean() > perfect.mean() and s_rattled.max() > perfect.max()
    assert s_compressed.min() > perfect.max()


def test_own_force_magnitude_is_an_extra_score(setup):
    bank, calc = setup
    a = si()
    a.rattle(0.1, seed=2)
    f = frame(calc, a)
    mon = AtypicalMonitor(bank)
    (key,) = mon.extra_scores(f)
    assert key == "force"
    np.testing.assert_allclose(mon.extra_scores(f)["force"], np.linalg.norm(f.forces, axis=1))
    assert (mon.extra_scores(f)["force"] > 0).all()
    f.forces = None
    assert mon.extra_scores(f) == {}


def test_clear_errors(setup, chgnet_backend):
    bank, calc = setup
    f = frame(calc, si())
    with pytest.raises(ValueError, match="space must be 'raw' or 'projected', got 'pca'"):
        AtypicalMonitor(bank, space="pca")
    mon = AtypicalMonitor(bank)
    no_emb = Frame(step=0, atoms=f.atoms, platonic=f.platonic)
    with pytest.raises(ValueError, match="space='raw' needs the frame's raw embeddings"):
        mon.score(no_emb)
    assert AtypicalMonitor(bank, space="projected").score(no_emb).shape == (8,)
    # raw embeddings of another model or layer have another width D
    wide = Frame(step=0, atoms=f.atoms, platonic=f.platonic,
                 embeddings=np.zeros((8, 128)))
    with pytest.raises(ValueError, match=r"D=128.*D=64.*different models or layers"):
        mon.score(wide)
    with pytest.raises(ValueError, match=r"3 coordinate columns.*anchor sets or projections"):
        AtypicalMonitor(bank, space="projected").score(
            Frame(step=0, atoms=f.atoms, platonic=np.zeros((8, 3))))


@pytest.mark.backend("sevenn")
def test_raw_space_refuses_another_model(setup, sevenn_backend, small_anchors):
    """SevenNet-0 frames against CHGNet's bank: refused at start (model named), and by width
    when scored directly."""
    from platoscope.calculator import PlatonicCalculator

    bank, _ = setup
    calc_b = PlatonicCalculator(sevenn_backend, small_anchors)
    f = frame(calc_b, si())
    mon = AtypicalMonitor(bank)
    # ModelMismatchError (an AnchorSetMismatchError): the anchors agree, the model does not
    with pytest.raises(ModelMismatchError, match="built by chgnet:0.3.0.*not by sevenn"):
        mon.start(f)
    with pytest.raises(ValueError, match=r"D=128.*D=64"):
        mon.score(f)
    # both models project on the same K anchors: the projected space scores the frame
    assert AtypicalMonitor(bank, space="projected").score(f).shape == (8,)


def test_build_monitors_passes_the_space(setup):
    bank, calc = setup
    (raw,) = build_monitors("atypical", calc=calc, bank=bank)
    (proj,) = build_monitors("atypical", calc=calc, bank=bank, atypical_space="projected")
    assert (raw.space, proj.space) == ("raw", "projected")
    with pytest.raises(ValueError, match="space must be"):
        build_monitors("atypical", calc=calc, bank=bank, atypical_space="both")


def test_element_not_in_the_bank_is_said_everywhere(setup, tmp_path):
    """An element the Si-bearing bank lacks: the frame warns once, the summary and report name
    it and the threshold it is scored against; Si stays scored against Si."""
    from ase.data import chemical_symbols

    from platoscope.monitors.base import MonitorWarning
    from platoscope.report import make_report
    from platoscope.runner import run_md

    bank, calc = setup
    z = next(z for z in (79, 78, 47, 29, 54) if z not in set(bank.numbers.tolist()))
    sym = chemical_symbols[z]
    mon = AtypicalMonitor(bank)
    mixed = si()
    mixed.numbers[0] = z
    f = frame(calc, mixed)
    with pytest.warns(MonitorWarning, match=rf"holds no {sym}: .*reference build"):
        s = mon.score(f)
    assert np.isfinite(s).all()
    thr = mon.thresholds_for(f)
    assert thr[0] == mon.unknown_threshold_ and (thr[1:] == mon.element_thresholds_[14]).all()
    summ = mon.summary()
    assert summ["elements_not_in_reference"] == [sym]
    assert summ["not_in_reference_threshold"] == pytest.approx(mon.unknown_threshold_, abs=1e-6)
    atoms = mixed.copy()
    atoms.calc = calc
    with pytest.warns(MonitorWarning):
        run_md(atoms, [AtypicalMonitor(bank)], tmp_path, steps=1, progress=False)
    make_report(tmp_path)
    assert f"NOT in the reference bank: {sym}" in (tmp_path / "report.txt").read_text()


class DenseBank:
    """The same reference atoms with dense (M, K) coordinates: the path before sparse banks."""

    def __init__(self, bank):
        self.coords = dense_rows(bank.coords)
        self.numbers, self.structure_index = bank.numbers, bank.structure_index
        self.model, self.data_hash = bank.model, bank.data_hash

    def __len__(self):
        return len(self.numbers)


@pytest.mark.parametrize("same_element", [True, False])
def test_projected_space_on_the_sparse_bank_equals_the_dense_computation(setup, same_element):
    """Default anchors (K = 38,076, element projection): bank.coords is CSR (each atom's element
    block, 12 bytes per entry, as coords_nbytes says), and the projected monitor calibrated and
    scoring on it (never densified to K columns) agrees with the same monitor on the dense
    coordinates within 1e-10: thresholds, leave-one-structure-out scores, a rattled Si frame
    (sparse and dense frame coordinates) and an element the bank lacks."""
    import warnings

    from platoscope.coords import is_sparse, nbytes
    from platoscope.monitors.base import MonitorWarning

    bank, calc = setup
    z = bank.coords
    assert is_sparse(z) and z.shape == (len(bank), bank.projector.n_columns)
    assert nbytes(z) == bank.coords_nbytes() < 0.1 * 8 * z.shape[0] * z.shape[1]
    sparse = AtypicalMonitor(bank, space="projected", same_element=same_element)
    dense = AtypicalMonitor(DenseBank(bank), space="projected", same_element=same_element)
    assert set(sparse.element_thresholds_) == set(dense.element_thresholds_)
    for el, t in dense.element_thresholds_.items():
        assert abs(sparse.element_thresholds_[el] - t) <= 1e-10
        np.testing.assert_allclose(sparse.calibration_scores_[el],
                                   dense.calibration_scores_[el], rtol=0, atol=1e-10)
    a = si()
    a.rattle(0.05, seed=3)
    missing = next(x for x in (79, 78, 47, 29, 54) if x not in set(bank.numbers.tolist()))
    a.numbers[0] = missing
    f = frame(calc, a)
    assert is_sparse(f.platonic)
    flat = Frame(step=0, atoms=f.atoms, platonic=dense_rows(f.platonic))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MonitorWarning)  # the missing element: tested above
        want = dense.score(flat)
        for got in (sparse.score(f), sparse.score(flat), dense.score(f)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    assert np.isfinite(want).all()
