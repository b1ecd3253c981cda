import numpy as np
import pytest
from ase.build import bulk, molecule

from platoscope.anchors import AnchorSet
from platoscope.coords import dense_rows
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
def test_extended_set_embeds_only_the_added_anchors(chgnet_backend):
    """An extended set reuses the cached matrix of the set it extends (the default set's
    ships: re-embedding its 50,038 corpus atoms took minutes for one added anchor); a set
    whose first rows are not that set (a reordered subset inheriting the chain) does not."""
    base = AnchorSet.from_atoms(_pairs())
    parent = base.embed(chgnet_backend)  # cached (the test session's own cache folder)
    child = base.extend([bulk("GaAs", "zincblende", a=5.65)])
    counting = _CountingBackend(chgnet_backend)
    mat = child.embed(counting)
    assert counting.seen == 1  # the GaAs cell only
    np.testing.assert_array_equal(mat[:len(base)], parent)
    np.testing.assert_allclose(mat, child.embed(chgnet_backend, cache=False), rtol=1e-5,
                               atol=1e-6)
    shuffled = child.subset([4, 0, 1, 2, 3, 5])
    assert shuffled.hash_chain == [base.hash]
    counting = _CountingBackend(chgnet_backend)
    np.testing.assert_allclose(shuffled.embed(counting), mat[[4, 0, 1, 2, 3, 5]], rtol=1e-5,
                               atol=1e-6)
    assert counting.seen == len(shuffled.structures)  # nothing reused: all embedded


@pytest.mark.backend("chgnet")
def test_default_anchor_matrix_ships_for_chgnet(chgnet_backend):
    """The default set's CHGNet matrix comes from the package, with no model call."""
    _check_shipped_matrix(chgnet_backend, 64)


@pytest.mark.backend("sevenn")
def test_default_anchor_matrix_ships_for_sevenn():
    from platoscope.backends import load_backend

    _check_shipped_matrix(load_backend("sevenn:7net-0"), 128)


def _check_shipped_matrix(backend, dim):
    anchors = AnchorSet.default()
    counting = _CountingBackend(backend)
    mat = anchors.embed(counting)
    assert counting.seen == 0 and mat.shape == (len(anchors), dim) and mat.dtype == np.float64
    for k in (7, len(anchors) // 2):
        s, i = anchors[k]
        np.testing.assert_allclose(backend.embed([s])[0][i], mat[k], rtol=1e-4, atol=1e-5)


def test_shipped_anchor_sets_cover_every_reference_element():
    from platoscope.reference import reference_structures

    mp20 = [a for a in reference_structures() if "material_id" in a.info]
    elements = set(np.concatenate([a.numbers for a in mp20]))
    old = AnchorSet.named("mp20")
    assert len(old) == old.meta["k"] == 3000 and old.meta["method"] == "direct"
    assert set(old.numbers) == elements
    assert elements <= set(AnchorSet.default().numbers)
    with pytest.raises(ValueError, match="no shipped anchor set named 'x'"):
        AnchorSet.named("x")


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


def test_extend_adds_one_anchor_per_distinct_environment_and_chains_hashes(tmp_path):
    base = AnchorSet.from_atoms(_pairs(), meta={"anchor_sources": [["manual", i, 0]
                                                                   for i in range(4)]})
    gaas = bulk("GaAs", "zincblende", a=5.65).repeat(2)  # 16 atoms, 2 environments
    slab = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 3))
    slab.center(vacuum=5.0, axis=2)  # a slab: Cu environments by depth
    new = base.extend([gaas, slab], source="mine.extxyz")
    assert new.hash != base.hash and new.hash_chain == [base.hash]
    assert [new[k][1] for k in range(4)] == [base[k][1] for k in range(4)]
    added = new.symbols[4:]
    assert added.count("Ga") == 1 and added.count("As") == 1 and added.count("Cu") >= 2
    src = new.sources
    assert src[0] == ["manual", 0, 0] and all(s[0] == "mine.extxyz" for s in src[4:])
    assert {s[1] for s in src[4:]} == {0, 1}
    capped = base.extend([gaas, slab], max_per_element=1)
    assert capped.symbols[4:].count("Cu") == 1
    again = AnchorSet.load(new.save(tmp_path / "x.npz")).extend([bulk("Si", "diamond", a=5.4)])
    assert again.hash_chain == [base.hash, new.hash] and len(again.meta["extensions"]) == 2
    with pytest.raises(ValueError, match="max_per_element"):
        base.extend([gaas], max_per_element=0)


def test_anchors_extend_and_show_list_cli(tmp_path):
    from ase.io import write
    from click.testing import CliRunner

    from platoscope.cli import main

    base = AnchorSet.from_atoms(_pairs()).save(tmp_path / "a.npz")
    write(tmp_path / "traj.extxyz", [bulk("GaAs", "zincblende", a=5.65 + 0.01 * i)
                                     for i in range(4)])
    r = CliRunner().invoke(main, ["anchors", "extend", str(base), str(tmp_path / "traj.extxyz"),
                                  "--index", ":2", "--out", str(tmp_path / "b.npz")])
    assert r.exit_code == 0, r.output
    b = AnchorSet.load(tmp_path / "b.npz")
    assert len(b) == 4 + 4 and "extends" in r.output  # 2 frames x (Ga, As)
    r = CliRunner().invoke(main, ["anchors", "show", str(tmp_path / "b.npz"), "--list",
                                  "--element", "As"])
    assert r.exit_code == 0, r.output
    rows = r.output.strip().splitlines()[1:]
    assert len(rows) == 2 and all("\tAs\ttraj.extxyz\t" in x for x in rows)
    r = CliRunner().invoke(main, ["anchors", "show", str(tmp_path / "b.npz"), "--list",
                                  "--element", "Xx"])
    assert r.exit_code != 0 and "no anchor of element" in r.output
    # --out onto the set being extended (with or without .npz) is refused, the file kept
    before = (tmp_path / "a.npz").read_bytes()
    for out in ("a.npz", "a"):
        r = CliRunner().invoke(main, ["anchors", "extend", str(base),
                                      str(tmp_path / "traj.extxyz"), "--out", str(tmp_path / out)])
        assert r.exit_code == 1 and "is the anchor set being extended" in r.output, r.output
    assert (tmp_path / "a.npz").read_bytes() == before


@pytest.mark.backend("chgnet")
def test_reference_bank_extend_keeps_rows_and_projector(chgnet_backend, tmp_path):
    from platoscope.errors import InputError
    from platoscope.projection import TOLERANCE
    from platoscope.reference import ReferenceBank

    anchors = AnchorSet.from_atoms(_pairs())
    bank = ReferenceBank.build(chgnet_backend, [bulk("NaCl", "rocksalt", a=5.64),
                                                bulk("Si", "diamond", a=5.43)], anchors)
    extra = bulk("Cu", "fcc", a=3.6).repeat(2)
    big = bank.extend(chgnet_backend, [extra], source="cu.extxyz")
    assert len(big) == len(bank) + 8 and big.structure_index[-1] == 2
    np.testing.assert_allclose(dense_rows(big.coords[:len(bank)]), dense_rows(bank.coords),
                               atol=TOLERANCE)
    np.testing.assert_allclose(big.embeddings[len(bank):],
                               chgnet_backend.embed([extra])[0], atol=1e-5)
    assert big.data_hash != bank.data_hash
    assert big.provenance["extensions"][0]["source"] == "cu.extxyz"
    loaded = ReferenceBank.load(big.save(tmp_path / "big.npz"))
    assert len(loaded) == len(big)
    # the same structures again (the same file twice) would count their atoms twice: refused,
    # naming the extension that added them, before any forward pass
    with pytest.raises(InputError, match="already in the bank .*'cu.extxyz'"):
        loaded.extend(chgnet_backend, [extra.copy()])
    with pytest.raises(InputError, match="already in the bank .*when it was built"):
        bank.extend(chgnet_backend, [bulk("NaCl", "rocksalt", a=5.64),
                                     bulk("Si", "diamond", a=5.43)])

    # an element the model lacks, in frame 3 of a file read with an index: named by its file
    # and frame (was "structure 0", its place in the selection)
    from ase.io import write

    from platoscope.errors import UnsupportedElementError
    from platoscope.readers import read_structures

    frames = [bulk("Si", "diamond", a=5.43) for _ in range(4)]
    frames[3].numbers[0] = 95  # Am: CHGNet has no parameters for it
    write(tmp_path / "am.extxyz", frames)
    with pytest.raises(UnsupportedElementError, match=r"^frame 3 of .*am\.extxyz: model "
                       r"'chgnet:0\.3\.0' has no parameters for element\(s\) Am"):
        bank.extend(chgnet_backend, read_structures(tmp_path / "am.extxyz", index="1:"))

    # an element the anchor set lacks, on an element-projection bank: refused, named (the
    # bank was written with atoms that had no coordinates, failing on first use)
    by_element = ReferenceBank.build(chgnet_backend, [bulk("NaCl", "rocksalt", a=5.64)],
                                     anchors, projection="element")
    write(tmp_path / "gaas.extxyz", [bulk("Si", "diamond", a=5.43),
                                     bulk("GaAs", "zincblende", a=5.65)])
    with pytest.raises(InputError, match=r"^frame 1 of .*gaas\.extxyz: the bank's anchor set "
                       r"has no anchor of element\(s\) Ga, As"):
        by_element.extend(chgnet_backend, read_structures(tmp_path / "gaas.extxyz"))
    assert len(by_element.extend(chgnet_backend, [bulk("Cu", "fcc", a=3.6)])) == \
        len(by_element) + 1


@pytest.mark.backend("chgnet")
def test_reference_extend_cli_extends_the_default_bank(chgnet_backend, tmp_path):
    """`reference extend default FILES --model M` extends the bank that runs of M use without
    --reference (it needed a bank file, so the default bank could not be extended from the
    command line); the result serves a run on the default anchors as --reference. A BANK that
    is neither a file nor 'default' is a usage error naming BANK, before any model loads."""
    from ase.io import write
    from click.testing import CliRunner

    from platoscope.assembly import load_reference
    from platoscope.cli import main
    from platoscope.reference import default_bank

    si = bulk("Si", "diamond", a=5.43, cubic=True)
    si.rattle(0.05, seed=3)
    write(tmp_path / "si.extxyz", [si])
    out = tmp_path / "ext.npz"
    r = CliRunner().invoke(main, ["reference", "extend", "default", str(tmp_path / "si.extxyz"),
                                  "--model", "chgnet:0.3.0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    anchors = AnchorSet.default()
    base = default_bank(chgnet_backend, anchors)
    ext = load_reference(out, chgnet_backend, anchors, projection="element")
    assert len(ext) == len(base) + 8
    assert ext.provenance["extensions"][-1]["source"] == "si.extxyz"
    np.testing.assert_allclose(ext.embeddings[len(base):], chgnet_backend.embed([si])[0],
                               atol=1e-5)

    r = CliRunner().invoke(main, ["reference", "extend", str(tmp_path / "nope.npz"),
                                  str(tmp_path / "si.extxyz"), "--out", str(tmp_path / "x.npz")])
    assert r.exit_code == 2 and "neither a bank file nor 'default'" in r.output, r.output


@pytest.mark.backend("chgnet")
def test_default_bank_of_another_projection_reuses_the_shipped_embeddings(chgnet_backend):
    """A default bank for a projection or anchor set that does not ship re-embedded the 23k
    reference atoms (3.5 min for --projection paper); the raw embeddings do not depend on
    either, so the shipped bank's are reused (checked by model and data hash) and only the
    projector is fitted."""
    from platoscope.paths import default_data_path
    from platoscope.projection import Projector
    from platoscope.reference import ReferenceBank, bank_file_name, default_bank

    mp20 = AnchorSet.named("mp20")
    bank = default_bank(chgnet_backend, mp20, projection="paper")
    shipped = ReferenceBank.load(default_data_path(bank_file_name(
        chgnet_backend.spec, AnchorSet.default().hash, "element")))
    assert bank.provenance["embeddings_from"].startswith("reference_chgnet")
    np.testing.assert_array_equal(bank.embeddings, shipped.embeddings)
    assert bank.data_hash == shipped.data_hash and bank.anchor_set_hash == mp20.hash
    assert bank.projector.name == "paper" and bank.provenance["projection"] == "paper"
    direct = Projector("paper").fit(mp20.embed(chgnet_backend), anchor_numbers=mp20.numbers)
    np.testing.assert_array_equal(bank.projector.anchors_, direct.anchors_)
    again = default_bank(chgnet_backend, mp20, projection="paper")  # now from the cache
    np.testing.assert_array_equal(again.embeddings, bank.embeddings)


@pytest.mark.backend("chgnet")
def test_bank_saved_against_a_shipped_matrix_refers_to_it(small_setup, chgnet_backend, tmp_path):
    """Shipped banks name their anchor-matrix file (data/anchors/...) instead of holding a
    second copy of it; loading checks the file's content hash, and a missing or different
    matrix is refused, naming the file."""
    from platoscope.anchors import CACHE_FORMAT
    from platoscope.errors import InputError
    from platoscope.npzfiles import savez_atomic
    from platoscope.reference import ReferenceBank

    anchors, bank, _, _ = small_setup
    matrix = bank.projector.get_state()["anchors"]
    (tmp_path / "anchors").mkdir()
    src = tmp_path / "anchors" / "m.npz"
    savez_atomic(src, compressed=True, format=np.array(CACHE_FORMAT), matrix=matrix,
                 anchor_hash=np.array(anchors.hash), fingerprint=np.array("x"),
                 model=np.array("chgnet"), layer=np.array("x"))
    path = bank.save(tmp_path / "bank.npz", anchors_from=src)
    assert path.stat().st_size < bank.save(tmp_path / "full.npz").stat().st_size
    loaded = ReferenceBank.load(path)
    np.testing.assert_array_equal(loaded.projector.anchors_, bank.projector.anchors_)
    np.testing.assert_allclose(dense_rows(loaded.coords), dense_rows(bank.coords), atol=1e-12)

    savez_atomic(src, compressed=True, format=np.array(CACHE_FORMAT), matrix=matrix * 1.5,
                 anchor_hash=np.array(anchors.hash), fingerprint=np.array("x"),
                 model=np.array("chgnet"), layer=np.array("x"))
    with pytest.raises(CorruptFileError, match="not the anchor matrix"):
        ReferenceBank.load(path)
    with pytest.raises(InputError, match="does not hold this bank's anchor matrix"):
        bank.save(tmp_path / "other.npz", anchors_from=src)
    src.unlink()
    with pytest.raises(CorruptFileError, match="is missing"):
        ReferenceBank.load(path)


def test_reference_extend_refuses_to_overwrite_the_bank_it_extends(tmp_path):
    """`reference extend BANK FILES --out BANK` would replace the bank that runs and files
    point to (``anchors extend`` refuses the same): refused before any model loads, the bank
    left as it was."""
    from click.testing import CliRunner

    from platoscope.cli import main

    bank = tmp_path / "bank.npz"
    bank.write_bytes(b"not touched")
    from pathlib import Path

    structure = Path(__file__).resolve().parents[1] / "examples" / "structures" / "Si.cif"
    r = CliRunner().invoke(main, ["reference", "extend", str(bank), str(structure),
                                  "--out", str(tmp_path / "." / "bank.npz")])
    assert r.exit_code != 0 and "is the bank being extended" in r.output, r.output
    assert bank.read_bytes() == b"not touched"
