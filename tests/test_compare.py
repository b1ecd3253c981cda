"""Portable coordinate files and cross-model comparison, within and across environments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from platoscope import AnchorSet
from platoscope.analysis import retrieval_accuracy, retrieval_chance
from platoscope.cli import main
from platoscope.coords import AtomCoordinates, check_comparable
from platoscope.errors import AnchorSetMismatchError, CorruptFileError
from platoscope.readers import read_structures
from platoscope.symmetry import symmetry_groups

REPO = Path(__file__).resolve().parents[1]
VAL = REPO / "data" / "mp20_partial" / "val.csv"
OTHER_PYTHON = os.environ.get("PLATOSCOPE_OTHER_PYTHON")


@pytest.fixture(scope="module")
def anchor_file(tmp_path_factory):
    structs = read_structures(REPO / "data" / "mp20_partial" / "train.csv", limit=30)
    pairs = [(a, i) for a in structs for i in range(0, len(a), 3)][:40]
    return AnchorSet.from_atoms(pairs).save(tmp_path_factory.mktemp("a") / "anchors.npz")


def _embed(model, anchor_file, out, python=None, limit=12):
    cmd = [python or sys.executable, "-m", "platoscope.cli", "embed", str(VAL), "--limit",
           str(limit), "--model", model, "--anchors", str(anchor_file), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return AtomCoordinates.load(out)


@pytest.mark.backend("chgnet")
def test_embed_compare_two_chgnet_versions(anchor_file, tmp_path):
    a = _embed("chgnet", anchor_file, tmp_path / "a.h5")
    b = _embed("chgnet:0.2.0", anchor_file, tmp_path / "b.h5")
    assert a.platonic.shape == (len(a), 40) and a.embeddings.shape[1] == 64
    assert a.provenance["model"] == "chgnet:0.3.0" and b.provenance["model"] == "chgnet:0.2.0"
    check_comparable(a, b)
    out = tmp_path / "cmp"
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"),
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "compare.json").read_text())
    top5 = np.array(res["alignment"]["retrieval_top5"])
    assert top5[0, 1] > 5 * res["alignment"]["retrieval_chance_top5"]
    cos = np.array(res["alignment"]["cosine_agreement_mean"])
    assert cos[0, 1] == cos[1, 0] == pytest.approx(
        np.mean(np.sum(a.platonic * b.platonic, axis=1)
                / np.linalg.norm(a.platonic, axis=1) / np.linalg.norm(b.platonic, axis=1)))
    assert 0 < cos[0, 1] < 1
    assert {t["source"] for t in res["transport"]} == {"chgnet:0.3.0"}
    assert 0 <= res["transport"][0]["same_element_mass"] <= 1
    for f in ("alignment.png", "bias_per_element.png", "compare.txt"):
        assert (out / f).is_file()
    assert not res["alignment"]["symmetry_aware"] and res["subsample"] is None
    assert "subsample" not in (out / "compare.txt").read_text()

    # above --max-atoms the subsample is said in the text and the JSON
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"),
                                  "--max-atoms", "20", "--out", str(tmp_path / "sub")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "sub" / "compare.json").read_text())
    assert res["n_scored"] == 20 < res["n_atoms"] == len(a)
    assert res["subsample"]["max_atoms"] == 20
    assert f"random subsample of 20 of {len(a)} atoms" in r.output

    # with the structures: one query per environment, a hit on any equivalent atom
    sym = tmp_path / "sym"
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"),
                                  "--structures", str(VAL), "--limit", "12", "--out", str(sym)])
    assert r.exit_code == 0, r.output
    al = json.loads((sym / "compare.json").read_text())["alignment"]
    groups = symmetry_groups(read_structures(VAL, limit=12))
    assert al["symmetry_aware"] and al["n_environments"] == len(np.unique(groups)) < len(a)
    assert al["retrieval_chance_top5"] == pytest.approx(retrieval_chance(len(a), 5, groups))
    assert np.array(al["retrieval_top5"])[0, 1] == pytest.approx(
        retrieval_accuracy(a.platonic, b.platonic, k=5, groups=groups))
    assert "same-environment retrieval" in (sym / "compare.txt").read_text()
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"),
                                  "--structures", str(VAL), "--out", str(tmp_path / "no")])
    assert r.exit_code != 0 and "not the structures" in r.output and "val.csv" in r.output


@pytest.mark.backend("chgnet")
def test_refuses_mixed_anchor_sets_and_atoms(anchor_file, tmp_path):
    a = _embed("chgnet", anchor_file, tmp_path / "a.h5", limit=4)
    other = AnchorSet.load(anchor_file).subset(range(10)).save(tmp_path / "other.npz")
    b = _embed("chgnet", other, tmp_path / "b.h5", limit=4)
    with pytest.raises(AnchorSetMismatchError, match="different anchor sets"):
        check_comparable(a, b)
    c = _embed("chgnet", anchor_file, tmp_path / "c.h5", limit=3)
    with pytest.raises(AnchorSetMismatchError, match="do not hold the same atoms"):
        check_comparable(a, c)
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"),
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "different anchor sets" in r.output
    (tmp_path / "bad.h5").write_bytes(b"garbage")
    with pytest.raises(CorruptFileError, match="bad.h5"):
        AtomCoordinates.load(tmp_path / "bad.h5")


@pytest.mark.backend("chgnet")
@pytest.mark.skipif(not OTHER_PYTHON, reason="PLATOSCOPE_OTHER_PYTHON names no second env")
def test_files_cross_environments(anchor_file, tmp_path):
    """SevenNet coordinates written in the other environment compare with CHGNet's here."""
    here = _embed("chgnet", anchor_file, tmp_path / "here.h5", limit=6)
    other_model = "sevenn:7net-0" if "sevenn" in OTHER_PYTHON else "chgnet:0.2.0"
    there = _embed(other_model, anchor_file, tmp_path / "there.h5", python=OTHER_PYTHON,
                   limit=6)
    assert there.provenance["model"] == other_model
    assert there.provenance["versions"] != here.provenance["versions"]
    check_comparable(here, there)
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "here.h5"),
                                  str(tmp_path / "there.h5"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
