"""The example scripts the README points to run as written."""

from __future__ import annotations

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
