"""The shared-space CLI: ``anchors select|show`` and ``reference build``, end to end on CHGNet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from platoscope import AnchorSet
from platoscope.cli import main
from platoscope.coords import dense_rows
from platoscope.readers import read_structures, structures_hash
from platoscope.reference import ReferenceBank

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "data" / "mp20_partial" / "train.csv"


def _run(*args: str) -> str:
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.backend("chgnet")
def test_select_show_and_build_a_bank(tmp_path):
    anchors = tmp_path / "anchors.npz"
    out = _run("anchors", "select", str(TRAIN), "--limit", "20", "-k", "48", "--method",
               "direct", "--per-element", "--out", str(anchors))
    s = AnchorSet.load(anchors)
    structures = read_structures(TRAIN, limit=20)
    elements = {el for a in structures for el in a.get_chemical_symbols()}
    assert len(s) == 48 and set(s.symbols) == elements  # per-element coverage
    assert f"hash {s.hash[:12]}" in out
    assert s.meta["method"] == "direct" and s.meta["model"] == "chgnet:0.3.0"
    assert s.meta["data_hash"] == structures_hash(structures)

    shown = json.loads(_run("anchors", "show", str(anchors), "--json"))
    assert shown["K"] == len(s) and shown["hash"] == s.hash
    assert sum(shown["elements"].values()) == len(s)
    text = _run("anchors", "show")  # the shipped default
    k = len(AnchorSet.default())
    assert text.startswith(f"default: K={k}") and "anchor sources (--list" in text
    assert _run("anchors", "show", "mp20").startswith("mp20: K=3000")

    bank_path = tmp_path / "bank.npz"
    _run("reference", "build", str(TRAIN), "--limit", "5", "--anchors", str(anchors),
         "--out", str(bank_path))
    bank = ReferenceBank.load(bank_path)
    n_atoms = sum(len(a) for a in structures[:5])
    assert len(bank) == n_atoms and bank.anchor_set_hash == s.hash
    assert bank.projector.n_columns == len(s) + min(len(s), 128)  # anchors + global block
    assert bank.coords.shape == (n_atoms, bank.projector.n_columns)
    assert np.isfinite(dense_rows(bank.coords)).all()
    assert bank.provenance["model"] == "chgnet:0.3.0"


@pytest.mark.backend("chgnet")
def test_clear_errors(tmp_path):
    r = CliRunner().invoke(main, ["anchors", "show", str(tmp_path / "missing.npz")])
    assert r.exit_code != 0 and "missing.npz" in r.output
    r = CliRunner().invoke(main, ["embed", str(REPO / "examples" / "structures" / "Si.cif"),
                                  "--anchors", "mp21", "--out", str(tmp_path / "e.h5")])
    assert r.exit_code != 0 and "neither a shipped anchor set (default, mp20)" in r.output
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    r = CliRunner().invoke(main, ["anchors", "show", str(tmp_path / "bad.npz")])
    assert r.exit_code != 0 and "bad.npz" in str(r.output) + str(r.exception)
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    r = CliRunner().invoke(main, ["anchors", "select", str(empty), "--out",
                                  str(tmp_path / "a.npz")])
    assert r.exit_code != 0 and "empty.extxyz" in r.output
    r = CliRunner().invoke(main, ["anchors", "select", str(TRAIN), "--limit", "2", "-k",
                                  "100000", "--out", str(tmp_path / "a.npz")])
    assert r.exit_code != 0 and not (tmp_path / "a.npz").exists()


@pytest.mark.backend("chgnet")
def test_embed_with_a_bank_refuses_other_anchors_or_projection(small_setup, tmp_path):
    """``embed --reference`` used the bank's projector whatever --anchors and --projection
    said: the file then named one anchor set (or projection) while its coordinates lay on
    another's axes."""
    from ase.build import bulk
    from ase.io import write

    _, _, anchors_path, bank_path = small_setup
    s = tmp_path / "nacl.extxyz"
    write(s, bulk("NaCl", "rocksalt", a=5.64, cubic=True))
    base = ["embed", str(s), "--reference", str(bank_path)]
    r = CliRunner().invoke(main, [*base, "--anchors", "mp20", "--out", str(tmp_path / "a.h5")])
    assert r.exit_code != 0 and "was built on anchor set" in r.output
    r = CliRunner().invoke(main, [*base, "--anchors", str(anchors_path), "--projection",
                                  "shared", "--out", str(tmp_path / "b.h5")])
    assert r.exit_code != 0 and "holds the 'element' projection, not 'shared'" in r.output
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "b.h5").exists()
    _run(*base, "--anchors", str(anchors_path), "--out", str(tmp_path / "c.h5"))
    from platoscope.coords import AtomCoordinates

    c = AtomCoordinates.load(tmp_path / "c.h5")
    assert c.provenance["projection"] == "element" and c.anchor_set_hash == \
        ReferenceBank.load(bank_path).anchor_set_hash


@pytest.mark.backend("chgnet")
def test_a_frame_that_cannot_be_projected_is_named(small_setup, tmp_path):
    """A frame whose element has no anchor (Li; the set has Na, K, Cl, Br) fails in
    post-processing with an error naming that frame and its file, not an atom index of a
    chunk of stacked frames."""
    from ase.build import bulk
    from ase.io import write

    _, _, anchors_path, bank_path = small_setup
    frames = [bulk("NaCl", "rocksalt", a=5.64, cubic=True) for _ in range(4)]
    frames[2] = bulk("LiCl", "rocksalt", a=5.13, cubic=True)
    traj = tmp_path / "traj.extxyz"
    write(traj, frames)
    want = f"frame 2 of {tmp_path.name}/traj.extxyz: the anchor set has no anchor of element(s) Li"
    r = CliRunner().invoke(main, ["monitor", str(traj), "--anchors", str(anchors_path),
                                  "--reference", str(bank_path), "--no-report",
                                  "--out", str(tmp_path / "mon")])
    assert r.exit_code != 0 and f"InputError: {want}" in r.output, r.output
    assert not (tmp_path / "mon").exists()  # refused before any frame was embedded or written
    r = CliRunner().invoke(main, ["embed", str(traj), "--anchors", str(anchors_path),
                                  "--out", str(tmp_path / "e.h5")])
    assert r.exit_code != 0 and f"InputError: {want}" in r.output, r.output
    assert not (tmp_path / "e.h5").exists()
    # before any forward pass (was after all of them): no progress bar, no .parts folder
    assert "embed chgnet" not in r.output and not (tmp_path / "e.h5.parts").exists()


@pytest.mark.backend("chgnet")
def test_unusable_device_is_refused_without_traceback(tmp_path):
    """--device cuda where torch cannot use CUDA (a CPU-only build or no GPU), or a string
    that is no torch device, ends with a one-line error naming the device, for embed and
    md, before any output is written."""
    import torch

    structure = Path(__file__).resolve().parents[1] / "examples" / "structures" / "Si.cif"
    bad = ["foo"] + ([] if torch.cuda.is_available() else ["cuda"])
    bad.append(f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    r = CliRunner()
    for device in bad:
        for args in (["embed", str(structure), "--out", str(tmp_path / "e.h5")],
                     ["md", str(structure), "--steps", "1", "--out", str(tmp_path / "md")]):
            res = r.invoke(main, [*args, "--device", device])
            assert res.exit_code == 1, (device, res.output, res.exception)
            assert f"device '{device}'" in res.output and "Traceback" not in res.output
            assert not isinstance(res.exception, AssertionError), res.exception
        assert not (tmp_path / "e.h5").exists() and not (tmp_path / "md").exists()


@pytest.mark.parametrize("command", [["embed"], ["reference", "build"]])
def test_batch_size_below_one_is_a_usage_error(command, tmp_path):
    """``embed --batch-size 0`` and ``reference build --batch-size 0`` ended in a ValueError
    traceback from the chunk store after the data was read and the model loaded, and
    ``reference build`` left a ``bank.npz.parts`` folder behind; refused at parse time."""
    out = tmp_path / "o.npz"
    r = CliRunner().invoke(main, [*command, str(TRAIN), "--limit", "2", "--batch-size", "0",
                                  "--out", str(out)])
    assert r.exit_code == 2 and "'--batch-size'" in r.output, r.output
    assert "Traceback" not in r.output and list(tmp_path.iterdir()) == []


def test_reference_build_refuses_an_unknown_projection_before_embedding(tmp_path):
    """``reference build --projection foo`` embedded every structure, then failed with
    'unknown normalize' and left a .parts folder; a usage error listing the presets."""
    r = CliRunner().invoke(main, ["reference", "build", str(TRAIN), "--limit", "2",
                                  "--projection", "foo", "--out", str(tmp_path / "b.npz")])
    assert r.exit_code == 2 and "'--projection'" in r.output and "element" in r.output, r.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("k", ["0", "-5"])
def test_anchors_select_refuses_k_below_one_before_embedding(k, tmp_path):
    """``anchors select -k 0`` embedded every structure before 'k must be at least 1'."""
    r = CliRunner().invoke(main, ["anchors", "select", str(TRAIN), "--limit", "2", "-k", k,
                                  "--out", str(tmp_path / "a.npz")])
    assert r.exit_code == 2 and "'-k'" in r.output and "embed" not in r.output, r.output
    assert list(tmp_path.iterdir()) == []


def test_anchors_show_options_that_would_be_ignored_are_refused():
    """``anchors show --element Pb`` printed the whole summary (the filter applies only to
    --list) and ``--json --list`` printed the table, not JSON: usage errors naming the flag."""
    r = CliRunner().invoke(main, ["anchors", "show", "--element", "Pb"])
    assert r.exit_code == 2 and "'--element': only --list filters by element" in r.output
    r = CliRunner().invoke(main, ["anchors", "show", "--json", "--list"])
    assert r.exit_code == 2 and "'--json'" in r.output and "choose one" in r.output
    r = CliRunner().invoke(main, ["anchors", "show", "--list", "--element", "Pb"])
    rows = r.output.splitlines()[1:]
    assert r.exit_code == 0 and rows and {row.split("\t")[1] for row in rows} == {"Pb"}


@pytest.mark.parametrize("projection", ["paper", "centered"])
def test_embed_top_k_for_dense_coordinates_is_refused(projection, tmp_path):
    """``embed --projection paper --top-k 10`` stored every coordinate: --top-k applies only to
    softmax-kernel coordinates and was ignored; refused before anything loads."""
    r = CliRunner().invoke(main, ["embed", str(TRAIN), "--limit", "1", "--projection",
                                  projection, "--top-k", "10", "--out", str(tmp_path / "e.h5")])
    assert r.exit_code == 2 and "'--top-k'" in r.output, r.output
    assert f"the '{projection}' projection's coordinates are stored whole" in r.output
    assert list(tmp_path.iterdir()) == []
