"""The projection onto anchors: one function, and one estimator that learns its parameters.

``project`` is the single place where embeddings become Platonic coordinates:
``z_ik = cos((e_i - m) W, (a_k - m) W)`` in float64. The paper's recipe is ``m = 0, W = I``.
:class:`Projector` learns ``m`` and ``W`` (scikit-learn style: parameters in ``__init__``,
learned attributes end in ``_``, ``transform`` is pure).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

NORMALIZATIONS = ("none", "center", "standardize", "whiten")
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"normalize": "none"},
    "centered": {"normalize": "center"},
    "standardized": {"normalize": "standardize"},
    "whitened": {"normalize": "whiten"},
}
DEFAULT_PROJECTION = "paper"
"""The projection PlatonicCalculator and reference banks use unless told otherwise."""
_CHUNK = 1 << 16


def _as_2d(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, features), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        row = int(torch.nonzero(~torch.isfinite(t).all(dim=1))[0])
        raise ValueError(f"{name} has non-finite values (first at row {row})")
    return t


def project(embeddings: Any, anchors: Any, *, mean: Any = None, transform: Any = None
            ) -> np.ndarray:
    """Cosine of each embedding to each anchor after optional affine normalisation.

    embeddings: (N, D); anchors: (K, D) (the *same model's* embeddings of the anchor atoms);
    mean: (D,) subtracted from both; transform: (D, D') applied after centering.
    Returns (N, K) float64 in [-1, 1]. Zero vectors give 0, not NaN.
    """
    e = _as_2d(embeddings, "embeddings")
    a = _as_2d(anchors, "anchors")
    if e.shape[1] != a.shape[1]:
        raise ValueError(
            f"embeddings have {e.shape[1]} features but anchors have {a.shape[1]}: were they "
            "made by the same model and layer?")
    m = None if mean is None else torch.as_tensor(np.asarray(mean), dtype=torch.float64)
    w = None if transform is None else torch.as_tensor(np.asarray(transform), dtype=torch.float64)

    def prep(x: torch.Tensor) -> torch.Tensor:
        if m is not None:
            x = x - m
        if w is not None:
            x = x @ w
        return torch.nn.functional.normalize(x, dim=1)

    an = prep(a)
    out = torch.empty((e.shape[0], a.shape[0]), dtype=torch.float64)
    for s in range(0, e.shape[0], _CHUNK):
        out[s:s + _CHUNK] = prep(e[s:s + _CHUNK]) @ an.T
    return out.numpy()


class Projector:
    """Learns the normalisation of :func:`project` for one model.

    normalize: ``none`` (the paper), ``center`` (subtract the anchor mean), ``standardize``
    (per-feature mean/std of the model's reference embeddings), ``whiten`` (ZCA whitening with
    the reference covariance, eigenvalues floored at ``eps`` times the largest).
    """

    def __init__(self, normalize: str = "none", *, eps: float = 1e-6):
        if normalize in PRESETS:
            normalize = PRESETS[normalize]["normalize"]
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize={normalize!r}; valid: {', '.join(NORMALIZATIONS)}"
                             f" or a preset: {', '.join(PRESETS)}")
        self.normalize = normalize
        self.eps = eps

    @property
    def needs_reference(self) -> bool:
        return self.normalize in ("standardize", "whiten")

    def fit(self, anchor_embeddings: Any, reference_embeddings: Any = None) -> Projector:
        """anchor_embeddings: (K, D); reference_embeddings: (M, D), needed to standardize/whiten."""
        a = np.asarray(_as_2d(anchor_embeddings, "anchor_embeddings").numpy())
        self.mean_: np.ndarray | None = None
        self.transform_: np.ndarray | None = None
        if self.normalize == "center":
            self.mean_ = a.mean(axis=0)
        elif self.needs_reference:
            if reference_embeddings is None:
                raise ValueError(f"normalize={self.normalize!r} needs reference_embeddings")
            r = _as_2d(reference_embeddings, "reference_embeddings").numpy()
            if r.shape[1] != a.shape[1]:
                raise ValueError(f"reference has {r.shape[1]} features, anchors {a.shape[1]}")
            if r.shape[0] < 2:
                raise ValueError("reference_embeddings needs at least 2 rows")
            self.mean_ = r.mean(axis=0)
            if self.normalize == "standardize":
                std = r.std(axis=0)
                self.transform_ = np.diag(1.0 / np.maximum(std, self.eps * max(std.max(), 1e-300)))
            else:
                cov = np.cov(r, rowvar=False)
                vals, vecs = np.linalg.eigh(cov)
                vals = np.maximum(vals, self.eps * vals.max())
                self.transform_ = (vecs / np.sqrt(vals)) @ vecs.T
        self.anchors_ = a
        return self

    def transform(self, embeddings: Any) -> np.ndarray:
        """(N, D) embeddings -> (N, K) Platonic coordinates."""
        if not hasattr(self, "anchors_"):
            raise RuntimeError("Projector is not fitted: call fit(anchor_embeddings) first")
        return project(embeddings, self.anchors_, mean=self.mean_, transform=self.transform_)

    def get_state(self) -> dict[str, np.ndarray]:
        """Plain arrays (for npz files) that ``from_state`` turns back into this projector."""
        state = {"normalize": np.array(self.normalize), "eps": np.array(self.eps),
                 "anchors": self.anchors_}
        if self.mean_ is not None:
            state["mean"] = self.mean_
        if self.transform_ is not None:
            state["transform"] = self.transform_
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Projector:
        p = cls(str(state["normalize"]), eps=float(state["eps"]))
        p.anchors_ = np.asarray(state["anchors"], dtype=np.float64)
        p.mean_ = np.asarray(state["mean"]) if "mean" in state else None
        p.transform_ = np.asarray(state["transform"]) if "transform" in state else None
        return p

    def __repr__(self) -> str:
        return f"Projector(normalize={self.normalize!r})"
