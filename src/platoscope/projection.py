"""The projection onto anchors: one function, and one estimator that learns its parameters.

``project`` is the single place where embeddings become Platonic coordinates:
``c_ik = cos((e_i - m) W, (a_k - m) W)`` in float64, then either ``z_i = c_i`` (linear, the
paper's recipe with ``m = 0, W = I``) or the local kernel ``z_i = sqrt(softmax(c_i / tau))``.
The kernel turns each atom into a distribution over anchors with unit norm, so Euclidean
distance between coordinates is the Hellinger distance; it is what makes two models' spaces
agree (docs/shared_space.md). In the ``element`` projection each atom is projected on the
anchors of its own element only, each element centred on the mean of its own anchors
(``m = m_Z``); its row is zero outside its element's block, so atoms of different elements sit
at distance sqrt(2), unless the projector adds a **global block**: R more columns holding the
paper's linear cosines to a fixed subset of R anchors (every element's, one centring over all
anchors), L2-normalised and weighted so that ``d^2 = (1 - w^2) d_element^2 + w^2 d_global^2``
(``w^2 = global_weight``). With w^2 = 1e-4 it breaks the exact ties between atoms of other
elements and reorders only element-block distances closer than about 1e-4 in d^2
(docs/shared_space.md). Coordinates are
then (N, K + R): columns K.. are the global block. :class:`Projector` learns ``m`` and ``W``
(scikit-learn style: parameters in ``__init__``, learned attributes end in ``_``,
``transform`` is pure).

Every projection also gives a per-atom **coverage**: the largest (normalised) cosine of the atom
to the anchors it is projected on, in [-1, 1] (1: an anchor has the same environment). The
fitted projector holds a per-element threshold under which an atom is less covered than
``1 - COVERAGE_QUANTILE`` of the anchors themselves are by the other anchors of their element:
coordinates of such atoms rest on anchors unlike them. Each anchor's own coverage is taken
leave-one-structure-out when the projector knows the anchors' source structures
(``anchor_groups``, :attr:`platoscope.anchors.AnchorSet.groups`): anchors of one structure
(symmetry-equivalent or near-identical sites) would otherwise cover each other and push the
threshold towards 1. Without groups it is leave-one-anchor-out.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from platoscope.coords import equal_count_runs, fragmented
from platoscope.errors import InputError

NORMALIZATIONS = ("none", "center", "standardize", "whiten", "element")
KERNELS = ("linear", "softmax")
PRESETS: dict[str, dict[str, Any]] = {
    "element": {"normalize": "element", "kernel": "softmax", "tau": 0.015,
                "global_weight": 1e-4, "global_anchors": 128},
    "shared": {"normalize": "center", "kernel": "softmax", "tau": 0.015},
    "paper": {"normalize": "none", "kernel": "linear"},
    "centered": {"normalize": "center", "kernel": "linear"},
    "standardized": {"normalize": "standardize", "kernel": "linear"},
    "whitened": {"normalize": "whiten", "kernel": "linear"},
}
"""Named projections. ``element``: per-element anchors, each element centred on its own anchor
mean, softmax kernel (docs/shared_space.md: chosen on one split, measured on another), with a
light cross-element block (:class:`Projector`, ``global_weight``);
``shared``: one centring over all anchors, softmax kernel at tau = 0.015 (the cross-element
view: elements can be compared, e.g. periodicity); ``paper``: Li & Walsh's recipe as written
(plain cosines)."""
DEFAULT_PROJECTION = "element"
"""The projection PlatonicCalculator and reference banks use unless told otherwise."""
BLOCK_ROWS = 512
"""Rows (atoms) per block of the projection, fixed and counted from row 0 of each call: the same
embeddings give the same GEMM shapes in every code path (calculator, run-file readers, batched
post-processing), whatever N, K or the caller. See :data:`TOLERANCE` for what is promised."""
TOLERANCE = 1e-12
"""The reproducibility contract of :func:`project` and :meth:`Projector.transform`.
Every coordinate lies in [-1, 1]. Two evaluations of the same embeddings agree within this
absolute tolerance on any machine, BLAS build, thread count or row blocking (BLAS kernels sum
in different orders, a few units in the last place). Bitwise equality is what one
machine gives for the same input and block layout in practice, and is not promised: BLAS
libraries may pick kernels by memory alignment or thread count."""
COVERAGE_QUANTILE = 0.05
"""Quantile of the anchors' own held-out coverage (leave-one-structure-out with anchor groups,
else leave-one-anchor-out) that sets a fitted projector's per-element coverage threshold
(:meth:`Projector.coverage_threshold`): an atom below it is less covered than 95 % of its
element's anchors are by anchors of other structures."""
MIN_ANCHORS_FOR_THRESHOLD = 10
"""Elements with fewer valid held-out values than this (anchors, less those with no anchor of
their element in another structure) use the threshold pooled over all anchors."""


def _as_2d(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.ndim != 2:
        raise InputError(f"{name} must be 2-D (rows, features), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        row = int(torch.nonzero(~torch.isfinite(t).all(dim=1))[0])
        raise InputError(f"{name} has non-finite values (first at row {row})")
    return t


def project(embeddings: Any, anchors: Any, *, mean: Any = None, transform: Any = None,
            tau: float | None = None, numbers: Any = None, anchor_numbers: Any = None,
            sparse: bool = False) -> Any:
    """Cosine of each embedding to each anchor after optional affine normalisation.

    embeddings: (N, D); anchors: (K, D) (the *same model's* embeddings of the anchor atoms);
    mean: (D,) subtracted from both; transform: (D, D') applied after centering;
    tau: None for the cosines themselves, in [-1, 1] (zero vectors give 0, not NaN), or the
    temperature of the kernel ``sqrt(softmax(cos / tau))`` per row, in [0, 1] with unit rows.
    numbers (N,) and anchor_numbers (K,): the ``element`` projection: each atom is projected on
    its own element's anchors only, each element centred on its own anchors' mean (``mean`` and
    ``transform`` must then be None); entries outside the atom's element are 0.
    sparse: with ``numbers``, return a ``scipy.sparse.csr_array`` holding each atom's element
    block exactly (see :meth:`Projector.transform`).
    Returns (N, K) float64 (ndarray, or csr_array when ``sparse``).
    """
    _check_tau(tau)
    if (numbers is None) != (anchor_numbers is None):
        raise InputError("numbers and anchor_numbers go together (the element projection)")
    if numbers is not None:
        if mean is not None or transform is not None:
            raise InputError("the element projection centres each element on its own anchor "
                             "mean: mean and transform must be None")
        a = _as_2d(anchors, "anchors")
        blocks = _element_blocks(a, _atomic_numbers(anchor_numbers, a.shape[0], "anchor_numbers"))
        e = _as_2d(embeddings, "embeddings")
        return _apply_element(e, _atomic_numbers(numbers, e.shape[0], "numbers"), blocks, tau,
                              a.shape[0], sparse=sparse)
    if sparse:
        raise InputError("sparse=True applies to the element projection (numbers and "
                         "anchor_numbers given): other projections fill every column")
    m = None if mean is None else torch.as_tensor(np.asarray(mean), dtype=torch.float64)
    w = None if transform is None else torch.as_tensor(np.asarray(transform), dtype=torch.float64)
    return _apply(_as_2d(embeddings, "embeddings"), _unit_rows(_as_2d(anchors, "anchors"), m, w),
                  m, w, tau)


def _check_tau(tau: float | None) -> None:
    if tau is not None and not (np.isfinite(tau) and tau > 0):
        raise InputError(f"tau must be a positive number, got {tau!r}")


def _atomic_numbers(z: Any, n: int, name: str) -> np.ndarray:
    a = np.asarray(z)
    if a.shape != (n,):
        raise InputError(f"{name} must have shape ({n},), got {a.shape}")
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 1):
        raise InputError(f"{name} must be positive integer atomic numbers")
    return a.astype(np.int64)


def _unit_rows(x: torch.Tensor, m: torch.Tensor | None, w: torch.Tensor | None) -> torch.Tensor:
    if m is not None:
        x = x - m
    if w is not None:
        x = x @ w
    return torch.nn.functional.normalize(x, dim=1)


Block = tuple[np.ndarray, "torch.Tensor | None", torch.Tensor]
"""One element's anchors: columns (k_Z,), centring mean (D,) or None, unit rows (k_Z, D)."""


def _element_blocks(anchors: torch.Tensor, anchor_numbers: np.ndarray,
                    cols: np.ndarray | None = None) -> dict[int, Block]:
    """Per element: its anchors' columns, mean and centred unit rows. ``anchors`` are the valid
    rows, ``cols`` their columns (default: 0..K-1). A lone anchor keeps its uncentred direction
    (centred on itself it would be 0), and its element's atoms are then not centred either."""
    cols = np.arange(anchors.shape[0]) if cols is None else cols
    out: dict[int, Block] = {}
    for z in np.unique(anchor_numbers):
        sel = np.flatnonzero(anchor_numbers == z)
        a = anchors[torch.from_numpy(sel)]
        m = a.mean(dim=0) if sel.size > 1 else None
        out[int(z)] = (cols[sel], m, _unit_rows(a, m, None))
    return out


def _missing_elements_error(numbers: np.ndarray, missing: np.ndarray) -> InputError:
    from ase.data import chemical_symbols

    names = ", ".join(chemical_symbols[int(z)] for z in missing)
    first = int(np.flatnonzero(np.isin(numbers, missing))[0])
    return InputError(
        f"the anchor set has no anchor of element(s) {names} (first at atom {first}): the "
        "element projection cannot place these atoms. Add anchors from structures holding "
        "them: platoscope anchors extend ANCHORS FILES --out NEW")


def _apply_element(e: torch.Tensor, numbers: np.ndarray, blocks: dict[int, Block],
                   tau: float | None, k: int, coverage: np.ndarray | None = None,
                   sparse: bool = False) -> Any:
    """The element projection of validated embeddings (N, D) with atomic numbers (N,).

    Dense (N, K) ndarray, or with ``sparse`` a ``scipy.sparse.csr_array`` (N, K) whose row i
    stores the whole block of atom i's element (every column of that element's anchors, zeros
    from underflow included, sorted): the same values as the dense array, nothing dropped."""
    present = np.unique(numbers)
    missing = present[~np.isin(present, np.fromiter(blocks, dtype=np.int64, count=len(blocks)))]
    if missing.size:
        raise _missing_elements_error(numbers, missing)
    n = e.shape[0]
    if sparse:
        width = np.zeros(n, dtype=np.int64)
        for z in present:
            width[numbers == z] = blocks[int(z)][0].size
        nnz = int(width.sum())
        index_dtype = np.int32 if max(nnz, k) < 2**31 else np.int64  # 12 bytes per entry
        indptr = np.zeros(n + 1, dtype=index_dtype)
        np.cumsum(width, out=indptr[1:])
        data = np.empty(nnz, dtype=np.float64)
        indices = np.empty(nnz, dtype=index_dtype)
    else:
        full = np.zeros((n, k), dtype=np.float64)
    for z in present:
        rows = np.flatnonzero(numbers == z)
        cols, m, an = blocks[int(z)]
        cov = None if coverage is None else np.empty(rows.size)
        block = _apply(e[torch.from_numpy(rows)], an, m, None, tau, coverage=cov)
        if sparse and present.size == 1:  # one element: the block is the CSR data as it is
            data = block.reshape(-1)
            indices = np.tile(cols.astype(index_dtype), n)
        elif sparse:
            _scatter_rows(data, indices, indptr, rows, block, cols)
        else:
            full[np.ix_(rows, cols)] = block
        if coverage is not None:
            coverage[rows] = cov
    if not sparse:
        return full
    from scipy.sparse import csr_array

    out = csr_array((data, indices, indptr), shape=(n, k), copy=False)
    out.has_canonical_format = True  # rows: ascending (np.flatnonzero), distinct columns
    return out


def _scatter_rows(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, rows: np.ndarray,
                  block: np.ndarray, cols: np.ndarray) -> None:
    """Write ``block`` (r, c) and its columns ``cols`` (c,) into the CSR rows ``rows`` (r,
    ascending), each of which has room for exactly c entries. Runs of consecutive rows fill
    consecutive entries: each run is one slice copy (frames usually list an element's atoms
    together), a fancy-indexed scatter only when the rows are scattered."""
    c = cols.size
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    if fragmented(breaks.size + 1, rows.size):  # many short runs: one fancy scatter
        pos = indptr[rows].astype(np.int64)[:, None] + np.arange(c)[None, :]
        data[pos] = block
        indices[pos] = cols[None, :]
        return
    for a, b in itertools.pairwise((0, *breaks.tolist(), rows.size)):
        p0 = int(indptr[rows[a]])
        data[p0:p0 + (b - a) * c] = block[a:b].reshape(-1)
        indices[p0:p0 + (b - a) * c].reshape(b - a, c)[:] = cols[None, :]


def _apply(e: torch.Tensor, an: torch.Tensor, m: torch.Tensor | None, w: torch.Tensor | None,
           tau: float | None, cols: np.ndarray | None = None, k: int | None = None,
           coverage: np.ndarray | None = None) -> np.ndarray:
    """The projection of validated embeddings ``e`` onto prepared unit anchor rows ``an``.

    cols: the columns (of ``k``) that ``an``'s rows fill; the other anchors (those the model
    cannot embed) get coordinate 0 and no softmax mass. coverage: (N,) filled with each row's
    largest cosine.
    """
    if e.shape[1] != (an.shape[1] if w is None else w.shape[0]):
        raise InputError(
            f"embeddings have {e.shape[1]} features but anchors have "
            f"{an.shape[1] if w is None else w.shape[0]}: were they made by the same model and "
            "layer?")
    out = np.empty((e.shape[0], an.shape[0]), dtype=np.float64)
    out_t = torch.from_numpy(out)
    for s in range(0, e.shape[0], BLOCK_ROWS):
        torch.mm(_unit_rows(e[s:s + BLOCK_ROWS], m, w), an.T, out=out_t[s:s + BLOCK_ROWS])
        best = (out[s:s + BLOCK_ROWS].max(axis=1, initial=-1.0)
                if coverage is not None or tau is not None else None)
        if coverage is not None:
            coverage[s:s + BLOCK_ROWS] = best
        if tau is not None:
            _sqrt_softmax(out[s:s + BLOCK_ROWS], tau, best)
    if cols is None:
        return out
    full = np.zeros((e.shape[0], k), dtype=np.float64)
    full[:, cols] = out
    return full


_PARALLEL_ELEMENTS = 1 << 20  # smaller blocks run inline (thread start-up costs more)


def _sqrt_softmax(c: np.ndarray, tau: float, best: np.ndarray | None = None) -> None:
    """``sqrt(softmax(c / tau))`` per row, in place in ``c`` (N, K); ``best``: each row's
    largest entry (or any bound >= it, no more than 1 above: the shift softmax cancels), by
    default worked out here.

    numpy, not torch: each row's result depends on that row alone (no reduction across rows
    or threads), so large blocks are split by rows over ``torch.get_num_threads()`` threads
    (numpy releases the GIL).
    """
    if best is None:
        best = c.max(axis=1, initial=-1.0)
    n_threads = min(torch.get_num_threads(), c.shape[0])
    if n_threads < 2 or c.size < _PARALLEL_ELEMENTS:
        _sqrt_softmax_rows(c, tau, best)
        return
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, c.shape[0], n_threads + 1).astype(int)
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(lambda ab: _sqrt_softmax_rows(c[ab[0]:ab[1]], tau, best[ab[0]:ab[1]]),
                      itertools.pairwise(bounds)))


_NO_UNDERFLOW_TAU = 2.0 / 700.0
"""Above this temperature no entry of a row of cosines (spread <= 2) underflows in ``exp``
(``exp(-700)`` ~ 1e-304 is a normal float64), so either form of the kernel keeps every entry
non-zero and the two agree within a few ulp."""


def _sqrt_softmax_rows(c: np.ndarray, tau: float, best: np.ndarray) -> None:
    c -= best[:, None]
    if tau >= _NO_UNDERFLOW_TAU:
        # sqrt(exp(x) / sum(exp(x))) as exp(x / 2) / |exp(x / 2)|: 4 passes instead of 6
        # (~40 % less time), within a few ulp of the form below (TOLERANCE is 1e-12)
        c *= 0.5 / tau
        np.exp(c, out=c)
        c /= np.sqrt(np.einsum("ij,ij->i", c, c))[:, None]
        return
    # entries that underflow exp(x) are exactly 0 here (they would not be in the form above)
    c /= tau
    np.exp(c, out=c)
    c /= c.sum(axis=1, keepdims=True)
    np.sqrt(c, out=c)


class Projector:
    """Learns the normalisation of :func:`project` for one model.

    normalize: a preset name (``shared``, ``paper``, ``centered``, ``standardized``,
    ``whitened``; sets all three parameters) or ``none`` (the paper), ``center`` (subtract the
    anchor mean), ``standardize`` (per-feature mean/std of the model's reference embeddings),
    ``whiten`` (ZCA whitening with the reference covariance, eigenvalues floored at ``eps``
    times the largest); kernel: ``linear`` (cosines) or ``softmax`` (``sqrt(softmax(cos/tau))``);
    tau: the softmax temperature. A bare normalisation name defaults to the linear kernel.
    """

    def __init__(self, normalize: str = DEFAULT_PROJECTION, *, kernel: str | None = None,
                 tau: float | None = None, eps: float = 1e-6,
                 global_weight: float | None = None, global_anchors: int | None = None):
        if global_weight == 0 and global_anchors is None:  # "no global block" said once
            global_anchors = 0
        preset = PRESETS.get(normalize)
        if preset is not None:
            normalize = preset["normalize"]
            kernel = kernel or preset["kernel"]
            tau = tau if tau is not None else preset.get("tau")
            global_weight = (global_weight if global_weight is not None
                             else preset.get("global_weight"))
            global_anchors = (global_anchors if global_anchors is not None
                              else preset.get("global_anchors"))
        if normalize not in NORMALIZATIONS:
            raise InputError(f"unknown normalize={normalize!r}; valid: {', '.join(NORMALIZATIONS)}"
                             f" or a preset: {', '.join(PRESETS)}")
        kernel = kernel or "linear"
        if kernel not in KERNELS:
            raise InputError(f"unknown kernel={kernel!r}; valid: {', '.join(KERNELS)}")
        if kernel == "softmax":
            tau = 0.015 if tau is None else float(tau)
            _check_tau(tau)
        elif tau is not None:
            raise InputError("tau applies to kernel='softmax' only")
        global_weight = float(global_weight or 0.0)
        global_anchors = int(global_anchors or 0)
        if not (0.0 <= global_weight < 1.0) or (global_weight > 0) != (global_anchors > 0) \
                or global_anchors < 0:
            raise InputError(
                "global_weight (w^2, in [0, 1)) and global_anchors (R >= 1) go together: both "
                f"set or both 0, got global_weight={global_weight!r}, "
                f"global_anchors={global_anchors!r}")
        if global_anchors and normalize != "element":
            raise InputError("a global block applies to the element projection only (the "
                             f"{normalize!r} normalisation already compares every element)")
        self.normalize = normalize
        self.kernel = kernel
        self.tau = tau
        self.eps = eps
        self.global_weight = global_weight
        self.global_anchors = global_anchors

    @property
    def name(self) -> str:
        """The preset this projector matches (``shared``, ``paper`` ...) or a descriptive
        ``<normalize>-<kernel>[<tau>][-g<R>w<w^2>]`` label; used in provenance and file names."""
        mine = (self.normalize, self.kernel, self.tau, self.global_weight, self.global_anchors)
        for key, p in PRESETS.items():
            if (p["normalize"], p["kernel"], p.get("tau"), float(p.get("global_weight", 0.0)),
                    int(p.get("global_anchors", 0))) == mine:
                return key
        return (f"{self.normalize}-{self.kernel}" + (f"{self.tau:g}" if self.tau else "")
                + (f"-g{self.global_anchors}w{self.global_weight:g}" if self.global_anchors
                   else ""))

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters: ``Projector(**p.get_params())`` is an unfitted copy."""
        return {"normalize": self.normalize, "kernel": self.kernel, "tau": self.tau,
                "eps": self.eps, "global_weight": self.global_weight,
                "global_anchors": self.global_anchors}

    @classmethod
    def coerce(cls, projection: str | Projector | None) -> Projector:
        """An unfitted Projector from a preset/normalisation name, a Projector or None (the
        default projection)."""
        if projection is None:
            return cls()
        if isinstance(projection, Projector):
            return cls(**projection.get_params())
        return cls(projection)

    @property
    def needs_reference(self) -> bool:
        return self.normalize in ("standardize", "whiten")

    @property
    def by_element(self) -> bool:
        """Whether atoms are projected on their own element's anchors only (needs ``numbers``)."""
        return self.normalize == "element"

    def check_numbers(self, numbers: Any) -> None:
        """Raise the InputError :meth:`transform` raises for atoms of an element that has no
        anchor (element projection; other projections take any element), from the atomic
        numbers alone: before any model call."""
        if not self.by_element or getattr(self, "anchor_numbers_", None) is None:
            return
        numbers = np.asarray(numbers)
        blocks = self._prepare()[1]  # one per element with a valid anchor
        have = np.fromiter(blocks, dtype=np.int64, count=len(blocks))
        missing = np.setdiff1d(np.unique(numbers), have)
        if missing.size:
            raise _missing_elements_error(numbers, missing)

    def fit(self, anchor_embeddings: Any, reference_embeddings: Any = None, *,
            anchor_numbers: Any = None, anchor_groups: Any = None) -> Projector:
        """anchor_embeddings: (K, D); reference_embeddings: (M, D), needed to standardize/whiten;
        anchor_numbers: (K,) the anchor atoms' atomic numbers, needed by the element projection
        (kept by every projection for per-element coverage thresholds); anchor_groups: (K,)
        integer or string labels, equal for anchors of one source structure
        (:attr:`AnchorSet.groups <platoscope.anchors.AnchorSet.groups>`): the coverage
        thresholds are then leave-one-structure-out; None (sets without provenance):
        leave-one-anchor-out. Groups affect only :meth:`coverage_threshold`, never coordinates.

        A row of NaN marks an anchor this model cannot embed (its structure holds an element the
        model has no parameters for): it is left out (``valid_`` False), its coordinate is 0 for
        every atom and it gets no softmax mass; the K axes stay those of the anchor set.
        """
        a_in = np.asarray(anchor_embeddings, dtype=np.float64)
        if a_in.ndim != 2:
            raise InputError(f"anchor_embeddings must be 2-D (K, D), got shape {a_in.shape}")
        if anchor_numbers is None and self.by_element:
            raise InputError("the element projection needs anchor_numbers (the anchors' atomic "
                             "numbers, AnchorSet.numbers)")
        zs = (None if anchor_numbers is None
              else _atomic_numbers(anchor_numbers, a_in.shape[0], "anchor_numbers"))
        groups = None if anchor_groups is None else _group_labels(anchor_groups, a_in.shape[0])
        missing = np.isnan(a_in).all(axis=1)
        if missing.all():
            raise InputError("no anchor can be embedded by this model (every anchor row is NaN)")
        a = np.asarray(_as_2d(a_in[~missing], "anchor_embeddings").numpy())
        self.valid_: np.ndarray = ~missing
        self.anchor_numbers_: np.ndarray | None = zs
        self.anchor_groups_: np.ndarray | None = groups
        self.mean_: np.ndarray | None = None
        self.transform_: np.ndarray | None = None
        if self.normalize == "center":
            self.mean_ = a.mean(axis=0)
        elif self.needs_reference:
            if reference_embeddings is None:
                raise InputError(f"normalize={self.normalize!r} needs reference_embeddings")
            r = _as_2d(reference_embeddings, "reference_embeddings").numpy()
            if r.shape[1] != a.shape[1]:
                raise InputError(f"reference has {r.shape[1]} features, anchors {a.shape[1]}")
            if r.shape[0] < 2:
                raise InputError("reference_embeddings needs at least 2 rows")
            self.mean_ = r.mean(axis=0)
            if self.normalize == "standardize":
                std = r.std(axis=0)
                self.transform_ = np.diag(1.0 / np.maximum(std, self.eps * max(std.max(), 1e-300)))
            else:
                cov = np.cov(r, rowvar=False)
                vals, vecs = np.linalg.eigh(cov)
                vals = np.maximum(vals, self.eps * vals.max())
                self.transform_ = (vecs / np.sqrt(vals)) @ vecs.T
        self.anchors_ = a_in.copy()
        self._set_global(a.mean(axis=0) if self.global_anchors else None)
        self._prepared = None
        return self

    def _set_global(self, mean: np.ndarray | None) -> None:
        """The global block's learned attributes: ``global_columns_`` (R,) the anchors it
        uses (:func:`global_subset` of the anchor list: the same columns for every model on
        one anchor set), ``global_mean_`` (D,) the mean of this model's valid anchors."""
        if not self.global_anchors:
            self.global_columns_ = np.zeros(0, dtype=np.int64)
            self.global_mean_ = None
            return
        self.global_columns_ = global_subset(self.anchor_numbers_, self.global_anchors)
        self.global_mean_ = mean

    def _require_fitted(self) -> None:
        if not hasattr(self, "anchors_"):
            raise RuntimeError("Projector is not fitted: call fit(anchor_embeddings) first")

    @property
    def n_global(self) -> int:
        """R: the global block's columns (0 without one; fitted projector)."""
        self._require_fitted()
        return int(self.global_columns_.size)

    @property
    def n_columns(self) -> int:
        """Width of the coordinates: K anchors, plus R global columns (fitted projector)."""
        self._require_fitted()
        return self.anchors_.shape[0] + self.global_columns_.size

    def _prepare(self) -> tuple:
        self._require_fitted()
        if getattr(self, "_prepared", None) is None:
            valid = self.valid_
            cols = np.flatnonzero(valid)
            a = _as_2d(self.anchors_[valid], "anchors")
            g = getattr(self, "anchor_groups_", None)
            if self.by_element:
                blocks = _element_blocks(a, self.anchor_numbers_[valid], cols)
                units = [(z, an, None if g is None else g[c])
                         for z, (c, _, an) in blocks.items()]
                self._prepared = ("element", blocks)
            else:
                m = None if self.mean_ is None else torch.as_tensor(self.mean_,
                                                                    dtype=torch.float64)
                w = (None if self.transform_ is None
                     else torch.as_tensor(self.transform_, dtype=torch.float64))
                an = _unit_rows(a, m, w)
                units = [(0, an, None if g is None else g[cols])]
                self._prepared = ("shared", (an, m, w, None if valid.all() else cols))
            self._thresholds = _coverage_thresholds(
                units, None if self.anchor_numbers_ is None else self.anchor_numbers_[valid])
            self._global = None
            if self.global_columns_.size:
                m = torch.as_tensor(self.global_mean_, dtype=torch.float64)
                a = torch.as_tensor(np.nan_to_num(self.anchors_[self.global_columns_]),
                                    dtype=torch.float64)
                # an anchor this model cannot embed: a zero row (cosine 0), like its column
                gv = torch.as_tensor(self.valid_[self.global_columns_])
                self._global = (_unit_rows(a, m, None) * gv[:, None], m)
        return self._prepared

    def transform(self, embeddings: Any, numbers: Any = None, *, sparse: bool | None = None
                  ) -> Any:
        """(N, D) embeddings -> (N, :attr:`n_columns`) float64 Platonic coordinates: K anchor
        columns, then R global-block columns if the projector has one. numbers: (N,) atomic
        numbers, needed by the element projection.

        sparse: None (default) gives a ``scipy.sparse.csr_array`` for the element projection
        (:attr:`by_element`) and a dense ndarray for the others; False always dense; True
        requires the element projection. The sparse form stores each atom's whole element
        block (at most the largest element's anchor count per row, e.g. <= 2048 of the
        default set's 38,076 columns) and drops nothing: its entries are the dense array's,
        zero outside the block (tests hold them equal within :data:`TOLERANCE`). Helpers that
        take either form: :mod:`platoscope.coords`."""
        return self._transform(embeddings, numbers, None, sparse)

    def transform_with_coverage(self, embeddings: Any, numbers: Any = None, *,
                                sparse: bool | None = None) -> tuple[Any, np.ndarray]:
        """:meth:`transform` and each atom's coverage (N,): its largest normalised cosine to the
        anchors it is projected on, in [-1, 1], from the same matrix product."""
        cov = np.empty(np.shape(embeddings)[0] if np.ndim(embeddings) == 2 else 0)
        return self._transform(embeddings, numbers, cov, sparse), cov

    def _transform(self, embeddings: Any, numbers: Any, coverage: np.ndarray | None,
                   sparse: bool | None = None) -> Any:
        kind, prep = self._prepare()
        if sparse not in (None, True, False):
            raise InputError(f"sparse must be None, True or False, got {sparse!r}")
        if sparse and kind != "element":
            raise InputError(f"sparse=True applies to the element projection; {self.name!r} "
                             "fills every column: use sparse=None or False")
        e = _as_2d(embeddings, "embeddings")
        if kind == "element":
            if numbers is None:
                raise InputError("the element projection needs the atoms' atomic numbers: "
                                 "transform(embeddings, numbers)")
            z = _apply_element(e, _atomic_numbers(numbers, e.shape[0], "numbers"), prep,
                               self.tau, self.anchors_.shape[0], coverage,
                               sparse=sparse is not False)
            if self._global is None:
                return z
            return _append_global(z, _global_rows(e, *self._global), self.global_weight)
        an, m, w, cols = prep
        return _apply(e, an, m, w, self.tau, cols, self.anchors_.shape[0], coverage)

    @property
    def coverage_holdout(self) -> str:
        """How the anchors' own coverage behind :meth:`coverage_threshold` is held out:
        ``"structure"`` (fitted with ``anchor_groups``) or ``"anchor"`` (without)."""
        return "anchor" if getattr(self, "anchor_groups_", None) is None else "structure"

    def coverage_threshold(self, numbers: Any) -> np.ndarray:
        """(N,) the coverage under which each atom (atomic numbers (N,)) is flagged as not
        covered: the :data:`COVERAGE_QUANTILE` of its element's anchors' held-out coverage,
        each anchor's best cosine to the anchors of its block outside its own structure
        (:attr:`coverage_holdout` ``"structure"``) or other than itself (``"anchor"``, no
        groups). Anchors with no such other anchor are left out; elements with fewer than
        :data:`MIN_ANCHORS_FOR_THRESHOLD` values left, and every element without
        ``anchor_numbers``, use the quantile pooled over all anchors."""
        self._prepare()
        per, pooled = self._thresholds
        z = np.asarray(numbers, dtype=np.int64).ravel()
        return np.array([per.get(int(x), pooled) for x in z], dtype=np.float64)

    def get_state(self) -> dict[str, np.ndarray]:
        """Plain arrays (for npz files) that ``from_state`` turns back into this projector.
        The anchor matrix is stored as float32 when that is exact (models' features are
        float32): half the size, the same projector."""
        self._require_fitted()
        state = {"normalize": np.array(self.normalize), "kernel": np.array(self.kernel),
                 "eps": np.array(self.eps), "anchors": self._stored_anchors()}
        if self.tau is not None:
            state["tau"] = np.array(self.tau)
        if self.mean_ is not None:
            state["mean"] = self.mean_
        if self.transform_ is not None:
            state["transform"] = self.transform_
        if getattr(self, "anchor_numbers_", None) is not None:
            state["anchor_numbers"] = self.anchor_numbers_
        if getattr(self, "anchor_groups_", None) is not None:
            state["anchor_groups"] = self.anchor_groups_
        if self.global_anchors:
            state["global_weight"] = np.array(self.global_weight)
            state["global_anchors"] = np.array(self.global_anchors)
            state["global_mean"] = self.global_mean_
        return state

    def _stored_anchors(self) -> np.ndarray:
        """The anchor matrix as :meth:`get_state` stores it: float32 when that is exact, else
        float64. Worked out once per anchor matrix (comparing a (38076, D) matrix took
        0.04-0.18 s per ``monitor`` run); a projector read from a float32 state is known
        exact without comparing."""
        memo = getattr(self, "_anchors_stored", None)
        if memo is None or memo[0] is not self.anchors_:
            a32 = self.anchors_.astype(np.float32)
            exact = np.array_equal(a32.astype(np.float64), self.anchors_, equal_nan=True)
            memo = self._anchors_stored = (self.anchors_, a32 if exact else self.anchors_)
        return memo[1]

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Projector:
        p = cls(str(state["normalize"]), kernel=str(state.get("kernel", "linear")),
                tau=float(state["tau"]) if "tau" in state else None, eps=float(state["eps"]),
                global_weight=float(state.get("global_weight", 0.0)),
                global_anchors=int(state.get("global_anchors", 0)))
        stored = np.asarray(state["anchors"])
        p.anchors_ = stored.astype(np.float64, copy=False)
        if stored.dtype == np.float32:  # float32 -> float64 -> float32 is exact
            p._anchors_stored = (p.anchors_, stored)
        p.valid_ = ~np.isnan(p.anchors_).all(axis=1)
        p.mean_ = np.asarray(state["mean"]) if "mean" in state else None
        p.transform_ = np.asarray(state["transform"]) if "transform" in state else None
        p.anchor_numbers_ = (np.asarray(state["anchor_numbers"], dtype=np.int64)
                             if "anchor_numbers" in state else None)
        p.anchor_groups_ = (_group_labels(state["anchor_groups"], p.anchors_.shape[0])
                            if "anchor_groups" in state else None)
        if p.by_element and p.anchor_numbers_ is None:
            raise InputError("an element projector's state has no anchor_numbers")
        p._set_global(np.asarray(state["global_mean"], dtype=np.float64)
                      if p.global_anchors else None)
        p._prepared = None
        return p

    def __repr__(self) -> str:
        tau = f", tau={self.tau:g}" if self.tau is not None else ""
        g = (f", global_weight={self.global_weight:g}, global_anchors={self.global_anchors}"
             if self.global_anchors else "")
        return f"Projector(normalize={self.normalize!r}, kernel={self.kernel!r}{tau}{g})"


def global_subset(anchor_numbers: np.ndarray, r: int) -> np.ndarray:
    """(min(r, K),) sorted anchor indices of the global block, from the anchor list alone:
    round robin over the elements in order of Z, each element's anchors in list order (r >= the
    number of elements gives every element an anchor). Every model fitted on one anchor set
    gets the same columns, whichever anchors it can embed."""
    zs = np.asarray(anchor_numbers, dtype=np.int64)
    per = [np.flatnonzero(zs == z) for z in np.unique(zs)]
    r = min(int(r), zs.size)
    order: list[int] = []
    i = 0
    while len(order) < r:
        order += [int(p[i]) for p in per if i < p.size][: r - len(order)]
        i += 1
    return np.sort(np.array(order, dtype=np.int64))


def _global_rows(e: torch.Tensor, an: torch.Tensor, m: torch.Tensor) -> np.ndarray:
    """(N, R) the global block of validated embeddings ``e``: cosines of ``e - m`` to the
    prepared unit rows ``an`` (R, D), each row L2-normalised (a row of zero cosines stays 0)."""
    out = np.empty((e.shape[0], an.shape[0]), dtype=np.float64)
    out_t = torch.from_numpy(out)
    for s in range(0, e.shape[0], BLOCK_ROWS):
        c = torch.mm(_unit_rows(e[s:s + BLOCK_ROWS], m, None), an.T)
        out_t[s:s + BLOCK_ROWS] = torch.nn.functional.normalize(c, dim=1)
    return out


def _append_global(z: Any, g: np.ndarray, w2: float) -> Any:
    """Element coordinates ``z`` (N, K), dense or CSR, scaled by sqrt(1 - w2), with the global
    rows ``g`` (N, R) scaled by sqrt(w2) as columns K..K+R-1: unit rows stay unit rows. A
    zero global row (a model that can embed none of the block's anchors) leaves its element
    row unscaled."""
    a = np.sqrt(1.0 - w2 * np.einsum("ij,ij->i", g, g))  # (N,): sqrt(1 - w2), or 1
    return append_dense_columns(z, g * np.sqrt(w2), row_scale=a)


def append_dense_columns(z: Any, g: np.ndarray, row_scale: np.ndarray | None = None) -> Any:
    """``z`` (N, K), dense or CSR (rows multiplied by ``row_scale`` (N,) if given), with the
    dense block ``g`` (N, R) as columns K..K+R-1. A CSR result keeps each row's entries of
    ``z`` first, then its R block entries, zeros stored: the layout of the global block that
    :func:`platoscope.coords.split_global` reads back without a column search."""
    n, k = z.shape
    r = g.shape[1]
    scale = np.ones(n) if row_scale is None else np.asarray(row_scale, dtype=np.float64)
    if not hasattr(z, "indptr"):
        return np.hstack([np.asarray(z) * scale[:, None], g])
    from scipy.sparse import csr_array

    end = int(z.indptr[-1])
    counts = np.diff(z.indptr)
    nnz = end + n * r
    index_dtype = np.int32 if max(nnz, k + r) < 2**31 else np.int64
    indptr = z.indptr.astype(index_dtype) + (r * np.arange(n + 1)).astype(index_dtype)
    data = np.empty(nnz, dtype=np.float64)
    indices = np.empty(nnz, dtype=index_dtype)
    block_cols = np.arange(k, k + r, dtype=index_dtype)
    runs = equal_count_runs(counts)
    if runs is None:  # many short runs (interleaved elements): one scatter
        own = np.arange(end) + r * np.repeat(np.arange(n), counts)
        data[own] = z.data[:end] * np.repeat(scale, counts)
        indices[own] = z.indices[:end]
        pos = (indptr[:-1] + counts)[:, None] + np.arange(r)[None, :]
        data[pos] = g
        indices[pos] = block_cols[None, :]
        runs = []
    for a, b, c in runs:  # each run: one (rows, c + r) block of the result, slice copies
        s0, d0, m = int(z.indptr[a]), int(indptr[a]), b - a
        out_d = data[d0:d0 + m * (c + r)].reshape(m, c + r)
        out_i = indices[d0:d0 + m * (c + r)].reshape(m, c + r)
        np.multiply(z.data[s0:s0 + m * c].reshape(m, c), scale[a:b, None], out=out_d[:, :c])
        out_i[:, :c] = z.indices[s0:s0 + m * c].reshape(m, c)
        out_d[:, c:] = g[a:b]
        out_i[:, c:] = block_cols[None, :]
    out = csr_array((data, indices, indptr), shape=(n, k + r), copy=False)
    out.has_canonical_format = bool(getattr(z, "has_canonical_format", False))
    return out


def _group_labels(groups: Any, k: int) -> np.ndarray:
    """(K,) int64 labels 0..G-1 from per-anchor group ids (integers or strings)."""
    g = np.asarray(groups)
    if g.shape != (k,):
        raise InputError(f"anchor_groups must have shape ({k},) (one group id per anchor), got "
                         f"{g.shape}")
    if g.dtype.kind not in "iuUSO":
        raise InputError(f"anchor_groups must be integer or string ids, got dtype {g.dtype}")
    try:
        return np.unique(g, return_inverse=True)[1].astype(np.int64).reshape(k)
    except TypeError as err:
        raise InputError(f"anchor_groups must be integer or string ids ({err})") from err


_THRESHOLD_ROWS = 1024
"""Anchors per block of the held-out coverage product (a (1024, k) Gram block at a time)."""


def _held_out_best(an: torch.Tensor, groups: np.ndarray | None) -> np.ndarray:
    """(k,) each unit anchor row's largest cosine to the rows of other groups (to the other
    rows when ``groups`` is None); NaN where there is none."""
    k = an.shape[0]
    best = np.full(k, np.nan)
    if k < 2:
        return best
    for s in range(0, k, _THRESHOLD_ROWS):
        g = (an[s:s + _THRESHOLD_ROWS] @ an.T).numpy()
        if groups is None:
            g[np.arange(g.shape[0]), np.arange(s, s + g.shape[0])] = -np.inf
        else:
            g[groups[s:s + _THRESHOLD_ROWS, None] == groups[None, :]] = -np.inf
        best[s:s + _THRESHOLD_ROWS] = g.max(axis=1)
    best[np.isneginf(best)] = np.nan
    return best


def _coverage_thresholds(units: list[tuple[int, torch.Tensor, np.ndarray | None]],
                         numbers: np.ndarray | None) -> tuple[dict[int, float], float]:
    """Per-element and pooled :data:`COVERAGE_QUANTILE` of the anchors' held-out coverage.

    units: (block id, unit anchor rows, their group labels or None) for each block the atoms
    are projected on (one block for the shared projections); numbers: the valid anchors'
    atomic numbers, in block order."""
    loo = np.concatenate([_held_out_best(an, g) for _, an, g in units])
    finite = loo[np.isfinite(loo)]
    pooled = float(np.quantile(finite, COVERAGE_QUANTILE)) if finite.size else -1.0
    per: dict[int, float] = {}
    if numbers is not None:
        zs = (np.concatenate([np.full(an.shape[0], z) for z, an, _ in units]) if len(units) > 1
              else numbers)
        for z in np.unique(zs):
            v = loo[(zs == z) & np.isfinite(loo)]
            if v.size >= MIN_ANCHORS_FOR_THRESHOLD:
                per[int(z)] = float(np.quantile(v, COVERAGE_QUANTILE))
    return per, pooled
