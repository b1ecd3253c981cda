"""Exceptions raised by platoscope. Each names the offending element, frame or file."""

from __future__ import annotations


class PlatoscopeError(Exception):
    """Base class for every error platoscope raises on purpose."""


class UnknownBackendError(PlatoscopeError, ValueError):
    """A backend spec string that names no supported model."""


class BackendUnavailableError(PlatoscopeError, ImportError):
    """The backend's package is not installed, or its weights cannot be had offline."""


class UnsupportedElementError(PlatoscopeError, ValueError):
    """A structure holds an element the model has no parameters for."""


class InvalidStructureError(PlatoscopeError, ValueError):
    """An empty structure, or one with NaN/inf positions or cell."""


class AnchorCacheMismatchError(PlatoscopeError, ValueError):
    """A cached anchor matrix was made by another model, weight file, layer or anchor set."""


class AnchorSetMismatchError(PlatoscopeError, ValueError):
    """Coordinates made with different anchor sets (or atom orders) cannot be compared."""


class ModelMismatchError(AnchorSetMismatchError):
    """A file (reference bank) made by another model, weight file or layer than the one given
    (the command line shows this name, not "AnchorSetMismatchError", when the anchors agree)."""


class DataMismatchError(AnchorSetMismatchError):
    """Coordinate files that do not hold the same atoms in the same order."""


class CorruptFileError(PlatoscopeError, ValueError):
    """A file platoscope wrote (or should read) is truncated, tampered with or not ours."""


class SimulationError(PlatoscopeError, RuntimeError):
    """A run's dynamics failed in a way its settings explain (e.g. a barostat that blew the
    cell up until the model's neighbour list ran out of memory); the message names the step."""


class InputError(PlatoscopeError, ValueError):
    """A bad argument or input value (shape, range, name); the message names it."""


class ConfigError(InputError):
    """A run was configured wrongly: unknown monitor, bad option value, missing argument."""
