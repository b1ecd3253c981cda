"""Per-element anchor projection with a sparse fixed-length output and a per-atom coverage signal.

Prototype for ``platoscope`` (issue 10). An atom of element Z is projected on the anchors of
element Z only, centred on the mean of those anchors' embeddings (same model):

    c_ik = cos(e_i - m_Z, a_k - m_Z)  for anchors k of element Z,
    z_i  = sqrt(softmax(c_i / tau))   (unit norm; other elements' entries are exactly 0).

So every atom lives in its element's block of one global anchor axis list (block-sparse), and
Euclidean distance between two atoms is the Hellinger distance of their kernel rows (sqrt(2)
between different elements). Coordinates are stored as the top ``top_k`` entries of the row
(indices into the global anchor list, int32, and values), which is exact up to the L2 bound
``sqrt(1 - sum(values**2))`` reported per atom. Beside the element block an optional small
*global* block (``global_k`` anchors over all elements, one centring on their mean, the same
kernel at ``global_tau``) keeps a cross-element view (periodicity, substitution arithmetic).

Coverage: ``coverage`` is the best centred cosine of the atom to its own element's anchors (in
[-1, 1]; 1 = an anchor has the same environment), ``n_eff`` the effective number of anchors
``exp(entropy of the softmax row)``. An atom whose element has no anchor raises a ValueError
naming the element (``on_missing="error"``, the default) or, with ``on_missing="flag"``, gets
indices -1, values 0, coverage NaN and ``covered`` False.

Anchor *selection* is separate (:func:`select_per_element`) because it must run once on one
model's embeddings: every model then embeds the same anchor atoms and is fitted on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Any

import numpy as np

ON_MISSING = ("error", "flag")


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"


def _matrix(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {a.shape}")
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} has non-finite values (first at row {first})")
    return a


def _numbers(z: Any, n: int, name: str) -> np.ndarray:
    from platoscope.projection import _atomic_numbers  # the library's one check

    return _atomic_numbers(z, n, name)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def _sqrt_softmax(c: np.ndarray, tau: float) -> np.ndarray:
    """sqrt(softmax(c / tau)) per row (N, K) and the effective number exp(H) (N,)."""
    s = c / tau
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return np.sqrt(p), np.exp(h)


def _fps(x: np.ndarray, k: int) -> np.ndarray:
    """Deterministic farthest-point sampling of k rows of x (start: the row farthest from the
    mean); Euclidean. Returns sorted-by-pick indices (k,)."""
    if k >= x.shape[0]:
        return np.arange(x.shape[0])
    d = np.linalg.norm(x - x.mean(axis=0), axis=1)
    order = [int(np.argmax(d))]
    dmin = np.linalg.norm(x - x[order[0]], axis=1)
    for _ in range(k - 1):
        j = int(np.argmax(dmin))
        order.append(j)
        dmin = np.minimum(dmin, np.linalg.norm(x - x[j], axis=1))
    return np.asarray(order)


def select_per_element(embeddings: Any, numbers: Any, k_per_element: int, *,
                       method: str = "fps", global_k: int = 0,
                       random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Choose anchor atoms on ONE model's embeddings, per element and (optionally) globally.

    embeddings: (M, D) candidate atoms' features; numbers: (M,) atomic numbers;
    k_per_element: anchors per element (all of an element's candidates if it has fewer);
    method: ``fps`` (farthest-point on unit, element-centred rows), ``direct``
    (platoscope.selection.select_direct within each element) or ``random`` (uniform, seeded by
    random_state and the element); global_k: size of the global
    block, chosen by FPS over the selected anchors after centring on their mean.
    Returns ``(anchor_rows (K,), global_index (global_k,))``: rows into the candidates, and
    positions in ``anchor_rows`` that form the global block. Deterministic.
    """
    x = _matrix(embeddings, "embeddings")
    z = _numbers(numbers, x.shape[0], "numbers")
    if int(k_per_element) < 1:
        raise ValueError(f"k_per_element must be >= 1, got {k_per_element!r}")
    if method not in ("fps", "direct", "random"):
        raise ValueError(f"unknown method {method!r}; valid: fps, direct, random")
    rows = []
    for el in np.unique(z):
        idx = np.flatnonzero(z == el)
        if idx.size <= k_per_element:
            rows.append(idx)
            continue
        xe = _unit(x[idx] - x[idx].mean(axis=0))
        if method == "fps":
            pick = _fps(xe, int(k_per_element))
        elif method == "random":
            pick = np.random.default_rng([random_state, int(el)]).choice(
                idx.size, int(k_per_element), replace=False)
        else:
            from platoscope.selection import select_direct

            pick = np.asarray(select_direct(xe, int(k_per_element),
                                            random_state=random_state).indices)
        rows.append(np.sort(idx[pick]))
    anchor_rows = np.concatenate(rows)
    if global_k < 0:
        raise ValueError(f"global_k must be >= 0, got {global_k!r}")
    gi = (np.sort(_fps(_unit(x[anchor_rows] - x[anchor_rows].mean(axis=0)), int(global_k)))
          if global_k else np.zeros(0, dtype=np.int64))
    return anchor_rows, gi


@dataclass
class SparseCoords:
    """Per-element projection of N atoms in fixed-length sparse form.

    indices: (N, k) int32 into the global anchor list (-1 = padding); values: (N, k) the kernel
    entries (descending; 0 at padding); coverage: (N,) best centred cosine to own-element
    anchors (NaN if not covered); n_eff: (N,) effective number of anchors; residual: (N,)
    L2 norm of the dropped entries (exact bound on the truncation error of each row);
    covered: (N,) bool; global_block: (N, global_k) dense cross-element coordinates or None;
    n_anchors: K, the length of the dense row.
    """

    indices: np.ndarray
    values: np.ndarray
    coverage: np.ndarray
    n_eff: np.ndarray
    residual: np.ndarray
    covered: np.ndarray
    global_block: np.ndarray | None
    n_anchors: int

    def to_csr(self):
        """scipy.sparse.csr_matrix (N, K) of the element block (padding dropped)."""
        from scipy.sparse import csr_matrix

        keep = self.indices >= 0
        rows = np.repeat(np.arange(self.indices.shape[0]), keep.sum(axis=1))
        return csr_matrix((self.values[keep], (rows, self.indices[keep])),
                          shape=(self.indices.shape[0], self.n_anchors))

    def nbytes_per_atom(self, value_dtype: Any = np.float32) -> int:
        """Bytes per atom on disk: int32 indices + values (+ coverage float32, + global block)."""
        k = self.indices.shape[1]
        g = 0 if self.global_block is None else self.global_block.shape[1]
        return 4 * k + np.dtype(value_dtype).itemsize * (k + g) + 4


class ElementwiseProjector:
    """Per-element anchor projection (scikit-learn style; learned attributes end in ``_``).

    tau: softmax temperature of the element block; k_per_element: documented size used for
    :meth:`select` (``None``: all candidates); global_k: anchors in the cross-element block
    (0: none); global_tau: its temperature (default ``tau``); top_k: stored entries per atom
    (``None``: the largest element block); on_missing: ``error`` or ``flag`` for atoms whose
    element has no anchors.
    """

    def __init__(self, tau: float = 0.015, k_per_element: int | None = 64, global_k: int = 0,
                 *, global_tau: float | None = None, top_k: int | None = 64,
                 on_missing: str = "error"):
        for name, t in (("tau", tau), ("global_tau", global_tau)):
            if t is not None and not (np.isfinite(t) and t > 0):
                raise ValueError(f"{name} must be a positive number, got {t!r}")
        if on_missing not in ON_MISSING:
            raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k!r}")
        self.tau = float(tau)
        self.k_per_element = k_per_element
        self.global_k = int(global_k)
        self.global_tau = float(global_tau) if global_tau is not None else float(tau)
        self.top_k = None if top_k is None else int(top_k)
        self.on_missing = on_missing

    def select(self, embeddings: Any, numbers: Any, method: str = "fps"
               ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`select_per_element` with this projector's k_per_element and global_k."""
        z = np.asarray(numbers)
        k = self.k_per_element or int(np.bincount(z.astype(np.int64)).max())
        return select_per_element(embeddings, numbers, k, method=method, global_k=self.global_k)

    def fit(self, anchor_embeddings: Any, anchor_numbers: Any,
            global_index: Any = None) -> ElementwiseProjector:
        """anchor_embeddings: (K, D) this model's features of the anchor atoms; anchor_numbers:
        (K,); global_index: (global_k,) positions of the global-block anchors (needed when
        global_k > 0)."""
        a = _matrix(anchor_embeddings, "anchor_embeddings")
        z = _numbers(anchor_numbers, a.shape[0], "anchor_numbers")
        if a.shape[0] == 0:
            raise ValueError("no anchors")
        self.anchor_numbers_ = z
        self.elements_ = np.unique(z)
        self.means_ = np.zeros((self.elements_.size, a.shape[1]))
        self.unit_anchors_ = np.zeros_like(a)
        for i, el in enumerate(self.elements_):
            idx = np.flatnonzero(z == el)
            self.means_[i] = a[idx].mean(axis=0)
            # a lone anchor centred on itself is 0: keep its uncentred direction instead
            self.unit_anchors_[idx] = (_unit(a[idx] - self.means_[i]) if idx.size > 1
                                       else _unit(a[idx]))
        self.block_sizes_ = np.bincount(np.searchsorted(self.elements_, z),
                                        minlength=self.elements_.size)
        if self.global_k:
            if global_index is None:
                raise ValueError(f"global_k={self.global_k} needs global_index (positions of "
                                 "the global anchors, e.g. from select())")
            gi = np.asarray(global_index, dtype=np.int64)
            if gi.shape != (self.global_k,) or gi.min() < 0 or gi.max() >= a.shape[0]:
                raise ValueError(f"global_index must be {self.global_k} positions in "
                                 f"0..{a.shape[0] - 1}")
            self.global_index_ = gi
            self.global_mean_ = a[gi].mean(axis=0)
            self.global_unit_ = _unit(a[gi] - self.global_mean_)
        else:
            self.global_index_ = np.zeros(0, dtype=np.int64)
            self.global_mean_ = None
            self.global_unit_ = None
        return self

    @property
    def n_anchors_(self) -> int:
        return int(self.anchor_numbers_.size)

    def _check_fitted(self) -> None:
        if not hasattr(self, "unit_anchors_"):
            raise RuntimeError("ElementwiseProjector is not fitted: call fit() first")

    def transform(self, embeddings: Any, numbers: Any) -> SparseCoords:
        """embeddings: (N, D) this model's features; numbers: (N,). Returns :class:`SparseCoords`
        with ``top_k`` entries per atom (dimensionless kernel values in [0, 1])."""
        self._check_fitted()
        e = _matrix(embeddings, "embeddings")
        if e.shape[1] != self.unit_anchors_.shape[1]:
            raise ValueError(f"embeddings have {e.shape[1]} features but anchors "
                             f"{self.unit_anchors_.shape[1]}: same model and layer?")
        z = _numbers(numbers, e.shape[0], "numbers")
        n = e.shape[0]
        k = self.top_k or int(self.block_sizes_.max())
        idx = np.full((n, k), -1, dtype=np.int32)
        val = np.zeros((n, k))
        cov = np.full(n, np.nan)
        neff = np.full(n, np.nan)
        res = np.zeros(n)
        covered = np.zeros(n, dtype=bool)
        present = np.isin(z, self.elements_)
        if not present.all():
            missing = sorted({int(x) for x in z[~present]})
            if self.on_missing == "error":
                raise ValueError(
                    "no anchors for element(s) " + ", ".join(_symbol(m) for m in missing)
                    + f" (first at atom {int(np.flatnonzero(~present)[0])}): extend the anchor "
                    "set with structures containing them")
        for i, el in enumerate(self.elements_):
            rows = np.flatnonzero(z == el)
            if rows.size == 0:
                continue
            cols = np.flatnonzero(self.anchor_numbers_ == el)
            u = _unit(e[rows] - self.means_[i]) if cols.size > 1 else _unit(e[rows])
            c = u @ self.unit_anchors_[cols].T
            zz, ne = _sqrt_softmax(c, self.tau)
            cov[rows] = c.max(axis=1)
            neff[rows] = ne
            kk = min(k, cols.size)
            top = np.argsort(-zz, axis=1, kind="stable")[:, :kk]
            tv = np.take_along_axis(zz, top, axis=1)
            idx[rows, :kk] = cols[top]
            val[rows, :kk] = tv
            res[rows] = np.sqrt(np.clip(1.0 - np.sum(tv ** 2, axis=1), 0.0, None))
            covered[rows] = True
        g = None
        if self.global_k:
            g = _sqrt_softmax(_unit(e - self.global_mean_) @ self.global_unit_.T,
                              self.global_tau)[0]
        return SparseCoords(idx, val, cov, neff, res, covered, g, self.n_anchors_)

    def get_state(self) -> dict[str, np.ndarray]:
        """Plain arrays (npz-ready) that :meth:`from_state` turns back into this projector."""
        self._check_fitted()
        s = {"tau": np.array(self.tau), "global_tau": np.array(self.global_tau),
             "global_k": np.array(self.global_k),
             "k_per_element": np.array(-1 if self.k_per_element is None else self.k_per_element),
             "top_k": np.array(-1 if self.top_k is None else self.top_k),
             "on_missing": np.array(self.on_missing),
             "anchor_numbers": self.anchor_numbers_, "elements": self.elements_,
             "means": self.means_, "unit_anchors": self.unit_anchors_,
             "global_index": self.global_index_}
        if self.global_k:
            s["global_mean"] = self.global_mean_
            s["global_unit"] = self.global_unit_
        return s

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ElementwiseProjector:
        kpe, tk = int(state["k_per_element"]), int(state["top_k"])
        p = cls(float(state["tau"]), None if kpe < 0 else kpe, int(state["global_k"]),
                global_tau=float(state["global_tau"]), top_k=None if tk < 0 else tk,
                on_missing=str(state["on_missing"]))
        p.anchor_numbers_ = np.asarray(state["anchor_numbers"], dtype=np.int64)
        p.elements_ = np.asarray(state["elements"], dtype=np.int64)
        p.means_ = np.asarray(state["means"], dtype=np.float64)
        p.unit_anchors_ = np.asarray(state["unit_anchors"], dtype=np.float64)
        p.block_sizes_ = np.bincount(np.searchsorted(p.elements_, p.anchor_numbers_),
                                     minlength=p.elements_.size)
        p.global_index_ = np.asarray(state["global_index"], dtype=np.int64)
        p.global_mean_ = np.asarray(state["global_mean"]) if "global_mean" in state else None
        p.global_unit_ = np.asarray(state["global_unit"]) if "global_unit" in state else None
        return p

    def __repr__(self) -> str:
        return (f"ElementwiseProjector(tau={self.tau:g}, k_per_element={self.k_per_element}, "
                f"global_k={self.global_k}, top_k={self.top_k})")


def sparse_sq_distances(a: SparseCoords | Any, b: SparseCoords | Any) -> np.ndarray:
    """Squared Euclidean distances (Na, Nb) between two sets of sparse rows, without densifying
    the anchor axis: ``|x|^2 + |y|^2 - 2 x.y`` with x.y over shared indices (scipy.sparse).
    a, b: :class:`SparseCoords` or scipy.sparse matrices with the same number of columns."""
    xa = a.to_csr() if isinstance(a, SparseCoords) else a.tocsr()
    xb = b.to_csr() if isinstance(b, SparseCoords) else b.tocsr()
    if xa.shape[1] != xb.shape[1]:
        raise ValueError(f"different anchor axes: {xa.shape[1]} vs {xb.shape[1]} columns")
    na = np.asarray(xa.multiply(xa).sum(axis=1)).ravel()
    nb = np.asarray(xb.multiply(xb).sum(axis=1)).ravel()
    dot = (xa @ xb.T).toarray()
    return np.clip(na[:, None] + nb[None, :] - 2 * dot, 0.0, None)


def element_structure_baseline(numbers: Any, structure_index: Any, groups: Any,
                               k: int = 1, site_resolved: bool = False) -> float:
    """Exact retrieval accuracy of a representation that knows only element + structure.

    numbers, structure_index, groups: (N,) per atom (groups: symmetry-class ids, unique across
    structures). One query per class; for a class of size s among the n atoms of its element in
    its structure, a random order inside that indistinguishable set puts a member in the top k
    with probability ``1 - C(n - s, k) / C(n, k)`` (top-1: s / n; 1 when n <= k: the pool
    ranks its own element and structure first). Returns the mean over
    queries. site_resolved: only queries whose (element, structure) pool holds >= 2 classes
    (the chance level of site-resolved top-1; NaN if there are none).
    """
    z = np.asarray(numbers, dtype=np.int64)
    s_idx = np.asarray(structure_index, dtype=np.int64)
    g = np.asarray(groups, dtype=np.int64)
    if not (z.shape == s_idx.shape == g.shape) or z.ndim != 1:
        raise ValueError(f"numbers, structure_index, groups must be (N,) alike, got "
                         f"{z.shape}, {s_idx.shape}, {g.shape}")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    _, pool = np.unique(np.stack([z, s_idx]), axis=1, return_inverse=True)
    pool = pool.ravel()
    n_pool = np.bincount(pool)
    _, first, size = np.unique(g, return_index=True, return_counts=True)
    classes_per_pool = np.bincount(pool[first], minlength=n_pool.size)
    out = []
    for f, s in zip(first, size, strict=True):
        n = int(n_pool[pool[f]])
        if site_resolved and classes_per_pool[pool[f]] < 2:
            continue
        out.append(1.0 if n <= k else 1.0 - comb(n - int(s), int(k)) / comb(n, int(k)))
    return float(np.mean(out)) if out else float("nan")
