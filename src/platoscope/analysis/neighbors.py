"""Distances and neighbours on plain arrays: unit rows, pairwise distances in blocks, ranks of
correct items, k nearest neighbours. The one place the analysis modules and monitors search
neighbours."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from platoscope.checks import require_int

_CHUNK_BYTES = 64 * 2**20  # distance blocks are kept below ~64 MiB
# k-NN ties (KnnSpace): on the quantity the kernel computes, delta = squared Euclidean
# distance or cosine distance 1 - cos, two values tie when they differ by at most
# TIE_RTOL * delta_k + TIE_ATOL * scale: a few hundred times the float64 rounding of the
# kernels (~1e-16 relative per operation), no more: the softmax kernel's tails give genuine
# overlaps of 1e-12 and less, which order neighbours alike in two models. What ties is what the
# representation cannot order: in the element projection, atoms of other elements (all at
# sqrt(2)) and rows whose stored top-k entries share no column.
TIE_RTOL = {"euclidean": 1e-13, "cosine": 1e-13}
TIE_ATOL = 1e-15


def check_k(k: Any) -> int:
    """``k`` as a number of nearest neighbours: an integer >= 1, else an InputError naming it."""
    return require_int(k, "k (nearest neighbours)", 1)


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
          metric: str, pool_penalty: np.ndarray | None = None) -> np.ndarray:
    """Rank of the best correct item of each query among the pool (0 = nearest).

    queries: (n, D); pool: (M, D); true_sets: (n,) int pool index of the correct item per query,
    or a list of n index arrays (any of them counts as correct). rank_i = number of pool items
    strictly closer than the closest correct one, so ties break in favour of the correct item.
    pool_penalty: (M,) added to every distance to that pool item (hubness corrections).
    Returns (n,) int64.
    """
    single = isinstance(true_sets, np.ndarray)
    out = np.empty(queries.shape[0], dtype=np.int64)
    step = chunk_rows(pool.shape[0])
    for s in range(0, queries.shape[0], step):
        d = pairwise(queries[s:s + step], pool, metric)
        if pool_penalty is not None:
            d += pool_penalty[None, :]
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
    cost of scikit-learn's threaded reductions; larger ones by scikit-learn's brute-force
    ``NearestNeighbors``.
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


def knn_sets(x: np.ndarray, k: int, metric: str) -> np.ndarray:
    """(N, k) indices of each row's k nearest other rows (self excluded even among duplicates).

    Exact distance ties at the k-th neighbour are broken by row order (scikit-learn brute), so
    the sets depend on how the rows are ordered; :func:`knn_membership` is the order-free,
    tie-aware form that :func:`platoscope.analysis.mutual_knn` uses."""
    n = x.shape[0]
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1, metric=metric, algorithm="brute").fit(x)
    idx = nn.kneighbors(x, return_distance=False)
    keep = idx != np.arange(n)[:, None]
    no_self = keep.all(axis=1)  # self pushed out by exact duplicates: drop the farthest instead
    keep[no_self, -1] = False
    return idx[keep].reshape(n, k)


def knn_distance(queries: np.ndarray, pool: np.ndarray, k: int, *,
                 exclude: np.ndarray | None = None, groups: np.ndarray | None = None,
                 chunk: int = 4096) -> np.ndarray:
    """Mean distance of each query row to its ``k`` nearest rows of ``pool``.

    queries: (n, K); pool: (m, K). With ``exclude`` (n,) and ``groups`` (m,), pool rows whose
    group equals the query's exclude value are skipped (leave-one-structure-out).
    """
    q = torch.as_tensor(queries, dtype=torch.float64)
    p = torch.as_tensor(pool, dtype=torch.float64)
    if p.shape[0] == 0:
        return np.full(len(q), np.nan)
    leave_out = exclude is not None and groups is not None
    if leave_out:
        ex_t = torch.as_tensor(np.asarray(exclude))
        gr_t = torch.as_tensor(np.asarray(groups))
    out = np.empty(len(q))
    kk = min(k, p.shape[0])
    for s in range(0, len(q), chunk):
        d = torch.cdist(q[s:s + chunk], p)
        if leave_out:
            d.masked_fill_(ex_t[s:s + chunk, None] == gr_t[None, :], torch.inf)
        # the kk smallest per row in torch (no copy of the block, unlike np.partition: about
        # 35 % less time per block on one thread); their mean over the finite ones as in
        # mean_k_nearest
        near = torch.topk(d, kk, dim=1, largest=False, sorted=False).values.numpy()
        out[s:s + chunk] = _mean_finite(near)
    return out


def _mean_finite(near: np.ndarray) -> np.ndarray:
    """(n,) mean of each row's finite entries of ``near`` (n, k); nan where there are none."""
    ok = np.isfinite(near)
    cnt = ok.sum(axis=1)
    tot = np.where(ok, near, 0.0).sum(axis=1)
    return np.divide(tot, cnt, out=np.full(len(tot), np.nan), where=cnt > 0)


def mean_k_nearest(d: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
                   groups: np.ndarray | None = None) -> np.ndarray:
    """(n,) mean of the ``k`` smallest entries of each row of a distance block ``d`` (n, m),
    skipping columns whose ``groups`` (m,) equals the row's ``exclude`` (n,) value (nan where a
    row has none left). ``d`` is modified in place where excluded."""
    if exclude is not None and groups is not None:
        d[np.asarray(exclude)[:, None] == np.asarray(groups)[None, :]] = np.inf
    kk = min(k, d.shape[1])
    return _mean_finite(np.partition(d, kk - 1, axis=1)[:, :kk])


class KnnSpace:
    """Tie-aware k-nearest-neighbour membership of the rows of one space, in row chunks.

    x: (N, D); metric ``euclidean`` or ``cosine``. Distances are compared as delta = the squared
    Euclidean distance (scale = mean squared row norm) or 1 - cos (scale = 1). For row i (self
    excluded; rows that duplicate it are not), let delta_k be its k-th smallest delta and
    tol = ``TIE_RTOL[metric] * delta_k + TIE_ATOL * scale``.
    S = rows with delta < delta_k - tol, T = rows with |delta - delta_k| <= tol (the tied k-th
    neighbours, |T| >= 1), and m = k - |S| of T are needed. Row j's membership weight is 1 on
    S, m / |T| on T, 0 elsewhere: the probability that j is among i's k nearest when ties are
    broken uniformly at random. Each row's weights sum to k; without ties they are the 0/1
    indicator of the k nearest. Permuting the rows permutes the weights (no row order enters).
    """

    def __init__(self, x: np.ndarray, metric: str):
        if metric not in TIE_RTOL:
            raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
        self.metric = metric
        if metric == "cosine":
            self.x = unit_rows(x)
            self.sq = None
            self.scale = 1.0
        else:
            self.x = x
            self.sq = np.einsum("ij,ij->i", x, x)  # no (N, D) temporary
            self.scale = float(self.sq.mean())
        self.n = x.shape[0]

    def deltas(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, N) squared Euclidean or cosine distances of rows start:stop to every
        row; self at +inf."""
        q = self.x[start:stop]
        d = q @ self.x.T  # then in place: one (rows, N) block
        if self.metric == "cosine":
            np.subtract(1.0, d, out=d)
        else:
            d *= -2.0
            d += self.sq[start:stop, None]
            d += self.sq[None, :]
            np.maximum(d, 0.0, out=d)
        rows = np.arange(stop - start)
        d[rows, start + rows] = np.inf
        return d

    def membership(self, start: int, stop: int, k: int) -> np.ndarray:
        """(stop - start, N) float64 membership weights of rows start:stop (class docstring)."""
        if not 1 <= k < self.n:
            raise ValueError(f"k must be in [1, N - 1 = {self.n - 1}], got {k}")
        d = self.deltas(start, stop)
        dk = np.partition(d, k - 1, axis=1)[:, k - 1]
        tol = TIE_RTOL[self.metric] * dk + TIE_ATOL * self.scale
        closer = d < (dk - tol)[:, None]
        tied = d <= (dk + tol)[:, None]
        tied &= ~closer
        need = k - closer.sum(axis=1)
        w = np.multiply(tied, (need / tied.sum(axis=1))[:, None], out=d)  # reuses d's block
        w[closer] = 1.0
        return w


def knn_membership(x: np.ndarray, k: int, metric: str) -> np.ndarray:
    """(N, N) tie-aware membership weights of :class:`KnnSpace` for all rows at once (small N;
    mutual k-NN works in row chunks instead)."""
    return KnnSpace(x, metric).membership(0, x.shape[0], k)
