"""Portable per-atom coordinate files: what ``platoscope embed`` writes and ``compare`` reads.

Projected coordinates share K axes across models, so a file written in one environment
(say SevenNet) compares with one written in another (MACE + CHGNet) as if both came from one
process. Each file records the model's provenance, the anchor-set hash and the hash of the
structures whose atoms it holds; :func:`check_comparable` refuses files made with different
anchor sets or different atoms.

Layout (HDF5): coordinates either ``dense`` (dataset ``platonic`` (M, K) float64) or ``topk``
(root attribute ``platonic_layout``): ``platonic_indices`` (M, k) anchor columns, uint16 with
65535 as padding when the K + R columns fit (else int32, gzip, -1 as padding; read back as int32
with -1 either way, :func:`read_indices`), ``platonic_values`` (M, k) float32 and
``platonic_residual`` (M,) float32, the L2 norm of what was dropped; a projection with a global
block (root attribute ``n_global`` = R) adds ``platonic_global`` (M, R) float16, columns
K..K+R-1 of every row, stored whole (its rounding is counted in the residual). Softmax-kernel
coordinates (unit rows; ``embed`` writes them ``topk`` with :data:`TOP_K` entries) are stored
sparse and read back with each row's kept entries rescaled to unit norm (:func:`topk_coords`);
each loaded row then lies within ``residual = sqrt(2) * platonic_residual`` of the exact one, so
the distance between two loaded rows differs from the exact one by at most ``res_a + res_b +
SPARSE_FLOAT32_ERROR``. Also optional ``embeddings`` (M, D) float32, ``coverage`` (M,) (see
:mod:`platoscope.projection`), ``numbers`` (M,), ``structure_index`` (M,), ``atom_index`` (M,);
root attributes ``format``, ``provenance`` (JSON), ``anchor_set_hash``, ``data_hash``,
``n_anchors``.

In memory, coordinates are a dense ndarray or a ``scipy.sparse.csr_array`` (the element
projection's exact per-frame form, see :meth:`platoscope.projection.Projector.transform`); the
helpers below (``row_distances``, ``compact_columns``, ``pairwise_sq_distances``, ``top_k_rows``
...) are the one place that takes either form.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from platoscope.errors import (
    AnchorSetMismatchError,
    CorruptFileError,
    DataMismatchError,
    InputError,
)

FORMAT = "platoscope.coords/1"
TOP_K = 192
"""Entries per atom that ``embed`` stores of softmax-kernel coordinates (1.5 KB per atom)."""
SPARSE_FLOAT32_ERROR = 1e-6
"""Bound on the distance error from storing the kept entries as float32 (unit rows)."""
LAYOUTS = ("dense", "topk")
H5_COMPRESSION = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
"""Filters of the compressed datasets (the global block, int32 indices): gzip level 1 after
HDF5's byte shuffle, both built into every HDF5 reader. Same bytes read back as gzip level 4
without shuffle; faster to write and smaller (docs/distributed.md, "Throughput")."""
INDEX_PAD_U16 = np.iinfo(np.uint16).max
"""Padding of ``platonic_indices`` stored as uint16 (-1 in memory)."""


# -- one frame's (or one data set's) coordinates: dense ndarray or scipy.sparse CSR -----------
# The element projection gives a ``scipy.sparse.csr_array`` (N, K) per call (each atom's own
# element block, nothing dropped: Projector.transform); the others a dense ndarray. The helpers
# below take either form and never build the dense (N, K) array of a sparse input (except
# ``dense_rows``, which is asked to). Exactness: every helper computes on the same float64
# values as the dense path; columns that are zero in every row involved change no distance,
# inner product or mean and are skipped (``compact_columns``), so results agree with the dense
# path up to summation order (tests: within 1e-10 for distances of unit-norm rows).


def is_sparse(z: Any) -> bool:
    """Whether ``z`` is a scipy.sparse matrix or array."""
    return sp.issparse(z)


def as_coords(z: Any, name: str = "coordinates") -> Any:
    """``z`` as float64 (N, K) coordinates: a dense ndarray, or a ``csr_array`` for any sparse
    input (other sparse formats are converted, not densified)."""
    if sp.issparse(z):
        if z.ndim != 2:
            raise InputError(f"{name} must be 2-D (N, K), got shape {z.shape}")
        out = sp.csr_array(z)
        return out.astype(np.float64) if out.dtype != np.float64 else out
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D (N, K), got shape {arr.shape}")
    return arr


def nbytes(z: Any) -> int:
    """Bytes held by coordinates ``z``: the ndarray's buffer, or a sparse array's data,
    indices and index pointer."""
    if sp.issparse(z):
        z = sp.csr_array(z)
        return int(z.data.nbytes + z.indices.nbytes + z.indptr.nbytes)
    return int(np.asarray(z).nbytes)


def support(z: Any) -> np.ndarray:
    """(c,) sorted columns where some row of ``z`` is stored (sparse) or non-zero (dense)."""
    if sp.issparse(z):
        z = sp.csr_array(z)
        return np.unique(z.indices[:z.nnz]).astype(np.int64)
    return np.flatnonzero(np.any(np.asarray(z) != 0, axis=0))


def compact_columns(*zs: Any) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The inputs (each (n_i, K), dense or sparse) as dense float64 arrays restricted to the
    columns used by any of them, and those columns (None when every input is dense: returned
    unchanged). Euclidean distances, inner products, means and transport costs between rows
    of the compacted arrays equal those of the full ones: the dropped columns are zero in every
    row involved. A frame of the element projection compacts to (N, sum of its elements'
    block sizes)."""
    if not zs:
        raise InputError("compact_columns needs at least one coordinate array")
    zs = tuple(as_coords(z) for z in zs)
    k = zs[0].shape[1]
    for z in zs[1:]:
        if z.shape[1] != k:
            raise InputError(f"coordinates have K={k} and K={z.shape[1]}: not the same axes")
    if not any(sp.issparse(z) for z in zs):
        return list(zs), None
    cols = np.unique(np.concatenate([support(z) for z in zs]))
    return [z[:, cols].toarray() if sp.issparse(z) else z[:, cols] for z in zs], cols


def expand_columns(x: np.ndarray, cols: np.ndarray, n_cols: int) -> Any:
    """The inverse of :func:`compact_columns` for one array: dense (n, len(cols)) rows put back
    on their ``cols`` of ``n_cols`` columns, as a ``csr_array`` (zeros elsewhere)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(cols):
        raise InputError(f"rows of shape {x.shape} do not match {len(cols)} columns")
    c = sp.csr_array(x)
    return sp.csr_array((c.data, np.asarray(cols, dtype=np.int64)[c.indices], c.indptr),
                        shape=(x.shape[0], int(n_cols)))


def row_norms(z: Any) -> np.ndarray:
    """(N,) Euclidean norm of each row of ``z`` (dense or sparse)."""
    z = as_coords(z)
    if sp.issparse(z):
        return np.sqrt(np.asarray(z.multiply(z).sum(axis=1), dtype=np.float64).ravel())
    return np.linalg.norm(z, axis=1)


def row_distances(a: Any, b: Any) -> np.ndarray:
    """(N,) ``|a_i - b_i|`` between matching rows of two (N, K) coordinate arrays (dense or
    sparse, mixed allowed): the exact differences, summed over the columns either uses."""
    a, b = as_coords(a, "a"), as_coords(b, "b")
    if a.shape != b.shape:
        raise InputError(f"coordinates of shape {a.shape} and {b.shape} differ: the rows must "
                         "be the same atoms on the same axes")
    if sp.issparse(a) and sp.issparse(b):
        return row_norms(a - b)
    (x, y), _ = compact_columns(a, b)
    return np.linalg.norm(x - y, axis=1)


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest ``|a_ij - b_ij|`` of two coordinate arrays of one shape (dense or sparse)."""
    a, b = as_coords(a, "a"), as_coords(b, "b")
    if a.shape != b.shape:
        raise InputError(f"coordinates of shape {a.shape} and {b.shape} differ")
    if sp.issparse(a) and sp.issparse(b):
        d = (a - b).tocsr()
        return float(np.max(np.abs(d.data), initial=0.0))
    (x, y), _ = compact_columns(a, b)
    return float(np.max(np.abs(x - y), initial=0.0))


def mean_row(z: Any) -> np.ndarray:
    """(K,) mean of the rows of ``z`` (dense result; K floats)."""
    z = as_coords(z)
    return np.asarray(z.mean(axis=0), dtype=np.float64).ravel()


def pairwise_sq_distances(a: Any, b: Any) -> np.ndarray:
    """(n, m) squared Euclidean distances between the rows of ``a`` (n, K) and ``b`` (m, K),
    dense or sparse, on their compacted columns (:func:`compact_columns`);
    ``|x|^2 + |y|^2 - 2 x.y`` clipped at 0, as ``ot.dist`` and scikit-learn compute it."""
    (x, y), _ = compact_columns(a, b)
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    np.maximum(d2, 0.0, out=d2)
    return d2


def top_k_rows(z: Any, k: int, sq_norms: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` largest entries of each row of non-negative unit rows ``z`` (N, K), dense or
    scipy-sparse (read from the stored entries of each row, never densified).

    Returns indices (N, k) int32 (descending value; -1 where the row has fewer non-zeros),
    values (N, k) float32 and residual (N,) float32: the L2 norm of the dropped entries,
    ``sqrt(1 - sum(kept**2))``, an exact bound on each row's truncation error (``sq_norms``
    (N,): each row's squared norm in place of 1, for rows that are not unit).
    """
    if int(k) < 1:
        raise InputError(f"top-k must be >= 1, got {k!r}")
    if sp.issparse(z):
        idx, vals = _top_k_sparse(as_coords(z), int(k))
    else:
        idx, vals = _top_k_dense(z, int(k))
    return _kept_and_residual(idx, vals, sq_norms)


def _kept_and_residual(idx: np.ndarray, vals: np.ndarray, sq_norms: np.ndarray | None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx[vals <= 0] = -1
    vals[vals <= 0] = 0.0
    residual = np.sqrt(np.clip((1.0 if sq_norms is None else sq_norms)
                               - np.sum(vals ** 2, axis=1), 0.0, None))
    return idx, vals.astype(np.float32), residual.astype(np.float32)


def _top_k_dense(z: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise InputError(f"coordinates must be 2-D (N, K), got shape {z.shape}")
    k = min(k, z.shape[1])
    part = (np.argpartition(-z, k - 1, axis=1)[:, :k] if k < z.shape[1]
            else np.tile(np.arange(z.shape[1]), (z.shape[0], 1)))
    vals = np.take_along_axis(z, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    idx = np.take_along_axis(part, order, axis=1).astype(np.int32)
    return idx, np.take_along_axis(vals, order, axis=1)


def _top_k_sparse(z: Any, k: int, tail: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each CSR row from its stored entries, the last ``tail`` of each row left out
    (the global block's). Rows come in runs of consecutive rows with the same number of
    stored entries (the element projection: a frame's atoms of one element), each run one
    (rows, entries) view: a partial sort per row, no sort over all entries (lexsort over 1024
    atoms x ~1000 entries took ~0.7 ms per atom; this ~0.05). Many short runs (interleaved
    elements) are gathered by entry count instead."""
    z.sum_duplicates()
    n = z.shape[0]
    k = min(k, z.shape[1])
    counts = np.diff(z.indptr)
    idx = np.full((n, k), -1, dtype=np.int32)
    vals = np.zeros((n, k), dtype=np.float64)
    runs = equal_count_runs(counts)
    if runs is None:
        groups = [np.flatnonzero(counts == c) for c in np.unique(counts)]
    else:
        groups = [slice(a, b) for a, b, _ in runs]
    for rows in groups:
        if isinstance(rows, slice):
            m, c = rows.stop - rows.start, int(counts[rows.start])
            p0 = int(z.indptr[rows.start])
            d = z.data[p0:p0 + m * c].reshape(m, c)[:, :c - tail]
            ind = z.indices[p0:p0 + m * c].reshape(m, c)[:, :c - tail]
        else:
            c = int(counts[rows[0]])
            pos = z.indptr[rows][:, None] + np.arange(c - tail)  # (r, c) positions
            d, ind = z.data[pos], z.indices[pos]
        c -= tail
        if c <= 0:
            continue
        kk = min(k, c)
        # the kk largest, selected in place of the smallest c - kk (no negated copy of d)
        part = (np.argpartition(d, c - kk, axis=1)[:, c - kk:] if kk < c
                else np.broadcast_to(np.arange(c), d.shape))
        v = np.take_along_axis(d, part, axis=1)
        order = np.argsort(-v, axis=1, kind="stable")
        sel = np.take_along_axis(part, order, axis=1)
        vals[rows, :kk] = np.take_along_axis(v, order, axis=1)
        idx[rows, :kk] = np.take_along_axis(ind, sel, axis=1)
    return idx, vals


def _global_tail(z: Any, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The global block (N, R) of CSR coordinates (N, K + R) in the projector's layout (each
    row's R block entries stored last, in column order) and its positions (N, R) in
    ``z.data``, or None for another layout."""
    n, r = z.shape[0], z.shape[1] - k
    if r <= 0 or np.any(np.diff(z.indptr) < r):
        return None
    pos = z.indptr[1:, None] - r + np.arange(r)[None, :]
    if not np.array_equal(z.indices[pos], np.broadcast_to(np.arange(k, k + r), (n, r))):
        return None
    return z.data[pos], pos


def equal_count_runs(counts: np.ndarray) -> list[tuple[int, int, int]] | None:
    """Runs of consecutive CSR rows that store the same number of entries: ``(a, b, c)`` for
    rows a..b-1 with c entries each, whose entries are then one contiguous (b - a, c) block
    (a frame's atoms of one element under the element projection). None when the rows are
    too fragmented for a slice per run to pay (:func:`fragmented`): gather them instead."""
    counts = np.asarray(counts)
    breaks = np.flatnonzero(np.diff(counts)) + 1
    if fragmented(breaks.size + 1, counts.size):
        return None
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [counts.size]])
    return [(int(a), int(b), int(counts[a])) for a, b in zip(starts, ends, strict=True)
            if b > a]


def fragmented(n_runs: int, n_rows: int) -> bool:
    """Whether ``n_rows`` rows in ``n_runs`` runs are better copied by one fancy-indexed
    gather or scatter than by a slice copy per run (the Python loop costs more)."""
    return n_runs > max(8, n_rows // 16)


def row_slice(z: Any, a: int, b: int) -> Any:
    """Rows ``a:b`` of dense or CSR coordinates, sharing the parent's memory (for a CSR in
    canonical form: its data and indices; scipy's ``z[a:b]`` copies them, ~1.5 MB per 64-atom
    frame of the default anchor set, 35-250 ms per 64-frame ``monitor`` run). Read-only use:
    an in-place change shows in the parent; the slice keeps the parent's arrays alive."""
    if not (sp.issparse(z) and z.format == "csr" and z.has_canonical_format):
        return z[a:b]
    p0, p1 = int(z.indptr[a]), int(z.indptr[b])
    out = type(z)((b - a, z.shape[1]), dtype=z.dtype)  # empty; its arrays replaced below
    out.indptr = z.indptr[a:b + 1] - z.indptr[a]
    out.indices = z.indices[p0:p1]
    out.data = z.data[p0:p1]
    out.has_canonical_format = True  # the parent's rows: sorted, no duplicates
    return out


def topk_to_csr(indices: np.ndarray, values: np.ndarray, n_anchors: int) -> Any:
    """scipy.sparse.csr_matrix (N, K) float64 of stored top-k rows (padding dropped)."""
    from scipy.sparse import csr_matrix

    keep = indices >= 0
    rows = np.repeat(np.arange(indices.shape[0]), keep.sum(axis=1))
    return csr_matrix((values[keep].astype(np.float64), (rows, indices[keep])),
                      shape=(indices.shape[0], int(n_anchors)))


def dense_rows(z: Any, rows: Any = None) -> np.ndarray:
    """Rows of dense or scipy-sparse coordinates as a dense float64 array (the one place a
    sparse frame is densified: for dense file formats and a few rows on request)."""
    sel = z if rows is None else z[rows]
    return (np.asarray(sel.toarray(), dtype=np.float64) if hasattr(sel, "toarray")
            else np.asarray(sel, dtype=np.float64))


class CoordinateWriter:
    """Appends coordinates (and coverage) to an open HDF5 file in one layout.

    h: h5py.File; n_anchors: K; layout: ``dense`` or ``topk``; top_k: element-block entries
    kept per atom; n_global: R, the projection's global-block columns (K..K+R-1 of each row,
    :class:`platoscope.projection.Projector`), 0 for none. ``topk`` stores them whole as
    ``platonic_global`` (M, R) float16 (2 bytes each); their rounding error is added to the
    row's ``platonic_residual`` (columns disjoint from the dropped entries: the residual is
    ``sqrt(dropped^2 + rounding^2)``), so the stated distance bound still holds.
    """

    def __init__(self, h: Any, n_anchors: int, layout: str = "topk", top_k: int = TOP_K,
                 coverage: bool = True, n_global: int = 0):
        if layout not in LAYOUTS:
            raise InputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.k, self.layout, self.n = int(n_anchors), layout, 0
        self.u16 = False
        self.r = int(n_global)
        self.width = self.k + self.r
        self.top_k = min(int(top_k), self.k)
        h.attrs["platonic_layout"] = layout
        h.attrs["n_anchors"] = self.k
        h.attrs["n_global"] = self.r
        opts = H5_COMPRESSION
        if layout == "dense":
            w = self.width
            self.ds = {"platonic": h.create_dataset(
                "platonic", shape=(0, w), maxshape=(None, w), dtype=np.float64,
                chunks=(max(1, min(1024, 4096 // w + 1)), w), **opts)}
        else:
            kk = self.top_k
            # uint16 columns, not compressed, where they fit: 2 bytes each, as small as int32
            # after gzip in a quarter of the write time; float32 values gain little from gzip
            # (docs/distributed.md, "Throughput")
            self.u16 = self.width < INDEX_PAD_U16
            self.ds = {"platonic_indices": h.create_dataset(
                "platonic_indices", shape=(0, kk), maxshape=(None, kk),
                dtype=np.uint16 if self.u16 else np.int32,
                chunks=(max(1, 65536 // kk), kk), **({} if self.u16 else opts)),
                "platonic_values": h.create_dataset(
                "platonic_values", shape=(0, kk), maxshape=(None, kk), dtype=np.float32,
                chunks=(max(1, 65536 // kk), kk)),
                "platonic_residual": h.create_dataset(
                "platonic_residual", shape=(0,), maxshape=(None,), dtype=np.float32,
                chunks=(4096,))}
            if self.r:
                self.ds["platonic_global"] = h.create_dataset(
                    "platonic_global", shape=(0, self.r), maxshape=(None, self.r),
                    dtype=np.float16, chunks=(max(1, 65536 // self.r), self.r), **opts)
        if coverage:
            self.ds["coverage"] = h.create_dataset("coverage", shape=(0,), maxshape=(None,),
                                                   dtype=np.float64, chunks=(4096,))

    def append(self, z: Any, coverage: Any = None) -> None:
        """z: (m, K + R) coordinates, dense or scipy-sparse (the ``topk`` layout reads sparse
        rows directly; the ``dense`` layout writes them dense)."""
        z = as_coords(z)
        if z.shape[1] != self.width:
            raise InputError(f"coordinates have shape {z.shape}, the file holds "
                             f"{self.width} columns (K={self.k}"
                             + (f" + {self.r} global)" if self.r else ")"))
        vals = ({"platonic": dense_rows(z)} if self.layout == "dense"
                else topk_parts(z, self.k, self.top_k))
        if self.layout == "topk" and self.u16:
            idx = vals["platonic_indices"]
            vals["platonic_indices"] = np.where(idx < 0, INDEX_PAD_U16, idx).astype(np.uint16)
        if "coverage" in self.ds:
            vals["coverage"] = (np.full(z.shape[0], np.nan) if coverage is None
                                else np.asarray(coverage, dtype=np.float64))
        m = z.shape[0]
        for name, v in vals.items():
            ds = self.ds[name]
            ds.resize(self.n + m, axis=0)
            ds[self.n:self.n + m] = v
        self.n += m


def topk_parts(z: Any, n_anchors: int, top_k: int) -> dict[str, np.ndarray]:
    """The ``topk`` layout's datasets for unit rows ``z`` (N, K [+ R]): the ``top_k`` largest
    anchor entries (``platonic_indices`` int32, ``platonic_values`` float32), the global block
    whole (``platonic_global`` float16, when R > 0) and ``platonic_residual`` float32, the L2
    norm of what was dropped or rounded."""
    z = as_coords(z)
    if z.shape[1] == n_anchors:
        idx, v, r = top_k_rows(z, top_k)
        return {"platonic_indices": idx, "platonic_values": v, "platonic_residual": r}
    tail = None
    if sp.issparse(z):
        z.sum_duplicates()  # canonical rows: the block, if stored last, is found there
        tail = _global_tail(z, n_anchors)
    if tail is None:
        own, g = split_global(z, n_anchors)
        idx, v, dropped = top_k_rows(own, top_k, sq_norms=1.0 - np.einsum("ij,ij->i", g, g))
    elif int(top_k) < 1:
        raise InputError(f"top-k must be >= 1, got {top_k!r}")
    else:  # the projector's layout: top-k over each row's entries but its last R, in place
        g = tail[0]
        idx, v, dropped = _kept_and_residual(*_top_k_sparse(z, int(top_k), tail=g.shape[1]),
                                             1.0 - np.einsum("ij,ij->i", g, g))
    g16 = g.astype(np.float16)
    rounding = np.sum((g16.astype(np.float64) - g) ** 2, axis=1)
    return {"platonic_indices": idx, "platonic_values": v,
            "platonic_residual": np.sqrt(dropped.astype(np.float64) ** 2
                                         + rounding).astype(np.float32),
            "platonic_global": g16}


def read_indices(ds: Any) -> np.ndarray:
    """``platonic_indices`` of a ``topk`` file (an h5py dataset or array, uint16 or int32) as
    int32 with -1 as padding."""
    idx = np.asarray(ds[()])
    if idx.dtype == np.uint16:
        pad = idx == INDEX_PAD_U16
        idx = idx.astype(np.int32)
        idx[pad] = -1
    return idx.astype(np.int32, copy=False)


def topk_coords(indices: np.ndarray, values: np.ndarray, n_anchors: int,
                global_block: np.ndarray | None = None) -> Any:
    """Coordinates (N, K [+ R]) from the ``topk`` layout's datasets, as a ``csr_array``: each
    row's kept anchor entries **rescaled** so that the row (with its global block) has unit
    norm again, as the exact row had; then the global block (zeros kept).

    Why rescaled: read as they are, the kept entries of a row that lost mass r have norm
    sqrt(1 - r^2), so it sits closer to every other row by about r^2 and becomes a hub for
    nearest-neighbour queries, and atoms of other elements, exactly sqrt(2) apart before
    truncation, no longer are (on Perov-5, SevenNet-0, mean r 0.005, up to 0.4, that cost
    mutual k-NN a quarter of its value; docs/shared_space.md). The dropped mass is spread
    over the kept entries in proportion, which moves the row by at most its r: the distance
    from the exact row is at most ``sqrt(2) * r`` (plus float32 rounding)."""
    own = sp.csr_array(topk_to_csr(indices, values, n_anchors))
    g = None if global_block is None else np.asarray(global_block, dtype=np.float64)
    target = np.ones(own.shape[0]) if g is None else np.clip(
        1.0 - np.einsum("ij,ij->i", g, g), 0.0, None)
    kept = np.asarray(own.multiply(own).sum(axis=1), dtype=np.float64).ravel()
    scale = np.where(kept > 0, np.sqrt(target / np.where(kept > 0, kept, 1.0)), 1.0)
    if g is None:
        own.data *= np.repeat(scale, np.diff(own.indptr))
        return own
    from platoscope.projection import append_dense_columns

    return append_dense_columns(own, g, row_scale=scale)


def stored_rows(z: Any, n_anchors: int, top_k: int = TOP_K) -> tuple[Any, np.ndarray]:
    """What a ``topk`` file gives back for unit rows ``z``: the coordinates as
    :func:`topk_coords` reads them, and each row's bound on its distance from ``z``
    (``sqrt(2) * residual``, :attr:`AtomCoordinates.residual`)."""
    p = topk_parts(z, n_anchors, top_k)
    return (topk_coords(p["platonic_indices"], p["platonic_values"], n_anchors,
                        p.get("platonic_global")),
            np.sqrt(2.0) * p["platonic_residual"].astype(np.float64))


def split_global(z: Any, k: int) -> tuple[Any, np.ndarray]:
    """Coordinates (N, K + R) as their anchor columns (N, K) (same form as ``z``) and their
    global block (N, R) dense: what :class:`CoordinateWriter` stores apart."""
    z = as_coords(z)
    if not sp.issparse(z):
        return z[:, :k], np.ascontiguousarray(z[:, k:])
    z = sp.csr_array(z)
    z.sum_duplicates()
    tail = _global_tail(z, k)
    if tail is not None:  # the projector's layout: each row's R global entries last
        g, pos = tail
        n, r = g.shape
        keep = np.ones(z.indptr[-1], dtype=bool)
        keep[pos] = False
        indptr = z.indptr - r * np.arange(n + 1, dtype=z.indptr.dtype)
        return sp.csr_array((z.data[:z.indptr[-1]][keep], z.indices[:z.indptr[-1]][keep],
                             indptr), shape=(n, k)), g
    return z[:, :k], z[:, k:].toarray()


def layout_for(projector: Any) -> str:
    """``topk`` for softmax-kernel coordinates (unit, non-negative rows), else ``dense``."""
    return "topk" if getattr(projector, "kernel", None) == "softmax" else "dense"


@dataclass
class AtomCoordinates:
    """Coordinates of M atoms from one model; rows follow (structure_index, atom_index).

    platonic: (M, K [+ R]) dense array or scipy.sparse matrix (files in the ``topk`` layout
    load sparse, rows rescaled to unit norm; ``residual`` then holds each row's bound on its
    distance from the exact row); coverage: (M,) or None; n_global: R, the projection's
    global-block columns (the last R).
    """

    platonic: Any
    numbers: np.ndarray
    structure_index: np.ndarray
    atom_index: np.ndarray
    anchor_set_hash: str
    data_hash: str
    provenance: dict[str, Any] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    path: str | None = None
    coverage: np.ndarray | None = None
    residual: np.ndarray | None = None
    n_global: int = 0

    def __post_init__(self) -> None:
        cols, k = self.provenance.get("n_columns"), self.provenance.get("n_anchors")
        if not self.n_global and cols and k and int(cols) > int(k) \
                and self.platonic.shape[1] == int(cols):  # the calculator's rows, as given
            self.n_global = int(cols) - int(k)
        m = len(self.numbers)
        for name in ("platonic", "structure_index", "atom_index", "coverage", "residual"):
            v = getattr(self, name)
            if v is not None and v.shape[0] != m:
                raise InputError(f"{name} has {v.shape[0]} rows, numbers has {m}")
        if self.embeddings is not None and len(self.embeddings) != m:
            raise InputError(f"embeddings has {len(self.embeddings)} rows, numbers has {m}")

    @property
    def model(self) -> str:
        return str(self.provenance.get("model", "unknown"))

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def n_anchors(self) -> int:
        """K: the anchor columns (the coordinates' width less the global block)."""
        return int(self.platonic.shape[1]) - int(self.n_global)

    def save(self, path: str | os.PathLike, *, embeddings: bool = True,
             layout: str | None = None, top_k: int = TOP_K) -> Path:
        """Write the file; layout: ``dense``, ``topk`` or None (``topk`` if the coordinates
        are sparse or come from a softmax kernel, else ``dense``)."""
        import h5py

        if layout is None:
            layout = ("topk" if hasattr(self.platonic, "toarray")
                      or (self.provenance.get("projection_params") or {}).get("kernel")
                      == "softmax" else "dense")

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as h:
            h.attrs["format"] = FORMAT
            h.attrs["provenance"] = json.dumps(self.provenance, default=str)
            h.attrs["anchor_set_hash"] = self.anchor_set_hash
            h.attrs["data_hash"] = self.data_hash
            w = CoordinateWriter(h, self.n_anchors, layout, top_k,
                                 coverage=self.coverage is not None, n_global=self.n_global)
            for s in range(0, len(self), 4096):
                w.append(self.platonic[s:s + 4096],
                         None if self.coverage is None else self.coverage[s:s + 4096])
            h.create_dataset("numbers", data=np.asarray(self.numbers, dtype=np.int16))
            h.create_dataset("structure_index", data=np.asarray(self.structure_index, np.int32))
            h.create_dataset("atom_index", data=np.asarray(self.atom_index, np.int32))
            if embeddings and self.embeddings is not None:
                h.create_dataset("embeddings", data=np.asarray(self.embeddings, np.float32))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> AtomCoordinates:
        import h5py

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"coordinates file not found: {path}")
        try:
            with h5py.File(path, "r") as h:
                if h.attrs.get("format") != FORMAT:
                    raise CorruptFileError(f"{path}: not a platoscope coordinates file "
                                           f"(format {h.attrs.get('format')!r})")
                layout = str(h.attrs.get("platonic_layout", "dense"))
                n_global = int(h.attrs.get("n_global", 0))
                if layout == "topk":
                    platonic = topk_coords(read_indices(h["platonic_indices"]),
                                           h["platonic_values"][()],
                                           int(h.attrs["n_anchors"]),
                                           h["platonic_global"][()] if n_global else None)
                else:
                    platonic = h["platonic"][()]
                out = cls(
                    platonic=platonic,
                    coverage=h["coverage"][()] if "coverage" in h else None,
                    residual=(np.sqrt(2.0) * h["platonic_residual"][()].astype(np.float64)
                              if "platonic_residual" in h else None),
                    numbers=h["numbers"][()].astype(np.int64),
                    structure_index=h["structure_index"][()].astype(np.int64),
                    atom_index=h["atom_index"][()].astype(np.int64),
                    anchor_set_hash=str(h.attrs["anchor_set_hash"]),
                    data_hash=str(h.attrs["data_hash"]),
                    provenance=json.loads(h.attrs["provenance"]),
                    embeddings=h["embeddings"][()] if "embeddings" in h else None,
                    path=str(path),
                    n_global=n_global,
                )
        except CorruptFileError:
            raise
        except (OSError, KeyError, ValueError) as err:
            raise CorruptFileError(f"{path}: unreadable coordinates file ({err})") from err
        return out


def check_comparable(a: AtomCoordinates, b: AtomCoordinates) -> None:
    """Raise AnchorSetMismatchError unless ``a`` and ``b`` hold the same atoms on the same axes."""
    na, nb = a.path or a.model, b.path or b.model
    if a.anchor_set_hash != b.anchor_set_hash:
        raise AnchorSetMismatchError(
            f"{na} and {nb} were projected on different anchor sets "
            f"({a.anchor_set_hash[:12]} vs {b.anchor_set_hash[:12]}): their axes differ")
    if a.data_hash != b.data_hash or len(a) != len(b) or not np.array_equal(a.numbers, b.numbers):
        raise DataMismatchError(
            f"{na} ({len(a)} atoms, data {a.data_hash[:12]}) and {nb} ({len(b)} atoms, data "
            f"{b.data_hash[:12]}) do not hold the same atoms in the same order")
    pa, pb = (c.provenance.get("projection_params") for c in (a, b))
    keys = ("normalize", "kernel", "tau", "global_weight", "global_anchors")
    if pa and pb and {k: pa.get(k) or None for k in keys} != {
            k: pb.get(k) or None for k in keys}:
        raise AnchorSetMismatchError(
            f"{na} ({a.provenance.get('projection')} projection) and {nb} "
            f"({b.provenance.get('projection')} projection) were projected differently: the "
            "same anchors, but their coordinates do not mean the same thing; embed both with "
            "one --projection")
    if a.platonic.shape[1] != b.platonic.shape[1] or a.n_global != b.n_global:
        raise AnchorSetMismatchError(
            f"{na} has {a.platonic.shape[1]} coordinate columns ({a.n_global} global), {nb} "
            f"has {b.platonic.shape[1]} ({b.n_global} global)")


def embed_structures(calc: Any, structures: list, *, data_hash: str, batch_size: int = 16,
                     progress: bool = False, executor: Any = None) -> AtomCoordinates:
    """Coordinates of every atom of ``structures`` with a PlatonicCalculator's model and anchors.

    Rows are ordered structure by structure, atoms in file order. Uses the backend's batched
    embedding (no forces), then the calculator's projector. executor: a
    :class:`platoscope.distributed.Executor` to run the forward passes on (e.g. a Dask
    cluster); the first structure that fails raises, naming its file and frame.
    """
    if not structures:
        raise InputError("no structures to embed")
    if calc.projector is None:
        raise InputError("the calculator has no anchors: nothing to project on")
    if executor is not None:
        from platoscope.distributed import embed_list

        feats = embed_list(executor, list(structures), progress=progress)
    else:
        feats = calc.backend.embed(structures, batch_size=batch_size, progress=progress)
    emb = np.concatenate(feats)
    sizes = [len(f) for f in feats]
    numbers = np.concatenate([s.numbers for s in structures])
    z, coverage = calc.projector.transform_with_coverage(emb, numbers)
    return AtomCoordinates(
        platonic=z,
        coverage=coverage,
        numbers=numbers,
        structure_index=np.repeat(np.arange(len(structures)), sizes),
        atom_index=np.concatenate([np.arange(n) for n in sizes]),
        anchor_set_hash=calc.anchors.hash,
        data_hash=data_hash,
        provenance=calc.provenance(),
        embeddings=emb,
        n_global=calc.projector.n_global,
    )
