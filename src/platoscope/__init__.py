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
}

__all__ = [
    "AnchorSet",
    "PlatonicCalculator",
    "Projector",
    "__version__",
    "available_backends",
    "load_backend",
    "project",
]

if TYPE_CHECKING:  # pragma: no cover
    from platoscope.anchors import AnchorSet
    from platoscope.backends import available_backends, load_backend
    from platoscope.calculator import PlatonicCalculator
    from platoscope.projection import Projector, project


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'platoscope' has no attribute {name!r}")
