"""Input checks shared by the analysis modules: every error names the argument and its shape."""

from __future__ import annotations

from typing import Any

import numpy as np

_CHUNK_BYTES = 64 * 2**20  # distance blocks are kept below ~64 MiB


def as_matrix(x: Any, name: str, *, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite float64 array of shape (rows, features) with at least ``min_rows`` rows."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {arr.shape}")
    if arr.shape[0] < min_rows or arr.shape[1] == 0:
        raise ValueError(
            f"{name} has shape {arr.shape}: need at least {min_rows} row(s) and 1 feature")
    if not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{name} (shape {arr.shape}) has NaN/inf values (first at row {row})")
    return arr


def same_rows(x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
    """Raise unless ``x`` and ``y`` have the same number of rows (the same atoms)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{xname} has shape {x.shape} and {yname} has shape {y.shape}: the rows must be the "
            "same atoms, so their counts must match")


def same_cols(x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> None:
    """Raise unless ``x`` and ``y`` have the same number of columns (one shared space)."""
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{xname} has shape {x.shape} and {yname} has shape {y.shape}: they must live in "
            "the same space (equal number of columns), e.g. the same anchor axes")


def as_labels(z: Any, name: str, n: int | None = None) -> np.ndarray:
    """``z`` as a 1-D int64 array (atomic numbers or class ids), of length ``n`` if given."""
    arr = np.asarray(z)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} (shape {arr.shape}) must hold integers, found non-integers")
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has shape {arr.shape} but {n} rows were expected")
    return arr.astype(np.int64)


def as_weights(w: Any, name: str, n: int) -> np.ndarray:
    """Non-negative finite masses (n,), normalised to sum 1; ``None`` gives uniform masses."""
    if w is None:
        return np.full(n, 1.0 / n)
    arr = np.asarray(w, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} has shape {arr.shape} but ({n},) was expected")
    if not np.isfinite(arr).all() or (arr < 0).any() or arr.sum() <= 0:
        raise ValueError(f"{name} (shape {arr.shape}) must be finite, >= 0 and not all zero")
    return arr / arr.sum()


def check_metric(metric: str, allowed: tuple[str, ...], name: str = "metric") -> None:
    if metric not in allowed:
        raise ValueError(f"unknown {name}={metric!r}; valid: {', '.join(allowed)}")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero (cosine 0, not NaN)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def pairwise(q: np.ndarray, p: np.ndarray, metric: str) -> np.ndarray:
    """Distances (len(q), len(p)): ``euclidean``, ``sqeuclidean`` or ``cosine`` (1 - cos)."""
    if metric == "cosine":
        return 1.0 - unit_rows(q) @ unit_rows(p).T
    d2 = (q * q).sum(1)[:, None] + (p * p).sum(1)[None, :] - 2.0 * (q @ p.T)
    np.maximum(d2, 0.0, out=d2)
    return d2 if metric == "sqeuclidean" else np.sqrt(d2)


def chunk_rows(n_cols: int) -> int:
    """Rows per block so that a (rows, n_cols) float64 block stays below ~64 MiB."""
    return max(1, _CHUNK_BYTES // (8 * max(n_cols, 1)))


def ranks(queries: np.ndarray, pool: np.ndarray, true_sets: np.ndarray | list[np.ndarray],
          metric: str) -> np.ndarray:
    """Rank of the best correct item of each query among the pool (0 = nearest).

    queries: (n, D); pool: (M, D); true_sets: (n,) int pool index of the correct item per query,
    or a list of n index arrays (any of them counts as correct). rank_i = number of pool items
    strictly closer than the closest correct one, so ties break in favour of the correct item.
    Returns (n,) int64.
    """
    single = isinstance(true_sets, np.ndarray)
    out = np.empty(queries.shape[0], dtype=np.int64)
    step = chunk_rows(pool.shape[0])
    for s in range(0, queries.shape[0], step):
        d = pairwise(queries[s:s + step], pool, metric)
        rows = np.arange(d.shape[0])
        if single:
            best = d[rows, true_sets[s:s + step]]
        else:
            best = np.array([d[r, true_sets[s + r]].min() for r in rows])
        out[s:s + step] = np.count_nonzero(d < best[:, None], axis=1)
    return out


def knn_search(queries: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest pool rows of each query by Euclidean distance: (dist (n, k), idx (n, k)).

    Sorted nearest first. Small problems (n * M < 2**22) in plain numpy, which avoids the start-up
    cost of scikit-learn's threaded reductions (~0.1 s a call on a busy 2-core machine); larger
    ones by scikit-learn's brute-force ``NearestNeighbors`` (about twice as fast as numpy there).
    """
    k = min(k, pool.shape[0])
    n = queries.shape[0]
    if n * pool.shape[0] >= 2**22:
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(pool)
        return nn.kneighbors(queries)
    d2 = (queries * queries).sum(1)[:, None] + (pool * pool).sum(1)[None, :] \
        - 2.0 * (queries @ pool.T)
    if k < pool.shape[0]:
        part = np.argpartition(d2, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(pool.shape[0]), d2.shape).copy()
    dk = np.take_along_axis(d2, part, axis=1)
    order = np.argsort(dk, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1)
    return np.sqrt(np.maximum(np.take_along_axis(dk, order, axis=1), 0.0)), idx
