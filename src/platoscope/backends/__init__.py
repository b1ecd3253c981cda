"""Backends: one module per MLIP behind :class:`~platoscope.backends.base.Backend`.

A backend *family* is declared once, in its own module, as a :class:`BackendFamily` passed to
:func:`register_backend`: its spec prefix, the package it needs, the pip extra that installs it,
a factory, its spec help line(s) and a predicate recognising an already-built ASE calculator of
that family. ``load_backend``, ``SPEC_HELP`` and ``available_backends`` are derived from the
registry. The built-in family modules import neither their MLIP package nor any model at import
time; packages are imported only when a backend of that family is built, so a missing one only
fails when it is asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from platoscope.backends.base import Backend, BackendProvenance, LayerSpec, validate_atoms
from platoscope.errors import (
    BackendUnavailableError,
    ConfigError,
    InputError,
    UnknownBackendError,
)
from platoscope.registry import Registry

__all__ = [
    "SPEC_HELP",
    "Backend",
    "BackendFamily",
    "BackendProvenance",
    "LayerSpec",
    "available_backends",
    "backend_families",
    "load_backend",
    "register_backend",
    "spec_help",
    "unregister_backend",
    "validate_atoms",
]

Factory = Callable[[str, "str | None", str], Backend]
"""``factory(rest, layer, device)``: ``rest`` is the spec after ``family:`` ('' if none)."""


@dataclass(frozen=True)
class BackendFamily:
    """One MLIP family, as ``load_backend`` sees it.

    name: spec prefix (``name:rest``); package: importable module the family needs (checked
    before ``factory`` runs; None: nothing to check); extra: pip extra that installs it;
    factory: ``(rest, layer, device) -> Backend``; spec_help: line(s) for ``SPEC_HELP``;
    recognises: ``calc -> bool``, true for an ASE calculator this family can wrap;
    from_calculator: ``(calc, layer) -> Backend`` for such a calculator; aliases: other spec
    prefixes served by the same factory (the factory gets the whole lower-cased spec for them);
    install_hint: extra sentence for a missing package.
    """

    name: str
    package: str | None
    extra: str
    factory: Factory
    spec_help: str
    recognises: Callable[[Any], bool] | None = None
    from_calculator: Callable[[Any, str | None], Backend] | None = None
    aliases: tuple[str, ...] = field(default=())
    install_hint: str = ""

    def require(self) -> None:
        """Raise BackendUnavailableError naming the pip extra if the package is missing."""
        if self.package and importlib.util.find_spec(self.package) is None:
            raise BackendUnavailableError(
                f"backend {self.name!r} needs the package {self.package!r}, which is not "
                f"installed here: pip install 'platoscope[{self.extra}]'.{self.install_hint}")


_FAMILIES: Registry[BackendFamily] = Registry(
    "backend family", tuple(f"platoscope.backends.{m}" for m in ("chgnet", "sevenn", "mace",
                                                                  "orb")))


def register_backend(family: BackendFamily, *, replace: bool = False) -> BackendFamily:
    """Add a backend family (from anywhere: a plugin, a test) under its name and aliases.
    Returns ``family``. A name already registered is refused unless ``replace`` (a
    ValueError naming it)."""
    for key in (family.name, *family.aliases):
        _FAMILIES.add(key.lower(), family, replace=replace)
    return family


def unregister_backend(name: str) -> None:
    """Remove the family ``name`` and its aliases (e.g. a test's toy backend)."""
    family = _FAMILIES.entries()[name]
    for key in (family.name, *family.aliases):
        _FAMILIES.remove(key.lower())


def backend_families() -> dict[str, BackendFamily]:
    """Registered families by name (aliases left out), in registration order."""
    out: dict[str, BackendFamily] = {}
    for fam in _FAMILIES.entries().values():
        out.setdefault(fam.name, fam)
    return out


def spec_help() -> str:
    """Every registered family's spec help lines."""
    return "\n".join(f.spec_help for f in backend_families().values())


def available_backends() -> dict[str, bool]:
    """Which backend families' packages are importable here (nothing is imported)."""
    return {name: f.package is None or importlib.util.find_spec(f.package) is not None
            for name, f in backend_families().items()}


def load_backend(spec: str | Any, *, layer: str | None = None, device: str = "cpu") -> Backend:
    """Build a backend from a spec string (see ``SPEC_HELP``) or a supported ASE calculator.

    ``layer`` picks the feature layer (default: the paper's choice per model); ``device`` is a
    torch device string.
    """
    if isinstance(spec, Backend):
        if layer is not None and layer != spec.layer:
            raise InputError(f"{spec!r} is already built with layer {spec.layer!r}, not {layer!r}")
        return spec
    if not isinstance(spec, str):
        return _from_calculator(spec, layer=layer)
    text = spec.strip()
    prefix, _, rest = text.partition(":")
    family = _FAMILIES.entries().get(prefix.lower())
    if family is None:
        raise UnknownBackendError(f"unknown backend spec {spec!r}; valid specs:\n{spec_help()}")
    if prefix.lower() != family.name:
        rest = text.lower()
    family.require()
    check_device(device)
    return family.factory(rest, layer, device)


def check_device(device: str) -> None:
    """ConfigError naming ``device`` when torch cannot run a model there (not a torch device
    string, CUDA asked for where torch has no CUDA build or sees no GPU, a GPU index past the
    last one), before a model is built."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1 ...): "
                          f"{err}") from err
    if dev.type == "cuda":
        if torch.version.cuda is None:
            why = f"this torch ({torch.__version__}) is built without CUDA"
        elif not torch.cuda.is_available():
            why = "torch sees no CUDA GPU here (CUDA_VISIBLE_DEVICES, driver)"
        elif dev.index is not None and dev.index >= torch.cuda.device_count():
            why = f"torch sees {torch.cuda.device_count()} CUDA GPU(s), numbered from 0"
        else:
            return
        raise ConfigError(f"device {device!r} cannot be used: {why}; run with --device cpu, "
                          "or install a CUDA build of torch on a GPU machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} cannot be used: torch has no MPS device here; "
                          "run with --device cpu")


def _from_calculator(calc: Any, *, layer: str | None) -> Backend:
    for family in backend_families().values():
        if family.recognises is not None and family.from_calculator is not None \
                and family.recognises(calc):
            return family.from_calculator(calc, layer)
    module, name = type(calc).__module__, type(calc).__name__
    names = ", ".join(f.name for f in backend_families().values() if f.recognises is not None)
    raise UnknownBackendError(
        f"cannot wrap a {module}.{name}: supported calculator families are {names}; or pass a "
        f"spec string:\n{spec_help()}")


def __getattr__(name: str) -> Any:
    if name == "SPEC_HELP":  # derived from the registry, so computed on access
        return spec_help()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
