"""On-the-fly monitors: one module per monitor, one protocol (:mod:`.base`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from platoscope.monitors.base import (
    ACTIONS,
    Event,
    Frame,
    Monitor,
    MonitorWarning,
    RunStopped,
    Watcher,
)

__all__ = [
    "ACTIONS",
    "MONITORS",
    "Event",
    "Frame",
    "Monitor",
    "MonitorWarning",
    "RunStopped",
    "Watcher",
    "build_monitors",
]

MONITORS = ("atypical", "symmetry", "bias", "switch")


def build_monitors(spec: str, *, calc: Any, bank: Any = None, action: str = "record",
                   dump_dir: str | Path | None = None, bias_interval: int = 10,
                   atypical_space: str = "raw", atoms: Any = None) -> list[Monitor]:
    """Monitors from a CLI string such as ``"atypical,symmetry,bias:sevenn:7net-0"``.

    Each item is ``name`` or ``name:argument`` (for ``bias`` and ``switch``, the second
    model's spec). ``none`` or an empty string gives no monitor. calc: the running
    PlatonicCalculator; bank: its reference bank (atypical); atypical_space: ``raw`` or
    ``projected`` (:class:`~platoscope.monitors.atypical.AtypicalMonitor`); atoms: the starting
    structure: a second model (bias, switch) lacking one of its elements is refused here,
    before any reference bank is built or step run (UnsupportedElementError naming element
    and model).
    """
    out: list[Monitor] = []
    items = [s.strip() for s in spec.split(",") if s.strip() and s.strip() != "none"]
    for item in items:
        name, _, arg = item.partition(":")
        common = {"action": action, "dump_dir": dump_dir}
        if name == "atypical":
            from platoscope.monitors.atypical import AtypicalMonitor

            if bank is None:
                raise ValueError("the atypical monitor needs a reference bank")
            out.append(AtypicalMonitor(bank, space=atypical_space, **common))
        elif name == "symmetry":
            from platoscope.monitors.symmetry import SymmetryMonitor

            out.append(SymmetryMonitor(**common))
        elif name == "bias":
            from platoscope.monitors.bias import BiasMonitor

            if not arg:
                raise ValueError("bias needs a second model: bias:<spec>, e.g. bias:sevenn:7net-0")
            out.append(BiasMonitor.from_spec(arg, calc=calc, interval=bias_interval, atoms=atoms,
                                             **common))
        elif name == "switch":
            from platoscope.monitors.switch import SwitchMonitor

            if not arg:
                raise ValueError("switch needs a second model: switch:<spec>")
            out.append(SwitchMonitor.from_spec(arg, calc=calc, atoms=atoms, **common))
        else:
            raise ValueError(f"unknown monitor {name!r}; valid: {', '.join(MONITORS)}")
    return out
