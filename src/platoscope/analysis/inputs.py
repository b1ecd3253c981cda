"""Input checks shared by the analysis modules: every error names the argument and its shape."""

from __future__ import annotations

from typing import Any

import numpy as np

from platoscope.checks import nonfinite_rows
from platoscope.errors import InputError


def as_matrix(x: Any, name: str, *, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite float64 array of shape (rows, features) with at least ``min_rows`` rows."""
    if hasattr(x, "toarray"):
        raise InputError(f"{name} is a scipy.sparse array of shape {x.shape}: this function takes "
                         "dense arrays (platoscope.coords.dense_rows, or compact_columns for "
                         "the columns the rows use)")
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a numeric array, got {type(x).__name__}") from exc
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D (rows, features), got shape {arr.shape}")
    if arr.shape[0] < min_rows or arr.shape[1] == 0:
        raise InputError(
            f"{name} has shape {arr.shape}: need at least {min_rows} row(s) and 1 feature")
    if not np.isfinite(arr).all():
        row = int(nonfinite_rows(arr)[0])
        raise InputError(f"{name} (shape {arr.shape}) has NaN/inf values (first at row {row})")
    return arr


def same_rows(x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
    """Raise unless ``x`` and ``y`` have the same number of rows (the same atoms)."""
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"{xname} has shape {x.shape} and {yname} has shape {y.shape}: the rows must be the "
            "same atoms, so their counts must match")


def same_cols(x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
    """Raise unless ``x`` and ``y`` have the same number of columns (one shared space)."""
    if x.shape[1] != y.shape[1]:
        raise InputError(
            f"{xname} has shape {x.shape} and {yname} has shape {y.shape}: they must live in "
            "the same space (equal number of columns), e.g. the same anchor axes")


def as_labels(z: Any, name: str, n: int | None = None) -> np.ndarray:
    """``z`` as a 1-D int64 array (atomic numbers or class ids), of length ``n`` if given."""
    arr = np.asarray(z)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise InputError(f"{name} (shape {arr.shape}) must hold integers, found non-integers")
    elif arr.dtype.kind not in "iub":
        raise InputError(f"{name} must hold integers, got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise InputError(f"{name} has shape {arr.shape} but {n} rows were expected")
    return arr.astype(np.int64)


def as_weights(w: Any, name: str, n: int) -> np.ndarray:
    """Non-negative finite masses (n,), normalised to sum 1; ``None`` gives uniform masses."""
    if w is None:
        return np.full(n, 1.0 / n)
    arr = np.asarray(w, dtype=np.float64)
    if arr.shape != (n,):
        raise InputError(f"{name} has shape {arr.shape} but ({n},) was expected")
    if not np.isfinite(arr).all() or (arr < 0).any() or arr.sum() <= 0:
        raise InputError(f"{name} (shape {arr.shape}) must be finite, >= 0 and not all zero")
    return arr / arr.sum()


def check_metric(metric: str, allowed: tuple[str, ...], name: str = "metric") -> None:
    if metric not in allowed:
        raise InputError(f"unknown {name}={metric!r}; valid: {', '.join(allowed)}")
