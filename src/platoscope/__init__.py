"""platoscope: anchor-projected ("Platonic") per-atom coordinates for MLIPs, and monitors.

Heavy submodules (torch, backends) load on first attribute access, so importing is cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "PlatonicCalculator": "platoscope.calculator",
    "AnchorSet": "platoscope.anchors",
    "load_backend": "platoscope.backends",
    "available_backends": "platoscope.backends",
    "project": "platoscope.projection",
    "Projector": "platoscope.projection",
    "RunConfig": "platoscope.assembly",
    "build_run": "platoscope.assembly",
    "register_backend": "platoscope.backends",
    "register_monitor": "platoscope.monitors.registry",
}

__all__ = [
    "AnchorSet",
    "PlatonicCalculator",
    "Projector",
    "RunConfig",
    "__version__",
    "available_backends",
    "build_run",
    "load_backend",
    "project",
    "register_backend",
    "register_monitor",
]

if TYPE_CHECKING:  # pragma: no cover
    from platoscope.anchors import AnchorSet
    from platoscope.assembly import RunConfig, build_run
    from platoscope.backends import available_backends, load_backend, register_backend
    from platoscope.calculator import PlatonicCalculator
    from platoscope.monitors.registry import register_monitor
    from platoscope.projection import Projector, project


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'platoscope' has no attribute {name!r}")
