"""PlatonicCalculator: any supported MLIP, plus each atom's anchor-projected coordinates.

It delegates energy, forces and stress to the backend's own ASE calculator unchanged and reads
the per-atom features from the same forward pass; the projection adds an (N, D) x (D, K)
product. Coordinates are also written to ``atoms.arrays["platonic"]`` so that any ASE writer
that keeps per-atom arrays (extxyz) stores them with every frame, for anchor sets of at most
:data:`ARRAY_MAX_K` anchors (dense (N, K) float64 rows: with the default set's tens of
thousands of anchors a 64-atom frame would carry ~20 MB through every ``atoms.copy()``).

``results["platonic"]`` is what the projector gives: with the default ``element`` projection a
``scipy.sparse.csr_array`` (N, K) holding each atom's own element block exactly (a 64-atom
frame on the default anchors: at most 64 x 2048 stored values, ~1.5 MB, instead of 64 x 38,076
dense, 19.5 MB); with ``shared``/``paper``/... a dense ndarray. Everything downstream (monitors,
transport, writers) takes either; :mod:`platoscope.coords` has the helpers (row distances,
compacted columns, dense rows on request).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from platoscope.anchors import NAMED_ANCHORS, AnchorSet
from platoscope.backends import Backend, load_backend
from platoscope.coords import dense_rows
from platoscope.errors import InputError, InvalidStructureError
from platoscope.projection import DEFAULT_PROJECTION, Projector
from platoscope.provenance import package_versions

EXTRA_PROPERTIES = ["platonic", "embeddings", "coverage"]
ARRAY_MAX_K = 4096
"""Largest K whose coordinates the calculator copies into ``atoms.arrays`` (see above)."""


def attach_coordinates(atoms: Atoms, z: Any, name: str = "platonic") -> None:
    """Put coordinates ``z`` (N, K) into ``atoms.arrays[name]`` (dense rows) when K <=
    :data:`ARRAY_MAX_K`; above it remove any ``name`` array the atoms already carry (an earlier
    calculator's, or one read from a file), so that it is never written as this frame's."""
    if z.shape[1] <= ARRAY_MAX_K:
        atoms.arrays[name] = dense_rows(z)
    else:
        atoms.arrays.pop(name, None)


class PlatonicCalculator(Calculator):
    """Wrap an MLIP; every calculation also yields ``platonic`` (N, K; sparse CSR for the
    element projection, see the module docstring) and ``embeddings`` (N, D).

    backend: a spec string (``"chgnet"``, ``"sevenn:7net-0"``, ``"mace:/path.model"`` ...), a
        built :class:`~platoscope.backends.Backend`, or a supported ASE calculator.
    anchors: an :class:`AnchorSet` or a path to one; ``None`` computes embeddings only.
    projection: a preset name (``"element"``, the default: each atom on its own element's
        anchors; ``"shared"``: one centring over all anchors; ``"paper"`` for Li & Walsh's plain
        cosines; ``"centered"`` ...) or a fitted/unfitted :class:`Projector`. Presets that need
        reference statistics take a fitted Projector.
    layer, device: passed to :func:`load_backend` when ``backend`` is a spec or calculator.
    array_name: key of ``atoms.arrays`` that receives the coordinates (``None``: do not write;
        not written above :data:`ARRAY_MAX_K` anchors: use :meth:`get_platonic`).
    Results also hold ``coverage`` (N,): each atom's best cosine to the anchors it is projected
    on (``projector.coverage_threshold(numbers)`` says where it is too low).
    """

    def __init__(self, backend: Any, anchors: AnchorSet | str | None = None, *,
                 projection: str | Projector = DEFAULT_PROJECTION, layer: str | None = None,
                 device: str = "cpu", array_name: str | None = "platonic",
                 anchor_cache: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.backend: Backend = load_backend(backend, layer=layer, device=device)
        self.implemented_properties = [*self.backend.implemented_properties, *EXTRA_PROPERTIES]
        if isinstance(anchors, str) and anchors in NAMED_ANCHORS and not Path(anchors).exists():
            anchors = AnchorSet.named(anchors)
        elif isinstance(anchors, (str, bytes)) or hasattr(anchors, "__fspath__"):
            anchors = AnchorSet.load(anchors)
        if anchors is not None and not isinstance(anchors, AnchorSet):
            raise InputError(f"anchors must be an AnchorSet, a shipped set's name or an anchors "
                             f".npz path, got {type(anchors).__name__}")
        self.anchors = anchors
        self.array_name = array_name
        self.projector: Projector | None = None
        if anchors is not None:
            self.projector = self._fit_projector(projection, anchor_cache)

    def _fit_projector(self, projection: str | Projector, use_cache: bool) -> Projector:
        proj = Projector(projection) if isinstance(projection, str) else projection
        if hasattr(proj, "anchors_"):
            if proj.anchors_.shape[0] != len(self.anchors):
                raise InputError(f"fitted Projector has {proj.anchors_.shape[0]} anchors, the "
                                 f"anchor set {len(self.anchors)}")
            return proj
        if proj.needs_reference:
            raise InputError(f"projection {proj.name!r} needs reference statistics: pass a "
                             "Projector fitted with reference_embeddings")
        return proj.fit(self.anchors.embed(self.backend, cache=use_cache),
                        anchor_numbers=self.anchors.numbers, anchor_groups=self.anchors.groups)

    def calculate(self, atoms: Atoms | None = None, properties: Any = ("energy",),
                  system_changes: Any = tuple(all_changes)) -> None:
        if atoms is None and self.atoms is None:
            raise InvalidStructureError(
                "no structure has been calculated yet: pass the Atoms, e.g. get_platonic(atoms)")
        Calculator.calculate(self, atoms, properties, system_changes)
        results, feats = self.backend.compute(self.atoms, properties, system_changes)
        results["embeddings"] = feats
        if self.projector is not None:
            z, cov = self.projector.transform_with_coverage(feats, self.atoms.numbers)
            results["platonic"] = z
            results["coverage"] = cov
            if atoms is not None and self.array_name:
                attach_coordinates(atoms, z, self.array_name)
        self.results = results

    def get_platonic(self, atoms: Atoms | None = None) -> Any:
        """(N, K [+ R]) float64 Platonic coordinates (see :meth:`Projector.transform
        <platoscope.projection.Projector.transform>`): a ``scipy.sparse.csr_array`` for the
        ``element`` projection (each row stores its element's block, nothing truncated), a
        dense ndarray for the others. ``platoscope.coords.dense_rows(z)`` densifies."""
        if self.projector is None:
            raise PropertyNotImplementedError(
                "no anchors: construct PlatonicCalculator(backend, anchors=...) to get coordinates")
        return self.get_property("platonic", atoms)

    def get_embeddings(self, atoms: Atoms | None = None) -> np.ndarray:
        """(N, D) float64 raw per-atom features of the backend's chosen layer."""
        return self.get_property("embeddings", atoms)

    def provenance(self) -> dict[str, Any]:
        """Model, weight hash, layer, anchor-set hash, projection and package versions."""
        prov = self.backend.provenance().to_dict()
        return {
            **prov,
            "anchor_set_hash": self.anchors.hash if self.anchors is not None else None,
            "n_anchors": len(self.anchors) if self.anchors is not None else 0,
            # coordinate width: the K anchors and the projection's global block, if any
            "n_columns": self.projector.n_columns if self.projector is not None else 0,
            "anchors_left_out": (int((~self.projector.valid_).sum())
                                 if self.projector is not None else 0),
            "projection": self.projector.name if self.projector is not None else None,
            "projection_params": (self.projector.get_params() if self.projector is not None
                                  else None),
            "coverage_holdout": (self.projector.coverage_holdout if self.projector is not None
                                 else None),
            "versions": package_versions(),
        }

    def __repr__(self) -> str:
        return (f"PlatonicCalculator({self.backend!r}, anchors={self.anchors!r}, "
                f"projection={self.projector!r})")
