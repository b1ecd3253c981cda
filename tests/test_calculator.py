"""PlatonicCalculator end to end on every backend installed here: MD, relaxation, files, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.optimize import BFGS

from platoscope import AnchorSet, PlatonicCalculator
from platoscope.coords import dense_rows, is_sparse
from platoscope.errors import (
    AnchorCacheMismatchError,
    InvalidStructureError,
    UnsupportedElementError,
)

MACE_MODEL = Path(__file__).parent / "data" / "mace_emt_tiny.model"
BACKENDS = [
    pytest.param("chgnet", marks=pytest.mark.backend("chgnet")),
    pytest.param("sevenn", marks=pytest.mark.backend("sevenn")),
    pytest.param("mace", marks=pytest.mark.backend("mace")),
]


def system(name: str) -> Atoms:
    """A small crystal each model covers (the tiny MACE knows only EMT metals)."""
    if name == "mace":
        a = bulk("Cu", "fcc", a=3.65, cubic=True).repeat((2, 1, 1))
        a.numbers[[1, 6]] = 79
        return a
    return bulk("NaCl", "rocksalt", a=5.64, cubic=True)


def anchors_for(name: str) -> AnchorSet:
    if name == "mace":
        cu = bulk("Cu", "fcc", a=3.6)
        alloy = system("mace")
        return AnchorSet.from_atoms([(cu, 0), (alloy, 0), (alloy, 1), (bulk("Au", "fcc", a=4.1), 0),
                                     (bulk("Ni", "fcc", a=3.5), 0)])
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    return AnchorSet.from_atoms([(nacl, 0), (nacl, 1), (bulk("Si", "diamond", a=5.43), 0),
                                 (bulk("NaCl", "rocksalt", a=6.0), 1),
                                 (bulk("Cu", "fcc", a=3.6), 0)])


@pytest.fixture
def backend(request):
    return request.getfixturevalue(f"{request.param}_backend")


@pytest.fixture
def name(request):
    return request.param


def both(f):
    return pytest.mark.parametrize(("backend", "name"), [
        pytest.param(p.values[0], p.values[0], marks=p.marks) for p in BACKENDS
    ], indirect=True)(f)


@both
def test_results_equal_backend_and_coordinates_are_the_projection(backend, name, single_thread):
    anchors = anchors_for(name)
    atoms = system(name)
    atoms.rattle(0.03, seed=1)
    calc = PlatonicCalculator(backend, anchors=anchors)
    atoms.calc = calc
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    ref, feats = backend.compute(atoms.copy(), ["energy", "forces"])
    assert e == pytest.approx(ref["energy"], rel=1e-6)
    np.testing.assert_allclose(f, ref["forces"], rtol=1e-6, atol=1e-6 * np.abs(f).max())
    zs = calc.get_platonic()
    k = len(anchors)
    r = min(k, calc.projector.global_anchors)  # the default projection's global block
    assert zs.shape == (len(atoms), k + r) and zs.dtype == np.float64
    assert is_sparse(zs)  # the element projection: each row stores its element's block
    z = dense_rows(zs)
    emb = calc.get_embeddings()
    np.testing.assert_allclose(emb, feats, rtol=1e-6, atol=1e-7)
    mat = anchors.embed(backend)
    np.testing.assert_array_equal(atoms.arrays["platonic"], z)  # small K: dense copy
    # default "element": each atom on its own element's anchors, centred on their mean, through
    # sqrt(softmax(cos / 0.015)); zero elsewhere
    za = anchors.numbers
    for i, el in enumerate(atoms.numbers):
        own = za == el
        m = mat[own].mean(axis=0) if own.sum() > 1 else np.zeros(mat.shape[1])
        c = _unit((emb[i] - m)[None]) @ _unit(mat[own] - m).T
        w = np.exp((c - c.max()) / 0.015)
        scale = np.sqrt(1 - calc.projector.global_weight)
        np.testing.assert_allclose(z[i, :k][own], scale * np.sqrt(w / w.sum())[0], atol=1e-10)
        assert np.all(z[i, :k][~own] == 0)
        # the whole block, then the R global columns
        np.testing.assert_array_equal(zs[[i]].indices,
                                      np.r_[np.flatnonzero(own), np.arange(k, k + r)])
        assert calc.get_property("coverage")[i] == pytest.approx(c.max(), abs=1e-10)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-12)
    # "shared": one centring over all anchors, the same kernel
    shared = PlatonicCalculator(backend, anchors=anchors, projection="shared")
    m = mat.mean(axis=0)
    c = _unit(emb - m) @ _unit(mat - m).T
    w = np.exp((c - c.max(axis=1, keepdims=True)) / 0.015)
    np.testing.assert_allclose(shared.get_platonic(atoms.copy()),
                               np.sqrt(w / w.sum(axis=1, keepdims=True)), atol=1e-10)
    # "paper": the plain cosines of Li & Walsh
    paper = PlatonicCalculator(backend, anchors=anchors, projection="paper")
    np.testing.assert_allclose(paper.get_platonic(atoms.copy()), _unit(emb) @ _unit(mat).T,
                               atol=1e-10)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@both
def test_anchor_atom_in_its_own_structure_projects_to_one(backend, name):
    anchors = anchors_for(name)
    s, i = anchors[0]
    atoms = s.copy()
    atoms.calc = PlatonicCalculator(backend, anchors=anchors, projection="paper")
    assert atoms.calc.get_platonic(atoms)[i, 0] == pytest.approx(1.0, abs=1e-9)
    atoms.calc = PlatonicCalculator(backend, anchors=anchors)
    assert np.argmax(atoms.calc.get_platonic(atoms)[i]) == 0


@both
def test_md_run_keeps_coordinates_in_extxyz(backend, name, tmp_path):
    atoms = system(name)
    # plain cosines: with only 5 anchors the default softmax kernel is nearly one-hot
    atoms.calc = PlatonicCalculator(backend, anchors=anchors_for(name), projection="paper")
    frames = []
    dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=600, friction=0.01,
                   rng=np.random.default_rng(0))

    def keep():
        frames.append(atoms.arrays["platonic"].copy())
        write(tmp_path / "md.xyz", atoms, append=True)

    dyn.attach(keep, interval=1)
    dyn.run(4)
    back = read(tmp_path / "md.xyz", ":")
    assert len(back) == len(frames) == 5
    for f, z in zip(back, frames, strict=True):
        np.testing.assert_allclose(f.arrays["platonic"], z, atol=1e-7)
    # atoms moved 4 fs, coordinates followed (far above float64 noise)
    assert np.abs(frames[0] - frames[-1]).max() > 1e-9


@both
def test_relaxation_with_cell_filter(backend, name):
    atoms = system(name)
    atoms.rattle(0.05, seed=2)
    atoms.set_cell(atoms.cell * 1.02, scale_atoms=True)
    atoms.calc = PlatonicCalculator(backend, anchors=anchors_for(name))
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=0.05, steps=60)
    assert np.abs(atoms.get_forces()).max() < 0.05 + 1e-9 or opt.nsteps == 60
    assert atoms.calc.get_platonic().shape == (len(atoms), 5 + 5)  # 5 anchors, 5 global columns


@pytest.mark.backend("chgnet")
def test_embeddings_only_without_anchors(chgnet_backend):
    atoms = system("chgnet")
    atoms.calc = PlatonicCalculator(chgnet_backend)
    with pytest.raises(InvalidStructureError, match="no structure has been calculated yet"):
        atoms.calc.get_embeddings()
    assert atoms.calc.get_embeddings(atoms).shape == (8, 64)
    from ase.calculators.calculator import PropertyNotImplementedError

    with pytest.raises(PropertyNotImplementedError, match="no anchors"):
        atoms.calc.get_platonic()


@pytest.mark.backend("chgnet")
def test_bad_structures_raise_and_keep_last_good_results(chgnet_backend):
    calc = PlatonicCalculator(chgnet_backend, anchors=anchors_for("chgnet"))
    good = system("chgnet")
    good.calc = calc
    z = dense_rows(calc.get_platonic(good))
    bad = good.copy()
    bad.positions[3, 1] = np.nan
    with pytest.raises(InvalidStructureError, match=r"atom indices \[3\]"):
        calc.get_potential_energy(bad)
    with pytest.raises(InvalidStructureError, match="empty Atoms"):
        calc.get_potential_energy(Atoms(cell=[3, 3, 3], pbc=True))
    es = good.copy()
    es.numbers[0] = 99
    with pytest.raises(UnsupportedElementError, match=r"Es \(Z=99\)"):
        calc.get_potential_energy(es)
    np.testing.assert_array_equal(bad.arrays["platonic"], z)  # copied from good, not overwritten
    np.testing.assert_array_equal(dense_rows(calc.get_platonic(good)), z)


@pytest.mark.backend("chgnet")
def test_anchor_with_element_the_model_lacks(chgnet_backend):
    weird = bulk("Cu", "fcc", a=3.6)
    weird.numbers[0] = 99
    with pytest.raises(UnsupportedElementError, match="Es"):
        PlatonicCalculator(chgnet_backend, anchors=AnchorSet.from_atoms([(weird, 0)]))


@pytest.mark.backend("chgnet")
def test_anchor_cache_is_reused_and_checked(chgnet_backend, tmp_path):
    anchors = anchors_for("chgnet")
    path = tmp_path / "cache.npz"
    first = anchors.embed(chgnet_backend, cache_path=path)
    assert path.is_file()
    np.testing.assert_array_equal(anchors.embed(chgnet_backend, cache_path=path), first)
    other = AnchorSet.from_atoms([anchors[0], anchors[1]])
    with pytest.raises(AnchorCacheMismatchError, match="holds anchors of set"):
        other.embed(chgnet_backend, cache_path=path)


@pytest.mark.backend("chgnet")
def test_anchor_cache_from_changed_weights_is_refused(tmp_path):
    """Copy the CHGNet weight file, change one byte: the fingerprint changes and the cache
    made with the original weights is refused."""
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    from platoscope.backends.chgnet import CHGNetBackend

    anchors = anchors_for("chgnet")
    original = CHGNetBackend("0.3.0")
    path = tmp_path / "cache.npz"
    anchors.embed(original, cache_path=path)

    weights = tmp_path / "chgnet_copy.pth.tar"
    shutil.copy(original.weights_path, weights)
    changed = CHGNetBackend(calc=CHGNetCalculator(model=CHGNet.from_file(str(weights))))
    changed.weights_path = str(weights)
    assert changed.fingerprint == original.fingerprint  # same bytes, same fingerprint
    with open(weights, "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    assert changed.fingerprint != original.fingerprint
    with pytest.raises(AnchorCacheMismatchError, match="changed weight file"):
        anchors.embed(changed, cache_path=path)


@pytest.mark.backend("sevenn")
@pytest.mark.backend("chgnet")
def test_cache_from_another_model_is_refused(chgnet_backend, sevenn_backend, tmp_path):
    anchors = anchors_for("chgnet")
    path = tmp_path / "cache.npz"
    anchors.embed(chgnet_backend, cache_path=path)
    msg = "made by chgnet:0.3.0.*not by sevenn:7net-0"
    with pytest.raises(AnchorCacheMismatchError, match=msg):
        anchors.embed(sevenn_backend, cache_path=path)


@pytest.mark.backend("chgnet")
def test_wraps_a_built_calculator_and_anchor_file(chgnet_backend, tmp_path):
    path = anchors_for("chgnet").save(tmp_path / "anchors.npz")
    calc = PlatonicCalculator(chgnet_backend.calc, anchors=str(path))
    atoms = system("chgnet")
    atoms.calc = calc
    assert calc.get_platonic(atoms).shape == (8, 5 + 5)  # 5 anchors and the global block
    prov = calc.provenance()
    assert prov["anchor_set_hash"] == calc.anchors.hash
    assert prov["model"] == "chgnet:0.3.0" and len(prov["weights_sha256"]) == 64
    assert prov["layer"] == "atom_fea" and "ase" in prov["versions"]


@pytest.mark.backend("chgnet")
def test_centered_projection_option(chgnet_backend):
    atoms = system("chgnet")
    plain = PlatonicCalculator(chgnet_backend, anchors=anchors_for("chgnet"), projection="paper")
    cent = PlatonicCalculator(chgnet_backend, anchors=anchors_for("chgnet"), projection="centered")
    zp, zc = plain.get_platonic(atoms.copy()), cent.get_platonic(atoms.copy())
    assert zp.shape == zc.shape and not np.allclose(zp, zc)
    assert zc.mean() < zp.mean()


@pytest.mark.backend("mace")
def test_default_anchors_with_a_model_covering_part_of_the_table(mace_backend, tmp_path):
    """The tiny MACE model knows 7 elements: the default anchors still work, the anchors it
    cannot embed are left out (coordinate 0, no softmax mass) and recorded; a set it can embed
    none of is refused with the way out named."""
    anchors = AnchorSet.default()
    left = anchors.unsupported_structures(mace_backend)
    assert 0 < len(left) < len(anchors.structures)
    with pytest.warns(UserWarning, match=r"left out of its projection.*--anchors"):
        calc = PlatonicCalculator(mace_backend, anchors=anchors, anchor_cache=False)
    valid = calc.projector.valid_
    assert valid.shape == (len(anchors),) and 0 < valid.sum() < len(anchors)
    prov = calc.provenance()
    assert prov["anchors_left_out"] == int((~valid).sum())
    assert prov["anchor_set_hash"] == anchors.hash and prov["n_anchors"] == len(anchors)
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.calc = calc
    z = dense_rows(calc.get_platonic(atoms))
    k, cols = len(anchors), calc.projector.global_columns_
    assert z.shape == (len(atoms), k + cols.size) and np.isfinite(z).all()
    assert (z[:, :k][:, ~valid] == 0).all()
    # none of the global block's anchors is embeddable (each holds an element it lacks): the
    # block is 0 and the element rows keep all the mass (unit rows, as the norm check says)
    assert not valid[cols].any() and (z[:, k:] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-12)  # softmax rows
    # the projector's state (run files) keeps which anchors were left out
    from platoscope.projection import Projector

    back = Projector.from_state(calc.projector.get_state())
    np.testing.assert_array_equal(back.valid_, valid)
    np.testing.assert_allclose(dense_rows(back.transform(calc.get_embeddings(atoms),
                                                         atoms.numbers)), z, rtol=0, atol=1e-12)
    # a set made only of structures the model lacks elements for: refused, naming the way out
    none = AnchorSet.from_atoms([(anchors.structures[s], 0) for s in left[:3]])
    with pytest.raises(UnsupportedElementError, match=r"can embed none.*anchors select"):
        PlatonicCalculator(mace_backend, anchors=none, anchor_cache=False)
