"""Model switch: hand a running simulation from model A to model B.

:class:`SwitchingCalculator` is an ASE calculator (in the style of ASE's ``mixing.py``) that
delegates to ``calc_a`` until its ``rule`` says switch, then to ``calc_b`` for good. The rule is
a calculation index (``int``: with ASE's integrators and optimizers, calculation k is step k,
the initial force call being step 0), a callable ``rule(k, atoms) -> bool``, or ``None`` with
:meth:`SwitchingCalculator.request_switch` as a monitor's callback (switch on a trigger). At the
switch it evaluates *both* models on the same frame (one extra A call) and hands the record to
its ``on_switch`` listeners before any monitor sees the frame.

:class:`~platoscope.monitors.switch.SwitchMonitor` checks such a hand-over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, all_changes

from platoscope.errors import InputError

__all__ = ["Rule", "SwitchRecord", "SwitchingCalculator"]

log = logging.getLogger("platoscope.switching")

Rule = int | Callable[[int, Atoms], bool] | None


@dataclass
class SwitchRecord:
    """Both models on the frame where B took over. call: index of that calculation."""

    call: int
    atoms: Atoms
    platonic_a: Any  # (N, K): ndarray, or csr_array for the element projection
    platonic_b: Any  # (N, K)
    forces_a: np.ndarray | None = None  # (N, 3) eV/Å
    forces_b: np.ndarray | None = None
    energy_a: float | None = None  # eV
    energy_b: float | None = None


class SwitchingCalculator(BaseCalculator):
    """Delegates to ``calc_a`` until ``rule`` says switch, then to ``calc_b`` (one way).

    calc_a, calc_b: PlatonicCalculators on the same AnchorSet; rule: see the module docstring.
    ``results`` hold the active model's properties, ``platonic`` and ``embeddings`` included.
    """

    def __init__(self, calc_a: Any, calc_b: Any, rule: Rule = None):
        super().__init__()
        if rule is not None and not callable(rule) and (not isinstance(rule, int) or rule < 0):
            raise InputError(f"rule must be a step number >= 0, a callable or None, got {rule!r}")
        ka = len(calc_a.anchors) if getattr(calc_a, "anchors", None) is not None else None
        kb = len(calc_b.anchors) if getattr(calc_b, "anchors", None) is not None else None
        if ka is None or ka != kb or calc_a.anchors.hash != calc_b.anchors.hash:
            raise InputError("calc_a and calc_b must be PlatonicCalculators on the same AnchorSet")
        wa, wb = calc_a.projector.n_columns, calc_b.projector.n_columns
        if wa != wb:
            raise InputError(
                f"calc_a's projection ({calc_a.projector.name}) gives {wa} coordinate columns, "
                f"calc_b's ({calc_b.projector.name}) {wb}: one run file cannot hold both; "
                "use one projection for both models")
        self.calcs = (calc_a, calc_b)
        self.implemented_properties = [p for p in calc_a.implemented_properties
                                       if p in calc_b.implemented_properties]
        self.rule = rule
        self.active = 0
        self.n_calls = 0
        self.switch_requested = False
        self.record: SwitchRecord | None = None
        self.on_switch: list[Callable[[SwitchRecord], Any]] = []

    @property
    def calc(self) -> Any:
        """The active calculator (A before the switch, B after)."""
        return self.calcs[self.active]

    @property
    def switched(self) -> bool:
        return self.active == 1

    backend = property(lambda self: self.calc.backend)
    anchors = property(lambda self: self.calc.anchors)
    projector = property(lambda self: self.calc.projector)

    def request_switch(self, *_: Any) -> None:
        """Switch at the next property request (cached results are dropped, so it happens
        even if the atoms do not move); usable as a monitor ``callback(event, atoms)``."""
        if not self.switched:
            self.switch_requested = True
            self.results = {}

    def _due(self, atoms: Atoms) -> bool:
        if self.switched:
            return False
        if self.switch_requested:
            return True
        if self.rule is None:
            return False
        if callable(self.rule):
            return bool(self.rule(self.n_calls, atoms))
        return self.n_calls >= self.rule

    def calculate(self, atoms: Atoms | None = None, properties: Any = ("energy",),
                  system_changes: Any = tuple(all_changes)) -> None:
        if atoms is None:
            atoms = self.atoms
        self.atoms = atoms.copy()
        props = list(properties)
        if self._due(atoms):
            a = self._evaluate(self.calcs[0], props, atoms)
            self.active = 1
            b = self._evaluate(self.calcs[1], props, atoms)
            self.record = SwitchRecord(
                call=self.n_calls, atoms=atoms.copy(), platonic_a=a["platonic"],
                platonic_b=b["platonic"], forces_a=a.get("forces"), forces_b=b.get("forces"),
                energy_a=a.get("energy"), energy_b=b.get("energy"))
            log.info("switched from %s to %s at calculation %d", self.calcs[0].backend.spec,
                     self.calcs[1].backend.spec, self.n_calls)
            for listener in self.on_switch:
                listener(self.record)
            self.results = b
        else:
            self.results = self._evaluate(self.calc, props, atoms)
        self.n_calls += 1

    @staticmethod
    def _evaluate(calc: Any, properties: list[str], atoms: Atoms) -> dict[str, Any]:
        for p in properties:
            calc.get_property(p, atoms)
        if "platonic" not in calc.results:
            calc.get_property("platonic", atoms)
        return dict(calc.results)

    def get_platonic(self, atoms: Atoms | None = None) -> Any:
        return self.get_property("platonic", atoms)

    def get_embeddings(self, atoms: Atoms | None = None) -> np.ndarray:
        return self.get_property("embeddings", atoms)

    def provenance(self) -> dict[str, Any]:
        """A's provenance, plus both models' under ``switching``."""
        a, b = (c.provenance() for c in self.calcs)
        return {**a, "switching": {"a": a, "b": b, "rule": repr(self.rule),
                                   "switched_at_call": self.record.call if self.record else None}}

    def __str__(self) -> str:
        a, b = (c.backend.spec for c in self.calcs)
        return f"SwitchingCalculator({a} -> {b}, rule={self.rule!r})"
