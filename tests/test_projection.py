import numpy as np
import pytest

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
    proj = Projector().fit(a)
    batch = proj.transform(e)
    for s, t in ((0, 64), (700, 1213), (1499, 1500)):
        np.testing.assert_allclose(proj.transform(e[s:t]), batch[s:t], rtol=0, atol=TOLERANCE)


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
    for p in (Projector("standardize").fit(ref[:3], ref), Projector().fit(ref[:9]),
              Projector("whiten", kernel="softmax", tau=0.1).fit(ref[:5], ref)):
        q = Projector.from_state(p.get_state())
        assert q.get_params() == p.get_params() and q.name == p.name
        np.testing.assert_allclose(p.transform(ref), q.transform(ref), rtol=0, atol=TOLERANCE)


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


def test_presets_and_names():
    assert Projector().get_params() == {"normalize": "center", "kernel": "softmax",
                                        "tau": 0.015, "eps": 1e-6}
    assert Projector().name == "shared" and Projector("paper").name == "paper"
    assert Projector("none").name == "paper" and Projector("center").name == "centered"
    assert Projector("center", kernel="softmax", tau=0.02).name == "center-softmax0.02"
    assert Projector.coerce(Projector("whitened")).get_params() == Projector("whiten").get_params()
    # the shared default centres on the anchor mean, so it needs no reference statistics
    assert not Projector().needs_reference


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
