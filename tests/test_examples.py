"""The README's main job and the example scripts it points to run as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ase.io import read

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.backend("chgnet")
def test_quickstart_runs(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py"), "--out",
                           str(tmp_path), "--steps", "10"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "platonic (16, 8), embeddings (16, 64)" in done.stdout
    frames = read(tmp_path / "md.extxyz", ":")
    assert len(frames) == 3  # steps 0, 5, 10
    assert all(f.arrays["platonic"].shape == (16, 8) for f in frames)
    assert not (frames[0].arrays["platonic"] == frames[-1].arrays["platonic"]).all()
    assert len(read(tmp_path / "md.traj", ":")) == 11


@pytest.mark.backend("chgnet")
@pytest.mark.backend("sevenn")
def test_main_job_demo(tmp_path):
    """scripts/demo.sh as the README runs it (default anchors, real weights, the shipped
    banks of both models), shortened to 30 steps: Si heated 300 -> 4000 K
    with the uncertainty and SevenNet-0 monitors, then rutile TiO2 relaxed with the symmetry
    monitor. The report's comparison is checked against the run's own frames.h5."""
    import numpy as np
    from scipy.stats import spearmanr

    from platoscope.writers import read_sidecar

    out = tmp_path / "demo"
    done = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), str(out)],
                          env={**os.environ, "PLATOSCOPE_DEMO_STEPS": "30"},
                          capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    for f in ("frames.extxyz", "frames.h5", "events.jsonl", "summary.json", "report.txt",
              "worst_score.png", "scores_by_element.png", "model_disagreement.png",
              "uncertainty_vs_disagreement.png", "energy.png"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["last_step"] == 30
    prov = summary["provenance"]
    from platoscope import AnchorSet

    assert prov["model"] == "chgnet:0.3.0" and prov["anchor_set_hash"] == AnchorSet.default().hash
    assert prov["projection"] == "element"
    assert summary["config"]["temperature_end_K"] == 4000
    mons = {m["name"]: m for m in summary["monitoring"]["monitors"]}
    assert set(mons) == {"uncertainty", "bias"}
    assert mons["uncertainty"]["units"] == {"uncertainty": "eV/Å"}
    assert mons["bias"]["units"]["bias_force"] == "eV/Å"
    assert len(read(out / "frames.extxyz", ":")) == 31
    # per-atom sigma and |F_A - F_B| of the frames where SevenNet-0 ran (every 10 steps)
    with read_sidecar(out / "frames.h5") as side:
        frames = [side.frame(i, platonic=False) for i in range(side.n_frames)]
    both = [f for f in frames if "bias_force" in f["scores"]]
    assert [f["step"] for f in both] == [0, 10, 20, 30]
    sig = np.concatenate([f["scores"]["uncertainty"] for f in both])
    dfs = np.concatenate([f["scores"]["bias_force"] for f in both])
    assert sig.shape == dfs.shape == (4 * 64,) and np.isfinite(dfs).all() and (dfs >= 0).all()
    fd = mons["bias"]["force_disagreement"]
    assert fd["frames_evaluated"] == 4 and fd["max"] == pytest.approx(dfs.max(), rel=1e-6)
    assert (sig > 0).all() and max(f["scores"]["uncertainty"].max() for f in frames) > 0.1
    rho = spearmanr(sig, dfs)[0]
    report = (out / "report.txt").read_text()
    assert (f"Spearman correlation of sigma and |F_A - F_B| over {len(sig)} evaluated "
            f"atom-frames: {rho:.2f}") in report
    assert f"Largest disagreement |F_A - F_B|: {dfs.max():.2f} eV/Å" in report
    assert "status: completed" in done.stdout and "uncertainty vs the second model" in done.stdout
    # the symmetry monitor where it belongs: a relaxation that keeps the symmetry, no event
    relax = json.loads((out / "symmetry_relax" / "summary.json").read_text())
    assert relax["status"] == "completed" and relax["config"]["kind"] == "relax"
    assert [m["name"] for m in relax["monitoring"]["monitors"]] == ["symmetry"]
    assert relax["monitoring"]["n_events"] == 0 and relax["last_step"] >= 2
    first, last = read(out / "symmetry_relax" / "frames.extxyz", index=0), read(
        out / "symmetry_relax" / "frames.extxyz", index=-1)
    assert np.abs(first.positions - last.positions).max() > 0.05  # the atoms did move (Å)
    assert "evidence (documentation): docs/symmetry_switch.md" in done.stdout
