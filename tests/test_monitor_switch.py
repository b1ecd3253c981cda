"""Model switch: SwitchingCalculator hand-overs in real MD, checked by optimal transport."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk

from platoscope.errors import UnsupportedElementError
from platoscope.monitors import Frame, Watcher, build_monitors
from platoscope.monitors.atypical import AtypicalMonitor
from platoscope.monitors.switch import (
    MIN_MATCHED,
    SwitchingCalculator,
    SwitchMonitor,
    carry_coordinates,
    hand_over,
)
from platoscope.monitors.symmetry import SymmetryMonitor
from platoscope.projection import Projector
from platoscope.reference import ReferenceBank, reference_structures

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DIRECTION = np.array([1.0, 0.6, 0.3]) / np.linalg.norm([1.0, 0.6, 0.3])


@pytest.fixture(scope="module")
def chgnet_pair(chgnet_backend, small_anchors):
    """Two PlatonicCalculators of the same model (CHGNet 0.3.0)."""
    from platoscope.calculator import PlatonicCalculator

    return (PlatonicCalculator(chgnet_backend, small_anchors),
            PlatonicCalculator(chgnet_backend, small_anchors))


@pytest.fixture(scope="module")
def chgnet_bank(chgnet_backend, small_anchors) -> ReferenceBank:
    refs = [a for a in reference_structures() if 14 in a.numbers and len(a) <= 12]
    return ReferenceBank.build(chgnet_backend, refs, small_anchors)


class Recorder:
    def __init__(self):
        self.events, self.steps = [], []

    def frame(self, f, scores):
        self.steps.append(f.step)

    def event(self, ev):
        self.events.append(ev)


def run_md(atoms: Atoms, calc, monitors, steps: int, seed: int = 0) -> Recorder:
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    rec = Recorder()
    dyn = Langevin(atoms, 1 * units.fs, temperature_K=300, friction=0.01,
                   rng=np.random.default_rng(seed))
    dyn.attach(Watcher(monitors, sinks=[rec], strict=True), interval=1, atoms=atoms)
    dyn.run(steps)
    return rec


def test_hand_over_counts_equivalent_atoms():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 5))
    z[1] = z[0] + 1e-9  # atoms 0 and 1 equivalent, almost identical coordinates
    numbers = np.array([8, 8, 8, 22, 22, 22])
    classes = np.array([0, 0, 1, 2, 2, 3])
    swapped = z[[1, 0, 2, 3, 4, 5]]
    h = hand_over(z, swapped, numbers, classes)
    assert h.matched_self == pytest.approx(4 / 6) and h.matched_equivalent == 1.0
    assert h.same_element == 1.0 and h.cost == pytest.approx(0.0, abs=1e-12)
    assert h.chance_equivalent == pytest.approx((2 * 2 / 3 + 1 / 3 + 2 * 2 / 3 + 1 / 3) / 6)
    assert h.identity_cost >= h.cost - 1e-12
    shifted = hand_over(z, z + 3.0, numbers, classes)
    assert shifted.matched_self == 1.0 and shifted.offset == pytest.approx(9.0 * 5)
    assert shifted.cost - shifted.offset == pytest.approx(0.0, abs=1e-9)


def test_switching_calculator_rule_and_results(chgnet_pair):
    a, b = chgnet_pair
    calc = SwitchingCalculator(a, b, rule=2)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.calc = calc
    for k in range(4):
        atoms.positions[0] += 0.01 * DIRECTION
        f = atoms.get_forces()
        assert calc.switched == (k >= 2) and calc.calc is (b if k >= 2 else a)
        np.testing.assert_array_equal(f, calc.calc.results["forces"])
        assert calc.results["platonic"].shape == (8, a.projector.n_columns)
    assert calc.record.call == 2 and calc.n_calls == 4
    assert calc.provenance()["switching"]["switched_at_call"] == 2
    with pytest.raises(ValueError, match="rule"):
        SwitchingCalculator(a, b, rule=-1)
    from platoscope.calculator import PlatonicCalculator

    # a projection without the global block gives rows of another width: refused, named
    plain = PlatonicCalculator(b.backend, a.anchors, projection=Projector(
        "element", global_weight=0, global_anchors=0))
    with pytest.raises(ValueError, match=r"gives 38204 coordinate columns.* 38076"):
        SwitchingCalculator(a, plain)


def test_same_model_hand_over_matches_every_atom_to_itself(chgnet_pair, chgnet_bank):
    """CHGNet -> CHGNet at step 3 of a 300 K MD: every atom goes to itself, zero cost, one
    unflagged event; the atypical monitor's thresholds are carried unchanged (a raw-space
    monitor becomes a projected-space one: raw spaces of two models share no axes)."""
    a, b = chgnet_pair
    atypical = AtypicalMonitor(chgnet_bank, quantile=0.99)
    before = AtypicalMonitor(chgnet_bank, quantile=0.99, space="projected").element_thresholds_
    switch = SwitchMonitor(atypical=atypical)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 1, 1))
    rec = run_md(atoms, SwitchingCalculator(a, b, rule=3), [switch, atypical], steps=5)
    (ev,) = [e for e in rec.events if e.monitor == "switch"]
    assert ev.step == 3 and ev.action == "record" and not ev.details["flagged"]
    assert ev.details["matched_self"] == 1.0 and ev.details["matched_equivalent"] == 1.0
    assert ev.details["cost"] == pytest.approx(0.0, abs=1e-12)
    assert ev.details["force_disagreement_max"] == pytest.approx(0.0, abs=1e-5)
    assert ev.atoms == [] and ev.details["model_a"] == ev.details["model_b"] == "chgnet:0.3.0"
    assert "carried to" in atypical.bank.model and atypical.space == "projected"
    for z, t in before.items():
        assert atypical.element_thresholds_[z] == pytest.approx(t, rel=1e-6)
    assert switch.summary()["switches"][0]["step"] == 3
    assert switch.summary()["thresholds_not_carried"] is None  # sparse bank, default anchors


def test_thresholds_too_large_to_carry_are_reported_and_the_run_goes_on(
        chgnet_pair, chgnet_bank, monkeypatch):
    """Banks whose coordinates exceed reference.MAX_SPARSE_BYTES even sparse (element
    projection; the default anchors with the shipped reference set hold far less) cannot be
    carried: the switch still happens and is checked, the run goes on, and the summary says why
    the thresholds were not carried."""
    from platoscope import reference

    a, b = chgnet_pair
    monkeypatch.setattr(reference, "MAX_SPARSE_BYTES", 1)
    bank = reference.ReferenceBank(  # a fresh object: coords are cached per bank
        chgnet_bank.embeddings, chgnet_bank.numbers, chgnet_bank.structure_index,
        projector=chgnet_bank.projector, anchor_set_hash=chgnet_bank.anchor_set_hash,
        data_hash=chgnet_bank.data_hash, provenance=chgnet_bank.provenance)
    atypical = AtypicalMonitor(bank, quantile=0.99)
    switch = SwitchMonitor(atypical=atypical)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    with pytest.warns(UserWarning, match="not carried"):
        rec = run_md(atoms, SwitchingCalculator(a, b, rule=2), [switch, atypical], steps=3)
    assert [e.step for e in rec.events if e.monitor == "switch"] == [2]
    s = switch.summary()
    assert s["carried_thresholds"] is None and "GiB even sparse" in s["thresholds_not_carried"]
    assert atypical.space == "raw"  # left as it was


@pytest.mark.backend("sevenn")
def test_chgnet_to_sevenn_hand_over_in_md(chgnet_pair, chgnet_bank, sevenn_backend,
                                          small_anchors):
    """CHGNet -> SevenNet-0 at step 3: one transport summary event at the switch, the atypical
    monitor carried into SevenNet's space (map fitted on the two banks) keeps scoring, frames
    after it carry B's results."""
    from platoscope.calculator import PlatonicCalculator

    a, _ = chgnet_pair
    b = PlatonicCalculator(sevenn_backend, small_anchors)
    refs = [x for x in reference_structures() if 14 in x.numbers and len(x) <= 12]
    bank_b = ReferenceBank.build(sevenn_backend, refs, small_anchors)
    own_b = AtypicalMonitor(bank_b, quantile=0.99, space="projected").element_thresholds_
    atypical = AtypicalMonitor(chgnet_bank, quantile=0.99, space="projected")
    switch = SwitchMonitor(atypical=atypical, bank_b=bank_b)
    calc = SwitchingCalculator(a, b, rule=3)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    rec = run_md(atoms, calc, [switch, atypical], steps=5)
    (ev,) = [e for e in rec.events if e.monitor == "switch"]
    d = ev.details
    assert ev.step == 3 and d["kind"] == "switch"
    assert (d["model_a"], d["model_b"]) == ("chgnet:0.3.0", "sevenn:7net-0")
    assert d["cost"] > 0 and d["identity_cost"] >= d["cost"] - 1e-12
    for key in ("matched_self", "matched_equivalent", "same_element", "chance_equivalent"):
        assert 0 <= d[key] <= 1
    assert d["same_element"] == 1.0 and d["chance_equivalent"] == 1.0  # one class: Si
    assert d["flagged"] == (d["matched_equivalent"] < MIN_MATCHED)
    assert d["force_disagreement_mean"] > 0 and "Si" in d["carried_thresholds"]
    assert d["carried_map_fitted_on"].startswith("reference banks")
    # carried by the bank-to-bank map, A's thresholds land near B's own calibration
    assert atypical.element_thresholds_[14] == pytest.approx(own_b[14], rel=0.3)
    assert calc.switched and calc.results["embeddings"].shape[1] == 128  # SevenNet's features
    assert np.isfinite(atoms.arrays["score_atypical"]).all()
    assert rec.steps == list(range(6))


@pytest.mark.backend("sevenn")
def test_low_symmetry_hand_over_is_flagged(chgnet_pair, sevenn_backend, small_anchors):
    """A 20-atom, 9-class MP-20 structure: the check mode (no switch) compares CHGNet and
    SevenNet every 2 frames; at min_matched=1 any atom sent to an inequivalent one flags."""
    from platoscope.calculator import PlatonicCalculator

    a, _ = chgnet_pair
    b = PlatonicCalculator(sevenn_backend, small_anchors)
    mon = SwitchMonitor(b, min_matched=1.0, interval=2, action="warn")
    atoms = reference_structures()[100]
    assert len(atoms) == 20
    frames = []
    for k in range(3):
        x = atoms.copy()
        x.positions[0] += 0.01 * k * DIRECTION
        frames.append(Frame(step=k, atoms=x, platonic=a.get_platonic(x), calc=a))
    rec = Recorder()
    w = Watcher([mon], sinks=[rec], strict=True)
    with pytest.warns(UserWarning, match="switch"):
        for f in frames:
            w.process(f)
    assert rec.events and {e.step for e in rec.events} <= {0, 2}
    ev = rec.events[0]
    assert ev.details["kind"] == "check" and ev.details["flagged"]
    assert ev.score == pytest.approx(1 - ev.details["matched_equivalent"]) and ev.atoms
    summ = mon.summary()
    assert summ["n_checks"] == 2 and summ["n_flagged"] == len(rec.events)


def test_switch_on_a_monitor_trigger(chgnet_pair):
    """A symmetry monitor's callback requests the switch: B takes over at the next call."""
    a, b = chgnet_pair
    calc = SwitchingCalculator(a, b)  # rule None: only on request
    sym = SymmetryMonitor(action="callback", callback=calc.request_switch)
    switch = SwitchMonitor()
    perfect = bulk("Si", "diamond", a=5.43, cubic=True)
    rec = Recorder()
    w = Watcher([sym, switch], sinks=[rec], strict=True)
    atoms = perfect.copy()
    atoms.calc = calc
    for k in range(4):
        if k == 1:
            atoms.positions[0] += 0.02 * DIRECTION
        atoms.get_forces()
        w(atoms)
        assert calc.switched == (k >= 2)
    assert [(e.monitor, e.step) for e in rec.events] == [("symmetry", 1), ("switch", 2)]
    assert rec.events[1].details["matched_equivalent"] == 1.0


@pytest.mark.backend("mace")
def test_second_model_lacking_an_element_is_refused_before_the_run(chgnet_pair):
    """The tiny MACE test model knows Al, Ni, Cu, Pd, Ag, Pt and Au only: with the starting
    structure given, a switch (or bias) from CHGNet to it on Si is refused up front, element and
    model named."""
    a, _ = chgnet_pair
    model = Path(__file__).parent / "data" / "mace_emt_tiny.model"
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    for name in ("switch", "bias"):
        with pytest.raises(UnsupportedElementError, match=rf"{name} monitor: the second model "
                           r"'mace:mace_emt_tiny.model' has no parameters for element\(s\) Si"):
            build_monitors(f"{name}:mace:{model}", calc=a, atoms=si)


def test_carrying_a_sparse_bank_equals_the_dense_map(chgnet_pair, chgnet_bank):
    """Default anchors (element projection): the bank's CSR coordinates are carried per element
    on the columns each element uses, never densified to K, and agree within 1e-10 with the
    dense TransportMap fitted with elements, for the elements of the fitting frame (here Si:
    a 0.05 Å and a 0.1 Å rattle of one diamond cell stand in for A's and B's views); elements
    the frame lacks are left where they were. A bank row equidistant from the fitted atoms
    at the map's n-th / (n+1)-th neighbour (e.g. a Si environment orthogonal to all eight, at
    sqrt(2) up to rounding, as most are under the sharp kernel) has no defined neighbour set:
    either path may pick any of the tied atoms, so such rows are checked to lie, within 1e-10,
    where some choice of neighbours puts them."""
    from platoscope.analysis.optimal_transport import TransportMap
    from platoscope.coords import dense_rows, is_sparse

    a, _ = chgnet_pair
    views = []
    for amp, seed in ((0.05, 0), (0.1, 1)):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True)
        atoms.rattle(amp, seed=seed)
        atoms.calc = a
        views.append(a.get_property("platonic", atoms))
    z_a, z_b = views
    numbers = np.full(8, 14)
    coords, el = chgnet_bank.coords, chgnet_bank.numbers
    assert is_sparse(z_a) and is_sparse(coords)
    sparse = carry_coordinates(z_a, z_b, numbers, coords, el)
    assert is_sparse(sparse) and sparse.shape == coords.shape
    dense = carry_coordinates(dense_rows(z_a), dense_rows(z_b), numbers, dense_rows(coords), el)
    si = el == 14
    got = dense_rows(sparse)
    x, y = dense_rows(z_a), dense_rows(z_b)
    orig = dense_rows(coords[si])
    dist = np.stack([np.linalg.norm(orig - xi, axis=1) for xi in x], axis=1)
    n = TransportMap().n_neighbors
    gap = np.diff(np.sort(dist, axis=1), axis=1)[:, n - 1]
    defined = gap > 1e-9
    assert defined.sum() >= 5  # 8 of 81 here: most bank Si rows are orthogonal to bulk Si's
    np.testing.assert_allclose(got[si][defined], dense[si][defined], rtol=0, atol=1e-10)
    disp = TransportMap().fit(x, y).displacements_
    for row in np.flatnonzero(~defined):
        d = dist[row]
        cut = np.sort(d)[n - 1]
        nearer, tied = np.flatnonzero(d < cut - 1e-9), np.flatnonzero(np.abs(d - cut) <= 1e-9)
        images = []
        for extra in itertools.combinations(tied, n - nearer.size):
            s = np.concatenate([nearer, extra])
            w = 1.0 / d[s]
            images.append(orig[row] + (w / w.sum()) @ disp[s])
        for res in (got[si][row], dense[si][row]):
            assert min(np.abs(res - im).max() for im in images) < 1e-10
    assert np.abs(got[si] - dense_rows(coords[si])).max() > 1e-3  # it did move them
    np.testing.assert_array_equal(got[~si], dense_rows(coords[~si]))
