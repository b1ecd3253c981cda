"""Symmetry classes (spglib) and within-class spread."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

from platoscope.errors import InvalidStructureError
from platoscope.symmetry import (
    analyse_symmetry,
    class_spread,
    distance_from_class_mean,
    equivalence_classes,
    symmetry_groups,
)


def perovskite(a: float = 3.9, c: float | None = None, dz: float = 0.0) -> Atoms:
    """ABO3 perovskite, 5 atoms; c != a and dz (B-site shift, Å) give tetragonal P4mm."""
    c = a if c is None else c
    frac = [[0, 0, 0], [0.5, 0.5, 0.5 + dz / c], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    return Atoms("BaTiO3", scaled_positions=frac, cell=[a, a, c], pbc=True)


def sorted_distances(atoms: Atoms, n: int = 12) -> np.ndarray:
    """(N, n) a model-free per-atom descriptor: distances (Å) to the n nearest neighbours."""
    d = atoms.get_all_distances(mic=True)
    return np.sort(d, axis=1)[:, 1: n + 1]


def test_rocksalt_two_classes():
    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    info = analyse_symmetry(nacl)
    assert len(nacl) == 8 and info.n_classes == 2
    assert info.spacegroup == 225 and info.symbol == "Fm-3m"
    np.testing.assert_array_equal(info.classes, nacl.numbers == 17)  # Na -> 0, Cl -> 1
    sc = nacl.repeat(2)
    np.testing.assert_array_equal(equivalence_classes(sc), sc.numbers == 17)


@pytest.mark.parametrize(("atoms", "spacegroup", "n_classes"), [
    (bulk("ZnO", "wurtzite", a=3.25, c=5.21), 186, 2),
    (perovskite(), 221, 3),  # cubic: A, B, and the three O are one class
    (perovskite(c=4.05, dz=0.1), 99, 4),  # P4mm: apical O split from the two equatorial O
    (bulk("Si", "diamond", a=5.43, cubic=True), 227, 1),
])
def test_expected_classes(atoms, spacegroup, n_classes):
    info = analyse_symmetry(atoms)
    assert info.spacegroup == spacegroup
    assert info.n_classes == n_classes
    assert info.classes.dtype == np.int64
    assert sorted(set(info.classes)) == list(range(n_classes))
    # equivalent atoms are always the same element
    for j in range(n_classes):
        assert len(set(atoms.numbers[info.classes == j])) == 1


def test_perovskite_oxygens():
    cls = equivalence_classes(perovskite(c=4.05, dz=0.1))
    assert cls[3] == cls[4] != cls[2]  # equatorial pair vs apical O
    assert len(set(equivalence_classes(perovskite())[2:])) == 1


def test_class_spread_basics():
    classes = np.array([0, 0, 0, 1, 2, 2])
    base = np.repeat(np.arange(3.0)[:, None], 4, axis=1)[classes]  # identical rows per class
    np.testing.assert_array_equal(class_spread(base, classes), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(class_spread(base, classes, kind="rms"), [0.0, 0.0, 0.0])
    spreads = []
    for eps in (1e-6, 1e-3, 1e-1):
        x = base.copy()
        x[1, 0] += eps
        s = class_spread(x, classes)
        assert s[1] == 0 and s[2] == 0  # singleton and untouched classes
        assert class_spread(x, classes, kind="rms")[0] <= s[0]
        np.testing.assert_allclose(s[0], 2 * eps / 3, rtol=1e-6)  # the mean moved eps/3
        spreads.append(s[0])
    assert spreads == sorted(spreads)
    d = distance_from_class_mean(x, classes)
    assert d.shape == (6,) and d.argmax() == 1
    assert np.isnan(class_spread(base[:3], np.array([0, 0, 2]))[1])  # id 1 has no atoms


def test_class_spread_validates():
    with pytest.raises(ValueError, match="classes must be"):
        class_spread(np.zeros((3, 2)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="non-negative integer"):
        class_spread(np.zeros((2, 2)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="kind"):
        class_spread(np.zeros((2, 2)), np.array([0, 1]), kind="mean")


def test_displaced_atom_breaks_class():
    """A symmetric descriptor agrees within classes until one atom moves by 0.01 Å."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    classes = equivalence_classes(atoms)
    before = class_spread(sorted_distances(atoms), classes)
    assert before.max() < 1e-10
    atoms.positions[5] += [0.01, 0.0, 0.0]
    after = class_spread(sorted_distances(atoms), classes)
    assert after[classes[5]] > 1e-3
    assert analyse_symmetry(atoms).n_classes > 2  # the displaced cell itself lost symmetry


def test_molecule_raises():
    with pytest.raises(InvalidStructureError, match="molecule"):
        analyse_symmetry(molecule("H2O"))
    with pytest.raises(InvalidStructureError, match="zero volume"):
        equivalence_classes(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], pbc=True))
    boxed = molecule("CH4")
    boxed.center(vacuum=5.0)
    boxed.pbc = True
    assert analyse_symmetry(boxed, symprec=1e-2).n_classes == 2  # C, and the four H


def test_symmetry_groups_span_structures():
    nacl = bulk("NaCl", "rocksalt", a=5.64, cubic=True)  # 8 atoms, 2 environments
    rattled = nacl.copy()
    rattled.rattle(0.05, seed=1)  # P1: every atom its own environment
    groups = symmetry_groups([nacl, molecule("H2O"), rattled])
    assert groups.shape == (8 + 3 + 8,) and groups.dtype == np.int64
    assert len(np.unique(groups[:8])) == 2
    assert np.array_equal(groups[:8], equivalence_classes(nacl))
    assert len(np.unique(groups[8:11])) == 3  # the molecule: no spglib classes, one id per atom
    assert len(np.unique(groups[11:])) == 8
    assert len(np.unique(groups)) == 2 + 3 + 8  # ids never shared across structures
    with pytest.raises(ValueError, match="no structures"):
        symmetry_groups([])


@pytest.mark.parametrize("symprec", [-1.0, 0.0])
def test_non_positive_symprec_is_refused_not_a_segfault(symprec, tmp_path):
    """spglib crashed the process (segmentation fault) on symprec -1: ``compare --symprec -1``
    died with exit 139 and no message. Refused by analyse_symmetry and by the CLI option."""
    from click.testing import CliRunner

    from platoscope.cli import main
    from platoscope.errors import InputError

    with pytest.raises(InputError, match="symprec must be > 0"):
        analyse_symmetry(bulk("NaCl", "rocksalt", a=5.64), symprec=symprec)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    r = CliRunner().invoke(main, ["compare", str(a), str(b), "--symprec", str(symprec),
                                  "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "'--symprec'" in r.output, r.output
    assert not (tmp_path / "c").exists()
