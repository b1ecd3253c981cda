"""Anchor sets: model-agnostic (structure, atom index) pairs, and each model's anchor matrix.

An :class:`AnchorSet` stores the anchor atoms' structures, not any model's vectors, so every
model embeds the *same* atoms itself. Its content hash identifies it in every output. The
per-model anchor matrix (K, D) is computed on first use and cached on disk under
(anchor-set hash, model fingerprint); a cache file made by another model, weight file, layer
or anchor set is refused.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from platoscope.checks import is_int
from platoscope.errors import (
    AnchorCacheMismatchError,
    CorruptFileError,
    InputError,
    UnsupportedElementError,
)
from platoscope.npzfiles import load_npz, savez_atomic
from platoscope.paths import cache_dir, default_data_path
from platoscope.provenance import sha256_bytes

FORMAT = "platoscope.anchorset/1"
CACHE_FORMAT = "platoscope.anchormatrix/1"
DEFAULT_ANCHORS = "anchors_default.npz"
NAMED_ANCHORS = {"default": DEFAULT_ANCHORS, "mp20": "anchors_mp20.npz"}
"""Anchor sets shipped with platoscope, by name: ``default`` (per-element anchors from a broad
corpus, for the ``element`` projection; builders/build_anchors_element.py) and ``mp20`` (K =
3000 DIRECT anchors from MP-20 train, the set of the ``shared`` projection;
builders/build_default_data.py)."""


class AnchorSet:
    """K anchor atomic environments: ``anchors[k] = (structure, atom index)``.

    structures: the distinct structures the anchors live in; pairs: (K, 2) int array of
    (structure index, atom index); meta: JSON-serialisable notes on how the set was chosen
    (method, K, model, data hash). The hash covers structures and pairs, not meta.
    """

    def __init__(self, structures: Sequence[Atoms], pairs: Any, meta: dict[str, Any] | None = None):
        self.structures = [self._canonical(a) for a in structures]
        self.pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        self.meta = dict(meta or {})
        if len(self.pairs) == 0:
            raise InputError("an AnchorSet needs at least one anchor")
        for k, (s, i) in enumerate(self.pairs):
            if not 0 <= s < len(self.structures):
                raise InputError(f"anchor {k}: structure index {s} out of range")
            if not 0 <= i < len(self.structures[s]):
                raise InputError(
                    f"anchor {k}: atom index {i} out of range for a structure of "
                    f"{len(self.structures[s])} atoms")
        self.hash = self._hash()

    @staticmethod
    def _canonical(atoms: Atoms) -> Atoms:
        if not isinstance(atoms, Atoms):
            raise TypeError(f"anchor structures must be ase.Atoms, got {type(atoms).__name__}")
        if len(atoms) == 0:
            raise InputError("an anchor structure is empty")
        pos = atoms.get_positions()
        if not np.isfinite(pos).all():
            raise InputError("an anchor structure has non-finite positions")
        return Atoms(numbers=atoms.numbers.copy(), positions=pos.copy(),
                     cell=atoms.cell.array.copy(), pbc=atoms.pbc.copy())

    @classmethod
    def from_atoms(cls, pairs: Iterable[tuple[Atoms, int]], meta: dict[str, Any] | None = None
                   ) -> AnchorSet:
        """Build from (ase.Atoms, atom_index) pairs; repeated structures are stored once."""
        structures: list[Atoms] = []
        keys: dict[bytes, int] = {}
        index: list[tuple[int, int]] = []
        for atoms, i in pairs:
            c = cls._canonical(atoms)
            key = _structure_bytes(c)
            if key not in keys:
                keys[key] = len(structures)
                structures.append(c)
            if not is_int(i):
                raise InputError(f"anchor atom index {i!r} of {atoms.get_chemical_formula()} "
                                 "is not an integer")
            index.append((keys[key], int(i)))
        return cls(structures, index, meta)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> tuple[Atoms, int]:
        s, i = self.pairs[k]
        return self.structures[s], int(i)

    def __iter__(self):
        return (self[k] for k in range(len(self)))

    def __repr__(self) -> str:
        return f"AnchorSet(K={len(self)}, structures={len(self.structures)}, hash={self.hash[:12]})"

    @property
    def numbers(self) -> np.ndarray:
        """(K,) atomic numbers of the anchor atoms (a copy)."""
        if getattr(self, "_numbers", None) is None:
            self._numbers = np.array([self.structures[s].numbers[i] for s, i in self.pairs],
                                     dtype=np.int64)
        return self._numbers.copy()

    @property
    def symbols(self) -> list[str]:
        return [chemical_symbols[z] for z in self.numbers]

    def _hash(self) -> str:
        return _set_hash(self.structures, self.pairs)

    @classmethod
    def default(cls) -> AnchorSet:
        """The default anchor set shipped with platoscope."""
        return cls.named("default")

    @classmethod
    def named(cls, name: str) -> AnchorSet:
        """A shipped anchor set by name (:data:`NAMED_ANCHORS`)."""
        if name not in NAMED_ANCHORS:
            raise InputError(f"no shipped anchor set named {name!r}; shipped: "
                             f"{', '.join(NAMED_ANCHORS)} (or give a file)")
        path = default_data_path(NAMED_ANCHORS[name])
        if not path.is_file():
            raise FileNotFoundError(
                f"the shipped anchor set {name!r} is missing from the installation ({path}); "
                "rebuild it with the builders/ scripts")
        return cls.load(path)

    @property
    def sources(self) -> list[list[Any]]:
        """Per anchor ``[source, source_id, atom index]``: where it came from (``meta``
        ``anchor_sources``; ``[None, None, None]`` where the set does not record it)."""
        src = self.meta.get("anchor_sources")
        if not isinstance(src, list) or len(src) != len(self):
            return [[None, None, None] for _ in range(len(self))]
        return [list(s) for s in src]

    @property
    def groups(self) -> np.ndarray:
        """(K,) int64 source-structure group per anchor (a copy): the index of the stored
        structure the anchor lies in. Identical structures are stored once whatever their
        source, so anchors of one structure share a group even when two sources hold it.
        :meth:`Projector.fit <platoscope.projection.Projector.fit>` takes it as
        ``anchor_groups`` so that the coverage thresholds hold out whole structures, not
        single anchors. (The recorded :attr:`sources` are not used: ``extend`` numbers its
        structures per call, so ``(source, source_id)`` can repeat across extensions; on the
        shipped ``default`` set the two agree, one stored structure per source id.)"""
        return self.pairs[:, 0].copy()

    @property
    def hash_chain(self) -> list[str]:
        """The hashes of the sets this one was extended from, oldest first."""
        return list(self.meta.get("hash_chain", []))

    def extend(self, structures: Sequence[Atoms], *, max_per_element: int | None = None,
               source: str = "user", symprec: float = 1e-3) -> AnchorSet:
        """A new set: these anchors plus one atom per symmetry-distinct environment of each of
        ``structures`` (spglib classes), at most ``max_per_element`` new anchors per element
        (taken evenly through the candidates, deterministic).

        The new set has a new hash (files made with either refuse to mix) and records the chain
        (``hash_chain``), the extension and each new anchor's source (``source``, its index in
        ``structures``, atom index); ``anchors show`` lists them.
        """
        from platoscope.symmetry import symmetry_groups

        structures = [self._canonical(a) for a in structures]
        if not structures:
            raise InputError("no structures to extend the anchor set with")
        if max_per_element is not None and int(max_per_element) < 1:
            raise InputError(f"max_per_element must be >= 1, got {max_per_element!r}")
        groups = symmetry_groups(structures, symprec)
        owner = np.repeat(np.arange(len(structures)), [len(a) for a in structures])
        local = np.concatenate([np.arange(len(a)) for a in structures])
        numbers = np.concatenate([a.numbers for a in structures])
        first = np.unique(groups, return_index=True)[1]
        picked: list[int] = []
        for z in np.unique(numbers[first]):
            cand = np.sort(first[numbers[first] == z])
            if max_per_element is not None and cand.size > max_per_element:
                cand = cand[np.linspace(0, cand.size - 1, int(max_per_element)).round()
                            .astype(int)]
            picked.extend(int(r) for r in cand)
        picked.sort()
        new = [(structures[owner[r]], int(local[r])) for r in picked]
        sources = self.sources + [[source, int(owner[r]), int(local[r])] for r in picked]
        meta = {**self.meta, "hash_chain": [*self.hash_chain, self.hash],
                "anchor_sources": sources,
                "extensions": [*self.meta.get("extensions", []), {
                    "source": source, "n_structures": len(structures),
                    "n_added": len(new), "max_per_element": max_per_element,
                    "symprec": symprec}]}
        return AnchorSet.from_atoms([*list(self), *new], meta=meta)

    def subset(self, indices: Sequence[int]) -> AnchorSet:
        """A new set of the anchors at ``indices`` (structures re-packed)."""
        src = self.sources
        return AnchorSet.from_atoms([self[int(k)] for k in indices], meta={
            **self.meta, "subset_of": self.hash, "n_subset": len(indices),
            "anchor_sources": [src[int(k)] for k in indices]})

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write a portable ``.npz`` (no pickle): exact float64 arrays plus JSON metadata."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz")
        sizes = np.array([len(a) for a in self.structures], dtype=np.int64)
        savez_atomic(
            path,
            format=np.array(FORMAT),
            hash=np.array(self.hash),
            meta=np.array(json.dumps(self.meta, sort_keys=True, default=str)),
            sizes=sizes,
            numbers=np.concatenate([a.numbers for a in self.structures]).astype(np.int64),
            positions=np.concatenate([a.get_positions() for a in self.structures]),
            cells=np.stack([a.cell.array for a in self.structures]),
            pbc=np.stack([a.pbc for a in self.structures]),
            pairs=self.pairs,
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AnchorSet:
        """Read a file written by :meth:`save`; a damaged or foreign file: CorruptFileError."""
        data = load_npz(Path(path), FORMAT, "anchor-set file")
        try:
            offsets = np.concatenate([[0], np.cumsum(data["sizes"])])
            structures = [
                Atoms(numbers=data["numbers"][a:b], positions=data["positions"][a:b],
                      cell=data["cells"][s], pbc=data["pbc"][s])
                for s, (a, b) in enumerate(itertools.pairwise(offsets))
            ]
            out = cls(structures, data["pairs"], json.loads(str(data["meta"])))
        except Exception as err:
            raise CorruptFileError(f"{path}: inconsistent anchor-set arrays ({err})") from err
        if out.hash != str(data["hash"]):
            raise CorruptFileError(f"{path}: content does not match its recorded hash "
                                   f"({out.hash[:12]} != {str(data['hash'])[:12]}): damaged?")
        return out

    def to_extxyz(self, path: str | os.PathLike) -> None:
        """Human-viewable export: one frame per structure, ``anchor_id`` per atom (-1: none)."""
        from ase.io import write

        frames = []
        for s, a in enumerate(self.structures):
            f = a.copy()
            ids = np.full(len(f), -1, dtype=np.int64)
            for k in np.flatnonzero(self.pairs[:, 0] == s):
                ids[self.pairs[k, 1]] = k
            f.arrays["anchor_id"] = ids
            f.info["anchor_set_hash"] = self.hash
            frames.append(f)
        write(path, frames, format="extxyz")

    # -- per-model anchor matrices -------------------------------------------------------------
    def embed(self, backend: Any, *, cache: bool = True,
              cache_path: str | os.PathLike | None = None, progress: bool = False,
              known: tuple[Sequence[Atoms], Sequence[np.ndarray]] | None = None) -> np.ndarray:
        """The backend's embeddings of the anchor atoms, (K, D) float64, cached on disk.

        Looks for the matrix in ``cache_path`` (if given), then among the matrices shipped in
        the package, then under :func:`cache_dir`. A file whose recorded anchor-set hash or
        model fingerprint differs raises AnchorCacheMismatchError rather than being silently
        used or overwritten. known: (structures, per-structure (n_i, D) features) the backend
        already computed, e.g. for a reference bank; anchor structures found there (same
        numbers, positions, cell, pbc) are not embedded again.
        """
        fp = backend.fingerprint
        name = f"{self.hash[:16]}-{fp[:16]}.npz"
        path = Path(cache_path) if cache_path else cache_dir() / "anchors" / name
        if cache:
            shipped = default_data_path("anchors") / name
            for p in ([path] if cache_path else [shipped, path]):
                if p.is_file():
                    mat = self._read_cache(p, backend, fp)
                    if np.isnan(mat).all(axis=1).any():
                        self._warn_left_out(backend, mat)
                    return mat
        if cache:
            grown = self._extend_parent_matrix(backend, fp, progress=progress, known=known)
            if grown is not None:
                if np.isnan(grown).all(axis=1).any():
                    self._warn_left_out(backend, grown)
                self._write_matrix(path, grown, backend)
                return grown
        # known structures match an anchor structure within 1e-6 Å (files round positions,
        # e.g. extxyz to 1e-8 Å: exact bytes would miss them and embed them all again)
        have: dict[bytes, list[tuple[Atoms, np.ndarray]]] = {}
        if known is not None:
            for a, f in zip(*known, strict=True):
                a = self._canonical(a)
                have.setdefault(_coarse_key(a), []).append((a, np.asarray(f)))
        found: dict[int, np.ndarray] = {}
        for s, a in enumerate(self.structures):
            for b, f in have.get(_coarse_key(a), []):
                if np.allclose(a.positions, b.positions, rtol=0, atol=1e-6) and np.allclose(
                        a.cell.array, b.cell.array, rtol=0, atol=1e-6):
                    found[s] = f
                    break
        left_out = set(self.unsupported_structures(backend))
        todo = [s for s in range(len(self.structures)) if s not in found and s not in left_out]
        fresh = dict(zip(todo, backend.embed([self.structures[s] for s in todo],
                                             progress=progress), strict=True)) if todo else {}
        dim = next(iter(fresh.values())).shape[1] if fresh else (
            next(iter(found.values())).shape[1] if found else backend.feature_dim)
        nan_row = np.full(dim, np.nan)
        mat = np.stack([nan_row if s in left_out else (fresh[s] if s in fresh else found[s])[i]
                        for s, i in self.pairs]).astype(np.float64)
        if left_out:
            self._warn_left_out(backend, mat)
        if cache:
            self._write_matrix(path, mat, backend)
        return mat

    def _write_matrix(self, path: Path, matrix: np.ndarray, backend: Any) -> None:
        """Cache ``backend``'s anchor matrix of this set at ``path`` (what :meth:`_read_cache`
        checks: anchor-set hash, model fingerprint; model spec and layer for its messages)."""
        savez_atomic(path, format=np.array(CACHE_FORMAT), matrix=matrix,
                      anchor_hash=np.array(self.hash), fingerprint=np.array(backend.fingerprint),
                      model=np.array(backend.spec), layer=np.array(backend.layer))

    def _prefix_hash(self, k: int) -> str:
        """The hash the set of this set's first ``k`` anchors has (``from_atoms`` order)."""
        p = self.pairs[:k]
        _, first = np.unique(p[:, 0], return_index=True)
        order = p[np.sort(first), 0]
        remap = np.empty(len(self.structures), dtype=np.int64)
        remap[order] = np.arange(len(order))
        return _set_hash([self.structures[s] for s in order],
                         np.stack([remap[p[:, 0]], p[:, 1]], axis=1))

    def _extend_parent_matrix(self, backend: Any, fp: str, *, progress: bool = False,
                              known: Any = None) -> np.ndarray | None:
        """For a set made by :meth:`extend`: the matrix of the set it extends (shipped or
        cached for this model), when its anchors are exactly this set's first rows (checked by
        hash), with only the added anchors embedded; None when there is none to reuse. Saves
        re-embedding the whole anchor corpus (50,038 atoms for the default set) for a few
        added anchors."""
        for h in reversed(self.hash_chain):
            name = f"{h[:16]}-{fp[:16]}.npz"
            for p in (default_data_path("anchors") / name, cache_dir() / "anchors" / name):
                if not p.is_file():
                    continue
                try:
                    data = load_npz(p, CACHE_FORMAT, "anchor-matrix cache")
                    ok = str(data["anchor_hash"]) == h and str(data["fingerprint"]) == fp
                    mat = np.asarray(data["matrix"], dtype=np.float64)
                except (CorruptFileError, KeyError, ValueError, OSError):
                    continue
                k = mat.shape[0]
                if not ok or k >= len(self) or self._prefix_hash(k) != h:
                    continue
                added = AnchorSet.from_atoms([self[j] for j in range(k, len(self))])
                try:
                    rest = added.embed(backend, cache=False, progress=progress, known=known)
                except UnsupportedElementError:
                    return None  # the general path leaves those anchors out, naming them
                return np.concatenate([mat, rest])
        return None

    def unsupported_structures(self, backend: Any) -> list[int]:
        """Indices of anchor structures holding an element ``backend`` has no parameters for."""
        supported = backend.supported_numbers
        if supported is None:
            return []
        return [s for s, a in enumerate(self.structures)
                if not set(a.numbers.tolist()) <= supported]

    def _warn_left_out(self, backend: Any, mat: np.ndarray) -> None:
        from platoscope.backends.base import format_elements

        gone = np.isnan(mat).all(axis=1)
        supported = backend.supported_numbers or frozenset()
        missing = {int(z) for s in self.unsupported_structures(backend)
                   for z in self.structures[s].numbers if int(z) not in supported}
        if gone.all():
            raise UnsupportedElementError(
                f"model {backend.spec!r} can embed none of the {len(self)} anchors of set "
                f"{self.hash[:12]} (it lacks {format_elements(missing)}): choose anchors with "
                f"this model, e.g. platoscope anchors select DATA --model {backend.spec} -k 500 "
                "--out anchors.npz, and pass --anchors anchors.npz")
        warnings.warn(
            f"model {backend.spec!r} has no parameters for {format_elements(missing)}: "
            f"{int(gone.sum())} of {len(self)} anchors (in structures with those elements) are "
            "left out of its projection (coordinate 0, recorded in provenance as "
            "anchors_left_out); pass --anchors chosen with this model to use all axes",
            UserWarning, stacklevel=3)

    def _read_cache(self, path: Path, backend: Any, fp: str) -> np.ndarray:
        data = load_npz(path, CACHE_FORMAT, "anchor-matrix cache", "; delete it to recompute")
        if str(data["anchor_hash"]) != self.hash:
            raise AnchorCacheMismatchError(
                f"{path} holds anchors of set {str(data['anchor_hash'])[:12]}, not of this set "
                f"{self.hash[:12]}")
        if str(data["fingerprint"]) != fp:
            raise AnchorCacheMismatchError(
                f"{path} was made by {data['model']} (layer {data['layer']}, fingerprint "
                f"{str(data['fingerprint'])[:12]}), not by {backend.spec} (layer "
                f"{backend.layer}, fingerprint {fp[:12]}): another model or a changed weight "
                "file; delete the file to recompute")
        mat = np.asarray(data["matrix"], dtype=np.float64)  # shipped matrices are float32
        if mat.shape[0] != len(self):
            raise CorruptFileError(f"{path}: {mat.shape[0]} rows for {len(self)} anchors")
        return mat


def _coarse_key(a: Atoms) -> bytes:
    """Numbers, cell to 1e-3 Å and pbc: candidates for a match within 1e-6 Å."""
    return b"".join([a.numbers.astype("<i8").tobytes(),
                     (np.round(a.cell.array, 3) + 0.0).astype("<f8").tobytes(),
                     np.asarray(a.pbc, dtype=np.uint8).tobytes()])


def _set_hash(structures: Sequence[Atoms], pairs: np.ndarray) -> str:
    """The content hash of an anchor set: its structures' bytes and its (K, 2) pairs."""
    return sha256_bytes(*(_structure_bytes(a) for a in structures),
                        np.asarray(pairs).astype("<i8").tobytes())


def _structure_bytes(a: Atoms) -> bytes:
    return b"".join([
        a.numbers.astype("<i8").tobytes(),
        np.ascontiguousarray(a.get_positions(), dtype="<f8").tobytes(),
        np.ascontiguousarray(a.cell.array, dtype="<f8").tobytes(),
        np.asarray(a.pbc, dtype=np.uint8).tobytes(),
    ])


def select_anchor_set(backend: Any, structures: Sequence[Atoms], *, k: int = 100,
                      method: str = "direct", per_element: bool = False,
                      random_state: int = 0, data_hash: str | None = None,
                      batch_size: int = 16, progress: bool = False) -> AnchorSet:
    """Choose K anchor atoms from ``structures`` on ``backend``'s embeddings.

    method: ``direct`` (DIRECT sampling), ``fps`` (farthest-point) or ``random``;
    per_element: guarantee at least one anchor per element present. The set's ``meta``
    records how it was chosen (method, K, model, layer, weight hash, data hash, parameters).
    """
    from platoscope.selection import select_anchors

    structures = list(structures)
    if not structures:
        raise InputError("no structures to select anchors from")
    feats = backend.embed(structures, batch_size=batch_size, progress=progress)
    emb = np.concatenate(feats)
    numbers = np.concatenate([a.numbers for a in structures])
    owner = np.repeat(np.arange(len(structures)), [len(f) for f in feats])
    local = np.concatenate([np.arange(len(f)) for f in feats])
    sel = select_anchors(emb, k, method=method, random_state=random_state,
                         per_element=numbers if per_element else None)
    if data_hash is None:
        from platoscope.readers import structures_hash

        data_hash = structures_hash(structures)
    meta = {
        "method": method, "k": int(k), "per_element": per_element,
        "random_state": random_state, "model": backend.spec, "layer": backend.layer,
        "weights_sha256": backend.weights_sha256(), "data_hash": data_hash,
        "n_structures": len(structures), "n_atoms": len(emb), "params": sel.params,
    }
    return AnchorSet.from_atoms([(structures[owner[r]], int(local[r])) for r in sel.indices],
                                meta=meta)
