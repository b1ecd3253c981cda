"""Plain-value checks that every layer shares (backends, readers, runs, analysis): one
definition of "an integer" and of "a row with NaN or inf", so errors agree everywhere."""

from __future__ import annotations

from typing import Any

import numpy as np

from platoscope.errors import InputError


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool or a float."""
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def require_int(value: Any, name: str, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``, else an InputError naming ``name``."""
    if not is_int(value) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def nonfinite_rows(a: np.ndarray) -> np.ndarray:
    """Indices of the rows of the 2-D array ``a`` holding NaN or inf."""
    return np.flatnonzero(~np.isfinite(a).all(axis=1))
