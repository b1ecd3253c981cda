"""Anchor selection on per-atom embeddings: DIRECT, farthest-point and random sampling.

Plain arrays in, row indices out. Every selector takes ``features`` (N, D) and returns a
:class:`SelectionResult` whose ``indices`` (k,) are unique rows of ``features`` in selection
order, plus JSON-serialisable ``params`` recording what was found (thresholds, PCA size, ...).

* :func:`select_direct` -- DIRECT (Qi et al., npj Comput. Mater. 2024): standardise, PCA with
  the Kaiser criterion (eigenvalue > 1), components weighted by explained-variance ratio, BIRCH
  clustering with the threshold lowered until there are at least ``k`` clusters, then the atom
  closest to each cluster centroid.
* :func:`select_fps` -- greedy farthest-point sampling, O(N k D) time, O(N) extra memory.
* :func:`select_random` -- uniform baseline.

``per_element`` (atomic number per row) guarantees at least one anchor per element present:
the last-picked anchors whose element is otherwise represented are swapped for one atom of
each missing element (chosen by the method's own rule; see :func:`_cover_elements`).

Longer than 500 lines on purpose: three selection methods (DIRECT, farthest-point, random)
share their input validation, per-element quotas and result type.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from platoscope.errors import InputError
from platoscope.writers.jsonio import to_jsonable

METHODS = ("direct", "fps", "random")
_CHUNK = 8192  # rows per block when computing (rows x selected) distances


@dataclass(frozen=True, eq=False)
class SelectionResult:
    """Selected rows of a feature matrix.

    indices: (k,) int64, unique row indices into the input, in selection order (DIRECT: by
    cluster population, largest first; FPS: greedy order; random: draw order), with any atoms
    added for ``per_element`` coverage last. method: ``"direct"``, ``"fps"`` or ``"random"``.
    params: JSON-serialisable record of the settings and of what the run found.
    """

    indices: np.ndarray
    method: str
    k: int
    params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.k)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SelectionResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, ints, floats, str), ready for ``json.dumps``."""
        return {"method": self.method, "k": int(self.k),
                "indices": [int(i) for i in self.indices], "params": to_jsonable(self.params)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelectionResult:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(d["indices"], dtype=np.int64), str(d["method"]), int(d["k"]),
                   dict(d.get("params", {})))


# ----------------------------------------------------------------------------- validation

def _check_features(features: Any) -> np.ndarray:
    """(N, D) float64 copy-free view where possible; empty or non-finite input is refused."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"features must be 2-D (rows, features), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"features are empty (shape {x.shape}): nothing to select from")
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InputError(f"features have NaN or inf values: {int((~finite).sum())} bad rows, "
                         f"the first is row {row}")
    return x


def _check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    k = int(k)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if k > n:
        raise InputError(f"k={k} is larger than the number of rows ({n})")
    return k


def _check_elements(per_element: Any, n: int, k: int) -> np.ndarray | None:
    if per_element is None:
        return None
    z = np.asarray(per_element)
    if z.ndim != 1 or len(z) != n:
        raise InputError(f"per_element must have shape ({n},) (one atomic number per row), "
                         f"got {z.shape}")
    if not np.issubdtype(z.dtype, np.integer):
        if not (np.issubdtype(z.dtype, np.floating) and np.all(np.isfinite(z))
                and np.all(z == np.round(z))):
            raise InputError("per_element must hold integer atomic numbers")
        z = z.astype(np.int64)
    n_el = len(np.unique(z))
    if n_el > k:
        raise InputError(f"per_element has {n_el} distinct elements but k={k}: cannot select "
                         "one anchor per element; raise k or drop per_element")
    return z.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------- distances

def _sq_dist_to_set(x: np.ndarray, sq: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """min_j ||x_i - x_sel[j]||^2 for every row i, in blocks of rows; (N,) float64."""
    if len(sel) == 0:
        return np.full(len(x), np.inf)
    s = x[sel]
    ssq = sq[sel]
    out = np.empty(len(x))
    for a in range(0, len(x), _CHUNK):
        b = min(a + _CHUNK, len(x))
        d = sq[a:b, None] - 2.0 * (x[a:b] @ s.T) + ssq[None, :]
        out[a:b] = d.min(axis=1)
    return np.maximum(out, 0.0)


def _prepare_metric(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows in the space where Euclidean distance realises ``metric``, centred for accuracy.

    cosine: rows are L2-normalised, so ||u - v||^2 = 2 (1 - cos(u, v)) and farthest in
    Euclidean distance is farthest in cosine distance.
    """
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1)
        if not (norms > 0).all():
            row = int(np.flatnonzero(~(norms > 0))[0])
            raise InputError(f"cosine metric: row {row} is a zero vector (no direction)")
        x = x / norms[:, None]
    elif metric != "euclidean":
        raise InputError(f"unknown metric {metric!r}; valid: 'euclidean', 'cosine'")
    return x - x.mean(axis=0)


def covering_radius(features: Any, indices: Sequence[int] | np.ndarray, *,
                    metric: str = "euclidean") -> float:
    """max over rows of the distance to the nearest selected row (smaller = better coverage).

    features: (N, D); indices: selected rows. metric ``"cosine"`` measures the chord distance
    ``sqrt(2 - 2 cos)`` between L2-normalised rows.
    """
    x = _prepare_metric(_check_features(features), metric)
    sel = np.asarray(indices, dtype=np.int64)
    if sel.ndim != 1 or len(sel) == 0:
        raise InputError("indices must be a non-empty 1-D sequence of row indices")
    return float(np.sqrt(_sq_dist_to_set(x, np.einsum("ij,ij->i", x, x), sel).max()))


# ----------------------------------------------------------------------------- per element

def _cover_elements(order: list[int], numbers: np.ndarray,
                    pick: Callable[[int, list[int]], int]) -> tuple[list[int], list[dict]]:
    """Swap the last-picked anchors for one atom of each element that has none.

    order: selected rows in selection order; numbers: (N,) atomic numbers; pick(element,
    current) returns the row to add for a missing element given the rows kept so far.
    Dropped anchors are taken from the end of ``order`` (the least important: the smallest
    DIRECT clusters, the last FPS picks), skipping any that is the only anchor of its element,
    so coverage never breaks elsewhere. This is always possible when n_elements <= k.
    """
    present = Counter(int(numbers[i]) for i in order)
    missing = [int(e) for e in np.unique(numbers) if int(e) not in present]
    if not missing:
        return order, []
    drop: set[int] = set()
    for pos in range(len(order) - 1, -1, -1):
        if len(drop) == len(missing):
            break
        e = int(numbers[order[pos]])
        if present[e] > 1:
            present[e] -= 1
            drop.add(pos)
    kept = [i for p, i in enumerate(order) if p not in drop]
    added: list[dict] = []
    for e in missing:
        j = int(pick(e, kept))
        kept.append(j)
        added.append({"element": e, "index": j})
    return kept, added


def _result(order: list[int], method: str, k: int, params: dict[str, Any]) -> SelectionResult:
    idx = np.asarray(order, dtype=np.int64)
    if len(idx) != k or len(np.unique(idx)) != k:  # pragma: no cover - internal invariant
        raise RuntimeError(f"{method}: selected {len(np.unique(idx))} unique rows, wanted {k}")
    idx.setflags(write=False)
    return SelectionResult(idx, method, k, to_jsonable(params))


# ----------------------------------------------------------------------------- random

def select_random(features: Any, k: int, *, random_state: int | None = 0,
                  per_element: Any = None) -> SelectionResult:
    """k distinct rows drawn uniformly (the baseline). features: (N, D); returns k indices.

    With ``per_element`` a random atom of each missing element replaces the last draws.
    """
    x = _check_features(features)
    n = len(x)
    k = _check_k(k, n)
    numbers = _check_elements(per_element, n, k)
    rng = np.random.default_rng(random_state)
    order = [int(i) for i in rng.choice(n, size=k, replace=False)]
    params: dict[str, Any] = {"random_state": random_state, "n_rows": n, "n_features": x.shape[1]}
    if numbers is not None:
        def pick(e: int, current: list[int]) -> int:
            return int(rng.choice(np.flatnonzero(numbers == e)))

        order, added = _cover_elements(order, numbers, pick)
        params["per_element_added"] = added
    return _result(order, "random", k, params)


# ----------------------------------------------------------------------------- FPS

def select_fps(features: Any, k: int, *, metric: str = "euclidean",
               start: int | str | None = None, random_state: int | None = 0,
               per_element: Any = None) -> SelectionResult:
    """Greedy farthest-point sampling: each pick is the row farthest from those already picked.

    features: (N, D). metric: ``"euclidean"`` or ``"cosine"`` (on L2-normalised rows).
    start: first row; ``None`` takes the row farthest from the mean (an extreme point, so the
    result does not depend on a seed), ``"random"`` draws it with ``random_state``.
    O(N k D) time, O(N) extra memory; a 2-approximation of the optimal covering radius.
    With ``per_element``, the last picks are swapped for, per missing element, its atom
    farthest from the anchors kept so far. params["covering_radius"] is that of the result.
    """
    x0 = _check_features(features)
    n = len(x0)
    k = _check_k(k, n)
    numbers = _check_elements(per_element, n, k)
    x = _prepare_metric(x0, metric)
    sq = np.einsum("ij,ij->i", x, x)

    if start is None:
        first = int(np.argmax(sq))  # x is centred: sq is the squared distance to the mean
        start_rule = "farthest_from_mean"
    elif isinstance(start, str):
        if start != "random":
            raise InputError(f"start must be None, 'random' or a row index, got {start!r}")
        first = int(np.random.default_rng(random_state).integers(n))
        start_rule = "random"
    elif isinstance(start, (int, np.integer)) and not isinstance(start, bool):
        if not -n <= int(start) < n:
            raise InputError(f"start={start} is out of range for {n} rows")
        first = int(start) % n
        start_rule = "given"
    else:
        raise TypeError(f"start must be None, 'random' or an int, got {type(start).__name__}")

    order = [first]
    mind = np.maximum(sq - 2.0 * (x @ x[first]) + sq[first], 0.0)
    mind[first] = -1.0  # selected rows can never be picked again, even among duplicates
    for _ in range(k - 1):
        j = int(np.argmax(mind))
        order.append(j)
        np.minimum(mind, np.maximum(sq - 2.0 * (x @ x[j]) + sq[j], 0.0), out=mind)
        mind[j] = -1.0
    radius2 = float(max(mind.max(), 0.0))

    params: dict[str, Any] = {"metric": metric, "start": start_rule, "start_index": first,
                              "random_state": random_state, "n_rows": n,
                              "n_features": x.shape[1]}
    if numbers is not None:
        def pick(e: int, current: list[int]) -> int:
            rows = np.flatnonzero(numbers == e)
            d = _min_sq_to(x[rows], sq[rows], x[current], sq[current])
            return int(rows[int(np.argmax(d))])

        order, added = _cover_elements(order, numbers, pick)
        params["per_element_added"] = added
        if added:
            radius2 = float(_sq_dist_to_set(x, sq, np.asarray(order)).max())
    params["covering_radius"] = math.sqrt(radius2)
    return _result(order, "fps", k, params)


def _min_sq_to(a: np.ndarray, asq: np.ndarray, b: np.ndarray, bsq: np.ndarray) -> np.ndarray:
    """min_j ||a_i - b_j||^2, (len(a),)."""
    out = np.empty(len(a))
    for s in range(0, len(a), _CHUNK):
        e = min(s + _CHUNK, len(a))
        out[s:e] = (asq[s:e, None] - 2.0 * (a[s:e] @ b.T) + bsq[None, :]).min(axis=1)
    return np.maximum(out, 0.0)


# ----------------------------------------------------------------------------- DIRECT

def _direct_space(x: np.ndarray, max_components: int | None) -> tuple[np.ndarray, dict]:
    """Standardise, PCA (eigenvalue > 1 of the correlation matrix), weight by variance ratio.

    Returns Z (N, m) and a record of the eigen-spectrum. The eigenvalues are those of the
    standardised covariance with ddof=1 (as scikit-learn's PCA.explained_variance_); at least
    one component is kept even when none exceeds 1.
    """
    from sklearn.preprocessing import StandardScaler

    xs = StandardScaler().fit_transform(x)
    cov = (xs.T @ xs) / max(len(xs) - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]
    total = float(evals.sum())
    m = max(int((evals > 1.0).sum()), 1)
    if max_components is not None:
        if int(max_components) < 1:
            raise InputError(f"max_pca_components must be at least 1, got {max_components}")
        m = min(m, int(max_components))
    ratio = evals[:m] / total if total > 0 else np.zeros(m)
    z = (xs @ evecs[:, :m]) * ratio
    info = {"n_pca_components": m, "pca_eigenvalues": evals[:m].tolist(),
            "pca_weights": ratio.tolist(), "explained_variance_kept": float(ratio.sum())}
    return z, info


def _birch_count(z: np.ndarray, threshold: float, branching_factor: int) -> tuple[int, Any]:
    from sklearn.cluster import Birch

    b = Birch(n_clusters=None, threshold=threshold, branching_factor=branching_factor,
              compute_labels=False).fit(z)
    return len(b.subcluster_centers_), b


def _threshold_search(z: np.ndarray, k: int, *, tol: float, max_fits: int,
                      branching_factor: int) -> tuple[Any, float, list[list[float]]]:
    """Largest BIRCH threshold (found geometrically) giving at least k subclusters on ``z``.

    Start at the RMS radius of ``z`` about its mean; halve (or double, if already far above k)
    until the count crosses k, then bisect log(threshold) between the last failing and the
    best passing value until the count is within ``k + floor(tol k)``, the bracket is narrower
    than 0.1 % or ``max_fits`` fits were spent. Returns (fitted Birch, threshold, trace of
    [threshold, n_clusters]). When even tiny thresholds give < k (duplicate rows) the fit with
    most clusters is returned; None only when all rows coincide.
    """
    target = k + int(tol * k)
    t0 = float(np.sqrt(((z - z.mean(axis=0)) ** 2).sum(axis=1).mean()))
    trace: list[list[float]] = []
    if t0 <= 0.0:
        return None, 0.0, trace
    lo: tuple[float, int, Any] | None = None  # passing: count >= k
    hi: tuple[float, int] | None = None  # failing: count < k
    most: tuple[float, int, Any] = (0.0, 0, None)  # the failing fit with most clusters

    def fit(t: float) -> tuple[int, Any]:
        nonlocal most
        c, b = _birch_count(z, t, branching_factor)
        trace.append([t, c])
        if c > most[1]:
            most = (t, c, b)
        return c, b

    t = t0
    c, b = fit(t)
    if c >= k:
        lo = (t, c, b)
        while lo[1] > target and len(trace) < max_fits:  # far above k: coarsen
            t *= 2.0
            c, b = fit(t)
            if c >= k:
                lo = (t, c, b)
            else:
                hi = (t, c)
                break
    else:
        hi = (t, c)
        while len(trace) < max_fits and t > t0 * 1e-9:
            t *= 0.5
            c, b = fit(t)
            if c >= k:
                lo = (t, c, b)
                break
            hi = (t, c)
    if lo is None:
        return most[2], most[0], trace
    while hi is not None and lo[1] > target and len(trace) < max_fits \
            and hi[0] / lo[0] > 1.001:
        t = math.sqrt(hi[0] * lo[0])
        c, b = fit(t)
        if c >= k:
            lo = (t, c, b)
        else:
            hi = (t, c)
    return lo[2], lo[0], trace


def select_direct(features: Any, k: int = 100, *, random_state: int | None = 0,
                  per_element: Any = None, max_pca_components: int | None = None,
                  birch_subsample: int | None = 20_000, branching_factor: int = 50,
                  tolerance: float = 0.05, max_fits: int = 40,
                  threshold: float | None = None) -> SelectionResult:
    """DIRECT sampling (Qi et al., npj Comput. Mater. 2024): one anchor per BIRCH cluster.

    features: (N, D) per-atom embeddings. Steps:

    1. standard-scale each feature; PCA on the result, keeping components with eigenvalue > 1
       (capped at ``max_pca_components``), each scaled by its explained-variance ratio;
    2. search the BIRCH threshold (``Birch(n_clusters=None)``) on a random subsample of
       ``birch_subsample`` rows (None: all rows): geometric halving from the data's RMS radius
       until there are >= k subclusters, then log-bisection towards the largest threshold that
       still gives >= k (stopping within ``k + floor(tolerance k)`` clusters);
    3. assign *every* row to its nearest subcluster centre (as ``Birch.predict`` does), which
       costs O(N k m) instead of refitting BIRCH on all N rows at a low threshold;
    4. if more than k clusters are populated keep the k most populated (the dropped ones are the
       sparsest few percent; anchors should stand for many atoms, and rare elements are
       guaranteed by ``per_element`` instead), and pick, per cluster, the row closest to the
       mean of its members.

    ``threshold`` skips the search and uses that BIRCH threshold (e.g. params["threshold"] of
    an earlier run). If fewer than k distinct clusters exist (many duplicate rows), the rest
    is filled by farthest-point sampling in the same space (params["n_filled_by_fps"]). With
    ``per_element``, anchors of the smallest kept clusters are swapped for, per missing
    element, its atom closest to the centre of the cluster holding most of that element's
    atoms (preferring clusters without an anchor): its most typical environment.
    Deterministic for a fixed ``random_state`` (which seeds the subsample order).
    """
    x = _check_features(features)
    n = len(x)
    k = _check_k(k, n)
    numbers = _check_elements(per_element, n, k)
    params: dict[str, Any] = {"random_state": random_state, "n_rows": n,
                              "n_features": x.shape[1], "branching_factor": branching_factor,
                              "tolerance": tolerance, "cluster_rule": "k_most_populated"}

    if n == 1:
        params.update(n_pca_components=0, threshold=None, n_clusters_found=1)
        return _result([0], "direct", k, params)

    z, info = _direct_space(x, max_pca_components)
    params.update(info)
    rng = np.random.default_rng(random_state)
    perm = rng.permutation(n)
    n_sub = n if birch_subsample is None else min(n, int(birch_subsample))
    if n_sub < 1:
        raise InputError(f"birch_subsample must be positive or None, got {birch_subsample}")
    params["birch_subsample"] = n_sub
    if threshold is None:
        birch, threshold, trace = _threshold_search(
            z[perm[:n_sub]], k, tol=tolerance, max_fits=max_fits,
            branching_factor=branching_factor)
    else:  # a threshold from an earlier run (params["threshold"]): no search
        if not threshold > 0:
            raise InputError(f"threshold must be positive, got {threshold}")
        threshold = float(threshold)
        count, birch = _birch_count(z[perm[:n_sub]], threshold, branching_factor)
        trace = [[threshold, count]]
    params["threshold"] = threshold
    params["threshold_trace"] = trace

    if birch is not None:
        labels = birch.predict(z)
        n_centres = len(birch.subcluster_centers_)
    else:  # every row identical (or nearly so): one cluster
        labels = np.zeros(n, dtype=np.int64)
        n_centres = 1
    sizes = np.bincount(labels, minlength=n_centres)
    means = np.zeros((n_centres, z.shape[1]))
    np.add.at(means, labels, z)
    means /= np.maximum(sizes, 1)[:, None]
    resid = z - means[labels]
    dist = np.einsum("ij,ij->i", resid, resid)
    del resid
    # closest member of each cluster to its mean; ties go to the lowest row index
    by = np.lexsort((np.arange(n), dist, labels))
    first = np.ones(n, dtype=bool)
    first[1:] = labels[by][1:] != labels[by][:-1]
    rep = np.full(n_centres, -1, dtype=np.int64)
    rep[labels[by][first]] = by[first]
    populated = np.flatnonzero(sizes > 0)
    # most populated first; ties by cluster id (deterministic)
    ranked = populated[np.lexsort((populated, -sizes[populated]))]
    chosen = ranked[:k]
    order = [int(rep[c]) for c in chosen]
    params["n_clusters_found"] = int(n_centres)
    params["n_clusters_populated"] = len(populated)
    params["n_clusters_dropped"] = max(len(populated) - k, 0)
    params["cluster_sizes"] = sizes[chosen].tolist()
    params["dropped_cluster_sizes"] = sizes[ranked[k:]].tolist()

    zsq = np.einsum("ij,ij->i", z, z)
    n_fill = k - len(order)
    if n_fill > 0:
        mind = _sq_dist_to_set(z, zsq, np.asarray(order, dtype=np.int64))
        mind[order] = -1.0
        for _ in range(n_fill):
            j = int(np.argmax(mind))
            order.append(j)
            np.minimum(mind, np.maximum(zsq - 2.0 * (z @ z[j]) + zsq[j], 0.0), out=mind)
            mind[j] = -1.0
    params["n_filled_by_fps"] = max(n_fill, 0)

    if numbers is not None:
        def pick(e: int, current: list[int]) -> int:
            rows = np.flatnonzero(numbers == e)
            counts = np.bincount(labels[rows], minlength=n_centres)
            used = np.zeros(n_centres, dtype=bool)
            used[labels[current]] = True
            free = counts * ~used
            c = int(np.argmax(free)) if free.any() else int(np.argmax(counts))
            members = rows[labels[rows] == c]
            return int(members[int(np.argmin(dist[members]))])

        order, added = _cover_elements(order, numbers, pick)
        params["per_element_added"] = added
    return _result(order, "direct", k, params)


# ----------------------------------------------------------------------------- dispatcher

_SELECTORS: dict[str, Callable[..., SelectionResult]] = {
    "direct": select_direct, "fps": select_fps, "random": select_random}


def select_anchors(features: Any, k: int, method: str = "direct", **kw: Any) -> SelectionResult:
    """Dispatch to :func:`select_direct`, :func:`select_fps` or :func:`select_random`.

    features: (N, D); k: number of anchors; ``kw`` go to the selector (random_state,
    per_element, metric, ...).
    """
    if method not in _SELECTORS:
        raise InputError(f"unknown selection method {method!r}; valid: {', '.join(METHODS)}")
    return _SELECTORS[method](features, k, **kw)
