"""Portable per-atom coordinate files: what ``platoscope embed`` writes and ``compare`` reads.

Projected coordinates share K axes across models, so a file written in one environment
(say SevenNet) compares with one written in another (MACE + CHGNet) as if both came from one
process. Each file records the model's provenance, the anchor-set hash and the hash of the
structures whose atoms it holds; :func:`check_comparable` refuses files made with different
anchor sets or different atoms.

Layout (HDF5): datasets ``platonic`` (M, K) float64, optional ``embeddings`` (M, D) float32,
``numbers`` (M,), ``structure_index`` (M,), ``atom_index`` (M,); root attributes
``format``, ``provenance`` (JSON), ``anchor_set_hash``, ``data_hash``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from platoscope.errors import AnchorSetMismatchError, CorruptFileError, InputError

FORMAT = "platoscope.coords/1"


@dataclass
class AtomCoordinates:
    """Coordinates of M atoms from one model; rows follow (structure_index, atom_index)."""

    platonic: np.ndarray
    numbers: np.ndarray
    structure_index: np.ndarray
    atom_index: np.ndarray
    anchor_set_hash: str
    data_hash: str
    provenance: dict[str, Any] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        m = len(self.numbers)
        for name in ("platonic", "structure_index", "atom_index"):
            if len(getattr(self, name)) != m:
                raise InputError(f"{name} has {len(getattr(self, name))} rows, numbers has {m}")
        if self.embeddings is not None and len(self.embeddings) != m:
            raise InputError(f"embeddings has {len(self.embeddings)} rows, numbers has {m}")

    @property
    def model(self) -> str:
        return str(self.provenance.get("model", "unknown"))

    def __len__(self) -> int:
        return len(self.numbers)

    def save(self, path: str | os.PathLike, *, embeddings: bool = True) -> Path:
        import h5py

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as h:
            h.attrs["format"] = FORMAT
            h.attrs["provenance"] = json.dumps(self.provenance, default=str)
            h.attrs["anchor_set_hash"] = self.anchor_set_hash
            h.attrs["data_hash"] = self.data_hash
            h.create_dataset("platonic", data=np.asarray(self.platonic, dtype=np.float64),
                             compression="gzip", compression_opts=4)
            h.create_dataset("numbers", data=np.asarray(self.numbers, dtype=np.int16))
            h.create_dataset("structure_index", data=np.asarray(self.structure_index, np.int32))
            h.create_dataset("atom_index", data=np.asarray(self.atom_index, np.int32))
            if embeddings and self.embeddings is not None:
                h.create_dataset("embeddings", data=np.asarray(self.embeddings, np.float32),
                                 compression="gzip", compression_opts=4)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AtomCoordinates:
        import h5py

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"coordinates file not found: {path}")
        try:
            with h5py.File(path, "r") as h:
                if h.attrs.get("format") != FORMAT:
                    raise CorruptFileError(f"{path}: not a platoscope coordinates file "
                                           f"(format {h.attrs.get('format')!r})")
                out = cls(
                    platonic=h["platonic"][()],
                    numbers=h["numbers"][()].astype(np.int64),
                    structure_index=h["structure_index"][()].astype(np.int64),
                    atom_index=h["atom_index"][()].astype(np.int64),
                    anchor_set_hash=str(h.attrs["anchor_set_hash"]),
                    data_hash=str(h.attrs["data_hash"]),
                    provenance=json.loads(h.attrs["provenance"]),
                    embeddings=h["embeddings"][()] if "embeddings" in h else None,
                    path=str(path),
                )
        except CorruptFileError:
            raise
        except (OSError, KeyError, ValueError) as err:
            raise CorruptFileError(f"{path}: unreadable coordinates file ({err})") from err
        return out


def check_comparable(a: AtomCoordinates, b: AtomCoordinates) -> None:
    """Raise AnchorSetMismatchError unless ``a`` and ``b`` hold the same atoms on the same axes."""
    na, nb = a.path or a.model, b.path or b.model
    if a.anchor_set_hash != b.anchor_set_hash:
        raise AnchorSetMismatchError(
            f"{na} and {nb} were projected on different anchor sets "
            f"({a.anchor_set_hash[:12]} vs {b.anchor_set_hash[:12]}): their axes differ")
    if a.data_hash != b.data_hash or len(a) != len(b) or not np.array_equal(a.numbers, b.numbers):
        raise AnchorSetMismatchError(
            f"{na} ({len(a)} atoms, data {a.data_hash[:12]}) and {nb} ({len(b)} atoms, data "
            f"{b.data_hash[:12]}) do not hold the same atoms in the same order")
    if a.platonic.shape[1] != b.platonic.shape[1]:
        raise AnchorSetMismatchError(f"{na} has K={a.platonic.shape[1]}, {nb} has "
                                     f"K={b.platonic.shape[1]}")


def embed_structures(calc: Any, structures: list, *, data_hash: str, batch_size: int = 16,
                     progress: bool = False, executor: Any = None) -> AtomCoordinates:
    """Coordinates of every atom of ``structures`` with a PlatonicCalculator's model and anchors.

    Rows are ordered structure by structure, atoms in file order. Uses the backend's batched
    embedding (no forces), then the calculator's projector. executor: a
    :class:`platoscope.distributed.Executor` to run the forward passes on (e.g. a Dask
    cluster); the first structure that fails raises, naming its file and frame.
    """
    if not structures:
        raise InputError("no structures to embed")
    if calc.projector is None:
        raise InputError("the calculator has no anchors: nothing to project on")
    if executor is not None:
        from platoscope.distributed import embed_list

        feats = embed_list(executor, list(structures), progress=progress)
    else:
        feats = calc.backend.embed(structures, batch_size=batch_size, progress=progress)
    emb = np.concatenate(feats)
    sizes = [len(f) for f in feats]
    numbers = np.concatenate([s.numbers for s in structures])
    return AtomCoordinates(
        platonic=calc.projector.transform(emb, numbers),
        numbers=numbers,
        structure_index=np.repeat(np.arange(len(structures)), sizes),
        atom_index=np.concatenate([np.arange(n) for n in sizes]),
        anchor_set_hash=calc.anchors.hash,
        data_hash=data_hash,
        provenance=calc.provenance(),
        embeddings=emb,
    )
