"""A name -> object registry whose built-in entries register themselves when their module is
imported, on first use (so importing platoscope imports no backend or monitor module).
Backends (:mod:`platoscope.backends`) and monitors (:mod:`platoscope.monitors.registry`) use
one each."""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from platoscope.errors import InputError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """kind: what is registered (for messages); builtins: modules imported on first use."""

    def __init__(self, kind: str, builtins: tuple[str, ...]):
        self.kind = kind
        self.builtins = builtins
        self._entries: dict[str, T] = {}
        self._loaded = False

    def add(self, key: str, value: T, *, replace: bool = False) -> T:
        """Register ``value`` under ``key``; a key taken by another value is a ValueError
        unless ``replace``."""
        if key in self._entries and self._entries[key] is not value and not replace:
            raise InputError(f"a {self.kind} named {key!r} is already registered")
        self._entries[key] = value
        return value

    def remove(self, key: str) -> None:
        """Forget ``key`` (a KeyError naming it if it is not registered)."""
        self.entries()
        if key not in self._entries:
            raise KeyError(f"no {self.kind} named {key!r} is registered")
        del self._entries[key]

    def entries(self) -> dict[str, T]:
        """Every entry by key (built-ins first), importing the built-in modules once."""
        if not self._loaded:
            self._loaded = True
            for module in self.builtins:
                importlib.import_module(module)
        return dict(self._entries)
