"""The global block of the element projection: what it adds, where it is stored, what reads it."""

import h5py
import numpy as np
import pytest

from platoscope.analysis import mutual_knn_rows
from platoscope.compare import _isometric_by_element
from platoscope.coords import (
    SPARSE_FLOAT32_ERROR,
    AtomCoordinates,
    check_comparable,
    dense_rows,
    split_global,
    top_k_rows,
    topk_parts,
    topk_to_csr,
)
from platoscope.errors import AnchorSetMismatchError, InputError
from platoscope.projection import TOLERANCE, Projector, global_subset

W2 = 1e-4


def _fitted(r=16, seed=0, w2=W2, valid=None):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(90, 12))
    zs = np.repeat([3, 8, 14], 30)
    if valid is not None:
        a[~valid] = np.nan
    p = Projector("element", global_weight=w2, global_anchors=r).fit(a, anchor_numbers=zs)
    return p, a, zs, rng


def _numpy_global(p, a, e):
    """The global block by its definition, independently of the projector's code."""
    mu = np.nanmean(a[p.valid_], axis=0)
    an = a[p.global_columns_] - mu
    an /= np.linalg.norm(an, axis=1, keepdims=True)
    an = np.nan_to_num(an)
    q = (e - mu) / np.linalg.norm(e - mu, axis=1, keepdims=True)
    c = q @ an.T
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def test_global_subset_is_round_robin_over_elements_from_the_list_alone():
    zs = np.array([8, 8, 8, 3, 3, 14, 8])
    assert global_subset(zs, 3).tolist() == [0, 3, 5]  # one per element, lowest Z first
    assert global_subset(zs, 5).tolist() == [0, 1, 3, 4, 5]  # second round: Li then O
    assert global_subset(zs, 100).tolist() == list(range(7))


def test_every_model_gets_the_same_global_columns_whatever_it_can_embed():
    valid = np.ones(90, dtype=bool)
    valid[[0, 30]] = False  # this model cannot embed two anchors the subset holds
    p, *_ = _fitted()
    q, *_ = _fitted(valid=valid)
    assert np.array_equal(p.global_columns_, q.global_columns_)
    assert p.n_columns == q.n_columns == 90 + 16


def test_coordinates_are_the_scaled_element_block_then_the_global_block():
    p, a, zs, rng = _fitted()
    e = rng.normal(size=(25, 12))
    n = rng.choice([3, 8, 14], 25)
    z = p.transform(e, n)
    assert z.shape == (25, 106)
    plain = Projector("element", global_weight=0, global_anchors=0).fit(a, anchor_numbers=zs)
    d = dense_rows(z)
    np.testing.assert_allclose(d[:, :90], np.sqrt(1 - W2) * dense_rows(plain.transform(e, n)),
                               rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(d[:, 90:], np.sqrt(W2) * _numpy_global(p, a, e),
                               rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(dense_rows(p.transform(e, n, sparse=False)), d, rtol=0,
                               atol=TOLERANCE)


@pytest.mark.parametrize("layout", ["one element", "runs", "scattered"])
def test_block_rows_and_their_top_k_match_the_dense_path_whatever_the_order(layout):
    """The CSR with the block (slice copies per run of one element's atoms, a scatter when
    elements interleave) and the ``topk`` file parts read from it (the block found at each
    row's end) against the dense path, which finds neither by layout."""
    rng = np.random.default_rng(5)
    zs = np.repeat([3, 8, 14], [20, 30, 40])  # blocks of three widths: runs break at each change
    p = Projector("element", global_weight=W2, global_anchors=16).fit(
        rng.normal(size=(90, 12)), anchor_numbers=zs)
    n = {"one element": np.full(200, 8),
         "runs": np.repeat([8, 3, 14, 8, 3], [40, 60, 7, 90, 3]),
         "scattered": rng.choice([3, 8, 14], 200)}[layout]
    e = rng.normal(size=(n.size, 12))
    z = p.transform(e, n)
    dense = p.transform(e, n, sparse=False)
    np.testing.assert_allclose(dense_rows(z), dense, rtol=0, atol=TOLERANCE)
    width = {3: 20, 8: 30, 14: 40}
    np.testing.assert_array_equal(np.diff(z.indptr), [width[x] + 16 for x in n])
    for k in (1, 8, 30):
        fast, slow = topk_parts(z, 90, k), topk_parts(dense, 90, k)
        assert fast.keys() == slow.keys()
        np.testing.assert_array_equal(fast["platonic_indices"], slow["platonic_indices"])
        for key in ("platonic_values", "platonic_residual", "platonic_global"):
            np.testing.assert_allclose(fast[key].astype(np.float64),
                                       slow[key].astype(np.float64), rtol=0, atol=1e-6)
    own, g = split_global(z, 90)
    np.testing.assert_allclose(dense_rows(own), dense[:, :90], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(g, dense[:, 90:], rtol=0, atol=TOLERANCE)


def test_an_anchor_the_model_cannot_embed_gives_a_zero_global_column():
    valid = np.ones(90, dtype=bool)
    valid[30] = False
    p, _, _, rng = _fitted(valid=valid)
    col = int(np.flatnonzero(p.global_columns_ == 30)[0])
    z = dense_rows(p.transform(rng.normal(size=(5, 12)), np.full(5, 3)))
    assert np.all(z[:, 90 + col] == 0)


def test_a_model_that_embeds_none_of_the_block_keeps_unit_element_rows():
    valid = np.ones(90, dtype=bool)
    p, *_ = _fitted(r=3)
    valid[p.global_columns_] = False
    q, a, zs, rng = _fitted(r=3, valid=valid)
    e, n = rng.normal(size=(6, 12)), np.array([3, 8, 14, 3, 8, 14])
    z = dense_rows(q.transform(e, n))
    plain = Projector("element", global_weight=0, global_anchors=0).fit(a, anchor_numbers=zs)
    assert np.all(z[:, 90:] == 0)
    np.testing.assert_allclose(z[:, :90], dense_rows(plain.transform(e, n)), rtol=0,
                               atol=TOLERANCE)


def test_atoms_of_other_elements_no_longer_tie_and_mix_as_stated():
    p, a, _, rng = _fitted()
    e = rng.normal(size=(40, 12))
    n = np.repeat([3, 8], 20)
    d = dense_rows(p.transform(e, n))
    d2 = ((d[:20, None, :] - d[None, 20:, :]) ** 2).sum(-1)  # Li rows to O rows
    g = _numpy_global(p, a, e)
    dg2 = ((g[:20, None, :] - g[None, 20:, :]) ** 2).sum(-1)
    np.testing.assert_allclose(d2, (1 - W2) * 2 + W2 * dg2, rtol=0, atol=1e-12)
    assert np.unique(np.round(d2, 13)).size > 300  # was one value, 2, for every pair


def test_a_rare_element_is_untied_in_mutual_knn():
    p, _, _, rng = _fitted(r=30)
    e = rng.normal(size=(60, 12))
    n = np.array([14] * 4 + [8] * 56)  # 4 Si atoms: their 10 nearest include O atoms
    plain = Projector("element", global_weight=0, global_anchors=0).fit(
        p.anchors_, anchor_numbers=p.anchor_numbers_)
    x, xp = dense_rows(p.transform(e, n)), dense_rows(plain.transform(e, n))
    _, tied = mutual_knn_rows(x, x, k=10, metric="euclidean")
    _, tied_plain = mutual_knn_rows(xp, xp, k=10, metric="euclidean")
    assert tied_plain[:4].all() and not tied[:4].any()


def test_state_roundtrip_and_an_old_element_state_has_no_global_block():
    p, _, _, rng = _fitted()
    e, n = rng.normal(size=(7, 12)), np.array([3, 8, 14, 3, 8, 14, 3])
    q = Projector.from_state(p.get_state())
    assert q.get_params() == p.get_params() and q.name == p.name
    np.testing.assert_allclose(dense_rows(q.transform(e, n)), dense_rows(p.transform(e, n)),
                               rtol=0, atol=TOLERANCE)  # the contract, not bit patterns
    old = {k: v for k, v in p.get_state().items() if not k.startswith("global")}
    o = Projector.from_state(old)
    assert o.global_anchors == 0 and o.n_columns == 90 and o.name == "element-softmax0.015"


def test_default_preset_has_the_block_and_bad_parameters_are_named():
    d = Projector()
    assert d.name == "element" and d.global_weight == W2 and d.global_anchors == 128
    with pytest.raises(InputError, match="element projection only"):
        Projector("shared", global_weight=W2, global_anchors=8)
    with pytest.raises(InputError, match="go together"):
        Projector("element", global_weight=W2, global_anchors=0)
    with pytest.raises(InputError, match="go together"):
        Projector("element", global_weight=1.0, global_anchors=8)


def _coords(p, e, n, **kw):
    z, cov = p.transform_with_coverage(e, n)
    return AtomCoordinates(platonic=z, numbers=n, structure_index=np.zeros(len(n), int),
                           atom_index=np.arange(len(n)), anchor_set_hash="a", data_hash="d",
                           coverage=cov, n_global=p.n_columns - p.anchors_.shape[0],
                           provenance={"projection_params": p.get_params()}, **kw)


def test_topk_file_stores_the_block_whole_in_float16_within_the_stated_bound(tmp_path):
    p, _, _, rng = _fitted(r=64)
    e = rng.normal(size=(50, 12))
    n = rng.choice([3, 8, 14], 50)
    c = _coords(p, e, n)
    path = c.save(tmp_path / "c.h5", top_k=8)  # drops most of each 30-entry element block
    with h5py.File(path) as h:
        assert h["platonic_global"].dtype == np.float16 and h["platonic_global"].shape == (50, 64)
        assert h["platonic_indices"].shape == (50, 8) and h.attrs["n_global"] == 64
    back = AtomCoordinates.load(path)
    assert back.platonic.shape == (50, 154) and back.n_anchors == 90 and back.n_global == 64
    exact, stored = dense_rows(c.platonic), dense_rows(back.platonic)
    err = np.linalg.norm(exact - stored, axis=1)
    assert np.all(err <= back.residual + SPARSE_FLOAT32_ERROR)
    own, g = split_global(back.platonic, 90)
    assert np.all(own.indices < 90) and g.shape == (50, 64)
    np.testing.assert_allclose(g, exact[:, 90:], rtol=0, atol=1e-3 * np.sqrt(W2))
    # read back as unit rows (kept entries rescaled): no row is closer to all others
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=0, atol=1e-6)
    with h5py.File(path) as h:
        r = h["platonic_residual"][()].astype(np.float64)
    assert r.max() > 0.01 and np.allclose(back.residual, np.sqrt(2) * r)


def test_a_heavily_truncated_row_is_not_a_hub_when_read_back(tmp_path):
    """Read as stored, a row that lost mass r sits ~r^2 closer to every row; rescaled, atoms of
    other elements stay where the exact rows put them (to float32/float16 rounding)."""
    p, _, _, rng = _fitted(r=16)
    e = rng.normal(size=(40, 12))
    n = np.repeat([3, 8], 20)
    c = _coords(p, e, n)
    back = AtomCoordinates.load(c.save(tmp_path / "c.h5", top_k=3))
    with h5py.File(tmp_path / "c.h5") as h:
        r = h["platonic_residual"][()].astype(np.float64)
    assert r.max() > 0.1  # 3 of 30 entries kept: much mass dropped
    exact, stored = dense_rows(c.platonic), dense_rows(back.platonic)
    cross = lambda x: ((x[:20, None] - x[None, 20:]) ** 2).sum(-1)  # noqa: E731  Li to O
    np.testing.assert_allclose(cross(stored), cross(exact), rtol=0, atol=1e-5)
    raw = dense_rows(topk_to_csr(*top_k_rows(split_global(c.platonic, 90)[0], 3)[:2], 90))
    assert np.abs(((raw[:20, None] - raw[None, 20:]) ** 2).sum(-1) - 2 * (1 - W2)).max() > 0.01


def test_files_with_and_without_the_block_refuse_to_mix():
    p, a, zs, rng = _fitted()
    plain = Projector("element", global_weight=0, global_anchors=0).fit(a, anchor_numbers=zs)
    e, n = rng.normal(size=(6, 12)), np.array([3, 8, 14, 3, 8, 14])
    with pytest.raises(AnchorSetMismatchError, match="projected differently"):
        check_comparable(_coords(p, e, n), _coords(plain, e, n))
    check_comparable(_coords(p, e, n), _coords(p, e, n))


def test_compare_rows_keep_every_inner_product_with_a_shared_global_block():
    p, _, _, rng = _fitted()
    e1, e2 = rng.normal(size=(30, 12)), rng.normal(size=(30, 12))
    n = rng.choice([3, 8, 14], 30)
    z1, z2 = p.transform(e1, n), p.transform(e2, n)
    out = _isometric_by_element([z1, z2], n)
    assert out is not None and out[0].shape[1] < 106 + 60
    full = np.vstack([dense_rows(z1), dense_rows(z2)])
    comp = np.vstack(out)
    np.testing.assert_allclose(comp @ comp.T, full @ full.T, rtol=0, atol=1e-12)


def test_coordinates_made_from_a_calculators_provenance_know_their_global_block():
    """Built by hand from the projector's rows and the calculator's provenance (n_anchors,
    n_columns), the file still stores the block apart; a file whose block was not declared
    does not compare with one whose was."""
    p, _, _, rng = _fitted()
    e, n = rng.normal(size=(6, 12)), np.array([3, 8, 14, 3, 8, 14])
    z = p.transform(e, n)
    kw = dict(numbers=n, structure_index=np.zeros(6, int), atom_index=np.arange(6),
              anchor_set_hash="a", data_hash="d")
    prov = {"n_anchors": 90, "n_columns": 106, "projection_params": p.get_params()}
    assert AtomCoordinates(platonic=z, provenance=prov, **kw).n_global == 16
    blind = AtomCoordinates(platonic=z, provenance={"projection_params": p.get_params()}, **kw)
    assert blind.n_global == 0 and blind.n_anchors == 106
    with pytest.raises(AnchorSetMismatchError, match="16 global"):
        check_comparable(AtomCoordinates(platonic=z, provenance=prov, **kw), blind)


def test_a_restart_of_a_run_recorded_before_the_global_block_is_refused(tmp_path):
    import json

    from platoscope.errors import ConfigError
    from platoscope.records import check_restart

    old = {"model": "m", "anchor_set_hash": "a", "n_anchors": 90, "projection": "element"}
    (tmp_path / "summary.json").write_text(json.dumps({"config": {}, "provenance": old}))
    with pytest.raises(ConfigError, match=r"n_columns \(recorded 90, given 106\)"):
        check_restart(tmp_path, {}, {**old, "n_columns": 106}, [])
    check_restart(tmp_path, {}, {**old, "n_columns": 90}, [])  # the element block alone
