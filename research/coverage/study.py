#!/usr/bin/env python
"""Coverage study (issue 10): shipped anchors vs union corpus vs per-element projection.

Needs build_corpus.py and embed.py to have run. Stages (``--stage``):

* ``grid``: every configuration on every evaluation set (cross-family A -> B retrieval, mkNN,
  same-family top-5) -> ``results/coverage_grid.json``;
* ``choose``: picks the per-element configuration on split 1 (MP-20 val + Perov-5 eval half)
  and reports it on split 2 (Carbon-24 eval half), and the reverse ->
  ``results/coverage_selection.json``.

    PYTHONPATH=src python research/coverage/study.py --stage grid
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    B_SAME,
    CACHE,
    EVAL_SETS,
    ROOT,
    A,
    B,
    EvalSet,
    baselines,
    corpus_source,
    corpus_valid,
    emb,
    mknn,
    provenance,
    retrieval,
    save_json,
    structures,
)
from elementwise import ElementwiseProjector, select_per_element

SPLIT1 = ("mp20_val", "perov5_eval")
SPLIT2 = ("carbon24_eval",)
K_GRID = (8, 32, 64, 128, 256)
TAU_GRID = (0.005, 0.01, 0.015, 0.03, 0.05)
METHODS = ("fps", "direct")


# ----------------------------------------------------------------------------- anchors

@cache
def corpus_rows(source_prefix: str | None = None) -> np.ndarray:
    """Corpus rows valid in every model (optionally only sources starting with a prefix)."""
    ok = corpus_valid()
    if source_prefix is not None:
        ok = ok & np.char.startswith(corpus_source().astype(str), source_prefix)
    return np.flatnonzero(ok)


@cache
def shipped_rows() -> np.ndarray:
    """Corpus rows of the shipped default anchors (MP-20 train atoms), in anchor order."""
    from platoscope.anchors import AnchorSet

    aset = AnchorSet.default()
    s = structures("corpus")
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in s])])

    def key(a):
        return (np.asarray(a.numbers, np.int64).tobytes()
                + np.round(a.cell.array, 3).astype(np.float64).tobytes())

    index: dict[bytes, list[int]] = {}
    for i, a in enumerate(s):
        if a.info["source"] == "mp20_train":
            index.setdefault(key(a), []).append(i)

    def same(a, b) -> bool:  # equal up to lattice translations of single atoms (wrapping)
        d = a.get_scaled_positions(wrap=False) - b.get_scaled_positions(wrap=False)
        return bool(np.abs(d - np.round(d)).max() < 1e-4)

    rows = []
    for st, at in aset.pairs:
        t = aset.structures[st]
        hit = [i for i in index.get(key(t), []) if same(s[i], t)]
        if not hit:
            raise RuntimeError("a shipped anchor structure is not in the corpus' MP-20 train")
        rows.append(offsets[hit[0]] + at)
    rows = np.asarray(rows)
    if not corpus_valid()[rows].all():
        raise RuntimeError("a shipped anchor atom was refused by a model")
    return rows


def model_emb(name: str, model: str) -> np.ndarray:
    return emb(name, model)["embeddings"].astype(np.float64)


@cache
def per_element_selection(k: int, method: str, prefix: str | None = None,
                          global_k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Anchor rows (corpus rows) and global-block positions, chosen on model A's features;
    cached on disk under _cache/sel/ (keyed by the corpus embedding's data hash)."""
    rows = corpus_rows(prefix)
    dhash = str(emb("corpus", A)["data_hash"])[:12]
    path = CACHE / "sel" / f"{dhash}_{prefix}_{method}_k{k}_g{global_k}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["rows"], f["gi"]
    x = model_emb("corpus", A)[rows]
    z = emb("corpus", A)["numbers"].astype(np.int64)[rows]
    t0 = time.perf_counter()
    sel, gi = select_per_element(x, z, k, method=method, global_k=global_k)
    print(f"  selection K/elem={k} {method} prefix={prefix}: {sel.size} anchors "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, rows=rows[sel], gi=gi)
    return rows[sel], gi


@cache
def union_rows(k: int = 3000) -> np.ndarray:
    from platoscope.selection import select_anchors

    rows = corpus_rows()
    dhash = str(emb("corpus", A)["data_hash"])[:12]
    path = CACHE / "sel" / f"{dhash}_union_fps_k{k}.npy"
    if path.exists():
        return np.load(path)
    x = model_emb("corpus", A)[rows]
    z = emb("corpus", A)["numbers"].astype(np.int64)[rows]
    res = select_anchors(x, k, method="fps", per_element=z, random_state=0)
    out = rows[np.asarray(res.indices)]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


# ----------------------------------------------------------------------------- coordinates

def dense_coords(rows: np.ndarray, name: str, model: str, tau: float = 0.015) -> np.ndarray:
    from platoscope.projection import Projector

    p = Projector("shared", tau=tau).fit(model_emb("corpus", model)[rows])
    return p.transform(model_emb(name, model))


def elem_projector(rows, gi, model, tau, global_k=0, top_k=None, global_tau=None):
    z = emb("corpus", A)["numbers"].astype(np.int64)[rows]
    p = ElementwiseProjector(tau=tau, global_k=global_k, top_k=top_k, on_missing="flag",
                             global_tau=global_tau)
    return p.fit(model_emb("corpus", model)[rows], z, global_index=gi if global_k else None)


def elem_coords(rows, gi, name, model, tau, global_k=0, w=0.0, top_k=None, global_tau=None):
    p = elem_projector(rows, gi, model, tau, global_k, top_k, global_tau)
    r = p.transform(model_emb(name, model), emb(name, model)["numbers"].astype(np.int64))
    x = r.to_csr()
    if global_k and w > 0:
        x = sp.hstack([x, sp.csr_matrix(np.sqrt(w) * r.global_block)]).tocsr()
    return x, r


# ----------------------------------------------------------------------------- evaluation

def evaluate(es: EvalSet, coords, same_family: bool = True, with_mknn: bool = True) -> dict:
    """coords(model) -> (N, K) coordinates of es for that model."""
    xa, xb = coords(A), coords(B)
    r = retrieval(es, xa, xb)
    out = {"top1": r["top1"], "top5": r["top5"], "site_top1": r["site_top1"]}
    if with_mknn:
        out.update(mknn(es, xa, xb, raw_pair=(A, B)))
    if same_family:
        rs = retrieval(es, xa, coords(B_SAME))
        out["same_family_top1"], out["same_family_top5"] = rs["top1"], rs["top5"]
    return out


def stage_select(args) -> dict:
    """Precompute every anchor selection (needs only model A's corpus embeddings)."""
    union_rows(3000)
    per_element_selection(64, "fps", "mp20_train")
    for method in METHODS:
        for k in K_GRID:
            if method == "direct" and k > 128:
                continue
            try:
                per_element_selection(k, method)
            except Exception as err:
                print(f"  {method} K={k} failed: {err}", flush=True)
    for kg in (64, 128, 256, 512):
        per_element_selection(64, "fps", None, global_k=kg)
    return {}


def stage_grid(args) -> dict:
    sets = {n: EvalSet(n) for n in EVAL_SETS}
    out = {"provenance": provenance(), "baselines": {n: baselines(s) for n, s in sets.items()},
           "raw": {}, "configs": []}
    for n, s in sets.items():
        out["raw"][n] = mknn(s, s.raw(A), s.raw(B), raw_pair=None)
        print(n, out["baselines"][n], flush=True)

    def run(label, params, coords_for_set, **kw):
        t0 = time.perf_counter()
        res = {}
        for n, s in sets.items():
            res[n] = evaluate(s, lambda m, n=n: coords_for_set(n, m), **kw)
        out["configs"].append({"label": label, **params, "results": res})
        print(f"{label} ({time.perf_counter() - t0:.0f} s): " + "; ".join(
            f"{n} top1/5 {v['top1']:.3f}/{v['top5']:.3f} mkNN {v.get('mknn', np.nan):.3f}/"
            f"{v.get('raw_mknn', np.nan):.3f} same5 {v.get('same_family_top5', np.nan):.3f}"
            for n, v in res.items()), flush=True)
        save_json(args.out, out)

    grid = [(m, k) for m in args.methods for k in args.ks
            if not (m == "direct" and k > 256)]
    if args.only_per_element:
        _per_element_grid(run, grid, args.taus)
        return out
    ship = shipped_rows()
    run("shipped shared (K=3000 DIRECT on MP-20 train, global centring)",
        {"kind": "shipped", "k": int(ship.size), "tau": 0.015},
        lambda n, m: dense_coords(ship, n, m))
    uni = union_rows(3000)
    run("union corpus, global (K=3000 FPS+per-element cover, one centring)",
        {"kind": "union_global", "k": 3000, "tau": 0.015},
        lambda n, m: dense_coords(uni, n, m))
    # per element, anchors from MP-20 train only (coverage of the shipped source)
    for k in (64,):
        rows, gi = per_element_selection(k, "fps", "mp20_train")
        run(f"per element, MP-20 train only, K/elem<={k} fps, tau 0.015",
            {"kind": "per_element_mp20", "k_per_element": k, "method": "fps", "tau": 0.015,
             "n_anchors": int(rows.size)},
            lambda n, m, rows=rows, gi=gi: elem_coords(rows, gi, n, m, 0.015)[0])
    _per_element_grid(run, grid, args.taus)
    return out


def _per_element_grid(run, grid, taus) -> None:
    for method, k in grid:
        try:
            rows, gi = per_element_selection(k, method)
        except Exception as err:  # DIRECT can fail on tiny/degenerate element sets
            print(f"  {method} K={k} failed: {err}", flush=True)
            continue
        for tau in taus:
            run(f"per element, union corpus, K/elem<={k} {method}, tau {tau:g}",
                {"kind": "per_element", "k_per_element": k, "method": method, "tau": tau,
                 "n_anchors": int(rows.size)},
                lambda n, m, rows=rows, gi=gi, tau=tau: elem_coords(rows, gi, n, m, tau)[0],
                with_mknn=True)


def score(res: dict, names) -> float:
    return float(np.mean([res[n]["top5"] for n in names]))


def stage_choose(args) -> dict:
    import json

    cands = [c for g in args.grid for c in json.loads(g.read_text())["configs"]
             if c["kind"] == "per_element"]
    out = {"provenance": provenance(), "grid": [str(g.relative_to(ROOT)) for g in args.grid],
           "criterion": "mean cross-family top-5 over the selection split's sets "
                        "(ties: fewer anchors)", "choices": {}}
    for sel, rep in ((SPLIT1, SPLIT2), (SPLIT2, SPLIT1)):
        best = max(cands, key=lambda c: (round(score(c["results"], sel), 3), -c["n_anchors"]))
        out["choices"][f"select_on={'+'.join(sel)}"] = {
            "chosen": {k: best[k] for k in ("label", "k_per_element", "method", "tau",
                                            "n_anchors")},
            "selection_score": score(best["results"], sel),
            "reported_on": {n: best["results"][n] for n in rep}}
    save_json(args.out, out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["select", "grid", "choose"], required=True)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--grid", type=Path, nargs="+",
                   default=[ROOT / "results" / "coverage_grid.json"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--ks", nargs="+", type=int, default=list(K_GRID))
    p.add_argument("--taus", nargs="+", type=float, default=list(TAU_GRID))
    p.add_argument("--only-per-element", action="store_true",
                   help="skip the shipped / union / MP-20-only reference configurations")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if a.out is None:
        a.out = ROOT / "results" / {"select": "none", "grid": "coverage_grid.json",
                                    "choose": "coverage_selection.json"}[a.stage]
    {"select": stage_select, "grid": stage_grid, "choose": stage_choose}[a.stage](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
