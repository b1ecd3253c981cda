"""Monitored runs end to end with CHGNet: outputs, restart, kill safety, report, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write
from click.testing import CliRunner

from platoscope import AnchorSet, PlatonicCalculator
from platoscope.cli import main
from platoscope.errors import ConfigError, InputError, SimulationError
from platoscope.monitors.atypical import AtypicalMonitor
from platoscope.monitors.base import Monitor
from platoscope.monitors.symmetry import SymmetryMonitor
from platoscope.report import make_report
from platoscope.runner import run_md, run_relax
from platoscope.writers import read_events, read_sidecar

pytestmark = pytest.mark.backend("chgnet")


def nacl():
    return bulk("NaCl", "rocksalt", a=5.64, cubic=True)


def test_md_writes_every_output(small_setup, chgnet_backend, tmp_path):
    anchors, bank, *_ = small_setup
    atoms = nacl()
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    res = run_md(atoms, [AtypicalMonitor(bank, quantile=0.99)], tmp_path, steps=6,
                 temperature_K=300, progress=False)
    assert res["status"] == "completed"
    frames = read(tmp_path / "frames.extxyz", ":")
    assert [f.info["step"] for f in frames] == list(range(7))
    assert frames[-1].arrays["platonic"].shape == (8, bank.projector.n_columns)
    assert frames[-1].arrays["score_atypical"].shape == (8,)
    # the model's own |F| beside the atypicality score, in both files
    np.testing.assert_allclose(frames[-1].arrays["score_atypical_force"],
                               np.linalg.norm(frames[-1].get_forces(), axis=1), rtol=1e-6)
    side = read_sidecar(tmp_path / "frames.h5")
    assert side.n_frames == 7 and side.closed_cleanly
    fr = side.frame(-1)
    np.testing.assert_allclose(fr["platonic"], frames[-1].arrays["platonic"], atol=1e-7)
    assert fr["embeddings"].shape == (8, 64) and fr["forces"].shape == (8, 3)
    np.testing.assert_allclose(fr["scores"]["atypical_force"],
                               np.linalg.norm(fr["forces"], axis=1), rtol=1e-12)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed"
    prov = summary["provenance"]
    assert prov["model"] == "chgnet:0.3.0" and prov["anchor_set_hash"] == anchors.hash
    assert len(prov["weights_sha256"]) == 64 and "torch" in summary["versions"]
    mon = summary["monitoring"]["monitors"][0]
    assert mon["expected_false_alarm_rate"] == pytest.approx(0.01)
    assert set(mon["element_thresholds"]) == {"Na", "Cl", "K", "Br"}
    assert mon["space"] == "raw"


def test_a_cell_blown_up_by_the_barostat_is_named(small_setup, chgnet_backend, tmp_path):
    """npt at -1e9 GPa scaled the cell by ~1e15 in one step and the model's neighbour list
    asked for petabytes: a MemoryError traceback. The run now stops with the step and the
    cell's growth named, and its record says so."""
    anchors, bank, *_ = small_setup
    atoms = nacl()
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    with pytest.raises(SimulationError, match=r"MD step 1: the model ran out of memory; the "
                       r"cell volume is .* x the starting 179 Å\^3: the dynamics blew the cell "
                       r"up \(npt: check the pressure, in GPa"):
        run_md(atoms, [], tmp_path, steps=3, ensemble="npt", pressure_GPa=-1e9, progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "SimulationError: MD step 1" in summary["error"]


def test_the_last_md_step_is_written_whatever_the_interval(small_setup, chgnet_backend,
                                                           tmp_path):
    """interval 2 over 5 steps wrote steps 0, 2, 4: the run's final structure was lost while
    summary.json said last_step 5 (and a restart went on from step 4's frame)."""
    anchors, bank, *_ = small_setup
    atoms = nacl()
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    res = run_md(atoms, [], tmp_path, steps=5, interval=2, progress=False)
    assert res["last_step"] == 5 and res["frames_written"] == 4
    assert [f.info["step"] for f in read(tmp_path / "frames.extxyz", ":")] == [0, 2, 4, 5]
    assert read_sidecar(tmp_path / "frames.h5").n_frames == 4
    atoms = nacl()
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    # an event of a step after the last frame (Ctrl-C between a step's events and its frame)
    # belongs to a trajectory the restart does not follow: dropped, not counted
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('{"step": 7, "monitor": "atypical", "atoms": [0], "score": 1.0, '
                 '"threshold": 0.5, "action": "record"}\n')
    res = run_md(atoms, [], tmp_path, steps=9, interval=2, progress=False, restart=True)
    assert [f.info["step"] for f in read(tmp_path / "frames.extxyz", ":")] == [0, 2, 4, 5, 6,
                                                                                8, 9]
    assert len(read_events(tmp_path)) == 0 and res["monitoring"]["n_events"] == 0


def test_langevin_friction_is_per_fs():
    """--friction is documented in 1/fs; ASE's Langevin takes it per ASE time unit."""
    from ase import units

    from platoscope.runner import make_dynamics

    dyn = make_dynamics(nacl(), ensemble="nvt", timestep_fs=1.0, temperature_K=300,
                        friction=0.02)
    assert dyn.fr * units.fs == pytest.approx(0.02, rel=1e-12)


def test_temperature_ramp(small_setup, chgnet_backend, tmp_path):
    """--temperature-end: the thermostat target moves linearly; a crystal at rest at 0 K stays
    at rest without the ramp and is heated with it; recorded in the run config; nve refused."""
    from platoscope.runner import ramp_temperature

    assert ramp_temperature(0, 10, 300, 4000) == 300
    assert ramp_temperature(5, 10, 300, 4000) == pytest.approx(2150)
    assert ramp_temperature(10, 10, 300, 4000) == 4000 == ramp_temperature(12, 10, 300, 4000)
    assert ramp_temperature(5, 10, 300, None) == 300
    anchors, bank, *_ = small_setup
    kinetic = {}
    for end in (None, 3000.0):
        atoms = nacl()
        atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors,
                                        projection=bank.projector)
        out = tmp_path / str(end)
        run_md(atoms, [], out, steps=8, temperature_K=0.0, temperature_end_K=end,
               friction=0.1, progress=False)
        kinetic[end] = atoms.get_kinetic_energy()
        config = json.loads((out / "summary.json").read_text())["config"]
        assert config.get("temperature_end_K") == end
    assert kinetic[None] < 1e-6 < 0.01 < kinetic[3000.0]  # eV
    atoms = nacl()
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    with pytest.raises(InputError, match="needs a thermostat"):
        run_md(atoms, [], tmp_path / "nve", steps=2, ensemble="nve", temperature_end_K=500.0,
               progress=False)
    # a restart that adds or drops the ramp, or stretches it over more steps, is refused (the
    # record showed one smooth ramp while the target had jumped from 3000 K to 638 K)
    for end, steps, named in ((None, 12, "temperature_end_K"), (3000.0, 12, "steps"),
                              ("drop", 8, "temperature_end_K")):
        atoms = nacl()
        atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors,
                                        projection=bank.projector)
        out = tmp_path / ("3000.0" if end == "drop" else str(end))
        given = None if end == "drop" else (3000.0 if end is None else end)
        with pytest.raises(ConfigError, match=rf"cannot restart.*{named} \(recorded"):
            run_md(atoms, [], out, steps=steps, temperature_K=0.0, temperature_end_K=given,
                   friction=0.1, progress=False, restart=True)
    with pytest.raises(InputError, match="seed"):
        run_md(atoms, [], tmp_path / "seed", steps=2, seed=-1, progress=False)


def test_distorted_frame_raises_event_and_stop(small_setup, chgnet_backend, tmp_path):
    anchors, bank, *_ = small_setup
    atoms = nacl()
    atoms.positions[0] += [1.3, 0.2, 0.0]  # Na pushed onto a neighbour: far from the bank
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    res = run_relax(atoms, [AtypicalMonitor(bank, action="stop")], tmp_path, steps=20,
                    progress=False)
    assert res["status"] == "stopped"
    ev = read_events(tmp_path / "events.jsonl").events
    assert ev[0]["step"] == 0 and ev[0]["monitor"] == "atypical" and ev[0]["atoms"][0] == 0
    assert ev[0]["score"] > ev[0]["threshold"] and ev[0]["action"] == "stop"
    assert read_sidecar(tmp_path / "frames.h5").n_frames == 1  # the offending frame is kept
    paths = make_report(tmp_path)
    names = {p.name for p in paths}
    assert {"worst_score.png", "scores_by_element.png", "report.txt"} <= names
    text = (tmp_path / "report.txt").read_text()
    assert "status: stopped" in text and "first at step 0: atoms [0" in text


def test_failing_monitor_is_logged_not_fatal(small_setup, chgnet_backend, tmp_path):
    anchors, bank, *_ = small_setup

    class Broken(AtypicalMonitor):
        name = "broken"

        def score(self, frame):
            raise RuntimeError("boom")

    atoms = nacl()
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    res = run_md(atoms, [Broken(bank), AtypicalMonitor(bank)], tmp_path, steps=2,
                 progress=False)
    assert res["status"] == "completed"
    errs = res["monitoring"]["monitor_errors"]
    assert len(errs) == 3 and "boom" in errs[0]["error"]
    atoms2 = nacl()
    atoms2.calc = atoms.calc
    with pytest.raises(RuntimeError, match="boom"):
        run_md(atoms2, [Broken(bank)], tmp_path / "strict", steps=2, strict=True,
               progress=False)
    assert json.loads((tmp_path / "strict" / "summary.json").read_text())["status"] == "failed"


def _cli_md(tmp_path, anchors_path, bank_path, out, steps, *extra):
    structure = tmp_path / "nacl.cif"
    write(structure, nacl())
    return [sys.executable, "-m", "platoscope.cli", "md", str(structure), "--model", "chgnet",
            "--anchors", str(anchors_path), "--reference", str(bank_path), "--steps",
            str(steps), "--temperature", "300", "--out", str(out), "--no-report", *extra]


def test_sigkill_mid_run_then_restart(small_setup, tmp_path):
    _, _, anchors_path, bank_path = small_setup
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    mon = ("--monitor", "atypical,symmetry")
    proc = subprocess.Popen(_cli_md(tmp_path, anchors_path, bank_path, out, 400, *mon), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            if read_sidecar(out / "frames.h5").n_frames >= 5:
                break
        except Exception:
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    side = read_sidecar(out / "frames.h5")
    n = side.n_frames
    assert n >= 5
    steps = list(side.steps)
    assert steps == list(range(n))
    before = [side.frame(i) for i in range(n)]
    for fr in before:
        assert np.isfinite(fr["platonic"]).all() and fr["platonic"].shape[0] == 8
    side.close()
    assert json.loads((out / "summary.json").read_text())["status"] == "running"
    # standard tools refuse the killed writer's file until `platoscope repair` rewrites it
    with pytest.raises(OSError):
        h5py.File(out / "frames.h5", "r")
    rep = subprocess.run([sys.executable, "-m", "platoscope.cli", "repair", str(out)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0 and f"repaired, {n} committed frames kept" in rep.stdout, rep
    with h5py.File(out / "frames.h5", "r") as f:
        assert int(f["n_frames_committed"][()]) == n
    with read_sidecar(out / "frames.h5") as side:
        assert side.closed_cleanly and side.n_frames == n
        for i, fr in enumerate(before):
            after = side.frame(i)
            for key in ("positions", "embeddings", "platonic", "forces"):
                np.testing.assert_array_equal(after[key], fr[key], err_msg=f"{i} {key}")
    again = subprocess.run([sys.executable, "-m", "platoscope.cli", "repair", str(out)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    done = subprocess.run(_cli_md(tmp_path, anchors_path, bank_path, out, n + 3, "--restart",
                                  *mon), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    side = read_sidecar(out / "frames.h5")
    last_extxyz = read(out / "frames.extxyz", ":")[-1].info["step"]
    assert side.steps[-1] == n + 3 == last_extxyz
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed"
    # the symmetry reference is the original perfect rock salt, not the thermal restart frame
    sym = next(m for m in summary["monitoring"]["monitors"] if m["name"] == "symmetry")
    assert sym["spacegroup"] == 225 and len(sym["classes"]) == 2
    # outputs state what this run measured; studies elsewhere are a marked documentation link
    assert "false_alarm_evidence" not in sym and "not in this run" in sym["documentation"]


def test_restart_keeps_the_original_symmetry_reference(small_setup, chgnet_backend, tmp_path):
    """A restarted MD continues from a thermal frame (no symmetry left), but its symmetry
    monitor takes the run's original first frame as reference: the same classes, noise and
    threshold as the first run's monitor."""
    from platoscope.symmetry import analyse_symmetry

    anchors, bank, *_ = small_setup
    calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    first, again = SymmetryMonitor(), SymmetryMonitor()
    for mon, steps, restart in ((first, 3, False), (again, 5, True)):
        atoms = nacl()
        atoms.calc = calc
        res = run_md(atoms, [mon], tmp_path, steps=steps, temperature_K=300, restart=restart,
                     progress=False)
        assert res["status"] == "completed"
    thermal = read(tmp_path / "frames.extxyz", index=3)
    assert analyse_symmetry(thermal).spacegroup != 225
    assert again.info_.spacegroup == first.info_.spacegroup == 225
    np.testing.assert_array_equal(again.classes_, first.classes_)
    # the same reference frame re-evaluated: equal up to the model's float32 noise, far below
    # what a thermal frame as reference would give
    assert again.noise_ == pytest.approx(first.noise_, rel=0.05, abs=1e-9)
    assert again.threshold == pytest.approx(first.threshold, rel=0.05)
    np.testing.assert_allclose(again.reference.positions, nacl().positions, atol=1e-9)
    np.testing.assert_allclose(again.displacements(thermal), first.displacements(thermal))
    summary = json.loads((tmp_path / "summary.json").read_text())
    sym = next(m for m in summary["monitoring"]["monitors"] if m["name"] == "symmetry")
    assert sym["atom_classes"] == first.classes_.tolist()
    assert "symmetry_spread.png" in {p.name for p in make_report(tmp_path)}


def test_cli_monitor_trajectory_and_report(small_setup, chgnet_backend, tmp_path):
    _, _, anchors_path, bank_path = small_setup
    frames = []
    for s in range(5):
        a = nacl()
        a.rattle(0.02 + 0.1 * (s == 3), seed=s)
        frames.append(a)
    traj = tmp_path / "in.extxyz"
    write(traj, frames)
    with open(traj, "a") as fh:  # a truncated frame at the end, as a killed writer leaves
        fh.write('8\nLattice="5.64 0 0 0 5.64 0 0 0 5.64" Properties=species:S:1:pos:R:3\n'
                 "Na 0 0\n")
    out = tmp_path / "mon"
    res = CliRunner().invoke(main, [
        "monitor", str(traj), "--model", "chgnet", "--anchors", str(anchors_path),
        "--reference", str(bank_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "frame 5" in res.output  # the bad frame is named
    got = read(out / "frames.extxyz", ":")
    assert [f.info["step"] for f in got] == [0, 1, 2, 3, 4]
    worst = [f.arrays["score_atypical"].max() for f in got]
    assert int(np.argmax(worst)) == 3
    assert (out / "worst_score.png").is_file() and (out / "report.txt").is_file()


def test_cli_errors_are_clear(small_setup, tmp_path):
    _, _, anchors_path, bank_path = small_setup
    structure = tmp_path / "nacl.cif"
    write(structure, nacl())
    r = CliRunner().invoke(main, ["md", str(structure), "--monitor", "atypical,nosuch",
                                  "--anchors", str(anchors_path), "--reference", str(bank_path),
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "unknown monitor 'nosuch'" in r.output
    r = CliRunner().invoke(main, ["md", str(structure), "--model", "foo:bar", "--out",
                                  str(tmp_path / "y")])
    assert r.exit_code != 0 and "unknown backend spec 'foo:bar'" in r.output
    r = CliRunner().invoke(main, ["monitor", str(structure), "--index", "10:", "--out",
                                  str(tmp_path / "i")])  # was "no readable frame"
    assert r.exit_code == 1 and f"--index 10: selects no frame of {structure}" in r.output
    # --overwrite clears a previous run only once the new one can start: a typo kept it
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "summary.json").write_text("{}")
    (previous / "frames.h5").write_bytes(b"a day's run")
    for bad in (["--model", "chgnt"], ["--anchors", str(tmp_path / "nope.npz")]):
        r = CliRunner().invoke(main, ["md", str(structure), *bad, "--overwrite", "--out",
                                      str(previous)])
        assert r.exit_code != 0 and sorted(p.name for p in previous.iterdir()) == [
            "frames.h5", "summary.json"], r.output
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    r = CliRunner().invoke(main, ["md", str(structure), "--anchors", str(bad), "--out",
                                  str(tmp_path / "z")])
    assert r.exit_code != 0 and "bad.npz" in r.output


@pytest.mark.backend("sevenn")
def test_cli_refuses_a_second_model_lacking_an_element(small_setup, tmp_path):
    """alpha-Po: CHGNet runs it, SevenNet-0 has no Po; bias and switch say so before the run."""
    from ase import Atoms

    _, _, anchors_path, bank_path = small_setup
    structure = tmp_path / "po.cif"
    write(structure, Atoms("Po", cell=[3.35] * 3, pbc=True))
    for name in ("bias", "switch"):
        out = tmp_path / name
        r = CliRunner().invoke(main, ["md", str(structure), "--model", "chgnet", "--anchors",
                                      str(anchors_path), "--reference", str(bank_path),
                                      "--monitor", f"{name}:sevenn:7net-0", "--out", str(out)])
        assert r.exit_code != 0
        assert (f"UnsupportedElementError: {name} monitor: the second model 'sevenn:7net-0' "
                "has no parameters for element(s) Po (Z=84)") in r.output
        assert not (out / "frames.extxyz").exists()


# --------------------------------------------------------------------------------------------
# compact outputs: coordinates derived from the embeddings in frames.h5
# --------------------------------------------------------------------------------------------

class _Spy(Monitor):
    """Keeps a copy of the calculator's coordinates of every frame; scores nothing."""

    name = "spy"

    def __init__(self):
        super().__init__(threshold=1.0)
        self.coords: list = []

    def score(self, frame):
        self.coords.append(frame.platonic.copy())  # ndarray, or CSR (element projection)
        return np.zeros(len(frame.atoms))


def _within_contract(a, b) -> bool:
    """Equal within the projection's reproducibility contract (not bit patterns)."""
    from platoscope.coords import as_coords, max_abs_diff
    from platoscope.projection import TOLERANCE

    if not (a.dtype == b.dtype == np.float64):  # dense or sparse (element projection: CSR)
        return False
    a, b = as_coords(a), as_coords(b)
    return a.shape == b.shape and max_abs_diff(a, b) <= TOLERANCE


def test_md_derived_coords_are_the_calculators(small_setup, chgnet_backend, tmp_path):
    from platoscope.runner import PLATONIC_DERIVED, monitor_frames

    anchors, bank, *_ = small_setup
    spies = [_Spy(), _Spy()]
    for spy, steps, restart in ((spies[0], 3, False), (spies[1], 5, True)):
        atoms = nacl()
        atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors,
                                        projection=bank.projector)
        res = run_md(atoms, [spy], tmp_path, steps=steps, progress=False, restart=restart,
                     store_coords="never")
        assert res["status"] == "completed"
    frames = read(tmp_path / "frames.extxyz", ":")
    assert [f.info["step"] for f in frames] == list(range(6))
    assert all("platonic" not in f.arrays and f.info["platonic_source"] == PLATONIC_DERIVED
               for f in frames)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["platonic_source"] == PLATONIC_DERIVED
    calc_coords = spies[0].coords + spies[1].coords  # the restart does not redo step 3
    with read_sidecar(tmp_path / "frames.h5") as side:
        assert "platonic" not in side.fields and len(side) == len(calc_coords) == 6
        for i, z in enumerate(calc_coords):
            assert _within_contract(side.frame(i)["platonic"], z), i
        assert _within_contract(side.to_atoms(-1).arrays["platonic"], calc_coords[-1])
    make_report(tmp_path)
    assert "coordinates: frames.h5 (derived" in (tmp_path / "report.txt").read_text()

    # trajectory post-processing (batched embeddings) writes the same way
    traj = [f.copy() for f in frames[:3]]
    spy = _Spy()
    monitor_frames(traj, atoms.calc, [spy], tmp_path / "mon", progress=False,
                   store_coords="never")
    with read_sidecar(tmp_path / "mon" / "frames.h5") as side:
        assert "platonic" not in side.fields
        for i, z in enumerate(spy.coords):
            assert _within_contract(side.frame(i)["platonic"], z), i
    atoms = nacl()
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    with pytest.raises(ValueError, match="no-embeddings"):
        run_md(atoms, [], tmp_path / "x", steps=1, embeddings=False, store_coords="never")
    assert not (tmp_path / "x").exists()


def _count_projections(monkeypatch):
    """Wraps the real ``Projector._transform`` (every transform and transform_with_coverage
    goes through it); returns the list of projectors it was called on, one entry a call."""
    from platoscope.projection import Projector

    calls: list = []
    real = Projector._transform

    def counted(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Projector, "_transform", counted)
    return calls


def test_md_and_relax_project_each_frame_once(small_setup, chgnet_backend, tmp_path,
                                               monkeypatch):
    """run_md/run_relax with a PlatonicCalculator and derived coordinates: the recorder no
    longer re-projects every frame's embeddings to check what the calculator's projector (the
    one stored) already gave; frames.h5 still derives the calculator's coordinates."""
    anchors, bank, *_ = small_setup
    calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    calls = _count_projections(monkeypatch)
    for kind in ("md", "relax"):
        calls.clear()
        atoms = nacl()
        atoms.rattle(0.05, seed=1)
        atoms.calc = calc
        spy = _Spy()
        if kind == "md":
            run_md(atoms, [spy], tmp_path / kind, steps=3, progress=False, store_coords="never")
        else:
            run_relax(atoms, [spy], tmp_path / kind, steps=3, progress=False,
                      store_coords="never")
        assert len(spy.coords) >= 2
        # one projection per calculation, all by the calculator's own projector
        assert len(calls) == len(spy.coords) and all(p is calc.projector for p in calls), kind
        with read_sidecar(tmp_path / kind / "frames.h5") as side:
            assert "platonic" not in side.fields and len(side) == len(spy.coords)
            for i, z in enumerate(spy.coords):
                assert _within_contract(side.frame(i)["platonic"], z), (kind, i)


def test_a_switching_run_still_checks_derived_coordinates(small_setup, chgnet_backend,
                                                          tmp_path, monkeypatch):
    """A SwitchingCalculator's projector changes at the switch: its frames are still checked
    against the stored projector, and those it does not give keep their coordinates."""
    from platoscope.projection import Projector
    from platoscope.switching import SwitchingCalculator

    anchors, bank, *_ = small_setup
    a = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    b = PlatonicCalculator(chgnet_backend, anchors=anchors,  # same width, another kernel
                           projection=Projector("element", tau=0.05))
    calls = _count_projections(monkeypatch)
    atoms = nacl()
    atoms.calc = SwitchingCalculator(a, b, rule=2)
    spy = _Spy()
    with pytest.warns(RuntimeWarning, match="differ from those its embeddings give"):
        run_md(atoms, [spy], tmp_path, steps=3, progress=False, store_coords="never")
    assert len(calls) > len(spy.coords)  # the recorder's checks: projections of its own
    with read_sidecar(tmp_path / "frames.h5") as side:
        assert "platonic" in side.fields and len(side) == len(spy.coords) == 4
        for i, z in enumerate(spy.coords):
            assert _within_contract(side.frame(i)["platonic"], z), i


def test_large_k_run_is_compact(chgnet_backend, tmp_path):
    """K > STORE_COORDS_MAX_K: by default no file stores coordinates per frame; they read back
    from frames.h5 within projection.TOLERANCE, and the files shrink by N x K floats a frame."""
    from platoscope import runner

    structs = []
    for s in range(40):
        formula, a0 = [("NaCl", 5.64), ("KCl", 6.29)][s % 2]
        a = bulk(formula, "rocksalt", a=a0 * (0.97 + 0.0015 * s), cubic=True)
        a.rattle(0.05, seed=100 + s)
        structs.append(a)
    big = AnchorSet.from_atoms([(a, j) for a in structs for j in range(8)])
    k = len(big)
    assert k > runner.STORE_COORDS_MAX_K
    calc = PlatonicCalculator(chgnet_backend, anchors=big)  # the default projection
    sizes, n_frames = {}, 4
    for mode in ("auto", "always"):
        atoms = nacl().repeat((2, 1, 1))
        atoms.calc = calc
        spy = _Spy()
        run_md(atoms, [spy], tmp_path / mode, steps=n_frames - 1, progress=False,
               store_coords=mode)
        sizes[mode] = {name: (tmp_path / mode / name).stat().st_size
                       for name in ("frames.extxyz", "frames.h5")}
        frames = read(tmp_path / mode / "frames.extxyz", ":")
        assert ("platonic" in frames[-1].arrays) == (mode == "always")
        with read_sidecar(tmp_path / mode / "frames.h5") as side:
            assert ("platonic" in side.fields) == (mode == "always")
            assert len(side) == len(spy.coords) == n_frames
            for i, z in enumerate(spy.coords):
                assert z.shape == (16, calc.projector.n_columns), i
                assert _within_contract(side.frame(i)["platonic"], z), i
    assert sizes["auto"]["frames.extxyz"] < 0.05 * sizes["always"]["frames.extxyz"], sizes
    coord_bytes = n_frames * 16 * k * 8
    assert sizes["always"]["frames.h5"] - sizes["auto"]["frames.h5"] >= 0.9 * coord_bytes, sizes


def test_cli_store_coords_option(small_setup, tmp_path):
    _, _, anchors_path, bank_path = small_setup
    structure = tmp_path / "nacl.cif"
    write(structure, nacl())
    base = ["relax", str(structure), "--model", "chgnet", "--anchors", str(anchors_path),
            "--reference", str(bank_path), "--steps", "2", "--no-report"]
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "a"), "--store-coords",
                                  "never"])
    assert r.exit_code == 0, r.output
    assert "platonic" not in read(tmp_path / "a" / "frames.extxyz", 0).arrays
    with read_sidecar(tmp_path / "a" / "frames.h5") as side:
        # 18 anchors and R = min(128, K) = 18 global-block columns, derived, not stored
        assert "platonic" not in side.fields and side.frame(0)["platonic"].shape == (8, 36)
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "b"), "--store-coords",
                                  "never", "--no-embeddings"])
    assert r.exit_code != 0 and "no-embeddings" in r.output
    r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "c"), "--store-coords", "x"])
    assert r.exit_code != 0 and "'x' is not one of" in r.output


def test_report_axes_say_quantity_and_unit(small_setup, chgnet_backend, tmp_path, monkeypatch):
    """Every plot of a report has labelled axes with units and integer step ticks; the score
    units reach frames.h5 too."""
    import matplotlib.figure

    anchors, bank, *_ = small_setup
    atoms = nacl()
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    run_md(atoms, [AtypicalMonitor(bank), SymmetryMonitor()], tmp_path, steps=3,
           temperature_K=300, progress=False)
    seen = {}
    real = matplotlib.figure.Figure.savefig

    def spy(fig, path, *a, **kw):
        seen[Path(path).name] = [(ax.get_xlabel(), ax.get_ylabel(), ax.get_title(),
                                  list(ax.get_xticks())) for ax in fig.axes]
        return real(fig, path, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    make_report(tmp_path)
    assert {"worst_score.png", "scores_by_element.png", "symmetry_spread.png",
            "energy.png"} <= set(seen)
    for name, axes in seen.items():
        for xlabel, ylabel, title, ticks in axes:
            assert xlabel and ylabel and title, (name, xlabel, ylabel, title)
            if xlabel == "step":
                assert all(float(t).is_integer() for t in ticks), (name, ticks)
    by_el = dict((ax[2].split(":")[0], ax[1]) for ax in seen["scores_by_element.png"])
    assert "model units" in by_el["monitor atypical"]
    assert "Platonic" in seen["symmetry_spread.png"][0][1]
    assert "eV/atom" in seen["energy.png"][0][1] and "chgnet" in seen["energy.png"][0][2]
    with h5py.File(tmp_path / "frames.h5", "r") as f:
        assert f["scores/atypical_force/data"].attrs["units"] == "eV/Å"
        assert "Platonic" in f["scores/symmetry/data"].attrs["units"]


def test_monitor_projects_a_chunk_as_its_frames_alone(monkeypatch):
    """monitor_frames projects a chunk's stacked rows in one call (in groups for dense
    outputs): each frame's coordinates and coverage equal its own projection within the
    contract; a frame without features gets None, and one that cannot be projected gets its
    error (raised when the run reaches it) without costing the other frames theirs."""
    from ase import Atoms

    from platoscope import runner
    from platoscope.coords import dense_rows
    from platoscope.projection import TOLERANCE, Projector

    rng = np.random.default_rng(0)
    a, za = rng.normal(size=(300, 16)), rng.choice([1, 8, 26], 300)
    sizes = [5, 0, 12, 7, 9]
    feats = [rng.normal(size=(n, 16)) if n else None for n in sizes]
    chunk = [Atoms(numbers=rng.choice([1, 8, 26], max(n, 1)), positions=np.zeros((max(n, 1), 3)))
             for n in sizes]
    monkeypatch.setattr(runner, "PROJECT_BATCH_VALUES", 20 * 300)  # dense: groups of <= 20 rows
    for name in ("element", "shared"):
        proj = Projector(name).fit(a, anchor_numbers=za)
        out = runner._project_chunk(proj, chunk, feats)
        assert out[1] is None
        for j in (0, 2, 3, 4):
            z, cov = proj.transform_with_coverage(feats[j], chunk[j].numbers)
            np.testing.assert_allclose(dense_rows(out[j][0]), dense_rows(z), rtol=0,
                                       atol=TOLERANCE)
            np.testing.assert_allclose(out[j][1], cov, rtol=0, atol=TOLERANCE)
    proj = Projector("element").fit(a, anchor_numbers=za)
    bad = [*chunk[:3], Atoms(numbers=[3] * 7, positions=np.zeros((7, 3))), chunk[4]]  # no Li
    out = runner._project_chunk(proj, bad, feats)
    assert isinstance(out[3], InputError) and "Li" in str(out[3])
    assert out[1] is None and all(isinstance(out[j], tuple) for j in (0, 2, 4))


def test_monitor_stop_mid_chunk_writes_through_the_stopping_frame(small_setup, chgnet_backend,
                                                                  tmp_path):
    """monitor_frames commits a chunk's frames together: a stop in the middle of a chunk still
    leaves every frame up to the stopping one in frames.extxyz and frames.h5 (and none after)."""
    from platoscope.runner import monitor_frames

    anchors, bank, *_ = small_setup
    calc = PlatonicCalculator(chgnet_backend, anchors=anchors, projection=bank.projector)
    frames = []
    for s in range(6):
        a = nacl()
        a.rattle(0.02, seed=s)
        if s == 3:
            a.positions[0] += [1.3, 0.2, 0.0]  # far from the bank: the stop
        frames.append(a)
    res = monitor_frames(frames, calc, [AtypicalMonitor(bank, action="stop")], tmp_path / "m",
                         batch_size=4, progress=False)
    assert res["status"] == "stopped" and res["stopped_by"]["step"] == 3
    assert [f.info["step"] for f in read(tmp_path / "m" / "frames.extxyz", ":")] == [0, 1, 2, 3]
    with read_sidecar(tmp_path / "m" / "frames.h5") as side:
        assert side.steps.tolist() == [0, 1, 2, 3]
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["frames_written"] == 4
