"""Model switch: hand a running simulation from model A to model B, and check the hand-over.

:class:`~platoscope.switching.SwitchingCalculator` (an ASE calculator) hands a run from A to B.

:class:`SwitchMonitor` checks the hand-over with optimal transport (POT, via
:func:`platoscope.analysis.optimal_transport.transport`, exact EMD for up to 4000 atoms) between A's
and B's projected clouds of that frame: the transport cost, the fraction of atoms sent to
themselves (``matched_self``), to themselves or a symmetry-equivalent atom of the starting
structure (``matched_equivalent``, spglib classes at ``symprec``) and to an atom of the same
element. A switch whose ``matched_equivalent`` falls below ``min_matched`` is flagged: the two
models do not see the frame the same way. ``chance_equivalent``, the fraction a random
within-element assignment would reach, is reported beside it (1.0 when each element forms one
class: then only ``matched_self`` says anything).

Every switch gives one event (action ``record`` unless flagged). Given the running atypical
monitor, its reference thresholds are carried into B's space: A's reference-bank coordinates
are moved by a :class:`~platoscope.analysis.optimal_transport.TransportMap` fitted A -> B (on
the two banks when B's bank is given, ``bank_b="default"`` loads or builds it at ``start``;
else on the frame's own paired clouds) and the monitor is recalibrated on the carried bank, in place
(``retarget=True``), so it keeps scoring B's frames (in the projected space, also when it
scored raw embeddings before: those of two models share no axes). A map fitted on the two banks
reproduces B's own calibrated thresholds far better than one fitted on a single small frame,
which barely moves them (docs/symmetry_switch.md): pass B's bank.
Without a SwitchingCalculator (``from_spec``, e.g. ``--monitor switch:sevenn:7net-0``), the
monitor evaluates B itself every ``interval`` frames and reports only flagged frames: "would a
hand-over here be safe?".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from platoscope.analysis.handover import HandOver, hand_over
from platoscope.analysis.optimal_transport import TransportMap
from platoscope.backends.base import check_elements
from platoscope.coords import dense_rows
from platoscope.errors import ConfigError, InputError, InvalidStructureError
from platoscope.monitors.base import Event, Frame, Monitor
from platoscope.monitors.registry import (
    DEFAULT_INTERVAL,
    MonitorContext,
    MonitorOption,
    register_monitor,
)
from platoscope.switching import SwitchingCalculator, SwitchRecord

__all__ = ["MIN_MATCHED", "HandOver", "SwitchMonitor", "SwitchRecord", "SwitchingCalculator",
           "hand_over"]  # the calculator and the check live in switching.py, analysis/handover.py

MIN_MATCHED = 0.9
"""Flag a hand-over when fewer than this fraction of atoms go to themselves or an equivalent
atom. The same model gives 1.0; what other models give is measured in
docs/symmetry_switch.md."""
class _CarriedBank:
    """A reference bank whose coordinates were carried into another model's space."""

    def __init__(self, coords: Any, source: Any, target: str):
        self.coords = coords
        self.numbers = source.numbers
        self.structure_index = source.structure_index
        self.model = f"{source.model} carried to {target}"
        self.data_hash = source.data_hash

    def __len__(self) -> int:
        return len(self.numbers)


@register_monitor
class SwitchMonitor(Monitor):
    """Checks a model hand-over (A -> B) by optimal transport of the frame's two clouds.

    calc_b: B's PlatonicCalculator, needed only without a SwitchingCalculator (check mode);
    min_matched: flag below this ``matched_equivalent``; symprec: spglib tolerance for the
    classes of the first frame; atypical: the running AtypicalMonitor (A's space) whose
    thresholds are carried into B's space at the switch; bank_b: B's reference bank (same
    reference atoms as the atypical monitor's) to fit the carrying map on, or ``"default"``
    for :func:`~platoscope.reference.default_bank` of B (built once and cached); retarget: update
    ``atypical`` in place so it scores B's frames after the switch.

    Per-atom score: 1 for an atom sent to neither itself nor an equivalent atom, else 0 (0 on
    frames without a check); per-atom threshold 1, so events are per frame (see ``events``).
    """

    name = "switch"
    options = (MonitorOption("interval", int, DEFAULT_INTERVAL,
                             "Check mode: evaluate the second model every N steps",
                             check=lambda v: None if int(v) >= 1 else f"must be >= 1, got {v}"),)
    units = "1 - fraction of atoms matched to themselves or an equivalent atom"

    def __init__(self, calc_b: Any = None, *, min_matched: float = MIN_MATCHED,
                 symprec: float = 1e-3, atypical: Any = None, bank_b: Any = None,
                 retarget: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0 <= min_matched <= 1:
            raise InputError(f"min_matched must be in [0, 1], got {min_matched}")
        self.calc_b = calc_b
        self.min_matched = float(min_matched)
        self.symprec = symprec
        self.atypical = atypical
        self.bank_b = bank_b
        self.retarget = retarget
        self.classes_: np.ndarray | None = None
        self.checks_: list[dict[str, Any]] = []
        self.carried_: Any = None
        self.carried_thresholds_: dict[str, float] | None = None
        self.not_carried_: str | None = None
        self._pending: tuple[SwitchRecord, HandOver] | None = None
        self._last: dict[str, Any] | None = None
        self._listening: set[int] = set()

    @classmethod
    def from_spec(cls, arg: str, context: MonitorContext | None = None, *, calc: Any = None,
                  atoms: Atoms | None = None, interval: int | None = None,
                  **kwargs: Any) -> SwitchMonitor:
        """Check mode: B from a backend spec on the running calculator's anchors and
        projection (``context.loader``; without a context, ``calc`` and ``atoms`` build one),
        evaluated every ``interval`` frames (``--switch-interval``, default 10); B's element
        coverage is checked first."""
        from platoscope.projection import Projector

        if not arg:
            raise ConfigError("switch needs a second model: switch:<spec>")
        if context is None:
            context = MonitorContext(calc=calc, atoms=atoms)
            opts: dict[str, Any] = {"interval": DEFAULT_INTERVAL if interval is None
                                    else interval}
        else:
            opts = {**context.options_for(cls), **context.common}
            if interval is not None:
                opts["interval"] = interval
        loader = context.loader
        backend_b = loader.backend(arg, atoms=context.atoms, monitor="switch")
        proj = Projector.coerce(context.calc.projector)
        if proj.needs_reference:
            proj = loader.bank(backend_b, projection=proj).projector
        calc_b = loader.calculator(backend_b, projection=proj)
        return cls(calc_b, **{**opts, **kwargs})

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, frame: Frame) -> None:
        if self.calc_b is not None:
            check_elements(self.calc_b.backend, frame.atoms, monitor="switch")
        try:
            from platoscope.symmetry import analyse_symmetry

            self.classes_ = analyse_symmetry(frame.atoms, self.symprec).classes
        except InvalidStructureError:
            self.classes_ = np.arange(len(frame.atoms))
        if isinstance(self.bank_b, str):
            self.bank_b = self._default_bank_b(frame.calc)
        self.attach(frame.calc)

    def _default_bank_b(self, calc: Any) -> Any:
        from platoscope.reference import default_bank

        if self.bank_b != "default":
            raise InputError(f"bank_b must be a ReferenceBank, 'default' or None, not "
                             f"{self.bank_b!r}")
        calc_b = calc.calcs[1] if isinstance(calc, SwitchingCalculator) else self.calc_b
        if calc_b is None:
            raise InputError("bank_b='default' needs model B: a SwitchingCalculator or calc_b")
        return default_bank(calc_b.backend, calc_b.anchors, projection=calc_b.projector,
                            progress=True)

    def attach(self, calc: Any) -> None:
        """Listen to a SwitchingCalculator's switch (done by ``start`` for the frame's calc)."""
        if isinstance(calc, SwitchingCalculator) and id(calc) not in self._listening:
            calc.on_switch.append(self._on_switch)
            self._listening.add(id(calc))
            if calc.record is not None:  # switched before the first frame: check it now
                self._on_switch(calc.record)

    def _classes(self, n: int) -> np.ndarray | None:
        return self.classes_ if self.classes_ is not None and len(self.classes_) == n else None

    def _on_switch(self, rec: SwitchRecord) -> None:
        h = hand_over(rec.platonic_a, rec.platonic_b, rec.atoms.numbers,
                      self._classes(len(rec.atoms)))
        self._pending = (rec, h)
        if self.atypical is not None:
            try:
                self.carry(self.atypical, rec.platonic_a, rec.platonic_b, rec.atoms.numbers)
            except InputError as err:  # e.g. a bank too large even sparse: run on, say so
                import warnings

                self.not_carried_ = str(err)
                warnings.warn(f"switch: the atypical thresholds were not carried into "
                              f"{self._model_b()}'s space: {err}", UserWarning, stacklevel=2)

    # -- carrying thresholds ---------------------------------------------------------------
    def carry(self, atypical: Any, z_a: Any, z_b: Any, numbers: np.ndarray) -> Any:
        """An AtypicalMonitor for B's space: A's reference coordinates moved by a TransportMap
        (fitted on the two banks, else on the frame's pair z_a (N, K) -> z_b (N, K), dense or
        sparse) and the per-element thresholds recalibrated on them. Updates ``atypical`` in
        place when ``retarget``; returns the carried monitor. It scores in the projected space
        whatever ``atypical.space`` was: two models' raw embeddings share no axes."""
        from platoscope.monitors.atypical import AtypicalMonitor

        bank_a = atypical.bank
        if self.bank_b is not None:
            from platoscope.reference import shared_rows

            ia, ib = shared_rows(bank_a, self.bank_b)
            fit = (bank_a.coords[ia], self.bank_b.coords[ib], bank_a.numbers[ia])
            fitted_on = f"reference banks ({len(ia)} atoms)"
        else:
            fit = (z_a, z_b, np.asarray(numbers))
            fitted_on = f"the switch frame ({len(numbers)} atoms)"
        target = self._model_b()
        bank = _CarriedBank(carry_coordinates(*fit, bank_a.coords, bank_a.numbers), bank_a,
                            target)
        if self.retarget:
            carried = atypical.rebase(bank, "projected")
        else:
            carried = AtypicalMonitor(
                bank, k=atypical.k, quantile=atypical.quantile,
                same_element=atypical.same_element, space="projected",
                threshold=atypical.threshold, action=atypical.action,
                callback=atypical.callback, interval=atypical.interval,
                dump_dir=atypical.dump_dir)
        carried.carried_map_fitted_on = fitted_on
        from ase.data import chemical_symbols

        self.carried_ = carried
        self.carried_thresholds_ = {chemical_symbols[z]: round(t, 6)
                                    for z, t in sorted(carried.element_thresholds_.items())}
        return carried

    # -- scoring ---------------------------------------------------------------------------
    def _model_b(self) -> str:
        return self.calc_b.backend.spec if self.calc_b is not None else "B"

    def score(self, frame: Frame) -> np.ndarray:
        n = len(frame.atoms)
        if self.classes_ is None:  # not started (e.g. not due on the Watcher's first frame)
            self.start(frame)
        self._last = None
        if self._pending is not None:
            rec, h = self._pending
            self._pending = None
            calc = frame.calc
            a, b = ((c.backend.spec for c in calc.calcs) if isinstance(calc, SwitchingCalculator)
                    else ("A", self._model_b()))
            self._last = {"kind": "switch", "hand_over": h, "model_a": a, "model_b": b,
                          **_forces_energies(rec)}
        elif self.calc_b is not None:
            atoms = frame.atoms.copy()
            atoms.calc = None
            z_b = self.calc_b.get_platonic(atoms)
            h = hand_over(frame.platonic, z_b, frame.atoms.numbers, self._classes(n))
            a = frame.calc.backend.spec if getattr(frame.calc, "backend", None) else "A"
            self._last = {"kind": "check", "hand_over": h, "model_a": a,
                          "model_b": self._model_b()}
        if self._last is None:
            return np.zeros(n)
        classes = self._classes(n)
        m = self._last["hand_over"].matching
        keep = (m == np.arange(n)) if classes is None else (classes[m] == classes)
        return (~keep).astype(np.float64)

    def thresholds_for(self, frame: Frame) -> np.ndarray:
        return np.ones(len(frame.atoms))

    def events(self, frame: Frame, scores: np.ndarray) -> list[Event]:
        """One event per switch (flagged or not), and per flagged check in check mode."""
        if self._last is None:
            return []
        last = dict(self._last)
        kind, h = last.pop("kind"), last.pop("hand_over")
        flagged = h.matched_equivalent < self.min_matched
        self.checks_.append({"step": frame.step, "kind": kind, "flagged": flagged,
                             **{k: round(v, 6) if isinstance(v, float) else v
                                for k, v in h.to_dict().items()}})
        if kind == "check" and not flagged:
            return []
        bad = np.flatnonzero(scores > 0)
        details = {"kind": kind, **last, "flagged": flagged, "min_matched": self.min_matched,
                   **h.to_dict()}
        if kind == "switch" and self.carried_thresholds_ is not None:
            details["carried_thresholds"] = self.carried_thresholds_
            details["carried_map_fitted_on"] = self.carried_.carried_map_fitted_on
        if flagged:
            details["elements"] = [frame.atoms.get_chemical_symbols()[i] for i in bad[:20]]
        return [Event(step=frame.step, monitor=self.name, atoms=bad.tolist(),
                      score=1.0 - h.matched_equivalent, threshold=1.0 - self.min_matched,
                      action=self.action if flagged else "record", details=details)]

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "min_matched": self.min_matched, "symprec": self.symprec,
                "model_b": self.calc_b.backend.spec if self.calc_b is not None else None}

    def summary(self) -> dict[str, Any]:
        s = super().summary()
        s.update(threshold=None, switches=[c for c in self.checks_ if c["kind"] == "switch"],
                 n_checks=sum(c["kind"] == "check" for c in self.checks_),
                 n_flagged=sum(c["flagged"] for c in self.checks_),
                 carried_thresholds=self.carried_thresholds_,
                 thresholds_not_carried=self.not_carried_,
                 documentation="docs/symmetry_switch.md (measured elsewhere, not in this run)")
        checks = [c for c in self.checks_ if c["kind"] == "check"]
        if checks:
            s["lowest_matched_equivalent"] = min(c["matched_equivalent"] for c in checks)
        return s


def carry_coordinates(x_fit: Any, y_fit: Any, fit_numbers: np.ndarray, coords: Any,
                      numbers: np.ndarray) -> Any:
    """``coords`` (M, K) of atoms with atomic numbers (M,) moved by a
    :class:`~platoscope.analysis.optimal_transport.TransportMap` fitted on the pairs
    ``x_fit`` (n, K) -> ``y_fit`` (n, K) of atoms ``fit_numbers`` (n,), within each element.

    Dense inputs: one map fitted with ``elements`` (as before sparse banks). If any input is
    sparse (the element projection: each atom's element block), one map per element, fitted
    and applied on the columns that element's rows use (:func:`~platoscope.coords.
    compact_columns`: the same distances, neighbours and displacements as the full rows), so
    nothing is densified to K columns; the result is a ``csr_array`` holding each carried atom's
    columns. Atoms are coupled only within their element (the dense map does so above
    ``max_exact``; below it, elements are only scored, though cross-element pairs of the element
    projection cost ~2 and are not chosen in practice). Elements of ``coords`` absent from the
    fitted atoms (the switch frame lacks them) are left where they are (a dense map would move
    them by other elements' displacements, into other elements' columns)."""
    from platoscope.coords import compact_columns, expand_columns, is_sparse

    numbers = np.asarray(numbers)
    fit_numbers = np.asarray(fit_numbers)
    if not any(is_sparse(v) for v in (x_fit, y_fit, coords)):
        tmap = TransportMap().fit(dense_rows(x_fit), dense_rows(y_fit), elements=fit_numbers)
        return tmap.transform(coords, elements=numbers)
    import scipy.sparse as sp

    k = coords.shape[1]
    parts, order = [], []
    for z in np.unique(numbers):
        rows = np.flatnonzero(numbers == z)
        sel = np.flatnonzero(fit_numbers == z)
        if not sel.size:
            parts.append(sp.csr_array(coords[rows]))
        else:
            (x, y, c), cols = compact_columns(x_fit[sel], y_fit[sel], coords[rows])
            moved = TransportMap().fit(x, y).transform(c)
            parts.append(expand_columns(moved, cols, k) if cols is not None
                         else sp.csr_array(moved))
        order.append(rows)
    stacked = sp.csr_array(sp.vstack(parts, format="csr"))
    return stacked[np.argsort(np.concatenate(order))]


def _forces_energies(rec: SwitchRecord) -> dict[str, float]:
    """Energy (eV/atom) and force (eV/Å) differences of A and B on the switch frame."""
    out: dict[str, float] = {}
    n = len(rec.atoms)
    if rec.energy_a is not None and rec.energy_b is not None:
        out["energy_a_per_atom"] = float(rec.energy_a) / n
        out["energy_b_per_atom"] = float(rec.energy_b) / n
    if rec.forces_a is not None and rec.forces_b is not None:
        df = np.linalg.norm(np.asarray(rec.forces_a) - np.asarray(rec.forces_b), axis=1)
        out["force_disagreement_mean"] = float(df.mean())
        out["force_disagreement_max"] = float(df.max())
    return out
