"""Symmetry helpers for a symmetry-breaking monitor.

Atoms that the crystal's space group maps onto each other sit in identical environments, so a
model must give them identical embeddings and Platonic coordinates (to ~1e-7 for a perfect
crystal). Spread within a class of equivalent atoms therefore measures symmetry breaking: of the
structure during MD, or by the model itself (a non-equivariant model, numerical noise).

Typical use: take the classes of the *reference* (starting) structure once, with
:func:`analyse_symmetry`, then score every MD frame with :func:`class_spread` or
:func:`distance_from_class_mean` (atom order must not change between frames).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from platoscope.coords import compact_columns
from platoscope.errors import InputError, InvalidStructureError

__all__ = [
    "SymmetryInfo",
    "analyse_symmetry",
    "class_spread",
    "distance_from_class_mean",
    "equivalence_classes",
    "symmetry_groups",
]


@dataclass(frozen=True)
class SymmetryInfo:
    """Space group and classes of symmetry-equivalent atoms of one structure.

    classes: (N,) int64 class id per atom, 0..C-1, numbered by each class's first atom.
    representatives: (C,) int64 index of the first atom of each class.
    """

    classes: np.ndarray
    representatives: np.ndarray
    spacegroup: int
    symbol: str
    symprec: float

    @property
    def n_classes(self) -> int:
        return len(self.representatives)

    def __repr__(self) -> str:
        return (f"SymmetryInfo(spacegroup={self.spacegroup} ({self.symbol}), "
                f"n_atoms={len(self.classes)}, n_classes={self.n_classes}, "
                f"symprec={self.symprec})")


def _cell_for_spglib(atoms: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(atoms)
    if n == 0:
        raise InvalidStructureError("symmetry analysis of an empty structure")
    cell = np.asarray(atoms.cell, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        raise InvalidStructureError(
            f"symmetry classes need a periodic crystal, but this {atoms.get_chemical_formula()} "
            "has pbc=False (a molecule or cluster?). spglib works on space groups of periodic "
            "cells; for a molecule give it a large cubic box with pbc=True (the box may lower "
            "the point-group symmetry found), or use a point-group tool.")
    if abs(np.linalg.det(cell)) < 1e-6:
        raise InvalidStructureError(
            f"symmetry classes need a 3D unit cell, but this {atoms.get_chemical_formula()} "
            f"has a cell of zero volume (cell lengths {np.linalg.norm(cell, axis=1).round(3)})")
    if not np.isfinite(atoms.positions).all() or not np.isfinite(cell).all():
        raise InvalidStructureError("symmetry analysis of a structure with NaN/inf positions "
                                    "or cell")
    return cell, atoms.get_scaled_positions(wrap=True), np.asarray(atoms.numbers)


def analyse_symmetry(atoms: Any, symprec: float = 1e-3, angle_tolerance: float = -1.0
                     ) -> SymmetryInfo:
    """Space group and equivalence classes of an ASE ``Atoms`` via spglib.

    symprec: distance tolerance in Å; angle_tolerance in degrees (-1: spglib's default).
    Partially periodic cells (slabs) are treated as 3D periodic. Raises
    :class:`~platoscope.errors.InvalidStructureError` without pbc or without a 3D cell, and
    :class:`~platoscope.errors.InputError` for ``symprec`` <= 0 (spglib crashes the process
    with a segmentation fault on a negative tolerance).
    """
    import spglib

    if not float(symprec) > 0:
        raise InputError(f"symprec must be > 0 Å, got {symprec}")

    lattice, frac, numbers = _cell_for_spglib(atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        dataset = spglib.get_symmetry_dataset((lattice, frac, numbers), symprec=symprec,
                                              angle_tolerance=angle_tolerance)
    if dataset is None:
        raise InvalidStructureError(
            f"spglib found no symmetry for {atoms.get_chemical_formula()} at symprec={symprec} "
            f"({spglib.get_error_message()}); atoms overlapping or a degenerate cell?")
    reps, classes = np.unique(np.asarray(dataset.equivalent_atoms), return_inverse=True)
    return SymmetryInfo(classes=classes.astype(np.int64), representatives=reps.astype(np.int64),
                        spacegroup=int(dataset.number), symbol=str(dataset.international),
                        symprec=float(symprec))


def equivalence_classes(atoms: Any, symprec: float = 1e-3) -> np.ndarray:
    """(N,) int64 class id (0..C-1) of each atom; atoms of one class are symmetry-equivalent."""
    return analyse_symmetry(atoms, symprec).classes


def symmetry_groups(structures: Any, symprec: float = 1e-3) -> np.ndarray:
    """(N,) int64 ids of symmetry-equivalent atoms over all ``structures`` in order, unique
    across structures (N = total atoms); a structure spglib cannot analyse (a molecule, a
    degenerate cell) gives each of its atoms its own id."""
    out, offset = [], 0
    for atoms in structures:
        try:
            c = analyse_symmetry(atoms, symprec).classes
        except InvalidStructureError:
            c = np.arange(len(atoms), dtype=np.int64)
        out.append(c + offset)
        offset += int(c.max()) + 1 if len(c) else 0
    if not out:
        raise InputError("symmetry_groups got no structures")
    return np.concatenate(out)


def _check(coords: Any, classes: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Validated coordinates (dense; sparse ones compacted to the columns their rows use,
    which leaves every distance and class mean unchanged), classes and class count."""
    x = coords
    if sp.issparse(coords):
        (x,), _ = compact_columns(coords)
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(classes)
    if x.ndim != 2:
        raise InputError(f"coords must be (N, K), got shape {x.shape}")
    if c.shape != (x.shape[0],):
        raise InputError(f"classes must be ({x.shape[0]},) for coords of shape {x.shape}, "
                         f"got {c.shape}")
    if c.size and (not np.issubdtype(c.dtype, np.integer) or c.min() < 0):
        raise InputError("classes must be non-negative integer class ids")
    return x, c.astype(np.int64), int(c.max()) + 1 if c.size else 0


def _class_means(x: np.ndarray, c: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse import csr_matrix

    counts = np.bincount(c, minlength=n_classes)
    members = csr_matrix((np.ones(c.size), (c, np.arange(c.size))), shape=(n_classes, c.size))
    sums = members @ x  # each class summed over its atoms in index order (np.add.at, 10x faster)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None], counts


def distance_from_class_mean(coords: Any, classes: Any) -> np.ndarray:
    """(N,) Euclidean distance of each atom's coordinate vector from its class mean.

    coords: (N, K) Platonic coordinates, dense or scipy-sparse (or (N, D) embeddings); classes:
    (N,) ids from :func:`equivalence_classes`. Atoms alone in their class get 0.
    """
    x, c, n_classes = _check(coords, classes)
    means, _ = _class_means(x, c, n_classes)
    return np.linalg.norm(x - means[c], axis=1)


def class_spread(coords: Any, classes: Any, kind: Literal["max", "rms"] = "max"
                 ) -> np.ndarray:
    """(C,) spread of each class of equivalent atoms in coordinate space.

    For class j with members i: ``max_i |x_i - mean_j|`` (``kind="max"``, default: catches one
    displaced atom) or ``sqrt(mean_i |x_i - mean_j|^2)`` (``kind="rms"``). Same units as
    ``coords``; 0 for a singleton class or a perfectly symmetric one, NaN for a class id with
    no atoms (ids are 0..max(classes)).
    """
    if kind not in ("max", "rms"):
        raise InputError(f"kind must be 'max' or 'rms', not {kind!r}")
    x, c, n_classes = _check(coords, classes)
    dist = distance_from_class_mean(x, c)
    counts = np.bincount(c, minlength=n_classes)
    if kind == "max":
        out = np.zeros(n_classes)
        np.maximum.at(out, c, dist)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.sqrt(np.bincount(c, weights=dist**2, minlength=n_classes) / counts)
    out[counts == 0] = np.nan
    return out
