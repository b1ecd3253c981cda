"""Does a cross-element block lift projected mutual k-NN@10 to 0.95 x raw (issue 10)?

The shipped ``element`` projection puts atoms of different elements at distance sqrt(2): a
query whose element has <= 10 rows in the pool gets tied cross-element neighbours, the main
loss on MP-20 val (eligible rows 1.10 x raw, the others 0.68 x). Tried here on the evaluation
sets of the coverage study (``embed_eval.py``; no choice is made, every setting is reported on
all three sets): distances d^2 = (1 - w^2) d_element^2 + w^2 d_global^2, where the global block
projects on all default anchors centred on their common mean, sqrt(softmax(cos / tau)) kept to
its 32 largest entries (what a stored block could afford), tau in {0.015, 0.05}, w^2 in {0.02,
0.1, 0.3}. Ties broken by independent random orders (``default_set.mknn_random_ties``).

``linear`` (added later): the paper's linear kernel as the global block, c_k = cos(x - mu,
a_k - mu) with mu the mean of all anchors (one global centring), the vector c L2-normalised,
dense, no softmax; (a) over every anchor valid in both models (~38k dims, not storable; its
Gram matrix is accumulated over anchor chunks so no (n, K) matrix is held) and (b) over fixed
subsets of R in {64, 256, 1024} of those anchors, chosen from the anchor list alone (never from
evaluation results): ``stride`` (every K/R-th anchor in the default set's order) and
``balanced`` (round robin over elements in order of Z, each element's anchors in set order;
at R = 64 only the 64 lowest-Z elements get one), stored as float32 or float16 (R * 4 or
R * 2 bytes per atom). w^2 in {1e-4, 1e-3, 1e-2}, and its limit w^2 -> 0 (``w2=0+``: order by
the element distance, then by the global one; ``mknn_lex``). Each setting: mutual k-NN, ratio to raw and
its paired bootstrap 95 % CI (rows resampled, 1000 draws, as ``common.mknn``).
Result: results/coverage_global_block.json; docs/shared_space.md says what it showed.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/coverage/global_block.py
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import A, B, cosdist, emb, groups, sqdist  # noqa: E402
from default_set import mknn_random_ties  # noqa: E402

OUT = HERE.parents[1] / "results" / "coverage_global_block.json"
SETS = ("mp20_val", "perov5_eval", "carbon24_eval")
TAUS = (0.015, 0.05)
W2 = (0.02, 0.1, 0.3)
TOP = 32
LIN_W2 = (1e-4, 1e-3, 1e-2)
LIN_R = (64, 256, 1024)
LIN_DTYPES = {"float32": np.float32, "float16": np.float16}
CHUNK = 2048
LEX_DECIMALS = 13
N_BOOT = 1000


def global_block(projector, x: np.ndarray, tau: float, top: int = TOP) -> np.ndarray:
    """(n, K) rows: sqrt(softmax(cos / tau)) over all anchors with one global centring, top
    entries kept and renormalised."""
    an = projector.anchors_[projector.valid_]
    mu = an.mean(axis=0)
    a = an - mu
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    q = x - mu
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c = q @ a.T / tau
    c -= c.max(axis=1, keepdims=True)
    z = np.sqrt(np.exp(c) / np.exp(c).sum(axis=1, keepdims=True))
    idx = np.argpartition(-z, top, axis=1)[:, :top]
    out = np.zeros_like(z)
    np.put_along_axis(out, idx, np.take_along_axis(z, idx, axis=1), axis=1)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _centred_units(projector, x: np.ndarray):
    """Mean of all valid anchors of the model, and the unit centred queries."""
    an = projector.anchors_[projector.valid_].astype(np.float64)
    mu = an.mean(axis=0)
    q = x - mu
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return mu, q


def linear_dense_sqdist(projector, x: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n, n) squared distances of the L2-normalised linear global rows over anchors ``cols``
    (indices into the anchor list), accumulated over chunks of CHUNK anchors."""
    mu, q = _centred_units(projector, x)
    g = np.zeros((x.shape[0], x.shape[0]))
    for s in range(0, cols.size, CHUNK):
        a = projector.anchors_[cols[s:s + CHUNK]].astype(np.float64) - mu
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        c = q @ a.T
        g += c @ c.T
    nrm = np.sqrt(np.diag(g))
    return np.clip(2.0 - 2.0 * g / np.outer(nrm, nrm), 0.0, None)


def linear_rows(projector, x: np.ndarray, cols: np.ndarray, dtype) -> np.ndarray:
    """(n, R) L2-normalised linear global rows over anchors ``cols``, cast to the storage
    dtype and back to float64 (what a stored block would give)."""
    mu, q = _centred_units(projector, x)
    a = projector.anchors_[cols].astype(np.float64) - mu
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    c = q @ a.T
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return c.astype(dtype).astype(np.float64)


def subset(cols: np.ndarray, numbers: np.ndarray, r: int, rule: str) -> np.ndarray:
    """R of the anchors ``cols`` (sorted), chosen from the anchor list alone."""
    if rule == "stride":
        return cols[(np.arange(r) * cols.size) // r]
    order = []
    per = [cols[numbers[cols] == z] for z in np.unique(numbers[cols])]
    i = 0
    while len(order) < r:
        order += [p[i] for p in per if i < p.size][: r - len(order)]
        i += 1
    return np.sort(np.array(order))


def mknn_lex(da, ga, db, gb, k: int = 10) -> np.ndarray:
    """The w^2 -> 0 limit of the mix: neighbours ordered by the element distance (rounded to
    LEX_DECIMALS: cross-element d^2 is 2 within ~1e-15 of rounding noise, while same-element
    rows with a tiny shared overlap sit at 2 - 1e-12 .. 2 - 1e-9, a real order kept), then by
    the global distance, then by independent random orders as ``mknn_random_ties``."""
    def knn(d, g, seed):
        d = np.round(d, LEX_DECIMALS)
        np.fill_diagonal(d, np.inf)
        key = np.random.default_rng(seed).random(d.shape)
        return np.lexsort((key, g, d), axis=1)[:, :k]

    a, b = knn(da, ga, 1), knn(db, gb, 2)
    return (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1) / k


def diagnostics(zr: np.ndarray, d: dict, key: str, k: int = 10) -> dict:
    """Per model: how often the element block ties the k-th and (k+1)-th neighbour (within
    1e-12), how far cross-element d^2 is from 2, and the median same-element d^2 of one linear
    block (``key``)."""
    same = zr[:, None] == zr[None, :]
    off = ~np.eye(zr.size, dtype=bool)
    out: dict = {"linear_block": key}
    for m, (de, dg) in d.items():
        s = np.sort(np.where(off, de, np.inf), axis=1)
        out[m] = {"tie_k_k1_fraction": float(np.mean(s[:, k] - s[:, k - 1] < 1e-12)),
                  "cross_element_abs_d2_minus_2_max": (float(np.abs(de[~same] - 2).max())
                                                       if (~same).any() else None),
                  "linear_same_element_median_d2": float(np.median(dg[same & off]))}
    return out


def ratio_ci(rows: np.ndarray, raw: np.ndarray, seed: int = 1) -> list[float]:
    rng = np.random.default_rng(seed)
    rat = []
    for _ in range(N_BOOT):
        i = rng.integers(0, rows.size, rows.size)
        rat.append(rows[i].mean() / raw[i].mean())
    return [float(np.percentile(rat, 2.5)), float(np.percentile(rat, 97.5))]


def main() -> dict:
    from platoscope import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.coords import dense_rows
    from platoscope.provenance import invocation
    from platoscope.reference import default_bank

    warnings.simplefilter("ignore")
    anchors = AnchorSet.default()
    proj = {m: default_bank(load_backend(m), anchors).projector for m in (A, B)}
    out: dict = {"invocation": invocation(), "pair": [A, B], "k": 10, "sets": {}}
    both = np.flatnonzero(proj[A].valid_ & proj[B].valid_)
    anum = np.asarray(anchors.numbers)
    subsets = {f"{rule},R={r}": subset(both, anum, r, rule)
               for rule in ("stride", "balanced") for r in LIN_R}
    out["linear_setup"] = {
        "kernel": "c_k = cos(x - mu, a_k - mu), mu = mean of the model's valid anchors; c "
                  "L2-normalised; no softmax",
        "mix": "d^2 = (1 - w2) d_element^2 + w2 d_linear^2",
        "anchors_valid_in_both": int(both.size), "anchors_total": len(anchors),
        "w2": [*LIN_W2, "0+ (lexicographic: element distance rounded to 1e-13, then global)"],
        "bytes_per_atom_dense_float32": int(both.size) * 4,
        "subset_rules": {"stride": "every K/R-th anchor valid in both models, set order",
                         "balanced": "round robin over elements by Z, set order within one"},
        "subset_elements": {k: int(np.unique(anum[v]).size) for k, v in subsets.items()},
        "chosen_on": "nothing: every setting reported on all three sets, none selected",
        "bootstrap": f"paired, rows resampled, {N_BOOT} draws, seed 1"}
    for name in SETS:
        ea, eb = emb(name, A), emb(name, B)
        z = ea["numbers"].astype(np.int64)
        _, first = np.unique(groups(name), return_index=True)
        reps = np.sort(first)
        xa, xb = (e["embeddings"][reps].astype(np.float64) for e in (ea, eb))
        raw = mknn_random_ties(cosdist(xa, xa), cosdist(xb, xb))
        pa = dense_rows(proj[A].transform(xa, z[reps]))
        pb = dense_rows(proj[B].transform(xb, z[reps]))
        da, db = sqdist(pa, pa), sqdist(pb, pb)
        zr = z[reps]
        _, inv, cnt = np.unique(zr, return_inverse=True, return_counts=True)
        elig = cnt[inv.ravel()] > 10
        rows = mknn_random_ties(da, db)
        r = {"rows": int(reps.size), "eligible_fraction": float(elig.mean()),
             "raw": float(raw.mean()), "element": float(rows.mean()),
             "element_ratio": float(rows.mean() / raw.mean()),
             "element_ratio_eligible": float(rows[elig].mean() / raw[elig].mean()),
             "element_ratio_not_eligible": (float(rows[~elig].mean() / raw[~elig].mean())
                                            if (~elig).any() else None), "global": {}}
        for tau in TAUS:
            ga, gb = global_block(proj[A], xa, tau), global_block(proj[B], xb, tau)
            ga_d, gb_d = sqdist(ga, ga), sqdist(gb, gb)
            for w2 in W2:
                m = mknn_random_ties((1 - w2) * da + w2 * ga_d, (1 - w2) * db + w2 * gb_d)
                r["global"][f"tau={tau},w2={w2}"] = {"mknn": float(m.mean()),
                                                     "ratio": float(m.mean() / raw.mean())}
        r["element_ratio_ci95"] = ratio_ci(rows, raw)
        zero = np.zeros_like(da)
        rr = mknn_lex(da, zero, db, zero)
        r["element_rounded_ratio"] = float(rr.mean() / raw.mean())  # ties as in w2=0+
        lin: dict = {}
        dense = (linear_dense_sqdist(proj[A], xa, both), linear_dense_sqdist(proj[B], xb, both))
        settings = [("dense", None, dense)]
        for key, cols in subsets.items():
            for dt, t in LIN_DTYPES.items():
                ga, gb = linear_rows(proj[A], xa, cols, t), linear_rows(proj[B], xb, cols, t)
                settings.append((f"{key},{dt}", cols.size * np.dtype(t).itemsize,
                                 (sqdist(ga, ga), sqdist(gb, gb))))
        key, _, (ga_d, gb_d) = next(t for t in settings if t[0] == "stride,R=1024,float32")
        r["diagnostics"] = diagnostics(zr, {A: (da, ga_d), B: (db, gb_d)}, key)
        for key, nbytes, (ga_d, gb_d) in settings:
            for w2 in (*LIN_W2, "0+"):
                if w2 == "0+":
                    m = mknn_lex(da, ga_d, db, gb_d)
                else:
                    m = mknn_random_ties((1 - w2) * da + w2 * ga_d, (1 - w2) * db + w2 * gb_d)
                lin[f"{key},w2={w2}"] = {
                    "mknn": float(m.mean()), "ratio": float(m.mean() / raw.mean()),
                    "ratio_ci95": ratio_ci(m, raw),
                    "ratio_not_eligible": (float(m[~elig].mean() / raw[~elig].mean())
                                           if (~elig).any() else None),
                    "bytes_per_atom": nbytes if nbytes is not None else int(both.size) * 4}
        r["linear"] = lin
        out["sets"][name] = r
        print(name, json.dumps(r), flush=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
