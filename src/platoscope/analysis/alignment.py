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
from platoscope.analysis.neighbors import KnnSpace, chunk_rows, knn_search, ranks, unit_rows
from platoscope.checks import require_int
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
    """Mean overlap of each atom's k-nearest-neighbour sets in X and in Y (self excluded),
    counting tied neighbours by their probability of being chosen (order-free).

    X: (N, Dx), Y: (N, Dy), rows are the same atoms; dimensions may differ. For atom i,
    overlap_i = sum_j p_X(j) p_Y(j) / k, where p(j) is j's tie-aware membership in i's k
    nearest (:class:`~platoscope.analysis.neighbors.KnnSpace`: 1 for rows closer than the k-th
    neighbour distance d_k, m / |T| for each of the |T| rows tied with d_k within
    ``TIE_RTOL * d_k + TIE_ATOL * scale`` when m more are needed, else 0): the expected
    overlap when each space breaks its ties by an independent uniformly random order. Without
    ties this is |kNN_X(i) ∩ kNN_Y(i)| / k. Ties earn only chance credit, also when both
    spaces tie the same rows: in the element projection every model puts the atoms of other
    elements at the same distance, by construction, and that is no agreement between models
    (two identical tied spaces therefore score below 1; ``mutual_knn_rows`` flags tied rows).
    The result does not depend on the row order. Returns the mean over atoms in [0, 1]
    (chance about k / (N - 1)). metric: ``cosine`` or ``euclidean``. Works in row chunks:
    memory O(chunk x N), never N x N.
    """
    check_metric(metric, _METRICS)
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return float(np.mean(_knn_overlaps(X, Y, int(k), metric)))


def mutual_knn_rows(X: Any, Y: Any, k: int = 10, metric: str = "cosine"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom terms of :func:`mutual_knn`: ``(overlap (N,), tied (N,) bool)``.

    tied[i]: atom i's k-th nearest distance is tied (its membership weights in X or in Y are
    not all 0 or 1; see :class:`~platoscope.analysis.neighbors.KnnSpace`), so its overlap
    counts tied neighbours by probability. In the element projection that flags the atoms of
    elements with at most k atoms, whose tied neighbours earn only chance credit."""
    check_metric(metric, _METRICS)
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return _knn_rows(X, Y, int(k), metric)


def _knn_rows(X: Any, Y: Any, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _pair(X, Y, min_rows=k + 1)
    sx, sy = KnnSpace(x, metric), KnnSpace(y, metric)
    n = x.shape[0]
    out = np.empty(n)
    tied = np.zeros(n, dtype=bool)
    step = max(1, chunk_rows(n) // 8)  # ~5 (step, N) float64 blocks live: ~40 MiB in all
    for s in range(0, n, step):
        e = min(n, s + step)
        wx, wy = sx.membership(s, e, k), sy.membership(s, e, k)
        tied[s:e] = ((wx > 0) & (wx < 1)).any(axis=1) | ((wy > 0) & (wy < 1)).any(axis=1)
        out[s:e] = np.einsum("ij,ij->i", wx, wy) / k
    return out, tied


def _knn_overlaps(X: Any, Y: Any, k: int, metric: str) -> np.ndarray:
    """(N,) per-row tie-aware overlaps of :func:`mutual_knn`."""
    return _knn_rows(X, Y, k, metric)[0]


def bootstrap_interval(values: Any, n_boot: int = 1000, level: float = 0.95, seed: int = 0
                       ) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the mean of ``values`` (1-D),
    ``n_boot`` seeded resamples of the rows."""
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    require_int(n_boot, "n_boot", 1)
    o = np.asarray(values, dtype=np.float64).ravel()
    if o.size == 0:
        raise InputError("values is empty: nothing to bootstrap")
    rng = np.random.default_rng(seed)
    boots = np.array([o[rng.integers(0, o.size, o.size)].mean() for _ in range(int(n_boot))])
    a = (1 - level) / 2
    return float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def mutual_knn_interval(X: Any, Y: Any, k: int = 10, metric: str = "cosine", *,
                        n_boot: int = 1000, level: float = 0.95, seed: int = 0
                        ) -> tuple[float, float, float]:
    """:func:`mutual_knn` (tie-aware) and its bootstrap interval over atoms:
    ``(value, low, high)``.

    The neighbour weights are computed once on all rows; the per-atom overlaps are resampled
    ``n_boot`` times (seeded), so the interval says how much the figure depends on which atoms
    were scored, not on a refit of the neighbourhoods."""
    check_metric(metric, _METRICS)
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    o = _knn_overlaps(X, Y, int(k), metric)
    lo, hi = bootstrap_interval(o, n_boot, level, seed)
    return float(o.mean()), lo, hi


def linear_cka(X: Any, Y: Any) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019) between X (N, Dx) and Y (N, Dy).

    CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc. In [0, 1];
    invariant to orthogonal transforms and isotropic scaling of either side, 1 when Y is X up to
    those. Computed in feature space, O(N D^2) time and D^2 memory, or, when N is smaller
    than the features, with the N x N Gram matrices (the same value:
    ||Yc^T Xc||_F^2 = <Xc Xc^T, Yc Yc^T>_F and ||Xc^T Xc||_F = ||Xc Xc^T||_F), O(N^2 D).
    """
    x, y = _pair(X, Y, min_rows=2)
    cross = None
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        # centred Gram matrices H (X X^T) H, centred in place: no centred copy of X or Y
        kx, ky = _centred_gram(x), _centred_gram(y)
        nx_, ny_ = np.linalg.norm(kx), np.linalg.norm(ky)
        cross = float(np.vdot(kx, ky))
    else:
        x = x - x.mean(axis=0)
        y = y - y.mean(axis=0)
        nx_, ny_ = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
    if nx_ == 0 or ny_ == 0:
        which = "X" if nx_ == 0 else "Y"
        raise InputError(f"{which} (shape {(x if nx_ == 0 else y).shape}) has zero variance: "
                         "CKA is undefined")
    if cross is None:
        cross = float(np.linalg.norm(y.T @ x) ** 2)
    return float(cross / (nx_ * ny_))


def _centred_gram(x: np.ndarray) -> np.ndarray:
    """(N, N) Gram matrix of the column-centred rows of x: H (x x^T) H, H = I - 11^T / N."""
    k = x @ x.T
    k -= k.mean(axis=0, keepdims=True)
    k -= k.mean(axis=1, keepdims=True)
    return k


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
                       metric: str = "euclidean", csls: int = 0) -> float:
    """Fraction of atoms whose own row in Y is among the k rows of Y nearest to their row of X.

    X, Y: (N, D) in one space, row i is the same atom. For query X[i], Y's rows are ranked by
    distance (``euclidean`` or ``cosine``); a hit when Y[i] is in the top k (ties count for it).
    groups: optional (N,) int equivalence-class ids (e.g. symmetry-equivalent atoms of one
    structure): then a hit is any atom of the query's class in the top k, and each distinct class
    is queried once (by its first atom), so every distinct environment weighs the same.
    csls: if > 0, rank by CSLS (Conneau et al. 2018) with that many neighbours instead of plain
    distance: ``2 cos(x, y) - r(y)``, where r(y) is the mean cosine of Y[j] to its ``csls``
    nearest rows of X; it demotes "hubs" that are near every query.
    Chance: :func:`retrieval_chance`.
    """
    check_metric(metric, _METRICS)
    x, y = _pair(X, Y, same_dim=True)
    if int(k) != k or not 1 <= k <= x.shape[0]:
        raise InputError(f"k must be an integer in [1, N={x.shape[0]}], got {k!r}")
    if int(csls) != csls or csls < 0:
        raise InputError(f"csls must be a non-negative integer, got {csls!r}")
    penalty = None
    if csls:
        x, y = unit_rows(x), unit_rows(y)
        metric = "cosine"
        dist, _ = knn_search(y, x, int(csls))
        penalty = 0.5 * np.mean(1.0 - dist ** 2 / 2.0, axis=1)  # r(y) / 2 on the 1 - cos scale
    if groups is None:
        r = ranks(x, y, np.arange(x.shape[0]), metric, penalty)
    else:
        g = as_labels(groups, "groups", x.shape[0])
        _, first, inverse = np.unique(g, return_index=True, return_inverse=True)
        members = [np.flatnonzero(inverse == c) for c in range(first.size)]
        r = ranks(x[first], y, members, metric, penalty)
    return float(np.mean(r < k))


def site_resolved_retrieval(X: Any, Y: Any, numbers: Any, structure_index: Any,
                            groups: Any = None) -> tuple[float, float, int]:
    """Top-1 retrieval within the query's own element and structure, where it is a question.

    Pool = the atoms of the query's element in the query's structure; only pools holding two or
    more distinct environments (``groups``; default: every atom its own) are queried, one query
    per environment. Returns ``(top-1, its chance, number of queries)`` (NaN, NaN, 0 if none):
    what is left when element and structure are given away.
    """
    x, y = _pair(X, Y, same_dim=True)
    n = x.shape[0]
    z = as_labels(numbers, "numbers", n)
    s = as_labels(structure_index, "structure_index", n)
    g = np.arange(n) if groups is None else as_labels(groups, "groups", n)
    _, pool = np.unique(np.stack([z, s]), axis=1, return_inverse=True)
    pool = pool.ravel()
    hits = chance = 0.0
    nq = 0
    for p in np.unique(pool):
        rows = np.flatnonzero(pool == p)
        n_classes = np.unique(g[rows]).size
        if n_classes < 2:
            continue
        hits += retrieval_accuracy(x[rows], y[rows], k=1, groups=g[rows]) * n_classes
        chance += retrieval_chance(rows.size, 1, g[rows]) * n_classes
        nq += n_classes
    if nq == 0:
        return float("nan"), float("nan"), 0
    return hits / nq, chance / nq, nq


def element_structure_baseline(numbers: Any, structure_index: Any, groups: Any = None,
                               k: int = 1) -> float:
    """Exact retrieval accuracy of a representation that knows only element + structure.

    numbers, structure_index, groups: (N,) per atom (groups: equivalence-class ids, default
    every atom its own). One query per class; for a class of size s among the n atoms of its
    element in its structure, a random order inside that indistinguishable set puts a member
    in the top k with probability ``1 - C(n - s, k) / C(n, k)`` (1 when n <= k). The mean over
    queries: the level a retrieval figure must beat to show more than "same element, same
    compound".
    """
    from math import comb

    z = as_labels(numbers, "numbers")
    n_atoms = z.shape[0]
    s = as_labels(structure_index, "structure_index", n_atoms)
    g = np.arange(n_atoms) if groups is None else as_labels(groups, "groups", n_atoms)
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    _, pool = np.unique(np.stack([z, s]), axis=1, return_inverse=True)
    pool = pool.ravel()
    n_pool = np.bincount(pool)
    _, first, size = np.unique(g, return_index=True, return_counts=True)
    out = [1.0 if n_pool[pool[f]] <= k
           else 1.0 - comb(int(n_pool[pool[f]] - c), int(k)) / comb(int(n_pool[pool[f]]), int(k))
           for f, c in zip(first, size, strict=True)]
    return float(np.mean(out))


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
