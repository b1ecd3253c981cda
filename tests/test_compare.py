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
from platoscope.analysis import (
    element_structure_baseline,
    retrieval_accuracy,
    retrieval_chance,
    site_resolved_retrieval,
)
from platoscope.cli import main
from platoscope.coords import (
    SPARSE_FLOAT32_ERROR,
    AtomCoordinates,
    check_comparable,
    dense_rows,
    top_k_rows,
    topk_to_csr,
)
from platoscope.errors import AnchorSetMismatchError, CorruptFileError, DataMismatchError
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


def _embed(model, anchor_file, out, python=None, limit=12, projection="shared"):
    """A small anchor set from other structures: the shared projection (the element default
    refuses elements without anchors, tested below)."""
    cmd = [python or sys.executable, "-m", "platoscope.cli", "embed", str(VAL), "--limit",
           str(limit), "--model", model, "--anchors", str(anchor_file), "--projection",
           projection, "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return AtomCoordinates.load(out)


@pytest.mark.backend("chgnet")
def test_embed_compare_two_chgnet_versions(anchor_file, tmp_path):
    a = _embed("chgnet", anchor_file, tmp_path / "a.h5")
    b = _embed("chgnet:0.2.0", anchor_file, tmp_path / "b.h5")
    assert a.platonic.shape == (len(a), 40) and a.embeddings.shape[1] == 64
    assert a.coverage.shape == (len(a),) and np.all(a.coverage <= 1 + 1e-12)
    za, zb = dense_rows(a.platonic), dense_rows(b.platonic)
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
        np.mean(np.sum(za * zb, axis=1) / np.linalg.norm(za, axis=1)
                / np.linalg.norm(zb, axis=1)), abs=1e-6)
    al = res["alignment"]
    S = a.structure_index
    assert al["element_structure_baseline_top5"] == pytest.approx(
        element_structure_baseline(a.numbers, S, k=5))
    # top-1 among the atoms of one element in one structure: symmetry-equivalent atoms have rows
    # equal up to the model's float32 noise, so a query's own atom and its twin can tie and
    # rounding (compare scores compacted columns) decides; the value lies between the counts
    # with near-ties as misses and as hits
    lo, hi = _site_top1_bounds(za, zb, a.numbers, S)
    assert lo - 1e-12 <= al["site_resolved_top1"][0][1] <= hi + 1e-12
    assert lo - 1e-12 <= site_resolved_retrieval(za, zb, a.numbers, S)[0] <= hi + 1e-12
    assert hi - lo <= 0.2, (lo, hi)  # a handful of tied queries, not a free pass
    lo, hi = al["mutual_knn10_projected_ci95"][0][1]
    assert lo <= al["mutual_knn10_projected"][0][1] <= hi
    text = (out / "compare.txt").read_text()
    assert "element+structure baseline" in text and "site-resolved top-1" in text
    # two models are equally far from their consensus: no "most deviant" model is named
    assert res["bias"]["most_deviant"] is None and "n/a with two models" in text
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
        retrieval_accuracy(za, zb, k=5, groups=groups))
    assert "same-environment retrieval" in (sym / "compare.txt").read_text()
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"),
                                  "--structures", str(VAL), "--out", str(tmp_path / "no")])
    assert r.exit_code != 0 and "not the structures" in r.output and "val.csv" in r.output


@pytest.mark.backend("chgnet")
def test_compare_structures_after_embed_left_one_out(tmp_path):
    """embed leaves out a structure the model cannot take (Am: not in CHGNet); compare
    --structures with the files given to embed failed with 'groups has shape (5,), the
    coordinates 4 atoms'. The groups now follow the rows the files hold."""
    from ase import Atoms
    from ase.build import bulk
    from ase.io import write

    am = Atoms("Am2", positions=[[0, 0, 0], [1.7, 1.7, 1.7]], cell=[3.4] * 3, pbc=True)
    path = tmp_path / "mixed.extxyz"
    write(path, [bulk("Si", "diamond", a=5.43, cubic=True), am,
                 bulk("NaCl", "rocksalt", a=5.64, cubic=True)])
    r = CliRunner()
    for name in ("a.h5", "b.h5"):
        res = r.invoke(main, ["embed", str(path), "--model", "chgnet", "--no-embeddings",
                              "--out", str(tmp_path / name)])
        assert res.exit_code == 0 and "1 of 3 structures failed" in res.output, res.output
    res = r.invoke(main, ["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"),
                          "--structures", str(path), "--k", "2", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    al = json.loads((tmp_path / "c" / "compare.json").read_text())["alignment"]
    assert al["symmetry_aware"] and al["n_environments"] == 3  # Si 1, Na 1, Cl 1


def _site_top1_bounds(x, y, numbers, structure_index, eps=1e-9):
    """Site-resolved top-1 (one query per atom, pool: its element in its structure, pools of
    two or more atoms) counting queries whose own atom is within ``eps`` of the nearest other
    as misses (lower bound) and as hits (upper bound)."""
    lo = hi = n = 0
    for z in np.unique(numbers):
        for s in np.unique(structure_index):
            rows = np.flatnonzero((numbers == z) & (structure_index == s))
            if rows.size < 2:
                continue
            d = np.linalg.norm(x[rows][:, None] - y[rows][None], axis=2)
            own = np.diag(d).copy()
            np.fill_diagonal(d, np.inf)
            other = d.min(axis=1)
            lo += int(np.sum(own < other - eps))
            hi += int(np.sum(own <= other + eps))
            n += rows.size
    return lo / n, hi / n


@pytest.mark.backend("chgnet")
def test_refuses_mixed_anchor_sets_and_atoms(anchor_file, tmp_path):
    a = _embed("chgnet", anchor_file, tmp_path / "a.h5", limit=4)
    other = AnchorSet.load(anchor_file).subset(range(10)).save(tmp_path / "other.npz")
    b = _embed("chgnet", other, tmp_path / "b.h5", limit=4)
    with pytest.raises(AnchorSetMismatchError, match="different anchor sets"):
        check_comparable(a, b)
    c = _embed("chgnet", anchor_file, tmp_path / "c.h5", limit=3)
    # a subclass named for what differs (the command line shows the class name)
    with pytest.raises(DataMismatchError, match="do not hold the same atoms"):
        check_comparable(a, c)
    assert issubclass(DataMismatchError, AnchorSetMismatchError)
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"),
                                  "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "different anchor sets" in r.output
    # same anchors and atoms, another projection: the axes are not the same (same model gave
    # top-1 0.31 "between models" before)
    _embed("chgnet", anchor_file, tmp_path / "p.h5", limit=4, projection="paper")
    r = CliRunner().invoke(main, ["compare", str(tmp_path / "a.h5"), str(tmp_path / "p.h5"),
                                  "--out", str(tmp_path / "y")])
    assert r.exit_code != 0 and "projected differently" in r.output
    assert "shared projection" in r.output and "paper projection" in r.output
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


def test_top_k_rows_bound_the_distance_error():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(60, 500)) / 0.3
    p = np.exp(c - c.max(axis=1, keepdims=True))
    z = np.sqrt(p / p.sum(axis=1, keepdims=True))  # unit, non-negative rows
    for k in (8, 64, 500):
        idx, val, res = top_k_rows(z, k)
        assert idx.shape == val.shape == (60, k) and val.dtype == np.float32
        zs = topk_to_csr(idx, val, 500).toarray()
        exact = np.linalg.norm(z[:, None] - z[None], axis=2)
        approx = np.linalg.norm(zs[:, None] - zs[None], axis=2)
        bound = res[:, None] + res[None, :] + SPARSE_FLOAT32_ERROR
        assert np.all(np.abs(approx - exact) <= bound)
        np.testing.assert_allclose(res, np.linalg.norm(z - zs, axis=1), atol=1e-6)
    assert np.all(top_k_rows(z, 500)[2] < 1e-3)
    with pytest.raises(ValueError, match="top-k"):
        top_k_rows(z, 0)


def test_coordinates_file_roundtrip_in_both_layouts(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.random((30, 50))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    kw = dict(numbers=np.full(30, 14), structure_index=np.repeat(np.arange(3), 10),
              atom_index=np.tile(np.arange(10), 3), anchor_set_hash="a" * 64,
              data_hash="d" * 64, coverage=rng.random(30))
    c = AtomCoordinates(platonic=z, **kw)
    dense = AtomCoordinates.load(c.save(tmp_path / "d.h5", layout="dense"))
    np.testing.assert_array_equal(dense.platonic, z)
    sparse = AtomCoordinates.load(c.save(tmp_path / "s.h5", layout="topk", top_k=20))
    assert sparse.platonic.shape == (30, 50) and hasattr(sparse.platonic, "toarray")
    err = np.linalg.norm(dense_rows(sparse.platonic) - z, axis=1)
    assert np.all(err <= sparse.residual + SPARSE_FLOAT32_ERROR)
    np.testing.assert_array_equal(sparse.coverage, kw["coverage"])


@pytest.mark.backend("chgnet")
def test_embed_element_projection_stores_sparse_rows_and_coverage(tmp_path):
    structs = read_structures(REPO / "data" / "mp20_partial" / "train.csv", limit=6)
    pairs = []
    for s in structs:
        r = s.copy()
        r.rattle(0.05, seed=1)
        pairs += [(r, i) for i in range(len(r))]
    anchors = AnchorSet.from_atoms(pairs).save(tmp_path / "anchors.npz")
    data = tmp_path / "data.extxyz"
    from ase.io import write

    write(data, structs)
    out = tmp_path / "e.h5"
    r = CliRunner().invoke(main, ["embed", str(data), "--model", "chgnet", "--anchors",
                                  str(anchors), "--projection", "element", "--top-k", "16",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    c = AtomCoordinates.load(out)
    assert c.provenance["projection"] == "element"
    z = dense_rows(c.platonic)
    za = AnchorSet.load(anchors).numbers
    k = len(za)
    for i in range(len(c)):  # only own-element anchors carry mass (before the global block)
        assert np.all(z[i, :k][za != c.numbers[i]] == 0)
    assert np.median(c.coverage) > 0.9  # rattled copies of these very atoms are anchors
    assert c.n_anchors == k and c.n_global == min(k, 128)
    assert np.all(c.residual < 1) and c.platonic.shape == (len(c), k + c.n_global)

    # compare's scored rows: element blocks reduced to an isometry (same inner products within
    # and across models, float64 rounding) in at most as many columns as rows
    import scipy.sparse as sp

    from platoscope.compare import _isometric_by_element

    za_, zb_ = sp.csr_array(c.platonic), sp.csr_array(c.platonic).copy()
    zb_.data = zb_.data * np.random.default_rng(0).uniform(0.5, 1.5, zb_.nnz)  # a 2nd "model"
    xa, xb = _isometric_by_element([za_, zb_], c.numbers)
    assert xa.shape[1] <= 2 * len(c) + c.n_global  # the global columns are kept as they are
    for u, v, x, y in ((za_, zb_, xa, xb), (za_, za_, xa, xa), (zb_, zb_, xb, xb)):
        np.testing.assert_allclose(x @ y.T, (u @ v.T).toarray(), rtol=0, atol=1e-12)
    shared = sp.csr_array(np.ones((len(c), 3)))  # rows of all elements on the same columns
    assert _isometric_by_element([shared, shared], c.numbers) is None

    # an element without anchors is refused, naming it
    from ase import Atoms

    write(tmp_path / "u.extxyz", Atoms("U2", positions=[[0, 0, 0], [1.8, 1.8, 1.8]],
                                       cell=[3.6] * 3, pbc=True))
    r = CliRunner().invoke(main, ["embed", str(tmp_path / "u.extxyz"), "--model", "chgnet",
                                  "--anchors", str(anchors), "--projection", "element",
                                  "--out", str(tmp_path / "u.h5")])
    assert r.exit_code != 0 and "element(s) U" in r.output


def test_k_not_below_the_scored_points_is_named(tmp_path):
    """``compare --k 100000`` or ``--max-atoms 5`` (k 10) failed with 'X has shape (5, 10):
    need at least 11 row(s)', and ``--max-atoms 0`` with 'X has shape (0, 0)', after the
    output folder was made; refused naming --k and --max-atoms, before anything is written."""
    rng = np.random.default_rng(2)
    files = []
    for name in ("a", "b"):
        z = rng.random((30, 50))
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        c = AtomCoordinates(platonic=z, numbers=np.full(30, 14),
                            structure_index=np.repeat(np.arange(3), 10),
                            atom_index=np.tile(np.arange(10), 3), anchor_set_hash="a" * 64,
                            data_hash="d" * 64, provenance={"model": f"model-{name}"})
        files.append(str(c.save(tmp_path / f"{name}.h5", layout="dense")))
    out = tmp_path / "cmp"
    for extra, want in ((["--k", "30"], "--k 30 needs more than 30 scored points, and there "
                         "are 30 atoms among the 30 atoms scored (of 30; --max-atoms 5000): "
                         "lower --k"),
                        (["--max-atoms", "5"], "--k 10 needs more than 10 scored points, and "
                         "there are 5 atoms among the 5 atoms scored (of 30; --max-atoms 5): "
                         "lower --k or raise --max-atoms"),
                        (["--max-atoms", "0"], "'--max-atoms'"), (["--k", "0"], "'--k'")):
        r = CliRunner().invoke(main, ["compare", *files, *extra, "--out", str(out)])
        assert r.exit_code in (1, 2) and want in r.output, r.output
        assert "Traceback" not in r.output and not out.exists()
    r = CliRunner().invoke(main, ["compare", *files, "--k", "29", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "compare.json").read_text())["n_scored"] == 30
    # a rerun into the same folder: the earlier comparison's plots go, other files stay
    (out / "periodicity_old-model.png").write_bytes(b"from an earlier comparison")
    (out / "notes.txt").write_text("mine")
    r = CliRunner().invoke(main, ["compare", *files, "--k", "29", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert not (out / "periodicity_old-model.png").exists() and (out / "notes.txt").exists()
    assert (out / "alignment.png").is_file()
    # an --out that is a file: a traceback (FileExistsError) before
    r = CliRunner().invoke(main, ["compare", *files, "--out", str(out / "notes.txt")])
    assert r.exit_code == 1 and "is a file, not a folder" in r.output, r.output
    assert "Traceback" not in r.output and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("option", [["--limit", "5"], ["--symprec", "0.01"]])
def test_structure_options_without_structures_are_refused(option, tmp_path):
    """``compare A B --limit 5`` (or --symprec) without --structures ran as if not given: both
    describe the --structures files; a usage error naming the flag."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    r = CliRunner().invoke(main, ["compare", str(a), str(b), *option, "--out",
                                  str(tmp_path / "c")])
    assert r.exit_code == 2 and f"'{option[0]}': applies to --structures" in r.output, r.output
    assert not (tmp_path / "c").exists()


def _element_sparse_coords(model, numbers, rows_seed, anchors_per_element=12, noise=None):
    """Sparse element-projection-like coordinates without a model: each atom's non-negative
    unit row lives on its own element's anchor columns (atoms of different elements at
    distance sqrt(2), tied)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(rows_seed)
    els = np.unique(numbers)
    z = np.zeros((len(numbers), anchors_per_element * len(els)))
    for e, el in enumerate(els):
        sel = np.flatnonzero(numbers == el)
        v = np.abs(rng.normal(size=(sel.size, anchors_per_element))) ** 3
        z[sel, e * anchors_per_element:(e + 1) * anchors_per_element] = v
    if noise is not None:
        z = np.where(z > 0, z * noise.uniform(0.7, 1.3, z.shape), 0.0)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(numbers)
    return AtomCoordinates(
        platonic=sp.csr_array(z), numbers=numbers, structure_index=np.arange(n) // 4,
        atom_index=np.arange(n) % 4, anchor_set_hash="a" * 64, data_hash="d" * 64,
        provenance={"model": model, "projection": "element",
                    "projection_params": {"normalize": "element", "kernel": "softmax",
                                          "tau": 0.015}},
        embeddings=np.random.default_rng(rows_seed + 1).normal(size=(n, 8)))


def test_compare_mutual_knn_on_sparse_element_rows_is_tie_aware(tmp_path):
    """compare scores sparse element rows through an isometric dense form (QR per element,
    float64 rounding); the tied cross-element distances must not be broken by that rounding:
    a model against an identical copy scores what the dense rows score against themselves
    (ties earn chance credit only, so below 1), and any pair equals the tie-aware mutual k-NN
    of the plain dense rows."""
    from platoscope.analysis import mutual_knn
    from platoscope.compare import compare

    numbers = np.repeat([1, 6, 8, 14, 26], [1, 3, 5, 30, 41])  # small elements: tied k-NN
    a = _element_sparse_coords("a", numbers, 0)
    twin = _element_sparse_coords("twin", numbers, 0)
    b = _element_sparse_coords("b", numbers, 0, noise=np.random.default_rng(7))
    res = compare([a, twin, b], tmp_path / "c", k=10)
    mk = np.array(res["alignment"]["mutual_knn10_projected"])
    za, zb = dense_rows(a.platonic), dense_rows(b.platonic)
    self_score = mutual_knn(za, za.copy(), k=10, metric="euclidean")
    assert 0.5 < self_score < 0.99  # the small elements' rows are tied
    assert mk[0, 1] == pytest.approx(self_score, abs=1e-12)
    lo, hi = res["alignment"]["mutual_knn10_projected_ci95"][0][1]
    assert lo <= mk[0, 1] <= hi
    expected = mutual_knn(za, zb, k=10, metric="euclidean")
    assert 0.3 < expected < 0.99
    assert mk[0, 2] == mk[2, 0] == pytest.approx(expected, abs=1e-12)
    assert mk[1, 2] == pytest.approx(expected, abs=1e-12)
    raw = np.array(res["alignment"]["mutual_knn10_raw"])
    assert raw[0, 1] == pytest.approx(1.0, abs=1e-12)
    # rows of the elements with <= 10 atoms (1 + 3 + 5 of 80) have tied 10th neighbours: their
    # n_el - 1 element mates, then m = 10 - (n_el - 1) of the 80 - n_el others, each with
    # weight m / (80 - n_el) in both models (chance credit); the untied figure is the mean
    # over the other 71
    tied = np.array(res["alignment"]["mutual_knn10_projected_tied_fraction"])
    assert tied[0, 2] == pytest.approx(9 / 80) and tied[0, 0] == 0
    from platoscope.analysis import mutual_knn_rows

    o, t = mutual_knn_rows(za, zb, k=10, metric="euclidean")
    np.testing.assert_array_equal(t, numbers <= 8)
    n_el = np.array([np.sum(numbers == z) for z in numbers[t]])
    m = 10 - (n_el - 1)
    np.testing.assert_allclose(o[t], (n_el - 1 + m * m / (80 - n_el)) / 10, rtol=0, atol=1e-12)
    assert o.mean() == pytest.approx(expected, abs=1e-12)
    untied = res["alignment"]["mutual_knn10_projected_untied"][0][2]
    assert untied == pytest.approx(o[~t].mean(), abs=1e-12)
    assert "11.2% tied" in (tmp_path / "c" / "compare.txt").read_text()
