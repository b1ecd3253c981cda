"""Run records that cannot lie, and options checked where they are given (issue 13 items 1-7,
the Ctrl-C part of 10, the first part of 13): each test runs the real CLI with CHGNet."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from click.testing import CliRunner

from platoscope.cli import main
from platoscope.records import count_frames

pytestmark = pytest.mark.backend("chgnet")


def _nacl(distorted: bool = False):
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    if distorted:
        a.positions[0] += [1.3, 0.2, 0.0]  # Na pushed onto a neighbour: far from the bank
    return a


@pytest.fixture
def cli(small_setup, tmp_path):
    """Invoke ``platoscope <command> ...`` with the small anchors and bank; returns the result."""
    _, _, anchors_path, bank_path = small_setup

    def invoke(command: str, *args: str):
        return CliRunner().invoke(main, [command, *args, "--model", "chgnet", "--anchors",
                                         str(anchors_path), "--reference", str(bank_path)])
    return invoke


def _structure(tmp_path, distorted=False):
    path = tmp_path / ("bad.extxyz" if distorted else "nacl.extxyz")
    write(path, _nacl(distorted))
    return str(path)


def _events(out):
    path = out / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
        if path.is_file() else []


def test_non_empty_out_is_refused_unless_overwrite(cli, tmp_path):
    out = tmp_path / "r"
    s = _structure(tmp_path, distorted=True)
    r = cli("md", s, "--steps", "2", "--out", str(out), "--no-report")
    assert r.exit_code == 0, r.output
    assert len(_events(out)) >= 1
    (out / "stale.png").write_text("from an earlier run")
    r = cli("md", _structure(tmp_path), "--steps", "1", "--out", str(out), "--no-report")
    assert r.exit_code != 0 and "not empty" in r.output and "--overwrite" in r.output
    assert "Traceback" not in r.output
    r = cli("md", _structure(tmp_path), "--steps", "1", "--out", str(out), "--overwrite",
            "--monitor", "none")
    assert r.exit_code == 0, r.output
    assert not (out / "stale.png").exists() and _events(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["monitoring"]["n_events"] == 0 and summary["frames_written"] == 2
    assert "events: 0" in (out / "report.txt").read_text()
    unrelated = tmp_path / "mine"
    unrelated.mkdir()
    (unrelated / "thesis.tex").write_text("keep me")
    r = cli("md", s, "--steps", "1", "--out", str(unrelated), "--overwrite")
    assert r.exit_code != 0 and "not a platoscope run folder" in r.output
    assert (unrelated / "thesis.tex").is_file()


def test_restart_refuses_changed_monitor_settings_and_file_contents(cli, tmp_path):
    """A restart with the same monitors but other settings (a threshold, the atypical space,
    what the run files hold) was accepted, and summary.json then gave the new settings for
    the whole run."""
    s = _structure(tmp_path)

    def check(run, out, base, changes):
        r = run("md", s, "--steps", "2", *base)
        assert r.exit_code == 0, r.output
        before = (out / "summary.json").read_text()
        for extra, named in changes:
            r = run("md", s, "--steps", "4", "--restart", *base, *extra)
            assert r.exit_code == 1 and named in r.output, (extra, r.output)
            assert "Traceback" not in r.output
            assert (out / "summary.json").read_text() == before  # nothing written
            assert count_frames(out) == 3
        r = run("md", s, "--steps", "4", "--restart", *base)  # the same settings continue
        assert r.exit_code == 0, r.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["frames_written"] == count_frames(out) == 5
        return {m["name"]: m["settings"] for m in summary["monitoring"]["monitors"]}

    out = tmp_path / "a"
    settings = check(cli, out, ["--out", str(out), "--no-report", "--monitor", "atypical"],
                     [(["--atypical-space", "projected"],
                       "atypical monitor space (recorded 'raw', given 'projected')"),
                      (["--no-embeddings", "--store-coords", "always"],
                       "embeddings (recorded True, given False)")])
    assert settings["atypical"]["space"] == "raw"

    def plain(command, *args):  # the shipped calibration needs the default bank
        return CliRunner().invoke(main, [command, *args, "--model", "chgnet"])

    out = tmp_path / "u"
    settings = check(plain, out, ["--out", str(out), "--no-report", "--monitor", "uncertainty"],
                     [(["--max-force-error", "0.01"],
                       "uncertainty monitor threshold (recorded 0.5, given 0.01)")])
    assert settings["uncertainty"]["threshold"] == 0.5


def test_restart_end_line_counts_every_segments_events(cli, tmp_path):
    """The console line after a restart counted only the last segment's events."""
    out = tmp_path / "r"
    s = _structure(tmp_path, distorted=True)
    base = ["--out", str(out), "--no-report", "--monitor", "atypical"]
    assert cli("md", s, "--steps", "2", *base).exit_code == 0
    r = cli("md", s, "--steps", "4", "--restart", *base)
    assert r.exit_code == 0, r.output
    n = len(_events(out))
    assert n > 1 and f"; {n} events" in r.output, r.output
    assert json.loads((out / "summary.json").read_text())["monitoring"]["n_events"] == n


def test_report_names_a_damaged_summary(cli, tmp_path):
    out = tmp_path / "r"
    assert cli("md", _structure(tmp_path), "--steps", "1", "--out", str(out),
               "--no-report").exit_code == 0
    (out / "summary.json").write_text("{")
    r = CliRunner().invoke(main, ["report", str(out)])
    assert r.exit_code == 1 and "summary.json is not valid JSON" in r.output, r.output
    assert "Traceback" not in r.output


def test_restart_refuses_changed_settings_and_counts_from_files(cli, tmp_path):
    out = tmp_path / "r"
    s = _structure(tmp_path)
    base = ["--out", str(out), "--temperature", "600", "--monitor", "atypical,symmetry"]
    assert cli("md", s, "--steps", "3", *base).exit_code == 0
    r = cli("md", s, "--steps", "5", "--restart", "--out", str(out), "--temperature", "2000",
            "--monitor", "none")
    assert r.exit_code != 0 and "temperature_K (recorded 600.0, given 2000.0)" in r.output
    assert "monitors" in r.output and "Traceback" not in r.output
    assert json.loads((out / "summary.json").read_text())["config"]["temperature_K"] == 600.0
    r = cli("md", s, "--steps", "5", "--restart", *base)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    frames = read(out / "frames.extxyz", ":")
    assert [f.info["step"] for f in frames] == list(range(6))
    assert summary["frames_written"] == count_frames(out) == 6
    assert summary["monitoring"]["n_events"] == len(_events(out))
    text = (out / "report.txt").read_text()
    assert "frames: 6" in text and f"events: {len(_events(out))}" in text
    # fewer total steps than already run: the summary said steps 3 for a run of 5 steps
    r = cli("md", s, "--steps", "3", "--restart", *base)
    assert r.exit_code == 1 and "with steps=3: it has already run 5 steps" in r.output, r.output
    assert json.loads((out / "summary.json").read_text())["config"]["steps"] == 5
    assert count_frames(out) == 6


def test_monitor_keeps_source_steps_skips_bad_frames_and_carries_forces(cli, tmp_path):
    frames = []
    for s in range(7):
        a = _nacl()
        a.rattle(0.02, seed=s)
        a.calc = SinglePointCalculator(a, energy=-1.0 - s, forces=np.full((len(a), 3), 0.1 * s))
        frames.append(a)
    frames[2].positions[0, 0] = np.nan
    traj = tmp_path / "in.extxyz"
    write(traj, frames)
    out = tmp_path / "mon"
    r = cli("monitor", str(traj), "--index", "::2", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "frame 2: NaN" in r.output
    got = read(out / "frames.extxyz", ":")
    assert [f.info["step"] for f in got] == [0, 4, 6]  # source indices, frame 2 left out
    assert got[1].get_potential_energy() == pytest.approx(-5.0)
    assert np.allclose(got[1].get_forces(), 0.4)
    assert np.allclose(got[1].arrays["score_atypical_force"], np.sqrt(3) * 0.4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["index"] == "::2" and summary["status"] == "completed"
    assert len(summary["skipped_frames"]) == 1 and "frame 2" in summary["skipped_frames"][0]
    text = (out / "report.txt").read_text()
    assert "skipped frames: 1" in text and "frame 2: NaN" in text
    r = cli("monitor", str(traj), "--out", str(tmp_path / "strict"), "--strict")
    assert r.exit_code != 0 and "frame 2" in r.output


def test_relaxation_not_converged_says_so(cli, tmp_path):
    out = tmp_path / "rx"
    r = cli("relax", _structure(tmp_path, distorted=True), "--steps", "2", "--fmax", "1e-6",
            "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "not converged after 2 steps, fmax" in r.output and "eV/Å" in r.output
    assert "status: completed" not in r.output
    text = (out / "report.txt").read_text()
    assert "status: not converged after 2 steps, fmax" in text


def test_action_stop_and_warn_read_cleanly(cli, tmp_path):
    out = tmp_path / "stop"
    bad = _structure(tmp_path, distorted=True)
    r = cli("md", bad, "--steps", "5", "--action", "stop", "--out", str(out))
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    steps = [f.info["step"] for f in read(out / "frames.extxyz", ":")]
    assert summary["status"] == "stopped" and summary["last_step"] == steps[-1]
    assert "stopped by monitor atypical at step" in r.output and "{" not in r.output
    assert "stopped by monitor atypical" in (out / "report.txt").read_text()
    r = cli("md", bad, "--steps", "1", "--action", "warn", "--out", str(tmp_path / "warn"),
            "--no-report")
    assert r.exit_code == 0, r.output
    assert re.search(r"warning: step 0: atypical score [\d.]+ > [\d.]+ on atoms \[0", r.output)
    assert "Warning" not in r.output and ".py:" not in r.output  # no category, no source line


@pytest.mark.parametrize(("command", "args", "option"), [
    ("md", ["--interval", "0"], "--interval"),
    ("md", ["--repeat", "2,2"], "--repeat"),
    ("md", ["--repeat", "0,1,1"], "--repeat"),
    ("md", ["--temperature", "-100"], "--temperature"),
    ("md", ["--timestep", "0"], "--timestep"),
    ("md", ["--steps", "-5"], "--steps"),
    ("md", ["--friction", "-1"], "--friction"),
    ("relax", ["--fmax", "0"], "--fmax"),
    ("relax", ["--steps", "0"], "--steps"),
    ("relax", ["--optimizer", "foo"], "--optimizer"),  # was refused only after the model loaded
    ("monitor", ["--batch-size", "0"], "--batch-size"),
    ("monitor", ["--index", "::0"], "--index"),
    ("monitor", ["--index", "x"], "--index"),
    # refused only after the second model's reference bank was built (minutes), as
    # 'interval must be >= 1' without the flag
    ("md", ["--monitor", "bias:chgnet:0.2.0", "--bias-interval", "0"], "--bias-interval"),
    ("monitor", ["--monitor", "bias:chgnet:0.2.0", "--bias-interval", "-3"], "--bias-interval"),
    ("md", ["--monitor", "switch:chgnet:0.2.0", "--switch-interval", "0"], "--switch-interval"),
    # recorded only step 0 and said completed
    ("md", ["--interval", "5", "--steps", "3"], "--interval"),
    # NaN and inf passed click's FloatRange: the run started and failed at its first step
    ("md", ["--temperature", "nan"], "--temperature"),
    ("md", ["--timestep", "inf"], "--timestep"),
    ("md", ["--pressure", "nan", "--ensemble", "npt"], "--pressure"),
    ("relax", ["--fmax", "nan"], "--fmax"),  # ran every step, "asked nan eV/Å"
    ("relax", ["--fmax", "inf"], "--fmax"),  # said completed after one step
])
def test_bad_option_is_named_at_parse_time(tmp_path, command, args, option):
    structure = _structure(tmp_path)
    r = CliRunner().invoke(main, [command, structure, *args, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert f"'{option}'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()  # nothing ran


@pytest.mark.parametrize("command", [["reference", "extend", "default"],
                                     ["anchors", "extend", "default"]])
def test_extend_index_is_checked_like_monitors(tmp_path, command):
    """``--index abc`` ended in a TypeError traceback from the reader."""
    r = CliRunner().invoke(main, [*command, _structure(tmp_path), "--index", "abc",
                                  "--out", str(tmp_path / "x.npz")])
    assert r.exit_code == 2 and "'--index'" in r.output and "is not an ASE index" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "x.npz").exists()


def test_ctrl_c_while_the_bank_builds_says_what_happened(small_setup, tmp_path, monkeypatch):
    """Ctrl-C (KeyboardInterrupt, as the terminal delivers it) during the reference-bank build
    of an anchor set without a shipped bank."""
    from platoscope.reference import ReferenceBank

    _, _, anchors_path, _ = small_setup

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ReferenceBank, "build", interrupted)
    # as for a model with no bank yet to take the reference embeddings from
    monkeypatch.setattr("platoscope.reference._reuse_embeddings", lambda *a, **k: None)
    r = CliRunner().invoke(main, ["md", _structure(tmp_path), "--anchors", str(anchors_path),
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 130
    assert "nothing was cached" in r.output and "Aborted" not in r.output


def test_progress_bar_names_atoms_unlike_cif_labels():
    from platoscope.monitors.base import Watcher
    from platoscope.runner import _postfix

    class Bar:
        text = ""

        def set_postfix_str(self, text, refresh=True):
            self.text = text

    watcher = Watcher([])
    watcher.worst = ("atypical", 1, 2.5)
    bar = Bar()
    _postfix(bar, watcher, _nacl())
    assert bar.text.startswith("worst atom 1 (Cl) atypical 2.50x thr")


def test_run_commands_take_a_projection_and_refuse_a_bank_of_another(small_setup, tmp_path):
    """``md --anchors mp20 --projection shared`` (the README's cross-element view) runs on the
    shipped shared bank and records the projection; a --reference bank of another projection is
    refused before anything runs, naming both."""
    _, _, anchors_path, bank_path = small_setup
    out = tmp_path / "shared"
    r = CliRunner().invoke(main, ["md", _structure(tmp_path), "--anchors", "mp20",
                                  "--projection", "shared", "--steps", "1", "--no-report",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["projection"] == "shared"
    assert summary["provenance"]["n_anchors"] == 3000
    r = CliRunner().invoke(main, ["md", _structure(tmp_path), "--anchors", str(anchors_path),
                                  "--reference", str(bank_path), "--projection", "shared",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "'element' projection, not 'shared'" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "o" / "summary.json").exists()
    r = CliRunner().invoke(main, ["relax", _structure(tmp_path), "--projection", "bogus",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "'--projection'" in r.output


def test_projected_atypical_runs_on_the_default_anchors(tmp_path):
    """``--monitor-option atypical_space=projected`` on the default anchors (K = 38,076) and the
    shipped bank: the bank's coordinates are sparse (no dense 6.6 GiB array, no refusal), the run
    completes and the summary records the projected space and per-element thresholds."""
    out = tmp_path / "proj"
    r = CliRunner().invoke(main, ["md", _structure(tmp_path), "--steps", "1", "--no-report",
                                  "--monitor", "atypical", "--monitor-option",
                                  "atypical_space=projected", "--out", str(out)])
    assert r.exit_code == 0, r.output
    (mon,) = [m for m in json.loads((out / "summary.json").read_text())["monitoring"]["monitors"]
              if m["name"] == "atypical"]
    assert mon["space"] == "projected" and {"Na", "Cl"} <= set(mon["element_thresholds"])
    assert mon["reference_model"] == "chgnet:0.3.0" and mon["reference_atoms"] > 20000


def test_monitor_option_no_monitor_declares_is_refused(tmp_path):
    """``--monitor-option atypical_k=3`` was accepted and dropped (k stayed 5): refused before
    anything loads, naming the valid options."""
    r = CliRunner().invoke(main, ["md", _structure(tmp_path), "--monitor-option",
                                  "atypical_k=3", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "unknown monitor option(s) atypical_k" in r.output and "atypical_space" in r.output
    assert not (tmp_path / "o").exists()


def test_no_embeddings_on_many_anchors_is_refused_unless_always(tmp_path):
    """--no-embeddings on the default K silently stored every frame's coordinates dense in
    both files (2 frames of 8 atoms: 41 MB); refused, naming --store-coords always."""
    r = CliRunner().invoke(main, ["md", _structure(tmp_path), "--no-embeddings", "--steps", "1",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "--no-embeddings with K=" in r.output and "--store-coords always" in r.output
    assert not (tmp_path / "o" / "summary.json").exists()


def test_report_names_a_monitor_that_failed_on_frames(cli, tmp_path):
    """A symmetry monitor over frames of different structures fails on the later ones; its
    report line said '0 events' with the failures only at the bottom."""
    path = tmp_path / "mixed.extxyz"
    write(path, [_nacl(), bulk("NaCl", "rocksalt", a=5.64)])  # 8 atoms, then 2
    out = tmp_path / "m"
    r = cli("monitor", str(path), "--monitor", "symmetry", "--out", str(out))
    assert r.exit_code == 0, r.output
    line = next(x for x in (out / "report.txt").read_text().splitlines()
                if x.strip().startswith("symmetry:"))
    assert "FAILED on 1 frame(s)" in line


def test_failed_run_records_why(tmp_path, chgnet_backend, small_anchors):
    """A run that fails (here: an element the model has no parameters for, given to run_md
    directly; the CLI refuses it before writing a run, test above) said only 'status:
    failed'; summary.json and report.txt now give the error."""
    from ase import Atoms

    from platoscope.calculator import PlatonicCalculator
    from platoscope.errors import UnsupportedElementError
    from platoscope.report import make_report
    from platoscope.runner import run_md

    atoms = Atoms("Am", positions=[[0, 0, 0]], cell=[3.5] * 3, pbc=True)
    atoms.calc = PlatonicCalculator(chgnet_backend, anchors=small_anchors)
    out = tmp_path / "am"
    with pytest.raises(UnsupportedElementError, match="Am"):
        run_md(atoms, [], out, steps=1, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"].startswith("UnsupportedElementError") and "Am" in summary["error"]
    make_report(out)
    assert (out / "report.txt").read_text().startswith("status: failed: UnsupportedElement")


@pytest.mark.parametrize(("args", "flag", "monitor"), [
    (["--monitor", "atypical", "--bias-interval", "5"], "--bias-interval", "bias"),
    (["--monitor", "symmetry", "--atypical-space", "projected"], "--atypical-space", "atypical"),
    (["--max-force-error", "0.3"], "--uncertainty-max-force-error", "uncertainty"),
    (["--monitor-option", "uncertainty_model=m.npz"], "--uncertainty-model", "uncertainty"),
])
def test_option_of_a_monitor_not_run_is_refused(tmp_path, args, flag, monitor):
    """``--monitor atypical --bias-interval 5`` (or --max-force-error, --uncertainty-model,
    --atypical-space for a monitor not in --monitor) ran as if the option had not been given,
    and summary.json did not say it was dropped; refused before anything loads."""
    r = CliRunner().invoke(main, ["md", _structure(tmp_path), *args, "--steps", "1",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"{flag} given, but the {monitor} monitor is not in --monitor" in r.output, r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("ensemble", "option"), [
    ("nvt", ["--pressure", "5"]), ("nve", ["--pressure", "5"]),
    ("nve", ["--friction", "0.1"]), ("npt", ["--friction", "0.1"]),
])
def test_md_option_the_ensemble_does_not_use_is_refused(tmp_path, ensemble, option):
    """``--ensemble nvt --pressure 5`` and ``--ensemble nve|npt --friction 0.1`` ran without
    them, and summary.json recorded the pressure or friction as if applied."""
    r = CliRunner().invoke(main, ["md", _structure(tmp_path), "--ensemble", ensemble, *option,
                                  "--steps", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and f"'{option[0]}'" in r.output, r.output
    assert f"the {ensemble} ensemble has no {option[0][2:]}" in r.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("ensemble", "recorded", "absent"), [
    ("nvt", {"friction": 0.02}, "pressure_GPa"), ("npt", {"pressure_GPa": 0.5}, "friction"),
    ("nve", {}, "friction"),
])
def test_md_records_only_what_its_integrator_used(cli, tmp_path, ensemble, recorded, absent):
    """summary.json's config said friction 0.01 for Berendsen NPT and velocity-Verlet NVE
    runs and pressure 0.0 for NVT and NVE runs: settings those integrators never used."""
    out = tmp_path / ensemble
    extra = {"nvt": ["--friction", "0.02"], "npt": ["--pressure", "0.5"], "nve": []}[ensemble]
    r = cli("md", _structure(tmp_path), "--ensemble", ensemble, *extra, "--steps", "1",
            "--no-report", "--out", str(out))
    assert r.exit_code == 0, r.output
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["ensemble"] == ensemble and absent not in config
    assert {k: config[k] for k in recorded} == recorded
    assert "pressure_GPa" not in config or "friction" not in config


def test_md_and_relax_read_their_structure_like_every_other_command(cli, tmp_path):
    """md/relax read STRUCTURE with plain ase.io.read: 'cannot read a structure from notes.txt:
    txt', '... val.csv: csv', 'bad.cif: ' (no reason). They use platoscope's readers now (the
    errors every other command gives; CSV and mlearn JSON read too), and say which frame of a
    file of several they start from (the last, as ase.io.read)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("just text\n")
    for command in ("md", "relax"):
        r = cli(command, str(notes), "--out", str(tmp_path / "o"))
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert "CorruptFileError: " in r.output and "unknown file format" in r.output
        assert not (tmp_path / "o").exists()
    frames = [_nacl() for _ in range(3)]
    for k, a in enumerate(frames):
        a.positions[0] += [0.05 * k, 0.0, 0.0]
    write(tmp_path / "three.extxyz", frames)
    out = tmp_path / "md"
    r = cli("md", str(tmp_path / "three.extxyz"), "--steps", "0", "--monitor", "none",
            "--no-report", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert "holds 3 structures; starting from the last (frame 2)" in r.output
    first = read(out / "frames.extxyz", 0)
    np.testing.assert_allclose(first.positions, frames[2].positions, atol=1e-8)
    assert "source" not in first.info and "source_index" not in first.info


def test_relax_optimizer_in_any_case(cli, tmp_path):
    """``relax --optimizer bfgs`` called ase.optimize.bfgs, a module: a TypeError traceback
    ("'module' object is not callable") after the model loaded. Names match in any case and
    the record holds ASE's class name."""
    out = tmp_path / "r"
    r = cli("relax", _structure(tmp_path), "--optimizer", "fire", "--steps", "2",
            "--no-report", "--out", str(out))
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert json.loads((out / "summary.json").read_text())["config"]["optimizer"] == "FIRE"


def test_repair_of_a_folder_of_run_folders_repairs_each(cli, tmp_path):
    """``repair OUT`` on the --out of a monitor of several inputs said 'OUT: no frames.h5' and
    left the run folders in it as they were; it repairs (here: checks) each."""
    out = tmp_path / "mon"
    for name in ("a_frames", "b_frames"):
        r = cli("md", _structure(tmp_path), "--steps", "1", "--monitor", "none", "--no-report",
                "--out", str(out / name))
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["repair", str(out)])
    assert r.exit_code == 0 and "holds 2 run folders" in r.output, r.output
    for name in ("a_frames", "b_frames"):
        assert f"{out / name / 'frames.h5'}: closed cleanly (2 frames)" in r.output
    assert "no frames.h5" not in r.output


def test_md_relax_refuse_elements_before_writing_a_run(cli, tmp_path):
    """An element the model has no parameters for (Am, CHGNet) or the anchor set has no
    anchor of (Li; the test set holds Na, K, Cl, Br) failed at step 0 and left a 'failed' run
    folder, so the corrected command was refused as a non-empty --out; refused before it."""
    am = bulk("Cu", "fcc", a=3.6, cubic=True)
    am.numbers[0] = 95
    write(tmp_path / "am.extxyz", am)
    write(tmp_path / "licl.extxyz", bulk("LiCl", "rocksalt", a=5.13, cubic=True))
    for name, want in (("am", "UnsupportedElementError: model 'chgnet:0.3.0' has no parameters "
                        "for element(s) Am (Z=95)"),
                       ("licl", "InputError: the anchor set has no anchor of element(s) Li")):
        for command in ("md", "relax"):
            out = tmp_path / f"{command}_{name}"
            r = cli(command, str(tmp_path / f"{name}.extxyz"), "--steps", "2", "--out", str(out))
            assert r.exit_code == 1 and want in r.output, r.output
            assert not out.exists()


def test_a_monitor_given_twice_is_refused_before_anything_loads(tmp_path):
    """``--monitor atypical,atypical`` (or two bias: models) was refused by the Watcher with
    'monitor names must be unique' after the model, the banks and any second model loaded."""
    for spec in ("atypical,atypical", "bias:chgnet:0.2.0,bias:sevenn:7net-0"):
        r = CliRunner().invoke(main, ["md", _structure(tmp_path), "--monitor", spec,
                                      "--out", str(tmp_path / "o")])
        assert r.exit_code == 1 and "given twice" in r.output, r.output
        assert "embed" not in r.output and not (tmp_path / "o").exists()


def test_md_records_where_its_first_velocities_came_from(cli, tmp_path):
    """``md --ensemble nve`` from a frame holding momenta (a previous run's frames.extxyz)
    keeps those momenta, while summary.json said temperature_K 300 as if velocities had been
    drawn at 300 K; the record now says where they came from, also after a restart."""
    first = tmp_path / "hot"
    r = cli("md", _structure(tmp_path), "--temperature", "900", "--steps", "2", "--no-report",
            "--monitor", "none", "--out", str(first))
    assert r.exit_code == 0, r.output
    config = json.loads((first / "summary.json").read_text())["config"]
    assert config["initial_velocities"] == "Maxwell-Boltzmann at 900.0 K (seed 0)"
    out = tmp_path / "nve"
    base = ["--ensemble", "nve", "--monitor", "none", "--no-report", "--out", str(out)]
    r = cli("md", str(first / "frames.extxyz"), "--steps", "2", *base)
    assert r.exit_code == 0, r.output
    config = json.loads((out / "summary.json").read_text())["config"]
    assert config["initial_velocities"] == ("the starting structure's momenta (temperature_K "
                                            "not applied)")
    start = read(out / "frames.extxyz", 0)
    np.testing.assert_allclose(start.get_momenta(), read(first / "frames.extxyz", -1)
                               .get_momenta(), atol=1e-8)
    r = cli("md", str(first / "frames.extxyz"), "--steps", "3", "--restart", *base)
    assert r.exit_code == 0, r.output
    after = json.loads((out / "summary.json").read_text())["config"]
    assert after["initial_velocities"] == config["initial_velocities"] and after["steps"] == 3
