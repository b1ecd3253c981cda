"""Shared loading and metrics for the coverage study (issue 10). Not library code."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = HERE / "_cache"
A, B, B_SAME = "chgnet:0.3.0", "sevenn:7net-0", "chgnet:0.2.0"
MODELS = (A, B, B_SAME)
EVAL_SETS = ("mp20_val", "perov5_eval", "carbon24_eval")
SYMPREC = 1e-3
KNN = 10
N_BOOT = 1000


def slug(spec: str) -> str:
    return spec.replace(":", "_").replace("@", "_").replace("/", "_")


def git_commit() -> str:
    try:
        c = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True)
        dirty = subprocess.check_output(["git", "-C", str(ROOT), "status", "--porcelain",
                                         "research", "src"], text=True).strip()
        return c.strip() + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def provenance() -> dict:
    return {"commit": git_commit(), "command": " ".join(["python", *sys.argv]),
            "models": {"A": A, "B_cross_family": B, "B_same_family": B_SAME},
            "layers": {A: "atom_fea", B: "1_equivariant_gate", B_SAME: "atom_fea"},
            "torch_threads": 1}


@cache
def emb(name: str, model: str) -> dict:
    with np.load(CACHE / "emb" / name / f"{slug(model)}.npz") as z:
        return {k: z[k] for k in z.files}


@cache
def structures(name: str):
    import ase.io

    path = CACHE / ("corpus.extxyz.gz" if name == "corpus" else f"sets/{name}.extxyz.gz")
    return ase.io.read(path, ":")


@cache
def groups(name: str) -> np.ndarray:
    from platoscope.symmetry import symmetry_groups

    return symmetry_groups(structures(name), SYMPREC)


@cache
def corpus_valid() -> np.ndarray:
    return np.all([emb("corpus", m)["valid"] for m in MODELS], axis=0)


@cache
def corpus_source() -> np.ndarray:
    """(M,) source label per corpus atom."""
    s = structures("corpus")
    return np.repeat(np.array([a.info["source"] for a in s]), [len(a) for a in s])


def save_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=jsonable))


def jsonable(x, strict: bool = True):
    """``json.dumps(default=...)``: numpy scalars and arrays, tuples and sets as plain values;
    anything else a TypeError, or its ``str`` with ``strict=False``."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, set)):
        return list(x)
    if strict:
        raise TypeError(type(x))
    return str(x)


# ----------------------------------------------------------------------------- distances

def sqdist(x, y) -> np.ndarray:
    """Squared Euclidean distances between rows of x (n, K) and y (m, K), dense or sparse."""
    import scipy.sparse as sp

    if sp.issparse(x) or sp.issparse(y):
        x, y = sp.csr_matrix(x), sp.csr_matrix(y)
        nx = np.asarray(x.multiply(x).sum(axis=1)).ravel()
        ny = np.asarray(y.multiply(y).sum(axis=1)).ravel()
        dot = (x @ y.T).toarray()
    else:
        nx, ny = (x * x).sum(axis=1), (y * y).sum(axis=1)
        dot = x @ y.T
    return np.clip(nx[:, None] + ny[None, :] - 2 * dot, 0.0, None)


def cosdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xu = x / np.linalg.norm(x, axis=1, keepdims=True)
    yu = y / np.linalg.norm(y, axis=1, keepdims=True)
    return 1 - xu @ yu.T


def knn_sets(d: np.ndarray, k: int) -> np.ndarray:
    """(n, k) nearest other rows from a square distance matrix (ties broken by row order)."""
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def mknn_rows(da: np.ndarray, db: np.ndarray, k: int = KNN) -> np.ndarray:
    a, b = knn_sets(da, k), knn_sets(db, k)
    return (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1) / k


def boot_ci(x: np.ndarray, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    m = [x[rng.integers(0, x.size, x.size)].mean() for _ in range(N_BOOT)]
    return [float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))]


def ranks(d_qp: np.ndarray, members: list[np.ndarray]) -> np.ndarray:
    """Rank of the best hit per query: rows of d_qp (q, pool); members[i] are pool indices
    that count as a hit for query i. Ties count in favour of the hit."""
    best = np.array([d_qp[i, m].min() for i, m in enumerate(members)])
    return (d_qp < best[:, None]).sum(axis=1)


class EvalSet:
    """Evaluation atoms of one set: numbers, structure ids, symmetry classes, queries."""

    def __init__(self, name: str):
        self.name = name
        e = emb(name, A)
        self.numbers = e["numbers"].astype(np.int64)
        self.sidx = e["structure_index"].astype(np.int64)
        self.groups = groups(name)
        _, first, inv = np.unique(self.groups, return_index=True, return_inverse=True)
        order = np.argsort(first)
        self.reps = first[order]  # one query per class, in atom order
        cls_of_rep = np.arange(first.size)[order]
        self.members = [np.flatnonzero(inv == c) for c in cls_of_rep]
        self.n = self.numbers.size
        for m in MODELS:
            if not emb(name, m)["valid"].all():
                raise ValueError(f"{name}: {m} refused some structures")

    def raw(self, model: str) -> np.ndarray:
        return emb(self.name, model)["embeddings"].astype(np.float64)


def baselines(es: EvalSet) -> dict:
    from platoscope.analysis import retrieval_chance

    sys.path.insert(0, str(HERE))
    from elementwise import element_structure_baseline

    out = {"n_atoms": es.n, "n_queries": int(es.reps.size),
           "n_structures": int(np.unique(es.sidx).size),
           "chance_top1": retrieval_chance(es.n, 1, es.groups),
           "chance_top5": retrieval_chance(es.n, 5, es.groups),
           "elem_struct_top1": element_structure_baseline(es.numbers, es.sidx, es.groups, 1),
           "elem_struct_top5": element_structure_baseline(es.numbers, es.sidx, es.groups, 5),
           "site_chance_top1": element_structure_baseline(es.numbers, es.sidx, es.groups, 1,
                                                          site_resolved=True)}
    return out


def retrieval(es: EvalSet, xa, xb) -> dict:
    """A -> B retrieval (pool = all atoms of B) and site-resolved top-1."""
    d = sqdist(xa[es.reps] if not hasattr(xa, "tocsr") else xa.tocsr()[es.reps], xb)
    r = ranks(d, es.members)
    site_hits = []
    for qi, q in enumerate(es.reps):
        pool = np.flatnonzero((es.numbers == es.numbers[q]) & (es.sidx == es.sidx[q]))
        if np.unique(es.groups[pool]).size < 2:
            continue
        best = d[qi, es.members[qi]].min()
        site_hits.append((d[qi, pool] < best).sum() == 0)
    return {"top1": float(np.mean(r < 1)), "top5": float(np.mean(r < 5)),
            "site_top1": float(np.mean(site_hits)) if site_hits else float("nan"),
            "rank": r}


@cache
def _raw_mknn_rows(name: str, a: str, b: str) -> np.ndarray:
    es = EvalSet(name)
    ra, rb = es.raw(a)[es.reps], es.raw(b)[es.reps]
    return mknn_rows(cosdist(ra, ra), cosdist(rb, rb))


def mknn(es: EvalSet, xa, xb, raw_pair: tuple[str, str] | None = None) -> dict:
    """Mutual kNN@10 over one row per class: projected (Euclidean), raw (cosine)."""
    sel = es.reps
    pa = xa.tocsr()[sel] if hasattr(xa, "tocsr") else xa[sel]
    pb = xb.tocsr()[sel] if hasattr(xb, "tocsr") else xb[sel]
    rows = mknn_rows(sqdist(pa, pa), sqdist(pb, pb))
    out = {"mknn": float(rows.mean()), "mknn_ci95": boot_ci(rows)}
    if raw_pair is not None:
        raw_rows = _raw_mknn_rows(es.name, *raw_pair)
        out.update({"raw_mknn": float(raw_rows.mean()), "raw_mknn_ci95": boot_ci(raw_rows),
                    "ratio": float(rows.mean() / raw_rows.mean())})
        rng = np.random.default_rng(1)
        rat = []
        for _ in range(N_BOOT):
            i = rng.integers(0, rows.size, rows.size)
            rat.append(rows[i].mean() / raw_rows[i].mean())
        out["ratio_ci95"] = [float(np.percentile(rat, 2.5)), float(np.percentile(rat, 97.5))]
    return out
