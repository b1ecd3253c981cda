"""How well two coordinate arrays of the *same atoms* agree.

``X`` (N, Dx) and ``Y`` (N, Dy): row i of both is the same atom (e.g. two models' raw embeddings,
or their anchor-projected coordinates). Scores that compare neighbourhoods or Gram matrices
(:func:`mutual_knn`, :func:`linear_cka`) work across dimensions; the others need one shared space
(equal columns), which anchor projection gives every model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from scipy.linalg import orthogonal_procrustes

from platoscope.analysis.inputs import as_labels, as_matrix, check_metric, same_cols, same_rows
from platoscope.analysis.neighbors import knn_sets, ranks, unit_rows
from platoscope.errors import InputError

_METRICS = ("cosine", "euclidean")


def _pair(X: Any, Y: Any, min_rows: int = 1, same_dim: bool = False
          ) -> tuple[np.ndarray, np.ndarray]:
    x = as_matrix(X, "X", min_rows=min_rows)
    y = as_matrix(Y, "Y", min_rows=min_rows)
    same_rows(x, y, "X", "Y")
    if same_dim:
        same_cols(x, y, "X", "Y")
    return x, y


def mutual_knn(X: Any, Y: Any, k: int = 10, metric: str = "cosine") -> float:
    """Mean overlap of each atom's k-nearest-neighbour sets in X and in Y (self excluded).

    X: (N, Dx), Y: (N, Dy), rows are the same atoms; dimensions may differ. For atom i,
    overlap_i = |kNN_X(i) ∩ kNN_Y(i)| / k. Returns the mean over atoms in [0, 1]
    (1: identical neighbourhoods; chance about k / (N - 1)). metric: ``cosine`` or ``euclidean``.
    """
    check_metric(metric, _METRICS)
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    x, y = _pair(X, Y, min_rows=k + 1)
    nx_, ny_ = knn_sets(x, k, metric), knn_sets(y, k, metric)
    hits = 0
    for s in range(0, x.shape[0], 4096):  # (chunk, k, k) comparisons
        a, b = nx_[s:s + 4096], ny_[s:s + 4096]
        hits += int((a[:, :, None] == b[:, None, :]).any(axis=2).sum())
    return hits / (k * x.shape[0])


def linear_cka(X: Any, Y: Any) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) between X (N, Dx) and Y (N, Dy).

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc. In [0, 1];
    invariant to orthogonal transforms and isotropic scaling of either side, 1 when Y is X up to
    those. Computed in feature space, O(N D^2).
    """
    x, y = _pair(X, Y, min_rows=2)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    nx_ = np.linalg.norm(x.T @ x)
    ny_ = np.linalg.norm(y.T @ y)
    if nx_ == 0 or ny_ == 0:
        which = "X" if nx_ == 0 else "Y"
        raise InputError(f"{which} (shape {(x if nx_ == 0 else y).shape}) has zero variance: "
                         "CKA is undefined")
    return float(np.linalg.norm(y.T @ x) ** 2 / (nx_ * ny_))


def procrustes(X: Any, Y: Any) -> tuple[np.ndarray, float]:
    """Orthogonal Procrustes alignment of X (N, D) onto Y (N, D).

    Both are centred (column means removed) and scaled to unit Frobenius norm, then
    ``R = argmin_{R^T R = I} ||Xn R - Yn||_F`` (scipy.linalg.orthogonal_procrustes; rotations
    and reflections). Returns ``(R (D, D), residual)`` with residual = ||Xn R - Yn||_F^2 in
    [0, 2]: 0 when Y is X up to translation, global scale and rotation/reflection. To carry new
    rows: ``(x - X.mean(0)) / ||X - X.mean(0)||_F @ R * ||Y - Y.mean(0)||_F + Y.mean(0)``.
    """
    x, y = _pair(X, Y, min_rows=2, same_dim=True)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    sx, sy = np.linalg.norm(x), np.linalg.norm(y)
    if sx == 0 or sy == 0:
        which = "X" if sx == 0 else "Y"
        raise InputError(f"{which} (shape {x.shape}) has zero variance: Procrustes is undefined")
    x /= sx
    y /= sy
    r, _ = orthogonal_procrustes(x, y)
    return r, float(np.linalg.norm(x @ r - y) ** 2)


def cosine_agreement(X: Any, Y: Any) -> np.ndarray:
    """Per-atom cosine between row i of X (N, D) and row i of Y (N, D), shape (N,).

    Only meaningful when both are in one space, e.g. two models' coordinates on the same anchor
    axes. Zero rows give 0, not NaN.
    """
    x, y = _pair(X, Y, same_dim=True)
    return np.einsum("ij,ij->i", unit_rows(x), unit_rows(y))


def retrieval_accuracy(X: Any, Y: Any, k: int = 1, groups: Any = None,
                       metric: str = "euclidean") -> float:
    """Fraction of atoms whose own row in Y is among the k rows of Y nearest to their row of X.

    X, Y: (N, D) in one space, row i is the same atom. For query X[i], Y's rows are ranked by
    distance (``euclidean`` or ``cosine``); a hit when Y[i] is in the top k (ties count for it).
    groups: optional (N,) int equivalence-class ids (e.g. symmetry-equivalent atoms of one
    structure): then a hit is any atom of the query's class in the top k, and each distinct class
    is queried once (by its first atom), so every distinct environment weighs the same.
    Chance: :func:`retrieval_chance`.
    """
    check_metric(metric, _METRICS)
    x, y = _pair(X, Y, same_dim=True)
    if int(k) != k or not 1 <= k <= x.shape[0]:
        raise InputError(f"k must be an integer in [1, N={x.shape[0]}], got {k!r}")
    if groups is None:
        r = ranks(x, y, np.arange(x.shape[0]), metric)
    else:
        g = as_labels(groups, "groups", x.shape[0])
        _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
        members = [np.flatnonzero(inverse == c) for c in range(first.size)]
        r = ranks(x[first], y, members, metric)
    return float(np.mean(r < k))


def retrieval_chance(n: int, k: int, groups: Any = None) -> float:
    """Expected :func:`retrieval_accuracy` of a random ranking of ``n`` rows at top ``k``.

    k / n without groups; with (n,) ``groups`` the mean over distinct classes of the chance that
    a random k-subset holds one of the class's members (exact, hypergeometric).
    """
    if int(k) != k or not 1 <= k <= n:
        raise InputError(f"k must be an integer in [1, n={n}], got {k!r}")
    if groups is None:
        return k / n
    from math import comb

    sizes = np.unique(as_labels(groups, "groups", n), return_counts=True)[1]
    total = comb(n, k)
    return float(np.mean([1 - comb(n - s, k) / total for s in sizes]))


def alignment_matrix(coords: Mapping[str, Any], metric_fn: Callable[..., float],
                     symmetric: bool = False, **kwargs: Any) -> tuple[list[str], np.ndarray]:
    """All-pairs score table: ``matrix[i, j] = metric_fn(coords[names[i]], coords[names[j]])``.

    coords: model name -> (N, D) array of the same atoms; metric_fn: a scalar score such as
    :func:`mutual_knn`, :func:`linear_cka` or :func:`retrieval_accuracy` (extra ``kwargs`` are
    passed on). symmetric: compute only i <= j and mirror (for symmetric scores). Returns
    ``(names, matrix (n_models, n_models))``; the diagonal is each model against itself.
    """
    names = list(coords)
    if not names:
        raise InputError("coords is empty: need at least one model")
    n = len(names)
    out = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            if symmetric and j < i:
                out[i, j] = out[j, i]
                continue
            value = metric_fn(coords[names[i]], coords[names[j]], **kwargs)
            if not np.isscalar(value):
                raise InputError(f"metric_fn must return a scalar, got {type(value).__name__} "
                                 f"for ({names[i]!r}, {names[j]!r})")
            out[i, j] = float(value)
    return names, out
