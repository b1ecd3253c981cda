"""The projection onto anchors: one function, and one estimator that learns its parameters.

``project`` is the single place where embeddings become Platonic coordinates:
``c_ik = cos((e_i - m) W, (a_k - m) W)`` in float64, then either ``z_i = c_i`` (linear, the
paper's recipe with ``m = 0, W = I``) or the local kernel ``z_i = sqrt(softmax(c_i / tau))``.
The kernel turns each atom into a distribution over anchors with unit norm, so Euclidean
distance between coordinates is the Hellinger distance; it is what makes two models' spaces
agree (docs/shared_space.md). :class:`Projector` learns ``m`` and ``W`` (scikit-learn style:
parameters in ``__init__``, learned attributes end in ``_``, ``transform`` is pure).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from platoscope.errors import InputError

NORMALIZATIONS = ("none", "center", "standardize", "whiten")
KERNELS = ("linear", "softmax")
PRESETS: dict[str, dict[str, Any]] = {
    "shared": {"normalize": "center", "kernel": "softmax", "tau": 0.015},
    "paper": {"normalize": "none", "kernel": "linear"},
    "centered": {"normalize": "center", "kernel": "linear"},
    "standardized": {"normalize": "standardize", "kernel": "linear"},
    "whitened": {"normalize": "whiten", "kernel": "linear"},
}
"""Named projections. ``shared`` is the best measured cross-model configuration (centering on
the anchor mean, softmax kernel at tau = 0.015; docs/shared_space.md); ``paper`` is Li & Walsh's
recipe as written (plain cosines)."""
DEFAULT_PROJECTION = "shared"
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


def _as_2d(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.ndim != 2:
        raise InputError(f"{name} must be 2-D (rows, features), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        row = int(torch.nonzero(~torch.isfinite(t).all(dim=1))[0])
        raise InputError(f"{name} has non-finite values (first at row {row})")
    return t


def project(embeddings: Any, anchors: Any, *, mean: Any = None, transform: Any = None,
            tau: float | None = None) -> np.ndarray:
    """Cosine of each embedding to each anchor after optional affine normalisation.

    embeddings: (N, D); anchors: (K, D) (the *same model's* embeddings of the anchor atoms);
    mean: (D,) subtracted from both; transform: (D, D') applied after centering;
    tau: None for the cosines themselves, in [-1, 1] (zero vectors give 0, not NaN), or the
    temperature of the kernel ``sqrt(softmax(cos / tau))`` per row, in [0, 1] with unit rows.
    Returns (N, K) float64.
    """
    _check_tau(tau)
    m = None if mean is None else torch.as_tensor(np.asarray(mean), dtype=torch.float64)
    w = None if transform is None else torch.as_tensor(np.asarray(transform), dtype=torch.float64)
    return _apply(_as_2d(embeddings, "embeddings"), _unit_rows(_as_2d(anchors, "anchors"), m, w),
                  m, w, tau)


def _check_tau(tau: float | None) -> None:
    if tau is not None and not (np.isfinite(tau) and tau > 0):
        raise InputError(f"tau must be a positive number, got {tau!r}")


def _unit_rows(x: torch.Tensor, m: torch.Tensor | None, w: torch.Tensor | None) -> torch.Tensor:
    if m is not None:
        x = x - m
    if w is not None:
        x = x @ w
    return torch.nn.functional.normalize(x, dim=1)


def _apply(e: torch.Tensor, an: torch.Tensor, m: torch.Tensor | None, w: torch.Tensor | None,
           tau: float | None, cols: np.ndarray | None = None, k: int | None = None) -> np.ndarray:
    """The projection of validated embeddings ``e`` onto prepared unit anchor rows ``an``.

    cols: the columns (of ``k``) that ``an``'s rows fill; the other anchors (those the model
    cannot embed) get coordinate 0 and no softmax mass.
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
        if tau is not None:
            _sqrt_softmax(out[s:s + BLOCK_ROWS], tau)
    if cols is None:
        return out
    full = np.zeros((e.shape[0], k), dtype=np.float64)
    full[:, cols] = out
    return full


_PARALLEL_ELEMENTS = 1 << 20  # smaller blocks run inline (thread start-up costs more)


def _sqrt_softmax(c: np.ndarray, tau: float) -> None:
    """``sqrt(softmax(c / tau))`` per row, in place in ``c`` (N, K).

    numpy, not torch: each row's result depends on that row alone (no reduction across rows
    or threads), so large blocks are split by rows over ``torch.get_num_threads()`` threads
    (numpy releases the GIL).
    """
    n_threads = min(torch.get_num_threads(), c.shape[0])
    if n_threads < 2 or c.size < _PARALLEL_ELEMENTS:
        _sqrt_softmax_rows(c, tau)
        return
    from concurrent.futures import ThreadPoolExecutor

    bounds = np.linspace(0, c.shape[0], n_threads + 1).astype(int)
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(lambda ab: _sqrt_softmax_rows(c[ab[0]:ab[1]], tau),
                      itertools.pairwise(bounds)))


def _sqrt_softmax_rows(c: np.ndarray, tau: float) -> None:
    c /= tau
    c -= c.max(axis=1, keepdims=True)
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
                 tau: float | None = None, eps: float = 1e-6):
        preset = PRESETS.get(normalize)
        if preset is not None:
            normalize = preset["normalize"]
            kernel = kernel or preset["kernel"]
            tau = tau if tau is not None else preset.get("tau")
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
        self.normalize = normalize
        self.kernel = kernel
        self.tau = tau
        self.eps = eps

    @property
    def name(self) -> str:
        """The preset this projector matches (``shared``, ``paper`` ...) or a descriptive
        ``<normalize>-<kernel>[<tau>]`` label; used in provenance and file names."""
        for key, p in PRESETS.items():
            if (p["normalize"], p["kernel"], p.get("tau")) == (self.normalize, self.kernel,
                                                                 self.tau):
                return key
        return f"{self.normalize}-{self.kernel}" + (f"{self.tau:g}" if self.tau else "")

    def get_params(self) -> dict[str, Any]:
        """The constructor parameters: ``Projector(**p.get_params())`` is an unfitted copy."""
        return {"normalize": self.normalize, "kernel": self.kernel, "tau": self.tau,
                "eps": self.eps}

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

    def fit(self, anchor_embeddings: Any, reference_embeddings: Any = None) -> Projector:
        """anchor_embeddings: (K, D); reference_embeddings: (M, D), needed to standardize/whiten.

        A row of NaN marks an anchor this model cannot embed (its structure holds an element the
        model has no parameters for): it is left out (``valid_`` False), its coordinate is 0 for
        every atom and it gets no softmax mass; the K axes stay those of the anchor set.
        """
        a_in = np.asarray(anchor_embeddings, dtype=np.float64)
        if a_in.ndim != 2:
            raise InputError(f"anchor_embeddings must be 2-D (K, D), got shape {a_in.shape}")
        missing = np.isnan(a_in).all(axis=1)
        if missing.all():
            raise InputError("no anchor can be embedded by this model (every anchor row is NaN)")
        a = np.asarray(_as_2d(a_in[~missing], "anchor_embeddings").numpy())
        self.valid_: np.ndarray = ~missing
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
        self._prepared = None
        return self

    def transform(self, embeddings: Any) -> np.ndarray:
        """(N, D) embeddings -> (N, K) Platonic coordinates."""
        if not hasattr(self, "anchors_"):
            raise RuntimeError("Projector is not fitted: call fit(anchor_embeddings) first")
        if getattr(self, "_prepared", None) is None:
            m = None if self.mean_ is None else torch.as_tensor(self.mean_, dtype=torch.float64)
            w = (None if self.transform_ is None
                 else torch.as_tensor(self.transform_, dtype=torch.float64))
            valid = self.valid_
            cols = None if valid.all() else np.flatnonzero(valid)
            an = _unit_rows(_as_2d(self.anchors_[valid], "anchors"), m, w)
            self._prepared = (an, m, w, cols)
        an, m, w, cols = self._prepared
        return _apply(_as_2d(embeddings, "embeddings"), an, m, w, self.tau, cols,
                      self.anchors_.shape[0])

    def get_state(self) -> dict[str, np.ndarray]:
        """Plain arrays (for npz files) that ``from_state`` turns back into this projector."""
        state = {"normalize": np.array(self.normalize), "kernel": np.array(self.kernel),
                 "eps": np.array(self.eps), "anchors": self.anchors_}
        if self.tau is not None:
            state["tau"] = np.array(self.tau)
        if self.mean_ is not None:
            state["mean"] = self.mean_
        if self.transform_ is not None:
            state["transform"] = self.transform_
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Projector:
        p = cls(str(state["normalize"]), kernel=str(state.get("kernel", "linear")),
                tau=float(state["tau"]) if "tau" in state else None, eps=float(state["eps"]))
        p.anchors_ = np.asarray(state["anchors"], dtype=np.float64)
        p.valid_ = ~np.isnan(p.anchors_).all(axis=1)
        p.mean_ = np.asarray(state["mean"]) if "mean" in state else None
        p.transform_ = np.asarray(state["transform"]) if "transform" in state else None
        p._prepared = None
        return p

    def __repr__(self) -> str:
        tau = f", tau={self.tau:g}" if self.tau is not None else ""
        return f"Projector(normalize={self.normalize!r}, kernel={self.kernel!r}{tau})"
