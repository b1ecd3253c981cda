"""Reference banks: one model's view of a reference set of atoms.

A bank stores the model's raw embeddings of the reference atoms (compact: float32, (M, D)),
their atomic numbers, and the fitted :class:`~platoscope.projection.Projector` (anchor matrix
and, for ``standardize``/``whiten``, the reference statistics). Projected coordinates (M, K)
are derived on load (sparse CSR for the element projection), so a bank's file does not grow
with K. Monitors score new atoms against
``bank.coords``; a PlatonicCalculator built with ``projection=bank.projector`` projects on the
same axes with the same normalisation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from platoscope.anchors import AnchorSet
from platoscope.errors import (
    AnchorSetMismatchError,
    CorruptFileError,
    InputError,
    ModelMismatchError,
)
from platoscope.npzfiles import load_npz, savez_atomic
from platoscope.projection import Projector

FORMAT = "platoscope.reference/1"
MAX_DENSE_BYTES = 2 * 2**30
"""Largest dense (M, K) float64 coordinate array :attr:`ReferenceBank.coords` builds."""
MAX_SPARSE_BYTES = 4 * 2**30
"""Largest sparse (element projection) coordinate array :attr:`ReferenceBank.coords` builds."""


class ReferenceBank:
    """embeddings: (M, D); numbers: (M,); structure_index: (M,) which reference structure.

    ``provenance["projection"]`` and ``["coverage_holdout"]`` are set from ``projector``."""

    def __init__(self, embeddings: np.ndarray, numbers: np.ndarray, structure_index: np.ndarray,
                 *, projector: Projector, anchor_set_hash: str, data_hash: str,
                 provenance: dict[str, Any]):
        self.embeddings = np.asarray(embeddings, dtype=np.float32)
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.structure_index = np.asarray(structure_index, dtype=np.int64)
        if not (len(self.embeddings) == len(self.numbers) == len(self.structure_index)):
            raise InputError("embeddings, numbers and structure_index must have the same length")
        if len(self.numbers) == 0:
            raise InputError("a reference bank needs at least one atom")
        self.projector = projector
        self.anchor_set_hash = anchor_set_hash
        self.data_hash = data_hash
        # what the projector is, from the projector: callers cannot leave it stale
        self.provenance = {**provenance, "projection": projector.name,
                           "coverage_holdout": projector.coverage_holdout}

    @classmethod
    def build(cls, backend: Any, structures: Sequence[Atoms], anchors: AnchorSet, *,
              projection: str | Projector | None = None, data_hash: str | None = None,
              batch_size: int = 16, skip_unsupported: bool = False,
              progress: bool = False, executor: Any = None,
              store: Any = None) -> ReferenceBank:
        """Embed ``structures`` with ``backend`` and fit the projector on them.

        projection: a preset name (default ``shared``) or a Projector whose parameters to use.
        Anchor atoms that lie in ``structures`` reuse these embeddings (no second pass).
        skip_unsupported: leave out, with a warning, structures holding an element the model has
        no parameters for (else: UnsupportedElementError naming the structure and element);
        ``structure_index`` keeps the original numbering and provenance lists what was skipped.
        executor: a :class:`platoscope.distributed.Executor` for the forward passes (a Dask
        cluster); store: its :class:`~platoscope.distributed.ChunkStore` of completed chunks
        (resume). A structure that fails there raises, naming its file and frame.
        """
        import warnings

        from ase.data import chemical_symbols

        from platoscope.provenance import package_versions

        if not structures:
            raise InputError("no reference structures given")
        index = np.arange(len(structures))
        supported = backend.supported_numbers
        skipped: list[int] = []
        if skip_unsupported and supported is not None:
            skipped = [i for i, a in enumerate(structures) if not set(a.numbers) <= supported]
            if skipped:
                lacking = sorted({int(z) for i in skipped for z in structures[i].numbers
                                  if z not in supported})
                warnings.warn(f"{backend.spec} has no parameters for "
                              f"{', '.join(chemical_symbols[z] for z in lacking)}: "
                              f"{len(skipped)} of {len(structures)} reference structures left "
                              "out of its bank", stacklevel=2)
                index = np.setdiff1d(index, skipped)
                if not len(index):
                    raise InputError(f"{backend.spec} supports no element of any reference "
                                     "structure")
        structures = [structures[i] for i in index]
        if executor is not None:
            from platoscope.distributed import embed_list

            feats = embed_list(executor, list(structures), store=store, progress=progress)
        else:
            feats = backend.embed(list(structures), batch_size=batch_size, progress=progress)
        emb = np.concatenate(feats)
        proj = fit_bank_projector(
            Projector.coerce(projection),
            anchors.embed(backend, progress=progress, known=(list(structures), feats)),
            anchors, emb)
        if data_hash is None:
            from platoscope.readers import structures_hash

            data_hash = structures_hash(structures)
        prov = backend.provenance().to_dict()
        prov.update(fingerprint=backend.fingerprint, anchor_set_hash=anchors.hash,
                    n_anchors=len(anchors), versions=package_versions(),
                    n_structures=len(structures), skipped_structures=skipped)
        if executor is not None:
            prov["cluster"] = executor.info()
        return cls(emb, np.concatenate([a.numbers for a in structures]),
                   np.repeat(index, [len(f) for f in feats]),
                   projector=proj, anchor_set_hash=anchors.hash, data_hash=data_hash,
                   provenance=prov)

    def extend(self, backend: Any, structures: Sequence[Atoms], *, source: str = "user",
               batch_size: int = 16, progress: bool = False) -> ReferenceBank:
        """A new bank: these reference atoms plus every atom of ``structures``, embedded by
        ``backend`` (the model that built this bank) and projected with the same projector.

        New structures are numbered after this bank's; the data hash chains the old one and
        the new structures', and ``provenance["extensions"]`` records each extension.
        """
        from platoscope.provenance import sha256_bytes
        from platoscope.readers import structures_hash

        self.check_backend(backend)
        structures = list(structures)
        if not structures:
            raise InputError("no structures to extend the reference bank with")
        new_hash = structures_hash(structures)
        done = [e for e in self.provenance.get("extensions", []) if e.get("data_hash") == new_hash]
        if done or new_hash == self.data_hash:
            how = (f"by the extension from {done[0].get('source')!r}" if done
                   else "when it was built")
            raise InputError(f"these {len(structures)} structures are already in the bank (added "
                             f"{how}): extending again would count their atoms twice")
        from platoscope.backends.base import require_elements
        from platoscope.errors import PlatoscopeError
        from platoscope.readers import frame_error

        placeable = None  # the element projection places only elements with anchors
        if self.projector.by_element and getattr(self.projector, "anchor_numbers_", None) \
                is not None:
            placeable = set(np.asarray(self.projector.anchor_numbers_)[
                np.asarray(self.projector.valid_)].tolist())
        for i, atoms in enumerate(structures):  # named by file and frame, before any pass
            try:
                require_elements(atoms, model=getattr(backend, "spec", "model"),
                                 supported=getattr(backend, "supported_numbers", None))
                missing = sorted(set(atoms.numbers.tolist()) - placeable) if placeable else []
                if missing:
                    from ase.data import chemical_symbols

                    raise InputError(
                        f"the bank's anchor set has no anchor of element(s) "
                        f"{', '.join(chemical_symbols[z] for z in missing)}: its element "
                        "projection cannot place these atoms (the bank would hold atoms "
                        "without coordinates). Build the bank on anchors that hold them: "
                        "platoscope anchors extend, then reference build --anchors NEW")
            except PlatoscopeError as err:
                raise frame_error(err, atoms, i) from err
        feats = backend.embed(structures, batch_size=batch_size, progress=progress)
        start = int(self.structure_index.max()) + 1
        prov = {**self.provenance, "extensions": [
            *self.provenance.get("extensions", []),
            {"source": source, "n_structures": len(structures),
             "n_atoms": int(sum(len(f) for f in feats)), "data_hash": new_hash,
             "extends": self.data_hash}]}
        return ReferenceBank(
            np.concatenate([self.embeddings, *[np.asarray(f, np.float32) for f in feats]]),
            np.concatenate([self.numbers, *[a.numbers for a in structures]]),
            np.concatenate([self.structure_index,
                            np.repeat(np.arange(start, start + len(structures)),
                                      [len(f) for f in feats])]),
            projector=self.projector, anchor_set_hash=self.anchor_set_hash,
            data_hash=sha256_bytes(self.data_hash.encode(), new_hash.encode()),
            provenance=prov)

    def refit(self, projector: Projector, anchor_matrix: np.ndarray, anchors: AnchorSet, *,
              provenance: dict[str, Any] | None = None) -> ReferenceBank:
        """A new bank: these reference atoms (embeddings, numbers, structures, data hash) with
        ``projector`` fitted anew (:func:`fit_bank_projector`) on ``anchor_matrix``, this
        model's (K, D) embeddings of ``anchors``. The embeddings do not depend on the anchors
        or the projection, so a bank on other anchors or another projection needs no forward
        pass. provenance: entries added to this bank's (anchor-set hash and K are set)."""
        fit_bank_projector(projector, anchor_matrix, anchors, self.embeddings)
        prov = {**self.provenance, "anchor_set_hash": anchors.hash, "n_anchors": len(anchors),
                **dict(provenance or {})}
        return ReferenceBank(self.embeddings, self.numbers, self.structure_index,
                             projector=projector, anchor_set_hash=anchors.hash,
                             data_hash=self.data_hash, provenance=prov)

    def __len__(self) -> int:
        return len(self.numbers)

    def __repr__(self) -> str:
        return (f"ReferenceBank(model={self.model!r}, atoms={len(self)}, "
                f"K={self.projector.anchors_.shape[0]}, projection={self.projector.name!r})")

    @property
    def model(self) -> str:
        return str(self.provenance.get("model"))

    @property
    def fingerprint(self) -> str | None:
        return self.provenance.get("fingerprint")

    @cached_property
    def coords(self) -> Any:
        """(M, K [+ R]) float64 projected coordinates of the reference atoms (R: the
        projection's global block; the width is ``projector.n_columns``).

        Element projection (:attr:`Projector.by_element`): a ``scipy.sparse.csr_array`` holding
        each atom's whole element block, exact (the dense array's values; 12 bytes per stored
        entry, e.g. ~23k atoms x <= 2048 entries on the default anchors, about 0.5 GiB at most),
        refused above :data:`MAX_SPARSE_BYTES`. Other projections: a dense ndarray, refused above
        :data:`MAX_DENSE_BYTES`. Helpers that take either form: :mod:`platoscope.coords`."""
        k = self.projector.anchors_.shape[0]
        if self.projector.by_element:
            need = self.coords_nbytes()
            if need > MAX_SPARSE_BYTES:
                raise InputError(
                    f"the reference bank's coordinates would take {need / 2**30:.1f} GiB even "
                    f"sparse ({len(self)} atoms, K={k}, each atom's element block); what needs "
                    "them (an atypical monitor in the projected space, carrying thresholds "
                    "across a model switch) is limited to smaller banks or fewer anchors")
            return self.projector.transform(self.embeddings, self.numbers, sparse=True)
        need = 8 * len(self) * k
        if need > MAX_DENSE_BYTES:
            raise InputError(
                f"the reference bank's coordinates would take {need / 2**30:.1f} GiB dense "
                f"({len(self)} atoms x K={k}, {self.projector.name} projection); what needs "
                "them (an atypical monitor in the projected space, carrying thresholds across a "
                "model switch) is limited to smaller sets: use the element projection (sparse "
                "coordinates), fewer anchors or a smaller bank")
        return self.projector.transform(self.embeddings, self.numbers, sparse=False)

    def coords_nbytes(self) -> int:
        """Bytes :attr:`coords` holds (without building it): 8 x M x K dense; for the element
        projection 12 per stored entry (float64 value + int32 column; int64 columns, 16, past
        2**31 entries) plus the row pointer."""
        k = self.projector.anchors_.shape[0]
        if not self.projector.by_element:
            return 8 * len(self) * k
        zs = self.projector.anchor_numbers_[self.projector.valid_]
        z, count = np.unique(self.numbers, return_counts=True)
        width = np.array([np.count_nonzero(zs == x) for x in z], dtype=np.int64)
        nnz = int(np.dot(count.astype(np.int64), width)) + len(self) * (
            self.projector.n_global)
        per = 12 if max(nnz, k) < 2**31 else 16
        return per * nnz + (per - 8) * (len(self) + 1)

    def check_backend(self, backend: Any) -> None:
        """Refuse a backend other than the one that built the bank (model, weights, layer)."""
        want = (self.provenance.get("model"), self.provenance.get("weights_sha256"),
                self.provenance.get("layer"))
        got = (backend.spec, backend.weights_sha256(), backend.layer)
        if want != got:
            raise ModelMismatchError(
                f"reference bank was built by {want[0]} (layer {want[2]}, weights "
                f"{str(want[1])[:12]}), not by {got[0]} (layer {got[2]}, weights "
                f"{str(got[1])[:12]})")

    def save(self, path: str | os.PathLike, *, anchors_from: str | os.PathLike | None = None
             ) -> Path:
        """Write the bank as one compressed npz. anchors_from: an anchor-matrix file shipped
        beside this bank (``data/anchors/...``) holding exactly the projector's anchor matrix:
        the bank then records that file's name and content hash instead of a second copy of
        the matrix (19.5 MB for SevenNet-0 on the default anchors); :meth:`load` reads it back
        from there and refuses a file whose content differs."""
        path = Path(path)
        state = {f"projector_{k}": v for k, v in self.projector.get_state().items()}
        if anchors_from is not None:
            src = Path(anchors_from)
            matrix = _anchor_matrix_of(src)
            if not np.array_equal(matrix, state["projector_anchors"], equal_nan=True):
                raise InputError(f"{src} does not hold this bank's anchor matrix")
            del state["projector_anchors"]
            state["projector_anchors_file"] = np.array(src.name)
            state["projector_anchors_sha256"] = np.array(_matrix_hash(matrix))
        savez_atomic(path, compressed=True, format=np.array(FORMAT), embeddings=self.embeddings,
                      numbers=self.numbers.astype(np.int16),
                      structure_index=self.structure_index.astype(np.int32),
                      anchor_set_hash=np.array(self.anchor_set_hash),
                      data_hash=np.array(self.data_hash),
                      provenance=np.array(json.dumps(self.provenance, default=str)), **state)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceBank:
        """Read a bank written by :meth:`save`; a damaged or foreign file, or a missing or
        changed anchor-matrix file it refers to: CorruptFileError."""
        data = load_npz(Path(path), FORMAT, "reference bank")
        state = {k.removeprefix("projector_"): v for k, v in data.items()
                 if k.startswith("projector_")}
        if "anchors_file" in state:
            state["anchors"] = _referenced_matrix(Path(path), str(state.pop("anchors_file")),
                                                  str(state.pop("anchors_sha256")))
        try:
            return cls(data["embeddings"], data["numbers"], data["structure_index"],
                       projector=Projector.from_state(state),
                       anchor_set_hash=str(data["anchor_set_hash"]),
                       data_hash=str(data["data_hash"]),
                       provenance=json.loads(str(data["provenance"])))
        except Exception as err:
            raise CorruptFileError(f"{path}: inconsistent reference-bank arrays ({err})"
                                   ) from err


def _anchor_matrix_of(path: Path) -> np.ndarray:
    from platoscope.anchors import CACHE_FORMAT

    return np.asarray(load_npz(path, CACHE_FORMAT, "anchor-matrix cache")["matrix"])


def _matrix_hash(matrix: np.ndarray) -> str:
    from platoscope.provenance import sha256_bytes

    m = np.ascontiguousarray(matrix)
    return sha256_bytes(str(m.dtype).encode(), np.asarray(m.shape, "<i8").tobytes(), m.tobytes())


def _referenced_matrix(bank_path: Path, name: str, sha: str) -> np.ndarray:
    """The anchor matrix a bank saved with ``anchors_from`` refers to: ``anchors/<name>``
    beside the bank (the package's layout), checked against the recorded hash."""
    src = bank_path.parent / "anchors" / name
    if not src.is_file():
        raise CorruptFileError(f"{bank_path}: its anchor matrix {src} is missing")
    matrix = _anchor_matrix_of(src)
    if _matrix_hash(matrix) != sha:
        raise CorruptFileError(f"{bank_path}: {src} is not the anchor matrix it was saved with")
    return matrix


def shared_rows(bank_a: ReferenceBank, bank_b: ReferenceBank) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (ia, ib) of the reference atoms both banks hold, in the same order.

    Banks of one reference set differ only by whole structures a model could not embed
    (``ReferenceBank.build(skip_unsupported=True)``); anything else is refused.
    """
    if bank_a.anchor_set_hash != bank_b.anchor_set_hash:
        raise AnchorSetMismatchError(
            f"reference banks on different anchor sets ({bank_a.anchor_set_hash[:12]} vs "
            f"{bank_b.anchor_set_hash[:12]}): their coordinates share no axes")
    common = np.intersect1d(bank_a.structure_index, bank_b.structure_index)
    ia = np.flatnonzero(np.isin(bank_a.structure_index, common))
    ib = np.flatnonzero(np.isin(bank_b.structure_index, common))
    if len(ia) != len(ib) or not len(ia) or (bank_a.numbers[ia] != bank_b.numbers[ib]).any() or (
            bank_a.structure_index[ia] != bank_b.structure_index[ib]).any():
        raise InputError(f"the reference banks of {bank_a.model} ({len(bank_a)} atoms) and "
                         f"{bank_b.model} ({len(bank_b)} atoms) do not hold the same reference "
                         "atoms in the same order")
    return ia, ib


REFERENCE_STRUCTURES = "reference_structures.extxyz.gz"


def reference_structures() -> list[Atoms]:
    """The reference structures shipped with platoscope (MP-20 train subset, CC-BY-4.0)."""
    from ase.io import read

    from platoscope.paths import default_data_path

    path = default_data_path(REFERENCE_STRUCTURES)
    if not path.is_file():
        raise FileNotFoundError(f"shipped reference structures missing ({path}); rebuild with "
                                "builders/build_default_data.py")
    return read(path, index=":")


def bank_file_name(spec: str, anchor_hash: str, projection: str) -> str:
    """File name of the default bank of model ``spec`` on an anchor set and projection."""
    from platoscope.paths import safe_file_name

    return f"reference_{safe_file_name(spec)}_{anchor_hash[:12]}_{projection}.npz"


def default_bank(backend: Any, anchors: AnchorSet, *, projection: str | Projector | None = None,
                 progress: bool = False) -> ReferenceBank:
    """The reference bank of ``backend`` on ``anchors`` over the shipped reference structures.

    projection: preset name or Projector (its parameters; default: the default projection,
    ``element``). Looks for a bank shipped in the package, then in the cache; otherwise builds
    it once (a minute or two on a CPU, with a progress bar) and caches it. The cache key
    includes the model fingerprint and the hash of the shipped reference file, so a new
    release's reference set is never scored against an old cached bank. A bank made before
    coverage thresholds were held out by structure (its projector has no anchor groups), or
    with other projection parameters under the same name (an ``element`` bank from before the
    global block), is not used as it is: its embeddings are kept and its projector is fitted
    anew (seconds).
    """
    from platoscope.paths import cache_dir, default_data_path
    from platoscope.provenance import sha256_bytes

    proj = Projector.coerce(projection)
    name = bank_file_name(backend.spec, anchors.hash, proj.name)
    ref_hash = sha256_bytes(default_data_path(REFERENCE_STRUCTURES).read_bytes())
    cached = cache_dir() / "reference" / f"{backend.fingerprint[:16]}-{ref_hash[:8]}-{name}"
    for path in (default_data_path(name), cached):
        if path.is_file():
            bank = ReferenceBank.load(path)
            bank.check_backend(backend)
            if bank.projector.coverage_holdout == "structure" \
                    and bank.projector.get_params() == proj.get_params():
                return bank
    structures = reference_structures()
    reused = _reuse_embeddings(backend, anchors, proj, structures, ref_hash, progress=progress)
    if reused is not None:
        reused.save(cached)
        return reused
    if progress:
        import sys

        print(f"platoscope: building the reference bank of {backend.spec} (layer "
              f"{backend.layer}): {len(structures)} shipped reference structures, "
              f"{sum(len(a) for a in structures)} atoms, embedded once. Monitors calibrate their "
              f"thresholds on it; it is cached in {cached.parent} and later runs start at once. "
              "Ctrl-C stops without caching anything.", file=sys.stderr, flush=True)
    bank = ReferenceBank.build(backend, structures, anchors, projection=proj,
                               skip_unsupported=True, progress=progress)
    bank.save(cached)
    if progress:
        import sys

        print(f"platoscope: cached {cached}", file=sys.stderr, flush=True)
    return bank


def _reuse_embeddings(backend: Any, anchors: AnchorSet, proj: Projector, structures: list,
                      ref_hash: str, *, progress: bool = False) -> ReferenceBank | None:
    """A default bank on other anchors or another projection from the raw embeddings of a
    bank this model already has for the same shipped reference structures (shipped or cached;
    checked: same model, layer, weights and data hash), with only the projector fitted anew.
    The embeddings do not depend on the anchors; rebuilding re-embedded 23k atoms (minutes).
    None when there is no such bank."""
    from platoscope.paths import cache_dir, default_data_path, safe_file_name
    from platoscope.provenance import package_versions
    from platoscope.readers import structures_hash

    candidates = [*sorted(default_data_path(".").glob(
        f"reference_{safe_file_name(backend.spec)}_*.npz")), *sorted(
        (cache_dir() / "reference").glob(f"{backend.fingerprint[:16]}-{ref_hash[:8]}-*.npz"))]
    if not candidates:
        return None
    supported = backend.supported_numbers
    kept = [i for i, a in enumerate(structures)
            if supported is None or set(a.numbers) <= supported]
    want = structures_hash([structures[i] for i in kept])
    for path in candidates:
        try:
            donor = ReferenceBank.load(path)
            donor.check_backend(backend)
        except (CorruptFileError, AnchorSetMismatchError):
            continue
        if donor.data_hash != want or donor.fingerprint not in (None, backend.fingerprint):
            continue
        return donor.refit(proj, anchors.embed(backend, progress=progress), anchors,
                           provenance={"versions": package_versions(),
                                       "embeddings_from": path.name})
    return None


def fit_bank_projector(projector: Projector, anchor_matrix: np.ndarray, anchors: AnchorSet,
                       reference: np.ndarray | None = None) -> Projector:
    """Fit ``projector`` as a reference bank's: on ``anchor_matrix`` (K, D), a model's
    embeddings of ``anchors``, with the set's atomic numbers (per-element blocks and
    thresholds) and structure groups (coverage thresholds held out by structure), and, for a
    preset that needs them (``standardize``/``whiten``), the bank's ``reference`` embeddings
    (M, D) as float64. Returns the projector, fitted."""
    ref = (np.asarray(reference, dtype=np.float64)
           if projector.needs_reference and reference is not None else None)
    return projector.fit(anchor_matrix, ref, anchor_numbers=anchors.numbers,
                         anchor_groups=anchors.groups)
