import numpy as np
import pytest

from platoscope.coords import dense_rows
from platoscope.projection import TOLERANCE, Projector, project


def _cos(e, a):
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    return en @ an.T


def test_project_is_cosine_in_float64():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, 8)).astype(np.float32)
    a = rng.normal(size=(5, 8))
    z = project(e, a)
    assert z.dtype == np.float64 and z.shape == (50, 5)
    np.testing.assert_allclose(z, _cos(e.astype(np.float64), a), atol=1e-12)
    assert np.abs(z).max() <= 1 + 1e-12


def test_anchor_rows_project_to_one_on_themselves():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 4))
    np.testing.assert_allclose(np.diag(project(a, a)), 1.0, atol=1e-12)


def test_zero_vector_gives_zero_not_nan():
    z = project(np.zeros((2, 3)), np.eye(3))
    assert np.isfinite(z).all() and (z == 0).all()


def test_blocks_and_threads_agree_within_the_contract(monkeypatch):
    """The reproducibility contract (projection.TOLERANCE): the same embeddings give coordinates
    within 1e-12 absolute whatever the row blocking or thread count (BLAS sums in other orders;
    bit patterns are not promised)."""
    import torch

    import platoscope.projection as pj

    rng = np.random.default_rng(3)
    e, a = rng.normal(size=(1000, 16)), rng.normal(size=(300, 16))
    threads = torch.get_num_threads()
    for preset in ("paper", "shared"):
        proj = Projector(preset).fit(a)
        full = proj.transform(e)
        assert full.shape == (1000, 300)
        monkeypatch.setattr(pj, "_PARALLEL_ELEMENTS", 1000)  # blocks split over threads
        monkeypatch.setattr(pj, "BLOCK_ROWS", 7)
        np.testing.assert_allclose(proj.transform(e), full, rtol=0, atol=pj.TOLERANCE)
        try:
            for n in (1, 3):
                torch.set_num_threads(n)
                np.testing.assert_allclose(proj.transform(e), full, rtol=0, atol=pj.TOLERANCE)
        finally:
            torch.set_num_threads(threads)
            monkeypatch.undo()
    np.testing.assert_allclose(project(e, a), Projector("paper").fit(a).transform(e),
                               rtol=0, atol=pj.TOLERANCE)


def test_projection_is_a_function_of_each_row_alone():
    """A frame projected alone or inside a larger batch gives the same coordinates (within the
    contract): what run files rely on when they rebuild a frame from its embeddings."""
    rng = np.random.default_rng(4)
    e, a = rng.normal(size=(1500, 16)), rng.normal(size=(3000, 16))
    ze, za = rng.choice([1, 8, 26], 1500), rng.choice([1, 8, 26], 3000)
    for name in ("element", "shared"):  # element: rows are regrouped by element per call
        proj = Projector(name).fit(a, anchor_numbers=za)
        batch = proj.transform(e, ze)
        for s, t in ((0, 64), (700, 1213), (1499, 1500)):
            np.testing.assert_allclose(dense_rows(proj.transform(e[s:t], ze[s:t])),
                                       dense_rows(batch[s:t]), rtol=0, atol=TOLERANCE)


def test_centered_subtracts_anchor_mean():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(10, 6)) + 5.0
    e = rng.normal(size=(20, 6)) + 5.0
    p = Projector("centered").fit(a)
    m = a.mean(0)
    np.testing.assert_allclose(p.transform(e), _cos(e - m, a - m), atol=1e-12)
    # without centering, everything is near 1 for data far from the origin
    assert project(e, a).mean() > 0.9 > p.transform(e).mean()


def test_whiten_makes_reference_covariance_identity():
    rng = np.random.default_rng(4)
    mix = rng.normal(size=(5, 5))
    ref = rng.normal(size=(4000, 5)) @ mix + 3.0
    p = Projector("whiten").fit(ref[:10], ref)
    w = (ref - p.mean_) @ p.transform_
    np.testing.assert_allclose(np.cov(w, rowvar=False), np.eye(5), atol=1e-8)


def test_projector_state_roundtrip():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(100, 4))
    z = rng.choice([3, 14], 100)
    for p in (Projector("standardize").fit(ref[:3], ref), Projector("shared").fit(ref[:9]),
              Projector().fit(ref[:30], anchor_numbers=z[:30]),
              Projector("whiten", kernel="softmax", tau=0.1).fit(ref[:5], ref)):
        q = Projector.from_state(p.get_state())
        assert q.get_params() == p.get_params() and q.name == p.name
        np.testing.assert_allclose(dense_rows(p.transform(ref, z)),
                                   dense_rows(q.transform(ref, z)), rtol=0, atol=TOLERANCE)


def test_state_stores_anchors_as_float32_only_when_exact_and_follows_a_refit():
    rng = np.random.default_rng(15)
    a32 = rng.normal(size=(20, 4)).astype(np.float32).astype(np.float64)  # float32 values
    p = Projector("shared").fit(a32)
    assert p.get_state()["anchors"].dtype == np.float32
    q = Projector.from_state(p.get_state())  # read back from float32: no comparison needed
    assert q.get_state()["anchors"].dtype == np.float32
    np.testing.assert_array_equal(q.get_state()["anchors"], a32)
    a64 = a32 + 1e-12  # not representable in float32
    p.fit(a64)  # a refit replaces the anchors: the stored form follows
    assert p.get_state()["anchors"].dtype == np.float64
    np.testing.assert_array_equal(p.get_state()["anchors"], a64)
    p.fit(a32)
    assert p.get_state()["anchors"].dtype == np.float32


def test_softmax_kernel_is_sqrt_softmax_of_cosines():
    rng = np.random.default_rng(6)
    e, a = rng.normal(size=(40, 8)), rng.normal(size=(12, 8))
    z = project(e, a, tau=0.05)
    w = np.exp(_cos(e, a) / 0.05)
    np.testing.assert_allclose(z, np.sqrt(w / w.sum(1, keepdims=True)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-12)
    # monotone in the cosine: the nearest anchor keeps the largest coordinate
    np.testing.assert_array_equal(z.argmax(1), _cos(e, a).argmax(1))
    # a tiny temperature does not overflow
    assert np.isfinite(project(e, a, tau=1e-6)).all()


@pytest.mark.parametrize("tau", [0.015, 0.2, 0.002, 1e-4])
def test_softmax_kernel_forms_agree_with_the_definition(tau):
    """Both evaluations of the kernel (exp(x/2)/|exp(x/2)| at ordinary temperatures, the
    textbook form below 2/700, where exp underflows) against sqrt(softmax) in extended
    precision: within TOLERANCE, unit rows; zeros only where exp underflows."""
    rng = np.random.default_rng(16)
    e, a = rng.normal(size=(300, 6)), rng.normal(size=(700, 6))
    z = project(e, a, tau=tau)
    x = (_cos(e, a).astype(np.longdouble) / tau)
    w = np.exp(x - x.max(axis=1, keepdims=True))
    ref = np.sqrt(w / w.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(z, ref.astype(np.float64), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-13)
    if tau < 2 / 700:
        assert (z == 0).any()  # some cosines are far enough below the best to underflow
        assert (ref[z == 0] < 1e-150).all()  # and only those are 0
    else:
        assert (z > 0).all()


def test_presets_and_names():
    assert Projector().get_params() == {"normalize": "element", "kernel": "softmax",
                                        "tau": 0.015, "eps": 1e-6, "global_weight": 1e-4,
                                        "global_anchors": 128}
    assert Projector("shared").get_params() == {"normalize": "center", "kernel": "softmax",
                                                "tau": 0.015, "eps": 1e-6, "global_weight": 0.0,
                                                "global_anchors": 0}
    # the element block alone (no global block) is a projection of its own, by parameters
    assert Projector("element", global_weight=0, global_anchors=0).name == "element-softmax0.015"
    assert Projector("element", global_weight=1e-3, global_anchors=64).name == \
        "element-softmax0.015-g64w0.001"
    assert Projector().name == "element" and Projector("paper").name == "paper"
    assert Projector("shared").name == "shared" and Projector().by_element
    assert Projector("none").name == "paper" and Projector("center").name == "centered"
    assert Projector("center", kernel="softmax", tau=0.02).name == "center-softmax0.02"
    assert Projector.coerce(Projector("whitened")).get_params() == Projector("whiten").get_params()
    # the element default and shared centre on anchor means: no reference statistics needed
    assert not Projector().needs_reference and not Projector("shared").needs_reference


@pytest.mark.parametrize(
    ("e", "a", "msg"),
    [
        (np.zeros((3, 4)), np.zeros((2, 5)), "4 features but anchors have 5"),
        (np.zeros(4), np.zeros((2, 4)), "must be 2-D"),
        (np.array([[0.0, np.nan]]), np.ones((1, 2)), "non-finite values \\(first at row 0\\)"),
    ],
)
def test_bad_input_is_named(e, a, msg):
    with pytest.raises(ValueError, match=msg):
        project(e, a)


def test_projector_errors():
    with pytest.raises(ValueError, match="unknown normalize"):
        Projector("zca")
    with pytest.raises(ValueError, match="unknown kernel"):
        Projector("center", kernel="rbf")
    with pytest.raises(ValueError, match="tau must be a positive"):
        Projector("center", kernel="softmax", tau=-1)
    with pytest.raises(ValueError, match="tau applies to kernel='softmax' only"):
        Projector("center", tau=0.1)
    with pytest.raises(ValueError, match="tau must be a positive"):
        project(np.ones((1, 2)), np.ones((1, 2)), tau=0.0)
    with pytest.raises(ValueError, match="needs reference_embeddings"):
        Projector("whiten").fit(np.ones((2, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        Projector().transform(np.ones((2, 2)))


def _element_data(seed=0):
    rng = np.random.default_rng(seed)
    anchors = rng.normal(size=(60, 12))
    za = np.repeat([1, 6, 8], 20)
    za[-1] = 3  # a lone Li anchor
    emb = rng.normal(size=(25, 12))
    ze = rng.choice([1, 6, 8, 3], 25)
    return anchors, za, emb, ze


def test_element_projection_uses_own_element_anchors_centred_on_their_mean():
    anchors, za, emb, ze = _element_data()
    # the element block alone (the global block: tests/test_projection_global.py)
    p = Projector("element", tau=0.05, global_weight=0, global_anchors=0).fit(
        anchors, anchor_numbers=za)
    z = p.transform(emb, ze, sparse=False)
    assert z.shape == (25, 60)
    for i in range(25):
        own = za == ze[i]
        assert np.all(z[i, ~own] == 0.0)
        a = anchors[own]
        m = a.mean(axis=0) if own.sum() > 1 else np.zeros(12)
        u = (emb[i] - m) / np.linalg.norm(emb[i] - m)
        v = (a - m) / np.linalg.norm(a - m, axis=1, keepdims=True)
        c = v @ u / 0.05
        want = np.sqrt(np.exp(c - c.max()) / np.exp(c - c.max()).sum())
        np.testing.assert_allclose(z[i, own], want, atol=TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=TOLERANCE)
    np.testing.assert_allclose(z, project(emb, anchors, tau=0.05, numbers=ze, anchor_numbers=za),
                               atol=TOLERANCE)
    # atoms of different elements sit at sqrt(2): disjoint blocks
    i, j = np.flatnonzero(ze == 1)[0], np.flatnonzero(ze == 8)[0]
    assert np.linalg.norm(z[i] - z[j]) == pytest.approx(np.sqrt(2), abs=1e-12)


def test_element_projection_refuses_an_element_without_anchors_naming_it():
    anchors, za, emb, ze = _element_data()
    p = Projector("element").fit(anchors, anchor_numbers=za)
    ze = ze.copy()
    ze[7] = 26
    with pytest.raises(ValueError, match=r"element\(s\) Fe \(first at atom 7\).*anchors extend"):
        p.transform(emb, ze)
    with pytest.raises(ValueError, match="atomic numbers"):
        p.transform(emb)
    with pytest.raises(ValueError, match="anchor_numbers"):
        Projector("element").fit(anchors)


def test_element_projector_state_roundtrip_and_left_out_anchors():
    anchors, za, emb, ze = _element_data(1)
    anchors[3] = np.nan  # an anchor this model cannot embed
    p = Projector("element").fit(anchors, anchor_numbers=za)
    z = p.transform(emb, ze, sparse=False)
    assert np.all(z[:, 3] == 0.0)
    q = Projector.from_state(p.get_state())
    np.testing.assert_allclose(dense_rows(q.transform(emb, ze)), z, atol=TOLERANCE)
    assert 3 not in p.transform(emb, ze).indices  # a left-out anchor is not stored either


def test_coverage_is_the_best_cosine_and_anchors_are_fully_covered():
    anchors, za, emb, ze = _element_data(2)
    for name in ("element", "shared", "paper"):
        p = Projector(name).fit(anchors, anchor_numbers=za)
        z, cov = p.transform_with_coverage(anchors, za)
        np.testing.assert_allclose(cov, 1.0, atol=1e-12)  # every anchor covers itself
        np.testing.assert_allclose(dense_rows(z), dense_rows(p.transform(anchors, za)),
                                   atol=TOLERANCE)
        _, cov2 = p.transform_with_coverage(emb, ze)
        assert np.all((cov2 > -1 - 1e-12) & (cov2 < 1))
    p = Projector("paper").fit(anchors, anchor_numbers=za)
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    a = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    np.testing.assert_allclose(p.transform_with_coverage(emb)[1], (u @ a.T).max(axis=1),
                               atol=1e-12)


def test_coverage_threshold_is_the_anchors_leave_one_out_quantile():
    rng = np.random.default_rng(3)
    anchors = rng.normal(size=(40, 6))
    za = np.array([6] * 30 + [8] * 10)
    p = Projector("element").fit(anchors, anchor_numbers=za)
    for el in (6, 8):
        a = anchors[za == el] - anchors[za == el].mean(axis=0)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        g = a @ a.T
        np.fill_diagonal(g, -np.inf)
        want = np.quantile(g.max(axis=1), 0.05)
        assert p.coverage_threshold([el])[0] == pytest.approx(want, abs=1e-12)
    # an element with too few anchors for its own quantile gets the pooled one
    za2 = np.array([6] * 35 + [8] * 5)
    p2 = Projector("element").fit(anchors, anchor_numbers=za2)
    assert p2.coverage_threshold([8])[0] == pytest.approx(p2.coverage_threshold([1])[0])
    assert p2.coverage_threshold([8])[0] != pytest.approx(p.coverage_threshold([8])[0])
