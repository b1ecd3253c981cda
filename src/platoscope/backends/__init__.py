"""Backends: one module per MLIP behind :class:`~platoscope.backends.base.Backend`.

``load_backend`` turns a spec string (or an already-built ASE calculator) into a backend.
Backend packages are imported lazily, so a missing one only fails when it is asked for.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from platoscope.backends.base import Backend, BackendProvenance, LayerSpec, validate_atoms
from platoscope.errors import BackendUnavailableError, UnknownBackendError

__all__ = [
    "SPEC_HELP",
    "Backend",
    "BackendProvenance",
    "LayerSpec",
    "available_backends",
    "load_backend",
    "validate_atoms",
]

SPEC_HELP = """\
chgnet | chgnet:0.3.0 | chgnet:0.2.0 | chgnet:r2scan          (weights ship with chgnet)
sevenn:7net-0 | sevenn:7net-0_22May2024 | sevenn:7net-l3i5     (weights ship with sevenn)
sevenn:7net-mf-0@PBE | sevenn:7net-mf-0@R2SCAN                 (modal after @)
sevenn:/path/to/checkpoint.pth
mace:/path/to/file.model
mace-mp:small|medium|large | mace-omat                         (need internet, or a cached file)
orb:<arch>@/path/to/checkpoint.ckpt            (needs orb-models; untested offline)"""

_PACKAGES = {"chgnet": "chgnet", "sevenn": "sevenn", "mace": "mace", "orb": "orb_models"}
_EXTRAS = {"chgnet": "chgnet", "sevenn": "sevenn", "mace": "mace", "orb": "orb"}


def available_backends() -> dict[str, bool]:
    """Which backend packages are importable in this environment."""
    return {name: importlib.util.find_spec(pkg) is not None for name, pkg in _PACKAGES.items()}


def _require(family: str) -> None:
    if importlib.util.find_spec(_PACKAGES[family]) is None:
        hint = ""
        if family in ("mace", "sevenn"):
            other = "sevenn" if family == "mace" else "mace-torch"
            hint = (f" mace-torch and sevenn need different e3nn versions, so use an environment "
                    f"without {other}.")
        raise BackendUnavailableError(
            f"backend {family!r} needs the package {_PACKAGES[family]!r}, which is not installed "
            f"here: pip install 'platoscope[{_EXTRAS[family]}]'.{hint}")


def load_backend(spec: str | Any, *, layer: str | None = None, device: str = "cpu") -> Backend:
    """Build a backend from a spec string (see ``SPEC_HELP``) or a supported ASE calculator.

    ``layer`` picks the feature layer (default: the paper's choice per model); ``device`` is a
    torch device string.
    """
    if isinstance(spec, Backend):
        if layer is not None and layer != spec.layer:
            raise ValueError(f"{spec!r} is already built with layer {spec.layer!r}, not {layer!r}")
        return spec
    if not isinstance(spec, str):
        return _from_calculator(spec, layer=layer)
    text = spec.strip()
    family, _, rest = text.partition(":")
    family = family.lower()
    if family == "chgnet":
        _require("chgnet")
        from platoscope.backends.chgnet import CHGNetBackend

        return CHGNetBackend(rest or "0.3.0", layer=layer, device=device)
    if family == "sevenn":
        _require("sevenn")
        from platoscope.backends.sevenn import SevenNetBackend

        name, _, modal = (rest or "7net-0").partition("@")
        return SevenNetBackend(name, layer=layer, device=device, modal=modal or None)
    if family == "mace":
        _require("mace")
        from platoscope.backends.mace import MACEBackend

        if not rest:
            raise UnknownBackendError("'mace' needs a model file: mace:/path/to/file.model")
        return MACEBackend(rest, layer=layer, device=device)
    if family in ("mace-mp", "mace-omat"):
        from platoscope.backends.mace import MACEBackend, resolve_foundation

        path = resolve_foundation(text.lower())
        _require("mace")
        return MACEBackend(path, layer=layer, device=device)
    if family == "orb":
        _require("orb")
        from platoscope.backends.orb import OrbBackend

        return OrbBackend(rest, layer=layer, device=device)
    raise UnknownBackendError(f"unknown backend spec {spec!r}; valid specs:\n{SPEC_HELP}")


def _from_calculator(calc: Any, *, layer: str | None) -> Backend:
    module = type(calc).__module__
    name = type(calc).__name__
    if module.startswith("chgnet"):
        from platoscope.backends.chgnet import CHGNetBackend

        return CHGNetBackend(layer=layer, calc=calc)
    if module.startswith("sevenn") and name == "SevenNetCalculator":
        from platoscope.backends.sevenn import SevenNetBackend

        model = getattr(calc, "sevennet_config", None) or {}
        return SevenNetBackend(str(model.get("model_name", "calculator")), layer=layer, calc=calc)
    if module.startswith("mace"):
        from platoscope.backends.mace import MACEBackend

        return MACEBackend("calculator", layer=layer, calc=calc)
    raise UnknownBackendError(
        f"cannot wrap a {module}.{name}: supported calculators are CHGNetCalculator, "
        f"SevenNetCalculator and MACECalculator; or pass a spec string:\n{SPEC_HELP}")
