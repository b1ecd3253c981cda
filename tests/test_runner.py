"""Monitored runs end to end with CHGNet: outputs, restart, kill safety, report, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ase.build import bulk
from ase.io import read, write
from click.testing import CliRunner

from platoscope import AnchorSet, PlatonicCalculator
from platoscope.cli import main
from platoscope.monitors.atypical import AtypicalMonitor
from platoscope.reference import ReferenceBank
from platoscope.report import make_report
from platoscope.runner import run_md, run_relax
from platoscope.writers import read_events, read_sidecar

pytestmark = pytest.mark.backend("chgnet")


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory, chgnet_backend):
    """A small anchor set and reference bank of rattled rock-salt crystals (fast to build)."""
    d = tmp_path_factory.mktemp("setup")
    structs = []
    for s in range(12):
        formula, a0 = [("NaCl", 5.64), ("KCl", 6.29), ("NaBr", 5.97)][s % 3]
        a = bulk(formula, "rocksalt", a=a0 * (0.98 + 0.004 * s), cubic=True)
        a.rattle(0.04, seed=s)
        structs.append(a)
    anchors = AnchorSet.from_atoms([(structs[i], j) for i in range(6) for j in (0, 1, 4)])
    bank = ReferenceBank.build(chgnet_backend, structs, anchors)
    anchors_path = anchors.save(d / "anchors.npz")
    bank_path = bank.save(d / "bank.npz")
    return anchors, bank, anchors_path, bank_path


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
    assert frames[-1].arrays["platonic"].shape == (8, len(anchors))
    assert frames[-1].arrays["score_atypical"].shape == (8,)
    side = read_sidecar(tmp_path / "frames.h5")
    assert side.n_frames == 7 and side.closed_cleanly
    fr = side.frame(-1)
    np.testing.assert_allclose(fr["platonic"], frames[-1].arrays["platonic"], atol=1e-7)
    assert fr["embeddings"].shape == (8, 64) and fr["forces"].shape == (8, 3)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed"
    prov = summary["provenance"]
    assert prov["model"] == "chgnet:0.3.0" and prov["anchor_set_hash"] == anchors.hash
    assert len(prov["weights_sha256"]) == 64 and "torch" in summary["versions"]
    mon = summary["monitoring"]["monitors"][0]
    assert mon["expected_false_alarm_rate"] == pytest.approx(0.01)
    assert set(mon["element_thresholds"]) == {"Na", "Cl", "K", "Br"}


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
    proc = subprocess.Popen(_cli_md(tmp_path, anchors_path, bank_path, out, 400), env=env,
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
    for i in range(n):
        fr = side.frame(i)
        assert np.isfinite(fr["platonic"]).all() and fr["platonic"].shape[0] == 8
    side.close()
    assert json.loads((out / "summary.json").read_text())["status"] == "running"
    done = subprocess.run(_cli_md(tmp_path, anchors_path, bank_path, out, n + 3, "--restart"),
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    side = read_sidecar(out / "frames.h5")
    last_extxyz = read(out / "frames.extxyz", ":")[-1].info["step"]
    assert side.steps[-1] == n + 3 == last_extxyz
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


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
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    r = CliRunner().invoke(main, ["md", str(structure), "--anchors", str(bad), "--out",
                                  str(tmp_path / "z")])
    assert r.exit_code != 0 and "bad.npz" in r.output
