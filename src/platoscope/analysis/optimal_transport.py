"""Optimal transport between two clouds of atoms in one coordinate space (POT).

:func:`transport` couples source atoms ``X`` (N, D) with target atoms ``Y`` (M, D), e.g. two
models' anchor-projected coordinates, and reports how much mass lands on the same atom or the same
element. :class:`TransportMap` turns a coupling into a map that also carries *new* source points
into the target space (zero-shot stitching).

Cost: ``metric="sqeuclidean"`` (default, squared Euclidean distance, the 2-Wasserstein cost whose
barycentric map is the natural transport map; POT's default) or ``"euclidean"`` (1-Wasserstein).
Masses ``a``, ``b`` default to uniform and are normalised to sum 1, so ``cost`` is a mean cost
per unit mass.

Method selection (``method="auto"``; ``method`` of the result says what ran and why):

1. ``elements`` given and ``N * M > max_exact``: ``blocks``, transport within each element only
   (each source block keeps its mass and the target block is rescaled to it, so the target
   marginal holds only when both sides have the same composition), every block solved as in 2.
   ``same_element_mass`` is then 1 by construction: to measure it, call with ``knn``, ``emd`` or
   ``multiscale``, or leave out ``elements`` and score the plan yourself.
2. otherwise, uniform masses and N == M (one model's atoms against another's): the optimal plan is
   a permutation (Birkhoff). Up to ``max_assignment`` (default 4000 x 4000, the cost matrix
   ``max_exact`` allows) exact, by ``scipy.optimize.linear_sum_assignment`` (about twice as
   fast as ``ot.emd``; 0.2 s for the 3,000 atoms of the Perov-5 evaluation set, where the
   sparse solver below ran for over 17 minutes without an answer); above, ``knn``:
   the exact minimum-cost perfect matching restricted to the symmetric k-nearest-neighbour graph
   (each atom's ``knn`` = 30 nearest atoms on the other side), solved by scipy's sparse LAPJV
   (``min_weight_full_bipartite_matching``). Its cost is an upper bound on the exact one and
   equal to it whenever the optimal matching uses only graph edges (how close, and how fast, is
   measured by benchmarks/ot_matching.py). Without a perfect matching in the graph: as in 3.
3. otherwise: exact ``ot.emd`` (network simplex) up to ``max_exact`` (default 4000 x 4000, a
   128 MB cost matrix, 2-9 s), above it ``multiscale``, a two-scale EMD (after Gerber & Maggioni
   2017): k-means on X and Y pooled into clusters of about ``block_size`` atoms per side, exact
   EMD between the clusters (centroid costs, cluster masses), then each target cluster's atoms
   are split among the source clusters that the coarse plan feeds from it (a small exact EMD to
   their centroids), and exact EMD couples each source cluster's atoms with the target atoms
   routed to it. A valid coupling (both marginals exact); close to exact EMD on clustered data,
   worse on one structureless cloud, where clusters cut through matched pairs.

Independent random subsamples are not used: in high dimension the partners of a subsample are
mostly absent from the other subsample.
``sinkhorn`` (entropic, stabilised ``ot.sinkhorn``, epsilon = ``reg`` times the mean cost; dense,
so only for N*M up to a few 10^7) and ``sliced`` (POT's min-pivot sliced plan: the best of
``n_projections`` 1-D sorted matchings scored in full dimension; fast, far from exact in high
dimension) are available on request.

Longer than 500 lines on purpose: one public solver (``transport``) with its size-dependent
strategies (exact, blocks, k-NN matching, multiscale, Sinkhorn, sliced), which share private
helpers and limits; the map (``TransportMap``) is their one user outside.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ot
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

from platoscope.analysis.inputs import as_labels, as_matrix, as_weights, check_metric, same_cols
from platoscope.analysis.neighbors import knn_search
from platoscope.errors import InputError

METHODS = ("auto", "emd", "sinkhorn", "sliced", "blocks", "knn", "multiscale")
COSTS = ("sqeuclidean", "euclidean")
MAX_EXACT = 4000 * 4000
MAX_ASSIGNMENT = 4000 * 4000
_SINKHORN_ITER = 5000


@dataclass
class TransportResult:
    """Outcome of :func:`transport` between N source and M target atoms.

    plan: (N, M) coupling (rows sum to ``a``, columns to ``b``, total 1): dense ndarray for
    ``emd``/``sinkhorn``, ``scipy.sparse.csr_array`` otherwise.
    matching: (N,) target index receiving most of each source atom's mass. images: (N, D)
    barycentric image of each source atom, ``sum_j P_ij y_j / sum_j P_ij`` (a
    ``scipy.sparse.csr_array`` when X or Y was sparse). cost:
    ``sum_ij P_ij C_ij`` (per unit mass, units of the metric). method: the method used, how, and
    why. same_atom_mass: plan mass on ``(i, i)`` when N == M (rows assumed to be the same atoms),
    else ``None``. same_element_mass: plan mass between atoms of one element when ``elements``
    were given, else ``None``.
    """

    plan: np.ndarray | sp.csr_array
    matching: np.ndarray
    images: np.ndarray = field(repr=False)
    cost: float
    method: str
    same_atom_mass: float | None = None
    same_element_mass: float | None = None


@dataclass
class _Solution:
    plan: np.ndarray | sp.csr_array
    cost: float
    note: str


def _is_uniform(w: np.ndarray) -> bool:
    return bool(np.allclose(w, 1.0 / w.size, rtol=1e-9, atol=0.0))


def _exact(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str,
           dense: bool) -> _Solution:
    """Exact EMD; a permutation via linear_sum_assignment when masses are uniform and N == M."""
    c = ot.dist(x, y, metric=metric)
    n, m = c.shape
    if n == m and _is_uniform(a) and _is_uniform(b):
        rows, cols = linear_sum_assignment(c)
        cost = float(c[rows, cols].mean())
        del c
        vals = np.full(n, 1.0 / n)
        if dense:
            plan: np.ndarray | sp.csr_array = np.zeros((n, m))
            plan[rows, cols] = vals
        else:
            plan = sp.csr_array((vals, (rows, cols)), shape=(n, m))
        return _Solution(plan, cost, "scipy linear_sum_assignment (uniform masses, N == M)")
    g = ot.emd(a, b, c, numItermax=int(min(max(100_000, 20 * n * m), 2**31 - 1)))
    cost = float(np.sum(g * c))
    return _Solution(g if dense else sp.csr_array(g), cost, "ot.emd network simplex")


def _nearest(query: np.ndarray, pool: np.ndarray) -> np.ndarray:
    return knn_search(query, pool, 1)[1][:, 0]


def _knn_matching(x: np.ndarray, y: np.ndarray, metric: str, k: int) -> _Solution | None:
    """Min-cost perfect matching on the symmetric k-NN graph (uniform masses, N == M).

    Edges: each source atom's k nearest targets and each target's k nearest sources. Solved
    exactly on that graph by scipy's LAPJVsp (``min_weight_full_bipartite_matching``); ``None``
    when the graph has no perfect matching.
    """
    n = x.shape[0]
    k = min(k, n)
    graphs = []
    for q, p, swap in ((x, y, False), (y, x, True)):
        dist, idx = knn_search(q, p, k)
        w = (dist**2 if metric == "sqeuclidean" else dist).ravel()
        r, c = np.repeat(np.arange(n), k), idx.ravel()
        graphs.append((w, (c, r) if swap else (r, c)))
    # Every perfect matching has n edges, so a constant added to all weights leaves the optimum
    # unchanged; it keeps weights away from 0 (stored zeros would vanish as edges, and LAPJVsp
    # was seen to loop for ever on near-zero weights, e.g. 1000 atoms with a 1e-300 offset).
    shift = float(np.mean(graphs[0][0])) or 1.0
    graph = sp.csr_array((graphs[0][0] + shift, graphs[0][1]), shape=(n, n)).maximum(
        sp.csr_array((graphs[1][0] + shift, graphs[1][1]), shape=(n, n)))  # union of edges
    try:
        rows, cols = min_weight_full_bipartite_matching(graph)
    except ValueError:
        return None
    d = x[rows] - y[cols]
    c = (d * d).sum(axis=1)
    cost = float((c if metric == "sqeuclidean" else np.sqrt(c)).mean())
    plan = sp.csr_array((np.full(n, 1.0 / n), (rows, cols)), shape=(n, n))
    note = (f"exact min-cost perfect matching on the symmetric {k}-nearest-neighbour graph "
            f"({graph.nnz} edges; scipy min_weight_full_bipartite_matching), uniform masses, "
            "N == M; cost an upper bound on the exact one, equal to it when the optimal "
            "matching uses only those edges")
    return _Solution(plan, cost, note)


@dataclass(frozen=True)
class _Limits:
    max_exact: int
    max_assignment: int
    knn: int
    block_size: int
    seed: int


def _solve(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str,
           lim: _Limits) -> tuple[str, _Solution]:
    """The ``auto`` choice without element constraint; returns (method name, solution).

    Uniform masses, N == M: exact assignment up to ``max_assignment``, above it the k-NN
    matching (if its graph has no perfect matching: exact up to ``max_exact``, else multiscale).
    Otherwise: exact ``ot.emd`` up to ``max_exact``, above it multiscale.
    """
    size = x.shape[0] * y.shape[0]
    if x.shape[0] == y.shape[0] and _is_uniform(a) and _is_uniform(b):
        if size <= lim.max_assignment:
            return "emd", _exact(x, y, a, b, metric, dense=False)
        sol = _knn_matching(x, y, metric, lim.knn)
        if sol is not None:
            return "knn", sol
        why = f"; (the {lim.knn}-NN graph had no perfect matching)"
    else:
        why = ""
    if size <= lim.max_exact:
        name, sol = "emd", _exact(x, y, a, b, metric, dense=False)
    else:
        name, sol = "multiscale", _multiscale(x, y, a, b, metric, lim.block_size, lim.seed)
    sol.note += why
    return name, sol


def _multiscale(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str,
                block_size: int, seed: int) -> _Solution:
    """Two-scale EMD: EMD between joint k-means clusters, then between atoms within each link."""
    n, m = x.shape[0], y.shape[0]
    n_clusters = min(n + m, max(2, int(np.ceil(max(n, m) / block_size))))
    km = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed)
    labels = km.fit_predict(np.vstack([x, y]), sample_weight=np.concatenate([a, b]) * (n + m))
    lx, ly = labels[:n], labels[n:]
    centres = km.cluster_centers_
    ma = np.bincount(lx, weights=a, minlength=n_clusters)
    mb = np.bincount(ly, weights=b, minlength=n_clusters)
    coarse = ot.emd(ma, mb, ot.dist(centres, centres, metric=metric), numItermax=1_000_000)
    # Split each target cluster's atoms among the source clusters feeding it (an exact EMD from
    # its atoms to those centroids, capacities = coarse plan), so that almost every target atom
    # lands in one fine problem and the fine problems stay about block_size x block_size.
    offers: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n_clusters)]
    for q in range(n_clusters):
        iy = np.flatnonzero(ly == q)
        ps = np.flatnonzero(coarse[:, q] > 0)
        if ps.size == 0:
            continue
        if ps.size == 1:
            offers[ps[0]].append((iy, b[iy]))
            continue
        cap = coarse[ps, q]
        split = ot.emd(b[iy] / b[iy].sum(), cap / cap.sum(),
                       ot.dist(y[iy], centres[ps], metric=metric))
        split *= mb[q]
        for col, p in enumerate(ps):
            keep = split[:, col] > 0
            offers[p].append((iy[keep], split[keep, col]))
    rows_l, cols_l, vals_l = [], [], []
    cost, largest = 0.0, (0, 0)
    for p in range(n_clusters):
        if ma[p] <= 0 or not offers[p]:
            continue
        ix = np.flatnonzero(lx == p)
        iy = np.concatenate([o[0] for o in offers[p]])
        tb = np.concatenate([o[1] for o in offers[p]])
        if ix.size * iy.size > largest[0] * largest[1]:
            largest = (ix.size, iy.size)
        sub = _exact(x[ix], y[iy], a[ix] / ma[p], tb / tb.sum(), metric, dense=False)
        coo = sp.coo_array(sub.plan)
        rows_l.append(ix[coo.row])
        cols_l.append(iy[coo.col])
        vals_l.append(coo.data * ma[p])
        cost += ma[p] * sub.cost
    plan = sp.csr_array((np.concatenate(vals_l), (np.concatenate(rows_l),
                                                   np.concatenate(cols_l))),
                        shape=(x.shape[0], y.shape[0]))
    note = (f"exact EMD between {n_clusters} k-means clusters of X and Y pooled, then exact EMD "
            f"between the atoms of each source cluster and the target atoms routed to it "
            f"(largest {largest[0]} x {largest[1]}); a valid coupling, cost an upper bound on "
            "the exact one")
    return _Solution(plan, cost, note)


def _row_images(plan: np.ndarray | sp.csr_array, y: np.ndarray) -> np.ndarray:
    mass = np.asarray(plan.sum(axis=1)).ravel()
    img = np.asarray(plan @ y)
    ok = mass > 0
    img[ok] /= mass[ok][:, None]
    return img


def _blocks(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, ex: np.ndarray,
            ey: np.ndarray, metric: str, lim: _Limits) -> _Solution:
    """EMD within each element; atoms of elements found on one side only form one more block."""
    n, m = x.shape[0], y.shape[0]
    common = np.intersect1d(np.unique(ex), np.unique(ey))
    blocks = [(np.flatnonzero(ex == e), np.flatnonzero(ey == e)) for e in common]
    lx, ly = np.flatnonzero(~np.isin(ex, common)), np.flatnonzero(~np.isin(ey, common))
    notes = [f"EMD within each of {common.size} shared elements"]
    if lx.size and ly.size:
        blocks.append((lx, ly))
        notes.append(f"{lx.size} x {ly.size} atoms of unshared elements solved as one block")
    elif ly.size:
        notes.append(f"{ly.size} target atoms of elements absent from X receive no mass")
    rows_l, cols_l, vals_l = [], [], []
    cost, largest = 0.0, (0, 0)
    used: list[str] = []
    for ix, iy in blocks:
        mass = a[ix].sum()
        if mass == 0:
            continue
        bb = b[iy] if b[iy].sum() > 0 else np.ones(iy.size)
        if ix.size * iy.size > largest[0] * largest[1]:
            largest = (ix.size, iy.size)
        ab, bb = a[ix] / mass, bb / bb.sum()
        name, sol = _solve(x[ix], y[iy], ab, bb, metric, lim)
        used.append(name)
        coo = sp.coo_array(sol.plan)
        rows_l.append(ix[coo.row])
        cols_l.append(iy[coo.col])
        vals_l.append(coo.data * mass)
        cost += mass * sol.cost
    if lx.size and not ly.size:
        near = _nearest(x[lx], y)
        rows_l.append(lx)
        cols_l.append(near)
        vals_l.append(a[lx])
        cost += float(np.sum(a[lx] * ot.dist(x[lx], y[near], metric=metric).diagonal()))
        notes.append(f"{lx.size} source atoms of elements absent from Y sent to their nearest "
                     "target (target marginal not kept)")
    notes.append(f"largest block {largest[0]} x {largest[1]}")
    notes.append("blocks solved by " + ", ".join(f"{name} ({used.count(name)})"
                                                 for name in sorted(set(used))))
    notes.append("same_element_mass is 1 by construction")
    plan = sp.csr_array((np.concatenate(vals_l), (np.concatenate(rows_l),
                                                   np.concatenate(cols_l))), shape=(n, m))
    return _Solution(plan, cost, "; ".join(notes))


def _sinkhorn(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str,
              reg: float) -> _Solution:
    c = ot.dist(x, y, metric=metric)
    scale = float(c.mean())
    eps = reg * scale if scale > 0 else reg
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = ot.sinkhorn(a, b, c, eps, method="sinkhorn_stabilized", numItermax=_SINKHORN_ITER,
                        stopThr=1e-8)
    note = f"ot.sinkhorn (stabilised), epsilon = reg * mean cost = {eps:.3g}"
    err = float(np.abs(g.sum(axis=0) - b).sum() + np.abs(g.sum(axis=1) - a).sum())
    if not np.isfinite(g).all() or err > 1e-4:
        note += (f"; NOT converged in {_SINKHORN_ITER} iterations (L1 marginal error "
                 f"{err:.2g}): raise reg")
    elif any("converge" in str(w.message) for w in caught):
        note += f"; stopped at {_SINKHORN_ITER} iterations (L1 marginal error {err:.2g})"
    return _Solution(g, float(np.sum(g * c)), note)


def _sliced(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, metric: str,
            n_projections: int, seed: int) -> _Solution:
    plan, cost = ot.sliced.min_sliced_transport_plan(  # uniform: None, for its permutation path
        x, y, None if _is_uniform(a) else a, None if _is_uniform(b) else b, metric=metric,
        n_projections=n_projections, seed=seed, dense=False)
    note = (f"POT min-pivot sliced plan: best of {n_projections} random 1-D sorted couplings, "
            "cost is an upper bound on the exact one")
    return _Solution(sp.csr_array(plan), float(cost), note)


def _parse_elements(elements: Any, n: int, m: int) -> tuple[np.ndarray, np.ndarray] | None:
    if elements is None:
        return None
    if isinstance(elements, tuple | list) and len(elements) == 2 and np.ndim(elements[0]) == 1:
        return as_labels(elements[0], "elements[0]", n), as_labels(elements[1], "elements[1]", m)
    if n != m:
        raise InputError(f"elements must be a pair of arrays ((N,), (M,)) = (({n},), ({m},)) "
                         "when X and Y have different row counts")
    e = as_labels(elements, "elements", n)
    return e, e


def transport(X: Any, Y: Any, a: Any = None, b: Any = None, method: str = "auto",
              elements: Any = None, reg: float = 0.01, *, metric: str = "sqeuclidean",
              max_exact: int = MAX_EXACT, max_assignment: int = MAX_ASSIGNMENT, knn: int = 30,
              block_size: int = 500, n_projections: int = 50, seed: int = 0
              ) -> TransportResult:
    """Optimal transport coupling between source atoms X (N, D) and target atoms Y (M, D).

    X, Y may be scipy-sparse (the element projection's CSR frames): the solver then works on
    the columns either uses (:func:`platoscope.coords.compact_columns`; costs and plan are those
    of the full rows) and ``images`` come back sparse (N, D).
    a, b: masses (N,), (M,), default uniform, normalised to sum 1. method: ``auto`` (see the
    module docstring: ``blocks`` when ``elements`` are given and N*M > ``max_exact``; else exact
    assignment up to ``max_assignment`` then ``knn`` for uniform masses and N == M; else exact
    ``ot.emd`` up to ``max_exact`` then ``multiscale``), ``emd`` (exact at any size), ``sinkhorn``
    (entropic, epsilon = ``reg`` times the mean cost), ``sliced``, ``blocks``, ``knn``
    (``knn`` neighbours per atom), ``multiscale`` (k-means clusters of about ``block_size``
    atoms). elements: ``(eX (N,), eY (M,))`` integer labels (atomic numbers), or one (N,) array
    when N == M. metric: cost ``sqeuclidean`` (default) or ``euclidean``. Returns a
    :class:`TransportResult` whose ``method`` says what was used, how and why.
    """
    check_metric(method, METHODS, "method")
    check_metric(metric, COSTS)
    cols, k_full = None, None
    if sp.issparse(X) or sp.issparse(Y):  # e.g. element-projection frames (CSR)
        from platoscope.coords import compact_columns

        k_full = X.shape[1] if sp.issparse(X) else np.shape(Y)[1]
        (X, Y), cols = compact_columns(X, Y)
    x = as_matrix(X, "X")
    y = as_matrix(Y, "Y")
    same_cols(x, y, "X", "Y")
    n, m = x.shape[0], y.shape[0]
    wa, wb = as_weights(a, "a", n), as_weights(b, "b", m)
    el = _parse_elements(elements, n, m)
    if not reg > 0:
        raise InputError(f"reg must be > 0, got {reg!r}")
    if int(block_size) != block_size or block_size < 2:
        raise InputError(f"block_size must be an integer >= 2, got {block_size!r}")
    if int(knn) != knn or knn < 1:
        raise InputError(f"knn must be a positive integer, got {knn!r}")
    knn = int(knn)
    lim = _Limits(int(max_exact), int(max_assignment), knn, int(block_size), seed)

    why, chosen, sol = "", method, None
    if method == "auto":
        if el is not None and n * m > max_exact:
            chosen, why = "blocks", f"auto: N*M = {n * m:.3g} > max_exact, elements given"
        else:
            chosen, sol = _solve(x, y, wa, wb, metric, lim)
            why = f"auto: N*M = {n * m:.3g}" + (", elements only scored" if el is not None
                                                  else ", no elements")
    if sol is not None:
        pass  # auto already solved it
    elif chosen == "emd":
        sol = _exact(x, y, wa, wb, metric, dense=True)
    elif chosen == "sinkhorn":
        sol = _sinkhorn(x, y, wa, wb, metric, reg)
    elif chosen == "sliced":
        sol = _sliced(x, y, wa, wb, metric, n_projections, seed)
    elif chosen == "blocks":
        if el is None:
            raise InputError("method='blocks' needs elements=(eX (N,), eY (M,))")
        sol = _blocks(x, y, wa, wb, el[0], el[1], metric, lim)
    elif chosen == "knn":
        if n != m or not (_is_uniform(wa) and _is_uniform(wb)):
            raise InputError(f"method='knn' needs N == M and uniform masses; got X {x.shape}, "
                             f"Y {y.shape}")
        sol = _knn_matching(x, y, metric, knn)
        if sol is None:
            raise InputError(f"the symmetric {knn}-NN graph of X {x.shape} and Y {y.shape} has "
                             "no perfect matching: raise knn or use method='multiscale'")
    else:
        sol = _multiscale(x, y, wa, wb, metric, lim.block_size, seed)
    if chosen == "emd" and sp.issparse(sol.plan):
        sol.plan = sol.plan.toarray()  # exact plans are returned dense

    plan = sol.plan
    matching = np.asarray(plan.argmax(axis=1)).ravel().astype(np.int64)
    images = _row_images(plan, y)
    zero = wa == 0  # massless source rows: no image from the plan, use the nearest target
    if zero.any():
        near = _nearest(x[zero], y)
        matching[zero], images[zero] = near, y[near]
    coo = sp.coo_array(plan)
    total = coo.data.sum()
    same_atom = float(coo.data[coo.row == coo.col].sum() / total) if n == m else None
    same_element = None
    if el is not None:
        same_element = float(coo.data[el[0][coo.row] == el[1][coo.col]].sum() / total)
    label = f"{chosen}: {sol.note}" + (f"; {why}" if why else "")
    if cols is not None:
        from platoscope.coords import expand_columns

        images = expand_columns(images, cols, k_full)
    return TransportResult(plan=plan, matching=matching, images=images, cost=sol.cost,
                           method=label, same_atom_mass=same_atom,
                           same_element_mass=same_element)


class TransportMap:
    """Transport map from a source space to a target space, learned by optimal transport.

    ``fit(X, Y)`` couples source atoms X (N, D) with target atoms Y (M, D) by :func:`transport`
    and stores each fitted source point's barycentric image ``images_`` (N, D).
    ``transform(X_new)`` carries any source points: each new point x gets
    ``x + sum_j w_j (images_[j] - X_fit_[j])`` over its ``n_neighbors`` nearest fitted source
    points j, with inverse-distance weights (a fitted point maps exactly to its own image). With
    ``n_neighbors=1`` this is the out-of-sample rule of POT's ``ot.da`` transport classes (Ferradans
    et al. 2014); more neighbours average the local displacement field, which is smoother.
    When ``elements`` are passed to both ``fit`` and ``transform``, neighbours are looked up among
    fitted source atoms of the same element (all of them for an element not seen in ``fit``).

    Fitted attributes: ``X_fit_`` (N, D), ``images_`` (N, D), ``displacements_`` (N, D),
    ``elements_`` (N,) or None, ``result_`` (:class:`TransportResult`), ``n_features_in_``.
    """

    def __init__(self, method: str = "auto", *, metric: str = "sqeuclidean", reg: float = 0.01,
                 n_neighbors: int = 5, max_exact: int = MAX_EXACT,
                 max_assignment: int = MAX_ASSIGNMENT, knn: int = 30, block_size: int = 500,
                 seed: int = 0):
        self.method = method
        self.metric = metric
        self.reg = reg
        self.n_neighbors = n_neighbors
        self.max_exact = max_exact
        self.max_assignment = max_assignment
        self.knn = knn
        self.block_size = block_size
        self.seed = seed

    def fit(self, X: Any, Y: Any, a: Any = None, b: Any = None,
            elements: Any = None) -> TransportMap:
        """Couple X (N, D) with Y (M, D); ``a``, ``b``, ``elements`` as in :func:`transport`."""
        if int(self.n_neighbors) != self.n_neighbors or self.n_neighbors < 1:
            raise InputError(f"n_neighbors must be a positive integer, got {self.n_neighbors!r}")
        x = as_matrix(X, "X")
        res = transport(x, Y, a, b, method=self.method, elements=elements, reg=self.reg,
                        metric=self.metric, max_exact=self.max_exact,
                        max_assignment=self.max_assignment, knn=self.knn,
                        block_size=self.block_size, seed=self.seed)
        el = _parse_elements(elements, x.shape[0], np.asarray(Y).shape[0])
        self.result_ = res
        self.X_fit_ = x
        self.images_ = res.images
        self.displacements_ = res.images - x
        self.elements_ = None if el is None else el[0]
        self.n_features_in_ = x.shape[1]
        self._index: dict[int | None, tuple[np.ndarray, NearestNeighbors]] = {}
        return self

    def _neighbours(self, key: int | None) -> tuple[np.ndarray, NearestNeighbors]:
        if key not in self._index:
            rows = (np.arange(self.X_fit_.shape[0]) if key is None
                    else np.flatnonzero(self.elements_ == key))
            k = min(int(self.n_neighbors), rows.size)
            self._index[key] = (rows, NearestNeighbors(n_neighbors=k).fit(self.X_fit_[rows]))
        return self._index[key]

    def transform(self, X: Any, elements: Any = None) -> np.ndarray:
        """Carry source points X (n, D) into the target space; returns (n, D).

        elements: optional (n,) labels of the new points (used when ``fit`` had elements).
        """
        if not hasattr(self, "X_fit_"):
            raise InputError("this TransportMap is not fitted yet: call fit(X, Y) first")
        x = as_matrix(X, "X")
        if x.shape[1] != self.n_features_in_:
            raise InputError(f"X has shape {x.shape} but the map was fitted on "
                             f"{self.n_features_in_} features")
        out = np.empty_like(x)
        if elements is None or self.elements_ is None:
            groups = {None: np.arange(x.shape[0])}
        else:
            e = as_labels(elements, "elements", x.shape[0])
            known = set(np.unique(self.elements_).tolist())
            parts: dict[int | None, list[np.ndarray]] = {}
            for v in np.unique(e).tolist():
                parts.setdefault(v if v in known else None, []).append(np.flatnonzero(e == v))
            groups = {key: np.concatenate(p) for key, p in parts.items()}
        for key, sel in groups.items():
            rows, nn = self._neighbours(key)
            dist, idx = nn.kneighbors(x[sel])
            w = 1.0 / np.maximum(dist, 1e-12)
            exact = dist[:, 0] <= 1e-12
            w[exact] = 0.0
            w[exact, 0] = 1.0
            w /= w.sum(axis=1, keepdims=True)
            out[sel] = x[sel] + np.einsum("nk,nkd->nd", w, self.displacements_[rows[idx]])
        return out

    def fit_transform(self, X: Any, Y: Any, a: Any = None, b: Any = None,
                      elements: Any = None) -> np.ndarray:
        """Fit on (X, Y) and return the images of X (N, D)."""
        return self.fit(X, Y, a, b, elements).images_.copy()
