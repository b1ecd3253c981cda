"""Bad input through the Python API gets an error that names the problem (a second first-hour
review, session 15): each case failed before deep inside numpy, torch or sklearn, with a
misleading cause, or not at all."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet

from platoscope import AnchorSet, PlatonicCalculator
from platoscope.analysis import bootstrap_interval
from platoscope.errors import BackendUnavailableError, InputError, InvalidStructureError
from platoscope.monitors import Watcher
from platoscope.monitors.atypical import AtypicalMonitor
from platoscope.monitors.base import Frame
from platoscope.projection import Projector
from platoscope.runner import run_md
from platoscope.uncertainty import ForceErrorModel


def _nacl():
    return bulk("NaCl", "rocksalt", a=5.64, cubic=True)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
@pytest.mark.backend("chgnet")
def test_k_is_a_positive_integer(small_setup, k):
    _, bank, _, _ = small_setup
    with pytest.raises(InputError, match=r"k \(nearest neighbours\) must be an integer >= 1"):
        AtypicalMonitor(bank, k=k)
    with pytest.raises(InputError, match=r"k \(nearest neighbours\) must be an integer >= 1"):
        ForceErrorModel(bank, k=k)


@pytest.mark.backend("chgnet")
def test_threshold_and_watcher_misuse_are_named(small_setup):
    _, bank, _, _ = small_setup
    with pytest.raises(InputError, match="threshold must be a finite number, got nan"):
        AtypicalMonitor(bank, threshold=float("nan"))
    with pytest.raises(InputError, match="Watcher takes Monitor instances, got 'atypical'"):
        Watcher(["atypical"])
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.calc = EMT()
    dyn = VelocityVerlet(atoms, timestep=1.0)
    dyn.attach(Watcher([AtypicalMonitor(bank)]), interval=1, atoms=atoms)
    with pytest.raises(InputError, match="EMT has none: attach a PlatonicCalculator"):
        dyn.run(1)


@pytest.mark.backend("chgnet")
def test_projected_columns_of_another_projection_are_named(small_setup, chgnet_backend):
    anchors, bank, _, _ = small_setup
    mon = AtypicalMonitor(bank, space="projected")
    atoms = _nacl()
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection="paper")
    z = atoms.calc.get_platonic(atoms)
    assert z.shape[1] != bank.projector.n_columns
    frame = Frame(step=0, atoms=atoms, platonic=z, embeddings=atoms.calc.results["embeddings"])
    with pytest.raises(InputError, match="different anchor sets or projections"):
        mon.score(frame)


@pytest.mark.backend("chgnet")
def test_python_run_settings_are_checked_before_anything_runs(small_setup, chgnet_backend,
                                                              tmp_path):
    """temperature_K=-5 started a run that failed with 'non-finite positions'."""
    anchors, _, _, _ = small_setup
    atoms = _nacl()
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors)
    for kw, name in [({"temperature_K": -5.0}, "temperature_K must be a finite number >= 0"),
                     ({"timestep_fs": 0.0}, "timestep_fs must be a finite number > 0"),
                     ({"steps": -1}, "steps must be an integer >= 0"),
                     ({"pressure_GPa": float("inf")}, "pressure_GPa must be a finite number")]:
        with pytest.raises(InputError, match=name):
            run_md(atoms, [], tmp_path / "run", **{"steps": 2, **kw}, progress=False)
        assert not (tmp_path / "run").exists()


@pytest.mark.backend("chgnet")
def test_force_error_model_inputs_are_checked(small_setup):
    _, bank, _, _ = small_setup
    n = 8
    rng = np.random.default_rng(0)
    feats = bank.embeddings[:n]
    numbers = bank.numbers[:n]
    forces = rng.normal(size=(n, 3))
    dft = forces + 0.1
    dft[3, 1] = np.nan
    model = ForceErrorModel(bank, terms=("force",))
    with pytest.raises(InputError, match=r"dft_forces are NaN or inf at atom rows \[3\]"):
        model.fit(feats, forces, dft, numbers, np.arange(n) // 2)
    with pytest.raises(InputError, match="numbers must be atomic numbers"):
        model._inputs(feats, forces, np.array(["Na"] * n))
    bad = forces.copy()
    bad[5] = np.nan
    with pytest.raises(InputError, match=r"forces are NaN or inf at atoms \[5\]"):
        model._inputs(feats, bad, numbers)


@pytest.mark.backend("chgnet")
def test_anchors_calculator_and_projector_misuse_are_named(chgnet_backend):
    with pytest.raises(InputError, match="anchors must be an AnchorSet.*got list"):
        PlatonicCalculator(chgnet_backend, anchors=[1, 2])
    # a shipped set's name, as the message says and the CLI takes (was "file not found")
    assert PlatonicCalculator(chgnet_backend, anchors="mp20").anchors.hash == \
        AnchorSet.named("mp20").hash
    with pytest.raises(InputError, match=r"anchor atom index 0.5 of Cl4Na4 is not an integer"):
        AnchorSet.from_atoms([(_nacl(), 0.5)])  # was truncated to atom 0
    with pytest.raises(RuntimeError, match="Projector is not fitted"):
        Projector("element").get_state()


def test_bootstrap_needs_resamples():
    with pytest.raises(InputError, match="n_boot must be an integer >= 1, got 0"):
        bootstrap_interval(np.ones(5), n_boot=0)


@pytest.mark.backend("chgnet")
def test_overlapping_atoms_are_named_when_the_model_returns_nan(chgnet_backend):
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    atoms.positions[1] = atoms.positions[0]
    try:
        chgnet_backend.compute(atoms)
    except InvalidStructureError as err:
        assert "closest atoms, 0 and 1, are 0 Å apart (overlapping atoms?)" in str(err)
    else:  # the model gave finite output for this overlap: nothing to name
        pytest.skip("CHGNet returned finite features for overlapping atoms here")


@pytest.mark.backend("mace")
def test_mace_file_that_is_not_a_model_is_named(tmp_path):
    from platoscope.backends import load_backend

    junk = tmp_path / "junk.model"
    junk.write_text("not a model\n" * 50)
    with pytest.raises(BackendUnavailableError, match="is not a MACE model file"):
        load_backend(f"mace:{junk}")
