"""Atypical-environment monitor: how far each atom sits from what the model has seen.

Score: mean Euclidean distance from the atom to its ``k`` nearest reference-bank atoms of the
same element, in one model's space: ``space="raw"`` (default) compares the model's own
embeddings of the hooked layer ((N, D), ``frame.embeddings`` against ``bank.embeddings``),
``space="projected"`` the anchor-projected coordinates ((N, K), ``frame.platonic`` against
``bank.coords``). Raw is the default: the k-NN runs within one model, so the shared space buys
nothing, and with the default softmax projection at K = 3000 projected distances crowd near
their ceiling sqrt(2). How well it finds real DFT force errors, beside the model's |F| and
committees, is measured in docs/detection.md. Raw distances are in the layer's own
units, so thresholds of different models or layers do not compare; the bank must come from the
running model and layer.

Thresholds are calibrated per element on the bank itself, leaving each reference structure out
of its own neighbour search, at the ``quantile`` of those held-out scores: on data like the
reference set an atom crosses the threshold with probability about ``1 - quantile`` per frame
(the stated false-alarm rate; it does not transfer to other data: docs/detection.md). Elements
absent from the
bank are scored against every bank atom and get the smallest per-element threshold, so they
stand out; events name them.

Beside the score, the model's own force magnitude ``|F|`` per atom is stored
(``score_atypical_force``, eV/Å) when the frame has forces: free, and the baseline any
single-model error score must beat (docs/detection.md).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from platoscope.analysis.neighbors import (
    check_k,
    chunk_rows,
    knn_distance,
    mean_k_nearest,
)
from platoscope.coords import as_coords, is_sparse, row_norms, support
from platoscope.errors import ConfigError, InputError
from platoscope.monitors.base import Frame, Monitor, MonitorWarning
from platoscope.monitors.registry import MonitorOption, register_monitor
from platoscope.reference import ReferenceBank

MIN_ATOMS_PER_ELEMENT = 20
SPACES = ("raw", "projected")


@register_monitor
class AtypicalMonitor(Monitor):
    """Flags atoms far from the reference bank of the running model.

    bank: the ReferenceBank of the *same* model and layer (and, for ``projected``, anchors) as
    the running calculator; k: neighbours averaged; quantile: calibration quantile (false-alarm
    rate 1 - quantile); same_element: compare only with reference atoms of the same element;
    space: ``raw`` (the model's embeddings, (M, D)) or ``projected`` (coordinates, (M, K)).
    """

    name = "atypical"
    extra_units = {"force": "eV/Å"}  # noqa: RUF012
    options = (MonitorOption("space", str, "raw", "Space of the atypical monitor's k-NN "
                             "distance: raw embeddings or projected coordinates",
                             choices=SPACES),)

    @classmethod
    def from_spec(cls, arg: str, context: Any) -> AtypicalMonitor:
        """The running model's reference bank (``context.bank``) and the ``space`` option."""
        if arg:
            raise ConfigError(f"the atypical monitor takes no argument, got {arg!r}")
        if context.bank is None:
            raise ConfigError("the atypical monitor needs a reference bank")
        return cls(context.bank, **context.options_for(cls), **context.common)

    def __init__(self, bank: ReferenceBank, *, k: int = 5, quantile: float = 0.999,
                 same_element: bool = True, space: str = "raw", **kwargs: Any):
        super().__init__(**kwargs)
        check_k(k)
        if not 0 < quantile < 1:
            raise InputError(f"quantile must be in (0, 1), got {quantile}")
        if space not in SPACES:
            raise InputError(f"space must be 'raw' or 'projected', got {space!r}")
        if space == "raw" and getattr(bank, "embeddings", None) is None:
            raise InputError(f"space='raw' needs the bank's raw embeddings; {bank.model} holds "
                             "projected coordinates only: use space='projected'")
        self.bank = bank
        self.k = k
        self.quantile = quantile
        self.same_element = same_element
        self.expected_false_alarm_rate = 1.0 - quantile
        self.rebase(bank, space)

    def rebase(self, bank: Any, space: str = "projected") -> AtypicalMonitor:
        """Score against ``bank`` (coordinates ``(M, K)``, ``numbers``, ``structure_index``;
        for ``raw``, ``embeddings``) in ``space`` from now on, recalibrated unless a fixed
        ``threshold`` was given (e.g. a bank carried into another model's space at a model
        switch). Returns self."""
        self.bank = bank
        self.space = space
        self.units = ("distance in the model's feature space (model units)" if space == "raw"
                      else "distance in Platonic coordinates")
        ref = (as_coords(bank.coords, "reference coordinates") if space == "projected"
               else np.asarray(bank.embeddings, dtype=np.float64))
        self._ref = ref  # (M, D) raw or (M, K) projected (dense, or CSR: element projection)
        self._sparse = is_sparse(ref)
        self._pool = {int(z): ref[bank.numbers == z] for z in np.unique(bank.numbers)}
        self._compact: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.element_thresholds_: dict[int, float] = {}
        self.uncovered_elements_: list[int] = []
        self.calibration_scores_: dict[int, np.ndarray] = {}
        if self.threshold is None:
            self.calibrate()
        return self

    def calibrate(self) -> AtypicalMonitor:
        """Per-element thresholds from leave-one-structure-out scores of the bank atoms."""
        bank, coords = self.bank, self._ref
        all_scores = []  # same-element pools: the element's rows (sparse: its block's columns)
        for z in np.unique(bank.numbers):
            mask = bank.numbers == z if self.same_element else np.ones(len(bank), bool)
            sel = np.flatnonzero(bank.numbers == z)
            s = self._knn(coords[sel], int(z) if self.same_element else None,
                          exclude=bank.structure_index[sel],
                          groups=bank.structure_index[mask])
            s = s[np.isfinite(s)]
            self.calibration_scores_[int(z)] = s
            all_scores.append(s)
        pooled = np.concatenate(all_scores)
        if pooled.size == 0:
            raise InputError("reference bank too small to calibrate: every element sits in a "
                             "single structure")
        self.global_threshold_ = float(np.quantile(pooled, self.quantile))
        for z, s in self.calibration_scores_.items():
            self.element_thresholds_[z] = (float(np.quantile(s, self.quantile))
                                           if s.size >= MIN_ATOMS_PER_ELEMENT
                                           else self.global_threshold_)
        self.unknown_threshold_ = min(self.element_thresholds_.values())
        return self

    def start(self, frame: Frame) -> None:
        """In raw space, refuse a running model, weight file or layer other than the bank's:
        raw features of two models or layers share no axes, even when their widths agree."""
        backend = getattr(frame.calc, "backend", None)
        if self.space == "raw" and backend is not None and hasattr(self.bank, "check_backend"):
            self.bank.check_backend(backend)
        self._note_uncovered(frame.atoms.numbers)

    def _note_uncovered(self, numbers: np.ndarray) -> None:
        """Record (summary) and warn once about elements the reference bank does not hold."""
        from ase.data import chemical_symbols

        new = sorted({int(z) for z in np.unique(numbers)} - set(self._pool)
                     - set(self.uncovered_elements_))
        if not new:
            return
        self.uncovered_elements_.extend(new)
        warnings.warn(
            f"atypical: the reference bank of {self.bank.model} holds no "
            f"{', '.join(chemical_symbols[z] for z in new)}: such atoms are scored against all "
            "bank atoms with the smallest element threshold (they stand out; their scores are "
            "not calibrated for their element). Build a bank that holds them: platoscope "
            "reference build DATA --model ... --out bank.npz, then --reference bank.npz",
            MonitorWarning, stacklevel=2)

    def _queries(self, frame: Frame) -> Any:
        """The frame's (N, D) embeddings (raw) or (N, K) coordinates (projected), float64; sparse
        coordinates stay sparse (:meth:`_pair` compacts them with the pool)."""
        raw = self.space == "raw"
        if raw and frame.embeddings is None:
            raise InputError("space='raw' needs the frame's raw embeddings (the "
                             "PlatonicCalculator's results['embeddings']), and this frame has "
                             "none: pass Frame(embeddings=...) or use space='projected'")
        what = "embeddings" if raw else "coordinates"
        z = (np.asarray(frame.embeddings, dtype=np.float64) if raw
             else as_coords(frame.platonic, "frame coordinates"))
        if z.ndim != 2 or z.shape[0] != len(frame.atoms):
            raise InputError(f"frame {what} have shape {z.shape}, expected "
                             f"({len(frame.atoms)}, width) for {len(frame.atoms)} atoms")
        width = self._ref.shape[1]
        if z.shape[1] != width and raw:
            raise InputError(f"frame embeddings have D={z.shape[1]}, the reference bank of "
                             f"{self.bank.model} D={width}: raw embeddings of different models "
                             "or layers have different widths; use the bank of the running "
                             "model and layer, or space='projected'")
        if z.shape[1] != width:
            raise InputError(f"frame has {z.shape[1]} coordinate columns, the reference bank "
                             f"{width}: different anchor sets or projections (the element "
                             "projection adds a global block); use the bank made with the "
                             "running calculator's anchors and projection")
        return z

    def score(self, frame: Frame) -> np.ndarray:
        """(N,) mean distance of each atom to its ``k`` nearest bank atoms of its element, in
        the monitor's space (raw: the layer's feature units; projected: coordinate units)."""
        z = self._queries(frame)
        out = np.empty(z.shape[0])
        numbers = frame.atoms.numbers
        self._note_uncovered(numbers)
        for el in np.unique(numbers):
            idx = np.flatnonzero(numbers == el)
            key: int | None = int(el) if self.same_element else None
            if key not in self._pool or self._pool[key].shape[0] == 0:
                key = None
            out[idx] = self._knn(z[idx], key)
        return out

    def _knn(self, q: Any, key: int | None, exclude: np.ndarray | None = None,
             groups: np.ndarray | None = None) -> np.ndarray:
        """(n,) mean distance of query rows ``q`` (n, width) to their ``k`` nearest rows of the
        pool ``key`` (an element's bank rows, or None: every bank row), leaving out pool rows
        whose ``groups`` equals the query's ``exclude`` (leave-one-structure-out).

        Dense bank and queries: :func:`knn_distance` on the rows as they are. Sparse (element
        projection; never densified to K columns): a same-element pool is compacted to the
        columns its rows use (cached) and, when the queries use no other column, searched as
        dense rows on those columns (the distances of the full rows: the dropped columns are
        zero on both sides); otherwise distances come per pool element from the exact identity
        ``|q - p|^2 = |q|^2 + |p|^2 - 2 q.p``, the inner product over the columns both use."""
        pool = self._ref if key is None else self._pool[key]
        if not (self._sparse or is_sparse(q)):
            return knn_distance(q, pool, self.k, exclude=exclude, groups=groups)
        q = as_coords(q)
        need = support(q)
        if key is not None:
            cols, compact, _ = self._compacted(key)
            if np.isin(need, cols).all():
                x = q[:, cols].toarray() if is_sparse(q) else q[:, cols]
                return knn_distance(x, compact, self.k, exclude=exclude, groups=groups)
        parts = [key] if key is not None else sorted(self._pool)
        rows = (None if key is not None
                else np.concatenate([np.flatnonzero(self.bank.numbers == z) for z in parts]))
        qsq = row_norms(q) ** 2
        n_pool = pool.shape[0]
        out = np.empty(q.shape[0])
        step = chunk_rows(n_pool)
        for s in range(0, q.shape[0], step):
            qs = q[s:s + step]
            d2 = np.empty((qs.shape[0], n_pool))
            at = 0
            for z in parts:
                cols, compact, psq = self._compacted(z)
                shared = np.intersect1d(need, cols, assume_unique=True)
                block = qsq[s:s + step, None] + psq[None, :]
                if shared.size:
                    x = qs[:, shared]
                    x = x.toarray() if is_sparse(x) else x
                    block -= 2.0 * (x @ compact[:, np.searchsorted(cols, shared)].T)
                d2[:, at:at + len(compact)] = block
                at += len(compact)
            d = np.sqrt(np.maximum(d2, 0.0))
            if rows is not None:  # pool rows in bank order, as ``groups`` counts them
                d[:, rows] = d.copy()
            out[s:s + step] = mean_k_nearest(
                d, self.k, exclude=None if exclude is None else exclude[s:s + step],
                groups=groups)
        return out

    def _compacted(self, z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Element ``z``'s bank rows on the columns they use: (cols (c,), rows (M_z, c) dense,
        squared row norms (M_z,)); cached."""
        if z not in self._compact:
            pool = self._pool[z]
            cols = support(pool)
            rows = (pool[:, cols].toarray() if is_sparse(pool)
                    else np.ascontiguousarray(pool[:, cols]))
            self._compact[z] = (cols, rows, (rows * rows).sum(axis=1))
        return self._compact[z]

    def extra_scores(self, frame: Frame) -> dict[str, np.ndarray]:
        """``force``: (N,) |F| in eV/Å per atom when the frame has forces (N, 3): the running
        model's own in MD and relaxations; in trajectory post-processing, the model's with
        ``--forces model`` (or ``auto`` beside a monitor that uses forces), else the forces
        stored with the trajectory."""
        if frame.forces is None:
            return {}
        return {"force": np.linalg.norm(np.asarray(frame.forces, dtype=np.float64), axis=1)}

    def thresholds_for(self, frame: Frame) -> np.ndarray:
        if self.threshold is not None:
            return np.full(len(frame.atoms), float(self.threshold))
        return np.array([self.element_thresholds_.get(int(z), self.unknown_threshold_)
                         for z in frame.atoms.numbers])

    def describe(self, frame: Frame, atoms: np.ndarray) -> dict[str, Any]:
        d = super().describe(frame, atoms)
        unknown = sorted({frame.atoms.get_chemical_symbols()[i] for i in atoms
                          if int(frame.atoms.numbers[i]) not in self._pool})
        if unknown:
            d["elements_not_in_reference"] = unknown
        return d

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "k": self.k, "quantile": self.quantile,
                "same_element": self.same_element, "space": self.space,
                "reference_model": self.bank.model, "reference_data_hash": self.bank.data_hash}

    def summary(self) -> dict[str, Any]:
        from ase.data import chemical_symbols

        s = super().summary()
        s.update(reference_atoms=len(self.bank),
                 element_thresholds={chemical_symbols[z]: round(t, 6)
                                     for z, t in sorted(self.element_thresholds_.items())},
                 elements_not_in_reference=[chemical_symbols[z]
                                            for z in self.uncovered_elements_],
                 not_in_reference_threshold=round(self.unknown_threshold_, 6))
        return s
