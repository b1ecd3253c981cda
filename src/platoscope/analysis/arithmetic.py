"""Embedding arithmetic: element substitution as a vector offset, z_b ≈ z_a + v(a -> b).

Example: NaCl -> KCl. The source atoms are the Na atoms (n, D), the targets the K atoms at the
corresponding sites (n, D); shifting each source by ``v = mean(K) - mean(Na)`` should land near
its own target among a pool of candidates (all atoms of a set of structures). Retrieval of the
true target is compared with the no-shift baseline (query = the source atom itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from platoscope.analysis.inputs import as_labels, as_matrix, check_metric, same_cols, same_rows
from platoscope.analysis.neighbors import ranks
from platoscope.errors import InputError


def substitution_vector(Z: Any, coords: Any, a: int, b: int) -> np.ndarray:
    """Mean offset from element a to element b: ``mean(coords[Z == b]) - mean(coords[Z == a])``.

    Z: (N,) atomic numbers; coords: (N, D). Returns (D,). Uses all atoms of both elements
    (unpaired); for paired sites use ``(target - source).mean(0)``.
    """
    x = as_matrix(coords, "coords")
    z = as_labels(Z, "Z", x.shape[0])
    for name, el in (("a", a), ("b", b)):
        if not np.any(z == el):
            raise InputError(f"element {name}={el} has no atoms in Z (shape {z.shape})")
    return x[z == b].mean(axis=0) - x[z == a].mean(axis=0)


@dataclass
class ArithmeticResult:
    """Retrieval of substituted atoms from a candidate pool.

    accuracy / baseline: {k: fraction of pairs whose true target is in the top k of the pool}
    for the shifted query (source + v) and for the unshifted source. ranks / baseline_ranks:
    (n,) rank of the true target (0 = nearest). vectors: (n, D) offset used for each pair.
    chance: {k: k / M}.
    """

    accuracy: dict[int, float]
    baseline: dict[int, float]
    ranks: np.ndarray
    baseline_ranks: np.ndarray
    vectors: np.ndarray
    chance: dict[int, float]


def arithmetic_retrieval(source: Any, target: Any, pool: Any, target_index: Any,
                         vector: Any = None, ks: tuple[int, ...] = (1, 5),
                         metric: str = "euclidean") -> ArithmeticResult:
    """Predict substituted atoms as ``source + v`` and retrieve them from a pool.

    source: (n, D) coordinates of the atoms before substitution (element a); target: (n, D) the
    atoms after it (element b at the same sites), or ``None`` for ``pool[target_index]``;
    pool: (M, D) candidate atoms (should contain the targets, may contain decoys and the
    sources); target_index: (n,) row in ``pool`` of each pair's true target. vector: the offset
    v, (D,) for all pairs or (n, D) per pair, e.g. :func:`substitution_vector` fitted on other
    structures; if ``None`` it is estimated leave-one-out from the pairs,
    ``v_i = mean_{j != i}(target_j - source_j)``, so no pair sees its own answer (needs n >= 2).
    ks: the top-k cut-offs to report. metric: ``euclidean`` or ``cosine`` ranking.
    """
    check_metric(metric, ("euclidean", "cosine"))
    src = as_matrix(source, "source")
    pl = as_matrix(pool, "pool")
    same_cols(src, pl, "source", "pool")
    idx = as_labels(target_index, "target_index", src.shape[0])
    if idx.min() < 0 or idx.max() >= pl.shape[0]:
        raise InputError(f"target_index (shape {idx.shape}) must index pool rows "
                         f"0..{pl.shape[0] - 1}, got {idx.min()}..{idx.max()}")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise InputError(f"ks must be positive integers, got {ks!r}")
    n = src.shape[0]
    tgt = pl[idx] if target is None else as_matrix(target, "target")
    same_rows(src, tgt, "source", "target")
    same_cols(src, tgt, "source", "target")
    if vector is None:
        if n < 2:
            raise InputError("a leave-one-out vector needs at least 2 pairs; pass vector=")
        diff = tgt - src
        vectors = (diff.sum(axis=0) - diff) / (n - 1)
    else:
        v = np.asarray(vector, dtype=np.float64)
        if v.ndim == 1:
            v = v[None, :]
        v = as_matrix(v, "vector")
        same_cols(src, v, "source", "vector")
        if v.shape[0] not in (1, n):
            raise InputError(f"vector has shape {np.shape(vector)}: expected ({src.shape[1]},) "
                             f"or ({n}, {src.shape[1]})")
        vectors = np.broadcast_to(v, src.shape).copy()
    r = ranks(src + vectors, pl, idx, metric)
    r0 = ranks(src, pl, idx, metric)
    m = pl.shape[0]
    return ArithmeticResult(
        accuracy={k: float(np.mean(r < k)) for k in ks},
        baseline={k: float(np.mean(r0 < k)) for k in ks},
        ranks=r, baseline_ranks=r0, vectors=vectors,
        chance={k: min(1.0, k / m) for k in ks},
    )
