import numpy as np
import pytest
from ase.build import bulk, molecule

from platoscope.anchors import AnchorSet
from platoscope.errors import CorruptFileError


def _pairs():
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    si = bulk("Si", "diamond", a=5.43)
    return [(nacl, 0), (nacl, 1), (si, 1), (bulk("Cu", "fcc", a=3.6), 0)]


def test_from_atoms_dedups_structures_and_keeps_order():
    s = AnchorSet.from_atoms(_pairs())
    assert len(s) == 4 and len(s.structures) == 3
    assert s.symbols == ["Na", "Cl", "Si", "Cu"]
    atoms, i = s[2]
    assert atoms.get_chemical_symbols()[i] == "Si"


def test_hash_depends_on_content_only():
    a, b = AnchorSet.from_atoms(_pairs()), AnchorSet.from_atoms(_pairs(), meta={"note": "x"})
    assert a.hash == b.hash
    moved = _pairs()
    moved[3] = (bulk("Cu", "fcc", a=3.61), 0)
    assert AnchorSet.from_atoms(moved).hash != a.hash
    assert AnchorSet.from_atoms(_pairs()[::-1]).hash != a.hash


def test_save_load_roundtrip_is_exact(tmp_path):
    s = AnchorSet.from_atoms(_pairs(), meta={"method": "manual"})
    path = s.save(tmp_path / "anchors.npz")
    t = AnchorSet.load(path)
    assert t.hash == s.hash and t.meta == {"method": "manual"}
    for (a1, i1), (a2, i2) in zip(s, t, strict=True):
        assert i1 == i2
        np.testing.assert_array_equal(a1.positions, a2.positions)


def test_corrupt_files_are_refused(tmp_path):
    s = AnchorSet.from_atoms(_pairs())
    path = s.save(tmp_path / "a.npz")
    raw = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="trunc.npz"):
        AnchorSet.load(tmp_path / "trunc.npz")
    np.savez(tmp_path / "foreign.npz", x=np.ones(3))
    with pytest.raises(CorruptFileError, match="not a platoscope anchor-set file"):
        AnchorSet.load(tmp_path / "foreign.npz")
    with np.load(path) as z:
        d = {k: z[k] for k in z.files}
    d["positions"] = d["positions"] + 0.1
    np.savez(tmp_path / "tampered.npz", **d)
    with pytest.raises(CorruptFileError, match="does not match its recorded hash"):
        AnchorSet.load(tmp_path / "tampered.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        AnchorSet.load(tmp_path / "missing.npz")


def test_bad_pairs():
    with pytest.raises(ValueError, match="atom index 9 out of range"):
        AnchorSet.from_atoms([(bulk("Cu", "fcc", a=3.6), 9)])
    with pytest.raises(ValueError, match="at least one anchor"):
        AnchorSet.from_atoms([])
    with pytest.raises(ValueError, match="empty"):
        AnchorSet.from_atoms([(molecule("H2")[:0], 0)])


def test_extxyz_export(tmp_path):
    from ase.io import read

    s = AnchorSet.from_atoms(_pairs())
    s.to_extxyz(tmp_path / "a.xyz")
    frames = read(tmp_path / "a.xyz", ":")
    ids = np.concatenate([f.arrays["anchor_id"] for f in frames])
    assert sorted(ids[ids >= 0].tolist()) == [0, 1, 2, 3]


class _CountingBackend:
    """Wraps a real backend and counts the structures it is asked to embed."""

    def __init__(self, backend):
        self.inner, self.seen = backend, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed(self, structures, **kw):
        self.seen += len(structures)
        return self.inner.embed(structures, **kw)


@pytest.mark.backend("chgnet")
def test_known_features_are_reused_not_recomputed(chgnet_backend, tmp_path):
    anchors = AnchorSet.from_atoms(_pairs())
    counting = _CountingBackend(chgnet_backend)
    structures = [a.copy() for a in anchors.structures[:2]]
    structures[1].positions += 4e-9  # as a file rounding to 1e-8 Å would leave it
    known = (structures, chgnet_backend.embed(structures))
    mat = anchors.embed(counting, cache_path=tmp_path / "m.npz", known=known)
    assert counting.seen == len(anchors.structures) - 2  # only the unknown ones
    fresh = anchors.embed(chgnet_backend, cache=False)
    np.testing.assert_allclose(mat, fresh, rtol=1e-5, atol=1e-6)


@pytest.mark.backend("chgnet")
def test_default_anchor_matrix_ships_for_chgnet(chgnet_backend):
    """The default set's CHGNet matrix comes from the package, with no model call."""
    anchors = AnchorSet.default()
    counting = _CountingBackend(chgnet_backend)
    mat = anchors.embed(counting)
    assert counting.seen == 0 and mat.shape == (len(anchors), 64)
    s, i = anchors[7]
    np.testing.assert_allclose(chgnet_backend.embed([s])[0][i], mat[7], rtol=1e-4, atol=1e-5)


def test_default_anchor_set_covers_every_reference_element():
    from platoscope.reference import reference_structures

    anchors = AnchorSet.default()
    mp20 = [a for a in reference_structures() if "material_id" in a.info]
    assert len(anchors) == anchors.meta["k"] == 3000 and anchors.meta["method"] == "direct"
    assert set(anchors.numbers) == set(np.concatenate([a.numbers for a in mp20]))


def test_damaged_reference_bank_and_anchor_cache_are_named(tmp_path):
    from platoscope.reference import ReferenceBank

    junk = tmp_path / "bank.npz"
    junk.write_bytes(b"not an npz at all")
    with pytest.raises(CorruptFileError, match=r"bank\.npz: not a readable reference bank"):
        ReferenceBank.load(junk)
    anchors = AnchorSet.from_atoms(_pairs())
    other = anchors.save(tmp_path / "anchors.npz")  # a valid file of another kind
    with pytest.raises(CorruptFileError, match=r"anchors\.npz: not a platoscope reference bank"):
        ReferenceBank.load(other)


@pytest.mark.backend("chgnet")
def test_foreign_anchor_cache_is_refused(chgnet_backend, tmp_path):
    anchors = AnchorSet.from_atoms(_pairs())
    other = anchors.save(tmp_path / "anchors.npz")  # an anchor set, not a matrix cache
    with pytest.raises(CorruptFileError, match="anchor-matrix cache.*delete it to recompute"):
        anchors.embed(chgnet_backend, cache_path=other)
