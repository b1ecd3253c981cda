"""Sparse per-frame coordinates of the element projection: exact, small, and accepted downstream.

The element projection stores each atom's own element block in a ``scipy.sparse.csr_array``
(nothing truncated). Stated tolerances: coordinates equal the dense projection's within
``projection.TOLERANCE`` (1e-12); distances, scores and transport costs computed on the sparse
form equal the dense path's within 1e-10 (same float64 values, other summation order).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from platoscope.coords import (
    CoordinateWriter,
    as_coords,
    compact_columns,
    dense_rows,
    is_sparse,
    max_abs_diff,
    mean_row,
    nbytes,
    pairwise_sq_distances,
    row_distances,
    row_norms,
    row_slice,
    top_k_rows,
)
from platoscope.errors import InputError
from platoscope.monitors.base import Monitor
from platoscope.projection import TOLERANCE, Projector, project

DIST_TOL = 1e-10
"""Agreement of distances (and scores built on them) between the sparse and dense paths."""


def _element_setup(seed=0, k_per=(40, 25, 30, 1), d=16, n=50):
    rng = np.random.default_rng(seed)
    zs = np.array([1, 8, 26, 3])
    za = rng.permutation(np.repeat(zs, k_per))  # blocks interleaved in the K axis
    a = rng.normal(size=(za.size, d))
    e = rng.normal(size=(n, d))
    ze = rng.choice(zs, n)
    # the element block's CSR (the global block after it: tests/test_projection_global.py)
    block = Projector("element", global_weight=0, global_anchors=0)
    return block.fit(a, anchor_numbers=za), a, za, e, ze


def test_element_transform_is_csr_holding_each_atoms_whole_block():
    p, a, za, e, ze = _element_setup()
    z = p.transform(e, ze)
    dense = p.transform(e, ze, sparse=False)
    assert is_sparse(z) and z.format == "csr" and z.dtype == np.float64
    assert z.shape == dense.shape == (len(e), len(za))
    assert max_abs_diff(z, dense) <= TOLERANCE
    np.testing.assert_allclose(z.toarray(), dense, rtol=0, atol=TOLERANCE)
    sizes = {int(x): int((za == x).sum()) for x in np.unique(za)}
    assert z.nnz == sum(sizes[int(x)] for x in ze)  # every entry of the block, no truncation
    for i in (0, 7, 49):
        np.testing.assert_array_equal(z[[i]].indices, np.flatnonzero(za == ze[i]))
    np.testing.assert_allclose(row_norms(z), 1.0, atol=1e-12)  # unit rows, as dense
    z2, cov = p.transform_with_coverage(e, ze)
    d2, cov_d = p.transform_with_coverage(e, ze, sparse=False)
    assert is_sparse(z2) and not is_sparse(d2)
    np.testing.assert_array_equal(cov, cov_d)
    np.testing.assert_allclose(dense_rows(project(e, a, tau=0.015, numbers=ze, anchor_numbers=za,
                                                  sparse=True)), dense, atol=TOLERANCE)


def test_sparse_is_refused_where_every_column_is_filled():
    p, a, za, e, ze = _element_setup()
    shared = Projector("shared").fit(a, anchor_numbers=za)
    assert not is_sparse(shared.transform(e))  # default: dense for shared/paper
    with pytest.raises(InputError, match="sparse=True applies to the element projection"):
        shared.transform(e, sparse=True)
    with pytest.raises(InputError, match="sparse must be None, True or False"):
        p.transform(e, ze, sparse="yes")
    with pytest.raises(InputError, match="sparse=True applies to the element projection"):
        project(e, a, sparse=True)


def test_coordinate_helpers_agree_with_the_dense_path():
    p, _, _, e, ze = _element_setup(1)
    za_, zb_ = p.transform(e[:30], ze[:30]), p.transform(e[20:], ze[20:])
    da, db = dense_rows(za_), dense_rows(zb_)
    np.testing.assert_allclose(row_distances(za_, zb_), np.linalg.norm(da - db, axis=1),
                               rtol=0, atol=DIST_TOL)
    np.testing.assert_allclose(row_distances(za_, db), np.linalg.norm(da - db, axis=1),
                               rtol=0, atol=DIST_TOL)  # mixed forms
    full = ((da[:, None, :] - db[None]) ** 2).sum(axis=2)
    np.testing.assert_allclose(pairwise_sq_distances(za_, zb_), full, rtol=0, atol=DIST_TOL)
    np.testing.assert_allclose(mean_row(za_), da.mean(axis=0), rtol=0, atol=1e-15)
    (ca, cb), cols = compact_columns(za_, zb_)
    assert cols is not None and ca.shape == (30, cols.size) and cb.shape == (30, cols.size)
    np.testing.assert_array_equal(ca, da[:, cols])
    assert not da[:, np.setdiff1d(np.arange(da.shape[1]), cols)].any()  # dropped: all zero
    (x,), none = compact_columns(da)
    assert none is None and x is da  # dense inputs are returned unchanged
    assert max_abs_diff(za_, da) == 0.0
    assert nbytes(za_) < nbytes(da) and nbytes(da) == da.nbytes


def test_coordinate_helpers_name_bad_input():
    p, _, _, e, ze = _element_setup()
    z = p.transform(e, ze)
    with pytest.raises(InputError, match=r"coordinates must be 2-D"):
        as_coords(np.ones(3))
    with pytest.raises(InputError, match=r"differ: the rows must be the same atoms"):
        row_distances(z, z[:3])
    with pytest.raises(InputError, match="not the same axes"):
        compact_columns(z, np.ones((2, 5)))
    with pytest.raises(InputError, match="top-k must be >= 1"):
        top_k_rows(z, 0)


@pytest.mark.parametrize("layout", ["one element", "runs", "scattered", "long runs"])
def test_csr_rows_match_dense_whatever_the_order_of_elements(layout):
    """The CSR fill (slice copies for runs of one element's atoms, a scatter otherwise) and
    the top-k read (views of consecutive rows, a gather otherwise) against the dense path."""
    p, _, _, _, _ = _element_setup(3)
    rng = np.random.default_rng(4)
    ze = {"one element": np.full(300, 8),
          "runs": np.repeat([8, 1, 26, 8, 3, 1], [40, 60, 7, 90, 1, 102]),
          "scattered": rng.choice([1, 8, 26, 3], 300),
          "long runs": np.repeat(np.tile([1, 26], 40), 20)}[layout]
    e = rng.normal(size=(ze.size, 16))
    z, cov = p.transform_with_coverage(e, ze)
    dense, cov_d = p.transform_with_coverage(e, ze, sparse=False)
    np.testing.assert_allclose(z.toarray(), dense, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(cov, cov_d)
    for i in range(ze.size):
        np.testing.assert_array_equal(z.indices[z.indptr[i]:z.indptr[i + 1]],
                                      np.flatnonzero(p.anchor_numbers_ == ze[i]))
    for k in (1, 5, 30):
        si, sv, _ = top_k_rows(z, k)
        di, dv, _ = top_k_rows(dense, k)
        np.testing.assert_array_equal(si, di)
        np.testing.assert_allclose(sv, dv, rtol=0, atol=1e-7)


def test_row_slice_equals_scipy_slicing_and_shares_memory():
    import scipy.sparse as sp

    p, _, _, e, ze = _element_setup(5)
    z = p.transform(e, ze)
    for a, b in ((0, 7), (7, 50), (20, 21), (49, 50), (10, 10)):
        got, want = row_slice(z, a, b), z[a:b]
        assert type(got) is type(want) and got.shape == want.shape and got.dtype == want.dtype
        for name in ("data", "indices", "indptr"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
            assert getattr(got, name).dtype == getattr(want, name).dtype
        np.testing.assert_array_equal(got.toarray(), want.toarray())
        np.testing.assert_array_equal(row_norms(got), row_norms(want))
        if b > a:
            assert np.shares_memory(got.data, z.data)  # no copy
    dense = z.toarray()
    np.testing.assert_array_equal(row_slice(dense, 3, 9), dense[3:9])
    messy = sp.csr_array((np.ones(3), np.array([2, 0, 1]), np.array([0, 2, 3])), shape=(2, 4))
    assert not messy.has_sorted_indices  # not canonical: scipy's slice (a copy)
    np.testing.assert_array_equal(row_slice(messy, 0, 1).toarray(), messy[0:1].toarray())


def test_top_k_from_csr_rows_equals_top_k_from_dense_rows(tmp_path):
    import h5py

    p, _, _, e, ze = _element_setup(2)
    z = p.transform(e, ze)
    for k in (1, 8, 50):  # 50 > the largest block (40): padded with -1
        si, sv, sr = top_k_rows(z, k)
        di, dv, dr = top_k_rows(dense_rows(z), k)
        np.testing.assert_array_equal(si, di)
        np.testing.assert_array_equal(sv, dv)
        np.testing.assert_allclose(sr, dr, rtol=0, atol=1e-6)  # float32 residuals
    out = {}
    for name, zz in (("sparse", z), ("dense", dense_rows(z))):
        with h5py.File(tmp_path / f"{name}.h5", "w") as h:
            w = CoordinateWriter(h, z.shape[1], "topk", top_k=16)
            w.append(zz[:20])
            w.append(zz[20:])
            out[name] = {k: h[k][()] for k in ("platonic_indices", "platonic_values")}
    for key in out["dense"]:
        np.testing.assert_array_equal(out["sparse"][key], out["dense"][key])



@pytest.mark.parametrize("width", [200, 70_000])  # uint16 columns, and int32 past 65,534
def test_topk_file_indices_read_back_as_int32_with_minus_one_padding(tmp_path, width):
    import h5py
    import scipy.sparse as sp

    from platoscope.coords import read_indices, topk_coords

    rng = np.random.default_rng(3)
    rows = []
    for i in range(30):  # rows of 3..29 entries: padded where top-k = 24 is more
        cols = np.sort(rng.choice(width, 3 + i % 27, replace=False))
        rows.append((cols, rng.random(cols.size)))
    z = sp.csr_array((np.concatenate([v for _, v in rows]),
                      np.concatenate([c for c, _ in rows]),
                      np.cumsum([0] + [c.size for c, _ in rows])), shape=(30, width))
    z = sp.csr_array(z.multiply(1.0 / row_norms(z)[:, None]))
    ref_i, ref_v, _ = top_k_rows(z, 24)
    assert np.all(ref_v[ref_i >= 0] > 0)
    with h5py.File(tmp_path / "c.h5", "w") as h:
        CoordinateWriter(h, width, "topk", top_k=24, coverage=False).append(z)
        stored = h["platonic_indices"].dtype
        idx = read_indices(h["platonic_indices"])
        vals = h["platonic_values"][()]
        res = h["platonic_residual"][()].astype(np.float64)
    assert stored == (np.uint16 if width < 65_535 else np.int32)
    assert idx.dtype == np.int32 and (idx == -1).any()
    np.testing.assert_array_equal(idx, ref_i)
    back = topk_coords(idx, vals, width)
    whole = np.diff(z.indptr) <= 24  # all entries kept: the row as it was, float32 values
    assert whole.any() and not whole.all()
    assert max_abs_diff(back[whole], z[whole]) < 1e-6
    assert np.all(row_distances(back, z) <= np.sqrt(2) * res + 1e-6)  # the stated bound


# -- real CHGNet 0.3.0 frames on the shipped default anchors (K = 38,076) -------------------------

@pytest.fixture(scope="module")
def chgnet_default(chgnet_backend, small_anchors):
    from platoscope.calculator import PlatonicCalculator

    return PlatonicCalculator(chgnet_backend, anchors=small_anchors)


def _nacl64():
    return bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)  # 64 atoms, 2 classes


def _frame(calc, atoms, step=0, dense=False):
    from platoscope.monitors import Frame

    atoms = atoms.copy()
    atoms.calc = calc
    atoms.get_forces()
    r = calc.results
    z = dense_rows(r["platonic"]) if dense else r["platonic"]
    return Frame(step=step, atoms=atoms, platonic=z, embeddings=r["embeddings"],
                 forces=r["forces"], energy=r["energy"], calc=calc, coverage=r["coverage"])


@pytest.mark.backend("chgnet")
def test_default_anchor_frame_holds_its_element_blocks_only(chgnet_default, small_anchors):
    """64 atoms on the default anchors: at most 64 x (largest element block) stored values,
    not 64 x 38,076 (the bound, not a timing)."""
    atoms = _nacl64()
    atoms.arrays["platonic"] = np.ones((64, 3))  # an earlier calculator's (or file's) rows
    atoms.calc = chgnet_default
    z = chgnet_default.get_platonic(atoms)
    k = len(small_anchors)
    r = chgnet_default.projector.n_columns - k  # the global block: R entries per row
    counts = np.bincount(small_anchors.numbers)
    assert is_sparse(z) and z.shape == (64, k + r) and k > 30000 and r == 128
    # exactly the own blocks, and the global block
    assert z.nnz == sum(int(counts[x]) for x in atoms.numbers) + 64 * r
    assert z.nnz <= 64 * (int(counts.max()) + r)
    assert nbytes(z) <= z.nnz * (8 + 4) + (64 + 1) * 8
    assert nbytes(z) < 0.1 * 64 * k * 8  # vs the dense frame (19.5 MB)
    # K > ARRAY_MAX_K: no dense copy in atoms.arrays, and no stale rows left there
    assert "platonic" not in atoms.arrays
    dense = chgnet_default.projector.transform(chgnet_default.results["embeddings"],
                                               atoms.numbers, sparse=False)
    assert max_abs_diff(z, dense) <= TOLERANCE


class _DumpAll(Monitor):
    """Dumps every frame (every score 0 exceeds the threshold -1)."""

    name = "dumpall"

    def __init__(self, dump_dir):
        super().__init__(threshold=-1.0, action="dump", dump_dir=dump_dir)

    def score(self, frame):
        return np.zeros(len(frame.atoms))


@pytest.mark.backend("chgnet")
def test_monitor_frames_drops_a_files_stale_coordinates_above_array_max_k(chgnet_default,
                                                                          tmp_path):
    """Post-processing frames that carry a ``platonic`` array (a file written with other
    anchors) on K > ARRAY_MAX_K anchors: the frame's old rows were left in its atoms, so a
    dump wrote them as this frame's coordinates."""
    from ase.io import read

    from platoscope.calculator import ARRAY_MAX_K
    from platoscope.runner import monitor_frames

    assert len(chgnet_default.anchors) > ARRAY_MAX_K
    frames = []
    for s in range(2):
        a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
        a.rattle(0.02, seed=s)
        a.arrays["platonic"] = np.ones((len(a), 3))  # another anchor set's rows
        frames.append(a)
    out = tmp_path / "run"
    monitor_frames(frames, chgnet_default, [_DumpAll(tmp_path / "dumps")], out,
                   progress=False)
    dumps = sorted((tmp_path / "dumps").glob("*.extxyz"))
    assert len(dumps) == 2
    for d in dumps:
        assert "platonic" not in read(d).arrays, d.name
    assert all("platonic" not in f.arrays for f in read(out / "frames.extxyz", ":"))


@pytest.mark.backend("chgnet")
def test_symmetry_atypical_and_transport_agree_on_sparse_and_dense_frames(chgnet_default,
                                                                           chgnet_backend,
                                                                           small_anchors):
    from platoscope.analysis.handover import hand_over
    from platoscope.monitors.atypical import AtypicalMonitor
    from platoscope.monitors.symmetry import SymmetryMonitor
    from platoscope.reference import ReferenceBank

    calc = chgnet_default
    ref = _nacl64()
    moved = ref.copy()
    moved.positions[5] += [0.02, -0.01, 0.015]  # one displaced atom breaks its class
    rattled = ref.copy()
    rattled.rattle(0.03, seed=3)
    f0s, f0d = _frame(calc, ref), _frame(calc, ref, dense=True)
    f1s, f1d = _frame(calc, moved, 1), _frame(calc, moved, 1, dense=True)
    # symmetry: the same classes, noise, threshold and scores
    ms, md = SymmetryMonitor(), SymmetryMonitor()
    ms.start(f0s)
    md.start(f0d)
    np.testing.assert_array_equal(ms.classes_, md.classes_)
    assert ms.noise_ == pytest.approx(md.noise_, abs=DIST_TOL)
    s_s, s_d = ms.score(f1s), md.score(f1d)
    np.testing.assert_allclose(s_s, s_d, rtol=0, atol=DIST_TOL)
    assert s_s.max() > ms.threshold  # the break is seen on the sparse frames
    # atypical in the projected space, against a small bank (dense bank side, sparse queries)
    refs = []
    for s in range(6):
        r = bulk("NaCl", "rocksalt", a=5.64 * (0.98 + 0.008 * s), cubic=True)
        r.rattle(0.05, seed=s)
        refs.append(r)
    bank = ReferenceBank.build(chgnet_backend, refs, small_anchors)
    mon = AtypicalMonitor(bank, space="projected", threshold=1.0)
    np.testing.assert_allclose(mon.score(f1s), mon.score(f1d), rtol=0, atol=DIST_TOL)
    # optimal transport between two frames (A: moved, B: rattled) of the same atoms
    f2s = _frame(calc, rattled, 2)
    h_s = hand_over(f1s.platonic, f2s.platonic, ref.numbers, ms.classes_)
    h_d = hand_over(f1d.platonic, dense_rows(f2s.platonic), ref.numbers, ms.classes_)
    # not the same permutation: in the near-perfect frame the symmetry-equivalent atoms have
    # equal rows up to float noise, so optimal matchings tie and the two paths' rounding picks
    # one. Both must be optimal on the dense costs and keep every atom on its element.
    z2 = dense_rows(f2s.platonic)
    cost = ((f1d.platonic[:, None, :] - z2[None]) ** 2).sum(axis=2)
    rows = np.arange(len(ref))
    for h in (h_s, h_d):
        assert sorted(h.matching.tolist()) == rows.tolist()
        np.testing.assert_array_equal(ref.numbers[h.matching], ref.numbers)
        assert cost[rows, h.matching].mean() == pytest.approx(h_d.cost, rel=0, abs=DIST_TOL)
    for key in ("cost", "identity_cost", "offset"):
        assert getattr(h_s, key) == pytest.approx(getattr(h_d, key), rel=0, abs=DIST_TOL), key
    np.testing.assert_allclose(row_distances(f1s.platonic, f2s.platonic),
                               np.linalg.norm(f1d.platonic - dense_rows(f2s.platonic), axis=1),
                               rtol=0, atol=DIST_TOL)


@pytest.mark.backend("chgnet")
@pytest.mark.backend("sevenn")
def test_bias_and_switch_check_agree_on_sparse_and_dense_frames(chgnet_default, sevenn_backend,
                                                                small_anchors):
    """CHGNet 0.3.0 running, SevenNet-0 second (both anchor matrices ship)."""
    from platoscope.calculator import PlatonicCalculator
    from platoscope.monitors.bias import BiasMonitor
    from platoscope.monitors.switch import SwitchMonitor

    calc_b = PlatonicCalculator(sevenn_backend, anchors=small_anchors)
    atoms = _nacl64()
    atoms.rattle(0.02, seed=1)
    fs, fd = _frame(chgnet_default, atoms), _frame(chgnet_default, atoms, dense=True)
    bias = BiasMonitor(calc_b, threshold=1.0, interval=1)
    s_s, s_d = bias.score(fs), bias.score(fd)
    np.testing.assert_allclose(s_s, s_d, rtol=0, atol=DIST_TOL)
    z_b = dense_rows(calc_b.results["platonic"])
    np.testing.assert_allclose(s_s, np.linalg.norm(fd.platonic - z_b, axis=1), rtol=0,
                               atol=DIST_TOL)
    assert (s_s > 0).all()
    out = {}
    for name, f in (("sparse", fs), ("dense", fd)):
        mon = SwitchMonitor(calc_b)
        mon.start(f)
        out[name] = (mon.score(f), mon._last["hand_over"])
    np.testing.assert_array_equal(out["sparse"][0], out["dense"][0])
    assert out["sparse"][1].cost == pytest.approx(out["dense"][1].cost, rel=0, abs=DIST_TOL)


@pytest.mark.backend("chgnet")
def test_sidecar_keeps_sparse_frames_derived_and_readers_rebuild_them(chgnet_default, tmp_path):
    """Default anchors: a run's sidecar derives coordinates from the embeddings (not stored);
    the reader gives back the same sparse frame; a dense store (small-K layout) keeps them
    dense."""
    from platoscope.writers import FrameSidecar, read_sidecar

    f = _frame(chgnet_default, _nacl64())
    proj = chgnet_default.projector
    args = dict(numbers=f.atoms.numbers, positions=f.atoms.positions,
                cell=np.asarray(f.atoms.cell), platonic=f.platonic, embeddings=f.embeddings)
    with FrameSidecar(tmp_path / "f.h5", projector_state=proj.get_state(),
                      store_platonic=False) as sc:
        sc.append(0, **args)
        assert "platonic" not in sc.fields
    with read_sidecar(tmp_path / "f.h5") as r:
        back = r.frame(0)["platonic"]
        assert is_sparse(back) and max_abs_diff(back, f.platonic) <= TOLERANCE


def test_transport_takes_sparse_frames_and_gives_the_dense_result():
    from platoscope.analysis import transport

    p, _, _, e, ze = _element_setup(3)
    rng = np.random.default_rng(0)
    za_ = p.transform(e, ze)
    zb_ = p.transform(e + 0.05 * rng.normal(size=e.shape), ze)
    for method in ("auto", "emd", "blocks"):
        rs = transport(za_, zb_, method=method, elements=ze)
        rd = transport(dense_rows(za_), dense_rows(zb_), method=method, elements=ze)
        np.testing.assert_array_equal(rs.matching, rd.matching)
        assert rs.cost == pytest.approx(rd.cost, rel=0, abs=DIST_TOL)
        assert is_sparse(rs.images) and rs.images.shape == rd.images.shape
        np.testing.assert_allclose(rs.images.toarray(), rd.images, rtol=0, atol=DIST_TOL)
    from platoscope.analysis import TransportMap

    with pytest.raises(InputError, match="scipy.sparse array of shape"):
        TransportMap().fit(za_, zb_)
