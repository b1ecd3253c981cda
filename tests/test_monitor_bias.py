"""Cross-model (bias) monitor with real models: CHGNet 0.3.0 running, SevenNet-0 alongside."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk

from platoscope.coords import dense_rows
from platoscope.errors import UnsupportedElementError
from platoscope.monitors import Frame, Watcher, build_monitors
from platoscope.monitors.bias import (
    MIN_ATOMS_PER_ELEMENT,
    BiasMonitor,
    calibrate_thresholds,
    paired_distances,
)
from platoscope.reference import ReferenceBank, reference_structures

pytestmark = [pytest.mark.backend("chgnet"), pytest.mark.backend("sevenn"),
              pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def models(chgnet_backend, sevenn_backend, small_anchors):
    """Both models' banks on the small Si-bearing reference structures, and their calcs."""
    from platoscope.calculator import PlatonicCalculator

    refs = [a for a in reference_structures() if 14 in a.numbers and len(a) <= 12]
    bank_a = ReferenceBank.build(chgnet_backend, refs, small_anchors)
    bank_b = ReferenceBank.build(sevenn_backend, refs, small_anchors)
    calc_a = PlatonicCalculator(chgnet_backend, small_anchors, projection=bank_a.projector)
    calc_b = PlatonicCalculator(sevenn_backend, small_anchors, projection=bank_b.projector)
    return calc_a, calc_b, bank_a, bank_b


def test_calibration_per_element(models):
    """threshold_e = s_e x pooled quantile of d / s_e with s_e = max(median_e, median of all):
    in sample, 1 - q of the atoms cross their element's threshold."""
    _, calc_b, bank_a, bank_b = models
    mon = BiasMonitor(calc_b, bank_a=bank_a, bank_b=bank_b, quantile=0.9)
    d = paired_distances(bank_a, bank_b)
    assert np.isfinite(d).all() and (d > 0).all()
    np.testing.assert_allclose(d, np.linalg.norm(dense_rows(bank_a.coords - bank_b.coords), axis=1),
                               rtol=0, atol=1e-11)
    assert mon.expected_false_alarm_rate == pytest.approx(0.1)
    thr = mon.thresholds_for(Frame(step=0, atoms=Atoms(numbers=bank_a.numbers),
                                   platonic=np.zeros((len(d), 1))))
    assert np.mean(d > thr) == pytest.approx(0.1, abs=1 / len(d) + 1e-9)
    si = bank_a.numbers == 14
    assert si.sum() >= MIN_ATOMS_PER_ELEMENT
    ratio = mon.element_thresholds_[14] / max(np.median(d[si]), np.median(d))
    assert ratio == pytest.approx(mon.global_threshold_ / np.median(d))
    rare = [z for z in np.unique(bank_a.numbers)
            if (bank_a.numbers == z).sum() < MIN_ATOMS_PER_ELEMENT]
    assert rare and all(mon.element_thresholds_[int(z)] == mon.global_threshold_ for z in rare)
    assert mon.thresholds_for(Frame(step=0, atoms=Atoms("Po"), platonic=np.zeros((1, 1))))[0] \
        == mon.global_threshold_


def test_calibration_survives_an_element_on_which_the_models_coincide():
    """An element whose atoms sit (nearly) on the same coordinates in both models (median
    distance ~1e-16, as for an element whose atoms all take one anchor) must not inflate the
    others' thresholds: its ratios d / median were ~1e15 and set every threshold ~1e14, above
    any possible distance, so the monitor never fired. With the median floor: 1 - q of the
    atoms cross in sample, every threshold stays within the distances' range, and a split
    half calibrates the other half to within sampling error of 1 - q."""
    rng = np.random.default_rng(0)
    z = np.repeat([8, 14, 36], [3000, 2000, 400])
    d = np.concatenate([rng.gamma(2.0, 0.1, 3000), rng.gamma(2.0, 0.2, 2000),
                        np.abs(rng.normal(0, 1e-16, 400))])
    d[-100:] = rng.uniform(0.8, 1.4, 100)  # real disagreements on a quarter of its atoms
    q = 0.99
    per, glob = calibrate_thresholds(d, z, q)
    assert max(per.values()) < d.max() and glob < d.max()
    thr = np.array([per[int(x)] for x in z])
    assert np.mean(d > thr) == pytest.approx(1 - q, abs=1 / len(d) + 1e-9)
    half = rng.random(len(d)) < 0.5
    per_h, _ = calibrate_thresholds(d[half], z[half], q)
    thr_h = np.array([per_h[int(x)] for x in z])
    rate = np.mean(d[~half] > thr_h[~half])
    assert abs(rate - (1 - q)) < 4 * np.sqrt(q * (1 - q) / (~half).sum())
    with pytest.raises(Exception, match="median distance 0"):
        calibrate_thresholds(np.zeros(10), np.full(10, 14), q)


def test_md_scores_every_interval(models):
    """Langevin MD of Si with the bias monitor every 4 steps: finite scores on steps 0, 4, 8,
    12 only; force disagreement beside them; per-element summary."""
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    calc_a, calc_b, bank_a, bank_b = models
    mon = BiasMonitor(calc_b, bank_a=bank_a, bank_b=bank_b, interval=4)
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.calc = calc_a
    seen: dict[int, dict[str, np.ndarray]] = {}

    class Sink:
        def frame(self, f, scores):
            seen[f.step] = {k: v.copy() for k, v in scores.items()}

        def event(self, ev):
            pass

    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    dyn = Langevin(atoms, 1 * units.fs, temperature_K=600, friction=0.01,
                   rng=np.random.default_rng(0))
    dyn.attach(Watcher([mon], sinks=[Sink()], strict=True), interval=1, atoms=atoms)
    dyn.run(12)
    scored = [k for k, v in seen.items() if "bias" in v]
    assert scored == [0, 4, 8, 12] and len(seen) == 13
    for k in scored:
        s, f = seen[k]["bias"], seen[k]["bias_force"]
        assert s.shape == f.shape == (8,)
        assert np.isfinite(s).all() and (s > 0).all()
        assert np.isfinite(f).all() and (f >= 0).all()
    # the last frame's score is the distance between the two models' coordinates
    z_b = calc_b.get_platonic(atoms.copy())
    np.testing.assert_allclose(seen[12]["bias"],
                               np.linalg.norm(dense_rows(atoms.calc.results["platonic"])
                                              - dense_rows(z_b), axis=1),
                               rtol=1e-4, atol=1e-6)
    summ = mon.summary()
    si = summ["elements"]["Si"]
    assert si["atoms_scored"] == 32 and si["threshold"] == mon.element_thresholds_[14]
    assert si["max"] >= si["mean"] > 0 and si["mean_force_disagreement"] > 0
    assert summ["most_disagreeing"] == ["Si"] and summ["model_b"] == "sevenn:7net-0"
    fd = summ["force_disagreement"]  # run level, eV/Å, from the same per-frame arrays
    worst = max(scored, key=lambda k: seen[k]["bias_force"].max())
    assert fd["units"] == "eV/Å" and fd["frames_evaluated"] == 4 and fd["atom_frames"] == 32
    assert fd["max"] == pytest.approx(seen[worst]["bias_force"].max(), rel=1e-12)
    assert (fd["max_step"], fd["max_atom"], fd["max_element"]) == (
        worst, int(np.argmax(seen[worst]["bias_force"])), "Si")
    assert fd["mean"] == pytest.approx(np.mean([seen[k]["bias_force"] for k in scored]))
    assert summ["expected_false_alarm_rate"] == pytest.approx(1e-3)


def test_events_per_element_threshold(models):
    """With a tiny fixed threshold every scored atom is flagged, with its force disagreement."""
    calc_a, calc_b, _, _ = models
    atoms = bulk("GaAs", "zincblende", a=5.65, cubic=True)
    z = calc_a.get_platonic(atoms)
    frame = Frame(step=0, atoms=atoms, platonic=z, forces=calc_a.results["forces"], calc=calc_a)
    mon = BiasMonitor(calc_b, threshold=1e-9)
    mon.start(frame)
    s = mon.score(frame)
    (ev,) = mon.events(frame, s)
    assert sorted(ev.atoms) == list(range(8)) and ev.details["model_b"] == "sevenn:7net-0"
    assert len(ev.details["force_disagreement"]) == 8
    assert set(mon.element_summary()) == {"Ga", "As"}


def test_second_model_lacking_an_element(models):
    """alpha-Po: CHGNet covers Po, SevenNet-0 does not; refused before any step is run."""
    calc_a, calc_b, bank_a, bank_b = models
    po = Atoms("Po", cell=[3.35] * 3, pbc=True)
    with pytest.raises(UnsupportedElementError, match=r"sevenn:7net-0.*Po \(Z=84\)"):
        BiasMonitor(calc_b, bank_a=bank_a, bank_b=bank_b, atoms=po)
    # without atoms= at construction, the first frame (start) refuses it
    mon = BiasMonitor(calc_b, bank_a=bank_a, bank_b=bank_b)
    po.calc = calc_a
    watcher = Watcher([mon], strict=True)
    with pytest.raises(UnsupportedElementError, match="Po"):
        watcher(po)
    # from_spec checks before it builds any reference bank
    with pytest.raises(UnsupportedElementError, match="second model 'sevenn:7net-0'"):
        BiasMonitor.from_spec("sevenn:7net-0", calc=calc_a, atoms=po)


def test_build_monitors_refuses_a_second_model_lacking_an_element(models):
    """Given the starting structure (the CLI passes it), bias: and switch: with SevenNet-0 refuse
    alpha-Po before any reference bank is built or step run; without it, the switch check
    refuses it at its first frame."""
    from platoscope.monitors.switch import SwitchMonitor

    calc_a, calc_b, bank_a, _ = models
    po = Atoms("Po", cell=[3.35] * 3, pbc=True)
    for name in ("bias", "switch"):
        with pytest.raises(UnsupportedElementError, match=rf"{name} monitor: the second model "
                           r"'sevenn:7net-0' has no parameters for element\(s\) Po \(Z=84\)"):
            build_monitors(f"atypical,{name}:sevenn:7net-0", calc=calc_a, bank=bank_a, atoms=po)
    po.calc = calc_a
    with pytest.raises(UnsupportedElementError, match="switch monitor.*Po"):
        Watcher([SwitchMonitor(calc_b)], strict=True)(po)


def test_switch_check_interval_is_an_option(models):
    """``--switch-interval N`` (the check mode's interval; it was fixed at 10 from the CLI)
    reaches the monitor through the context's options; the default stays 10."""
    from platoscope.monitors.registry import DEFAULT_INTERVAL, MonitorContext, monitor_options
    from platoscope.monitors.switch import SwitchMonitor

    calc_a, _, bank_a, _ = models
    si = bulk("Si", "diamond", a=5.43)
    assert ("switch", "--switch-interval") in {(n, o.flag(n)) for n, o in monitor_options()}
    given = MonitorContext(calc=calc_a, bank=bank_a, atoms=si, options={"switch_interval": 3})
    assert SwitchMonitor.from_spec("sevenn:7net-0", given).interval == 3
    plain = MonitorContext(calc=calc_a, bank=bank_a, atoms=si)
    assert SwitchMonitor.from_spec("sevenn:7net-0", plain).interval == DEFAULT_INTERVAL == 10


def test_bad_configuration(models):
    _, calc_b, bank_a, bank_b = models
    with pytest.raises(ValueError, match="reference banks"):
        BiasMonitor(calc_b)
    with pytest.raises(ValueError, match="quantile"):
        BiasMonitor(calc_b, threshold=0.1, quantile=1.5)
    other = ReferenceBank(bank_b.embeddings[:-1], bank_b.numbers[:-1],
                          bank_b.structure_index[:-1], projector=bank_b.projector,
                          anchor_set_hash=bank_b.anchor_set_hash, data_hash="x",
                          provenance=bank_b.provenance)
    with pytest.raises(ValueError, match="same reference atoms"):
        BiasMonitor(calc_b, bank_a=bank_a, bank_b=other)


def test_bank_skips_structures_a_model_cannot_embed(sevenn_backend, small_anchors, models):
    """SevenNet-0 has no parameters for Po: with skip_unsupported its bank leaves that structure
    out (warning, provenance), keeps the original structure numbering, and the bias monitor
    calibrates on the atoms both banks hold."""
    po = bulk("Po", "sc", a=3.35) * (2, 2, 2)
    refs = [a for a in reference_structures() if 14 in a.numbers and len(a) <= 12][:3]
    with pytest.raises(UnsupportedElementError, match="Po"):
        ReferenceBank.build(sevenn_backend, [refs[0], po], small_anchors)
    with pytest.warns(UserWarning, match="no parameters for Po: 1 of 4"):
        bank_b = ReferenceBank.build(sevenn_backend, [refs[0], po, refs[1], refs[2]],
                                     small_anchors, skip_unsupported=True)
    assert bank_b.provenance["skipped_structures"] == [1]
    assert set(bank_b.structure_index) == {0, 2, 3} and 84 not in bank_b.numbers
    chg = models[0].backend
    bank_a = ReferenceBank.build(chg, [refs[0], po, refs[1], refs[2]], small_anchors)
    assert 84 in bank_a.numbers
    d = paired_distances(bank_a, bank_b)
    assert len(d) == len(bank_b) < len(bank_a)
    keep = bank_a.structure_index != 1
    z_a = bank_a.projector.transform(bank_a.embeddings[keep], bank_a.numbers[keep], sparse=False)
    np.testing.assert_allclose(d, np.linalg.norm(z_a - dense_rows(bank_b.coords), axis=1), rtol=0,
                               atol=1e-11)
    with pytest.raises(ValueError, match=r"element\(s\) Po"):  # no anchor of Po: refused
        _ = bank_a.coords
