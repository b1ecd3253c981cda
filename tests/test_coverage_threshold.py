"""Coverage thresholds held out by anchor structure (issue 10), on real CHGNet 0.3.0 anchors."""

import numpy as np
import pytest

from platoscope.anchors import AnchorSet
from platoscope.projection import (
    COVERAGE_QUANTILE,
    MIN_ANCHORS_FOR_THRESHOLD,
    TOLERANCE,
    Projector,
)

pytestmark = [pytest.mark.backend("chgnet"), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def dup_set(chgnet_backend):
    """Every oxygen atom of 12 small MP-20 structures as an anchor, and one Na structure: the
    symmetry-equivalent O sites of one structure are near-duplicate anchors. Returns the set
    and CHGNet 0.3.0's anchor matrix."""
    from platoscope.reference import reference_structures

    refs = [a for a in reference_structures() if "material_id" in a.info]
    ox = [a for a in refs if 8 in a.numbers and len(a) <= 16][:12]
    na = next(a for a in refs if set(a.numbers) == {11, 8} and (a.numbers == 11).sum() >= 2)
    pairs = [(a, int(i)) for a in ox for i in np.flatnonzero(a.numbers == 8)]
    pairs += [(na, int(i)) for i in np.flatnonzero(na.numbers == 11)]
    aset = AnchorSet.from_atoms(pairs)
    return aset, aset.embed(chgnet_backend, cache=False)


def _held_out(mat, numbers, groups):
    """Reference: per element, each anchor's best centred cosine to its element's anchors of
    another group (NaN if none)."""
    best = np.full(len(numbers), np.nan)
    for z in np.unique(numbers):
        sel = np.flatnonzero(numbers == z)
        a = mat[sel] - mat[sel].mean(axis=0)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        g = a @ a.T
        g[groups[sel][:, None] == groups[sel][None, :]] = -np.inf
        b = g.max(axis=1)
        best[sel] = np.where(np.isfinite(b), b, np.nan)
    return best


def test_leave_one_structure_out_is_below_leave_one_anchor_out(dup_set):
    aset, mat = dup_set
    z, groups = aset.numbers, aset.groups
    assert groups.max() + 1 == len(aset.structures)  # each stored structure its own group
    old = Projector("element").fit(mat, anchor_numbers=z)
    new = Projector("element").fit(mat, anchor_numbers=z, anchor_groups=groups)
    assert old.coverage_holdout == "anchor" and new.coverage_holdout == "structure"
    t_old, t_new = old.coverage_threshold([8])[0], new.coverage_threshold([8])[0]
    # O sites of one structure cover each other: the anchor-wise threshold sits near 1
    assert t_old > 0.99
    assert t_new < t_old - 0.05
    ref = _held_out(mat, z, groups)
    want = np.quantile(ref[(z == 8) & np.isfinite(ref)], COVERAGE_QUANTILE)
    assert t_new == pytest.approx(want, abs=1e-12)
    # coordinates do not depend on the groups
    e = mat[::3]
    np.testing.assert_allclose(new.transform(e, z[::3], sparse=False),
                               old.transform(e, z[::3], sparse=False), atol=TOLERANCE)


def test_without_groups_the_threshold_is_leave_one_anchor_out(dup_set):
    """The group-less path is the rule before groups: each anchor held out alone."""
    aset, mat = dup_set
    z = aset.numbers
    p = Projector("element").fit(mat, anchor_numbers=z)
    ref = _held_out(mat, z, np.arange(len(z)))
    for el in (8, 11):
        want = np.quantile(ref[z == el], COVERAGE_QUANTILE)
        if (z == el).sum() >= MIN_ANCHORS_FOR_THRESHOLD:
            assert p.coverage_threshold([el])[0] == pytest.approx(want, abs=1e-12)
    # singleton groups are the same rule
    q = Projector("element").fit(mat, anchor_numbers=z, anchor_groups=np.arange(len(z)))
    np.testing.assert_allclose(q.coverage_threshold([8, 11]), p.coverage_threshold([8, 11]),
                               atol=1e-12)


def test_an_element_of_one_structure_falls_back_to_the_pooled_threshold(dup_set):
    aset, mat = dup_set
    z, groups = aset.numbers, aset.groups
    # copy the Na anchors so that Na has >= MIN anchors, all in one structure
    rep = np.concatenate([np.arange(len(z)), np.repeat(np.flatnonzero(z == 11), 10)])
    zr, gr, mr = z[rep], groups[rep], mat[rep]
    assert (zr == 11).sum() >= MIN_ANCHORS_FOR_THRESHOLD
    old = Projector("element").fit(mr, anchor_numbers=zr)
    new = Projector("element").fit(mr, anchor_numbers=zr, anchor_groups=gr)
    pooled = new.coverage_threshold([1])[0]  # no H anchor: the pooled value
    assert new.coverage_threshold([11])[0] == pytest.approx(pooled, abs=0)
    assert old.coverage_threshold([11])[0] > 1 - 1e-6  # copies cover each other
    assert new.coverage_threshold([11])[0] < old.coverage_threshold([11])[0] - 0.05
    ref = _held_out(mr, zr, gr)
    assert np.isnan(ref[zr == 11]).all()
    assert pooled == pytest.approx(np.quantile(ref[np.isfinite(ref)], COVERAGE_QUANTILE),
                                   abs=1e-12)


def test_shared_projection_holds_out_structures_too(dup_set):
    aset, mat = dup_set
    z, groups = aset.numbers, aset.groups
    old = Projector("shared").fit(mat, anchor_numbers=z)
    new = Projector("shared").fit(mat, anchor_numbers=z, anchor_groups=groups)
    a = mat - mat.mean(axis=0)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    g = a @ a.T
    g[groups[:, None] == groups[None, :]] = -np.inf
    best = g.max(axis=1)
    o = z == 8
    assert new.coverage_threshold([8])[0] == pytest.approx(
        np.quantile(best[o], COVERAGE_QUANTILE), abs=1e-12)
    assert new.coverage_threshold([8])[0] < old.coverage_threshold([8])[0]


def test_groups_survive_the_state_and_bad_groups_are_named(dup_set):
    aset, mat = dup_set
    z, groups = aset.numbers, aset.groups
    p = Projector("element").fit(mat, anchor_numbers=z, anchor_groups=groups)
    q = Projector.from_state(p.get_state())
    assert q.coverage_holdout == "structure"
    np.testing.assert_allclose(q.coverage_threshold([8, 11]), p.coverage_threshold([8, 11]),
                               atol=1e-12)
    # string ids are labels too
    s = Projector("element").fit(mat, anchor_numbers=z, anchor_groups=[f"s{g}" for g in groups])
    np.testing.assert_allclose(s.coverage_threshold([8]), p.coverage_threshold([8]), atol=1e-12)
    with pytest.raises(ValueError, match=r"anchor_groups must have shape"):
        Projector("element").fit(mat, anchor_numbers=z, anchor_groups=groups[:-1])
    with pytest.raises(ValueError, match="integer or string ids"):
        Projector("element").fit(mat, anchor_numbers=z, anchor_groups=groups.astype(float))


def test_anchor_set_groups_are_the_stored_structures(dup_set):
    aset, _ = dup_set
    a, i = aset[0]
    b, j = aset[len(aset) - 1]
    moved = a.copy()
    moved.positions += 0.01  # another structure
    # the same structure from two sources is stored once: one group
    twin = AnchorSet.from_atoms([(a, i), (a.copy(), i + 1), (moved, i), (b, j)], meta={
        "anchor_sources": [["mp", "x", i], ["other", "y", i + 1], ["mp", "x", i],
                           ["mp", "z", j]]})
    assert len(twin.structures) == 3
    np.testing.assert_array_equal(twin.groups, [0, 0, 1, 2])


def test_calculators_and_banks_fit_with_the_anchor_sets_groups(dup_set, chgnet_backend):
    from platoscope import PlatonicCalculator
    from platoscope.reference import ReferenceBank, default_bank

    aset, _ = dup_set
    calc = PlatonicCalculator(chgnet_backend, anchors=aset)
    assert calc.projector.coverage_holdout == "structure"
    assert calc.provenance()["coverage_holdout"] == "structure"
    np.testing.assert_array_equal(calc.projector.anchor_groups_, aset.groups)
    bank = ReferenceBank.build(chgnet_backend, list(aset.structures[:3]), aset)
    assert bank.projector.coverage_holdout == bank.provenance["coverage_holdout"] == "structure"
    shipped = default_bank(chgnet_backend, AnchorSet.default())
    assert shipped.projector.coverage_holdout == "structure"


def test_a_default_bank_without_groups_is_refitted(chgnet_backend):
    """A cached default bank from before structure hold-out keeps its embeddings and gets a
    projector fitted with the anchor set's groups."""
    from platoscope.paths import cache_dir
    from platoscope.reference import ReferenceBank, default_bank

    mp20 = AnchorSet.named("mp20")
    bank = default_bank(chgnet_backend, mp20, projection="centered")
    assert bank.projector.coverage_holdout == "structure"
    path = next((cache_dir() / "reference").glob("*_centered.npz"))
    stale = Projector("centered").fit(bank.projector.anchors_, anchor_numbers=mp20.numbers)
    ReferenceBank(bank.embeddings, bank.numbers, bank.structure_index, projector=stale,
                  anchor_set_hash=bank.anchor_set_hash, data_hash=bank.data_hash,
                  provenance=bank.provenance).save(path)
    again = default_bank(chgnet_backend, mp20, projection="centered")
    assert again.projector.coverage_holdout == "structure"
    np.testing.assert_array_equal(again.embeddings, bank.embeddings)
    np.testing.assert_allclose(again.projector.coverage_threshold([8]),
                               bank.projector.coverage_threshold([8]), atol=1e-12)


def test_a_bank_records_its_projectors_projection_and_holdout(dup_set, tmp_path):
    """The bank's provenance names the projection and coverage hold-out of the projector it
    holds, whatever the provenance it was given says (callers used to set both by hand)."""
    from platoscope.reference import ReferenceBank

    aset, mat = dup_set
    given = {"model": "chgnet:0.3.0", "projection": "paper", "coverage_holdout": "stale"}
    for groups, want in ((None, "anchor"), (aset.groups, "structure")):
        proj = Projector("element").fit(mat, anchor_numbers=aset.numbers, anchor_groups=groups)
        bank = ReferenceBank(mat[:5], aset.numbers[:5], np.zeros(5, dtype=int), projector=proj,
                             anchor_set_hash=aset.hash, data_hash="x", provenance=given)
        assert bank.provenance["projection"] == "element"
        assert bank.provenance["coverage_holdout"] == want
        assert bank.provenance["model"] == "chgnet:0.3.0" and given["projection"] == "paper"
        back = ReferenceBank.load(bank.save(tmp_path / f"{want}.npz"))
        assert back.provenance["coverage_holdout"] == back.projector.coverage_holdout == want
