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
    """scripts/demo.sh as the README runs it (default anchors, all three monitors, real
    weights; SevenNet-0's reference bank is built once and cached), shortened to 30 steps."""
    out = tmp_path / "demo"
    done = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), str(out)],
                          env={**os.environ, "PLATOSCOPE_DEMO_STEPS": "30"},
                          capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    for f in ("frames.extxyz", "frames.h5", "events.jsonl", "summary.json", "report.txt",
              "worst_score.png", "scores_by_element.png", "symmetry_spread.png",
              "model_disagreement.png", "energy.png"):
        assert (out / f).is_file(), f
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["last_step"] == 30
    prov = summary["provenance"]
    assert prov["model"] == "chgnet:0.3.0" and prov["anchor_set_hash"].startswith("f44a70b8")
    assert {m["name"] for m in summary["monitoring"]["monitors"]} == {
        "symmetry", "atypical", "bias"}
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events and events[0]["monitor"] == "symmetry" and events[0]["step"] == 1
    assert len(read(out / "frames.extxyz", ":")) == 31
    assert "status: completed" in done.stdout
    assert "evidence (documentation): docs/symmetry_switch.md" in done.stdout
