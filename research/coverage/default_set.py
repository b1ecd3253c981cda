#!/usr/bin/env python
"""Choose the shipped default anchor set of the ``element`` projection (issue 10), measured.

Everything runs on the cached embeddings (``_cache/emb/``, made by ``embed.py``); no model runs.
Anchor candidates are corpus atoms valid in every model (``build_corpus.py``); the mlearn test
files and the evaluation halves are not in the corpus. Selection methods (all deterministic):

* ``atom_random`` / ``atom_direct``: per element, up to ``cap`` atoms drawn uniformly / by DIRECT
  (CHGNet 0.3.0 features, element-centred) over the whole corpus; references: their anchors are
  spread over many structures, so many atoms must be embedded;
* ``struct``: structure-budgeted: (1) every element gets its smallest structures until it has
  ``floor`` candidate atoms (or all it has), (2) structures are added in the order of a seeded
  uniform draw of corpus atoms (a structure's chance grows with its size) while the total stays
  within ``budget`` atoms, (3) inside the chosen structures each element keeps at most ``cap``
  atoms (uniform draw; ``cap=0``: all);
* ``struct_quota``: as ``struct`` but step (2) fills fixed atom quotas per source group
  (MP-20 train, Perov-5 anchor half, Carbon-24 anchor half, mlearn training, generated);
  presets in :data:`QUOTAS`;
* ``struct_vote``: as ``struct`` but step (2) takes structures by the number of atom-level
  DIRECT anchors (cap 128 per element) they hold per atom, best first.

Stages: ``sweep`` (every configuration on split 1 and split 2 -> results/coverage_sweep.json),
``final`` (the chosen configuration and the old shipped ``shared`` set with every metric, CSLS,
same family, mkNN with bootstrap intervals -> results/coverage_final.json).

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/coverage/default_set.py --stage sweep
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    B_SAME,
    CACHE,
    EVAL_SETS,
    KNN,
    ROOT,
    A,
    B,
    EvalSet,
    _raw_mknn_rows,
    baselines,
    boot_ci,
    corpus_valid,
    emb,
    save_json,
)
from elementwise import ElementwiseProjector, _sqrt_softmax, _unit, select_per_element

SPLIT1 = ("mp20_val", "perov5_eval")
SPLIT2 = ("carbon24_eval",)
SEED = 0
FLOOR = 8
MAX_ATOMS = 12000
MAX_K = 8000
# the lead lifted the budget after the first sweep: the whole corpus may be embedded on first
# use and K may reach ~45k; "unconstrained" choices are made among the atom_* selections
MAX_K_UNCONSTRAINED = 45000
# struct_quota presets: atoms per source group (after the element cover, which counts in)
QUOTAS = {
    "mp20_heavy": {"mp20": 7000, "perov5": 1800, "carbon24": 1800, "mlearn": 300,
                   "generated": 1070},
    "mp20_all": {"mp20": 9100, "perov5": 1000, "carbon24": 1000, "mlearn": 100,
                 "generated": 770},
    "balanced": {"mp20": 4500, "perov5": 3000, "carbon24": 3000, "mlearn": 400,
                 "generated": 1070},
    "carbon_heavy": {"mp20": 4000, "perov5": 2500, "carbon24": 4500, "mlearn": 200,
                     "generated": 770},
    "no_generated": {"mp20": 6000, "perov5": 2500, "carbon24": 2500, "mlearn": 200,
                     "generated": 770},
}


def source_group(source: str) -> str:
    """mp20 / perov5 / carbon24 / mlearn / generated (prototypes, dcdft, defects, MD, ...)."""
    for g in ("mp20", "perov5", "carbon24", "mlearn"):
        if source.startswith(g):
            return g
    return "generated"


# ----------------------------------------------------------------------------- corpus meta

@cache
def meta() -> dict:
    """Per corpus atom: numbers, structure index, atom index, valid; per structure: source,
    source_id, size (from _cache/corpus_meta.npz, written once from corpus.extxyz.gz)."""
    path = CACHE / "corpus_meta.npz"
    if not path.exists():
        from common import structures

        s = structures("corpus")
        np.savez(path, struct_source=np.array([a.info["source"] for a in s]),
                 struct_source_id=np.array([str(a.info["source_id"]) for a in s]),
                 struct_size=np.array([len(a) for a in s]))
    e = emb("corpus", A)
    with np.load(path) as f:
        m = {k: f[k] for k in f.files}
    m.update(numbers=e["numbers"].astype(np.int64), sidx=e["structure_index"].astype(np.int64),
             aidx=e["atom_index"].astype(np.int64), valid=corpus_valid())
    bad = np.unique(m["sidx"][~m["valid"]])
    m["struct_ok"] = np.ones(m["struct_size"].size, bool)
    m["struct_ok"][bad] = False
    return m


def atoms_to_embed(rows: np.ndarray) -> tuple[int, int]:
    """(atoms in the structures holding these anchors, number of those structures)."""
    m = meta()
    st = np.unique(m["sidx"][rows])
    return int(m["struct_size"][st].sum()), int(st.size)


# ----------------------------------------------------------------------------- selection

def _cap_within(rows: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """At most cap rows per element (uniform draw seeded by seed and element); cap 0 = all."""
    if not cap:
        return np.sort(rows)
    z = meta()["numbers"][rows]
    out = []
    for el in np.unique(z):
        r = rows[z == el]
        if r.size > cap:
            r = np.random.default_rng([seed, int(el)]).choice(r, cap, replace=False)
        out.append(r)
    return np.sort(np.concatenate(out))


def _cover(floor: int, seed: int) -> tuple[set, int]:
    """Smallest valid structures per element (rarest element first) until each element has
    min(floor, its candidates) atoms in them. Returns (structure ids, atoms)."""
    m = meta()
    ok = m["valid"] & m["struct_ok"][m["sidx"]]
    z, s = m["numbers"][ok], m["sidx"][ok]
    cand = Counter(z.tolist())
    tie = np.random.default_rng(seed).random(m["struct_size"].size)
    chosen: set = set()
    have: Counter = Counter()
    for el, n in sorted(cand.items(), key=lambda t: (t[1], t[0])):
        need = min(floor, n)
        if have[el] >= need:
            continue
        sts = np.unique(s[z == el])
        for st in sts[np.lexsort((tie[sts], m["struct_size"][sts]))]:
            if st in chosen:
                continue
            chosen.add(int(st))
            have.update(m["numbers"][m["sidx"] == st].tolist())
            if have[el] >= need:
                break
    return chosen, int(m["struct_size"][list(chosen)].sum())


def select(method: str, cap: int, budget: int | str = MAX_ATOMS, seed: int = SEED,
           floor: int = FLOOR) -> np.ndarray:
    """Corpus rows of the anchors for one configuration (see module docstring); budget: atoms
    (``struct``, ``struct_vote``) or a :data:`QUOTAS` preset name (``struct_quota``)."""
    m = meta()
    ok_rows = np.flatnonzero(m["valid"] & m["struct_ok"][m["sidx"]])
    if method == "atom_random":
        return _cap_within(ok_rows, cap, seed)
    if method == "atom_direct":
        x = emb("corpus", A)["embeddings"].astype(np.float64)[ok_rows]
        path = CACHE / "sel" / f"default_direct_k{cap}.npy"
        if not path.exists():
            sel, _ = select_per_element(x, m["numbers"][ok_rows], cap, method="direct")
            np.save(path, ok_rows[sel])
        return np.load(path)
    if method not in ("struct", "struct_vote", "struct_quota"):
        raise ValueError(f"unknown method {method!r}")
    chosen, total = _cover(floor, seed)
    size = m["struct_size"]
    if method == "struct_quota":
        quota = QUOTAS[budget]
        group = np.array([source_group(x) for x in m["struct_source"]])
        used = Counter()
        for st in chosen:
            used[group[st]] += int(size[st])
        order = m["sidx"][np.random.default_rng(seed).permutation(ok_rows)]
        _, first = np.unique(order, return_index=True)
        for st in order[np.sort(first)]:
            g = group[st]
            if st in chosen or used[g] + size[st] > quota[g]:
                continue
            chosen.add(int(st))
            used[g] += int(size[st])
        rows = ok_rows[np.isin(m["sidx"][ok_rows], np.fromiter(chosen, int))]
        return _cap_within(rows, cap, seed)
    if method == "struct":
        order = m["sidx"][np.random.default_rng(seed).permutation(ok_rows)]
        _, first = np.unique(order, return_index=True)
        order = order[np.sort(first)]
    else:
        votes = np.bincount(m["sidx"][select("atom_direct", 128)], minlength=size.size)
        ok_st = np.flatnonzero(m["struct_ok"] & (votes > 0))
        order = ok_st[np.lexsort((ok_st, -votes[ok_st] / size[ok_st]))]
    for st in order:
        if st in chosen or total + size[st] > budget:
            continue
        chosen.add(int(st))
        total += int(size[st])
        if total >= budget:
            break
    rows = ok_rows[np.isin(m["sidx"][ok_rows], np.fromiter(chosen, int))]
    return _cap_within(rows, cap, seed)


# ----------------------------------------------------------------------------- projection

class ElementBlocks:
    """Dense per-element coordinates (the ``element`` projection: centring on the element's
    anchor mean, sqrt(softmax(cos / tau)), a lone anchor keeps its uncentred direction)."""

    def __init__(self, rows: np.ndarray, model: str, tau: float):
        m = meta()
        self.p = ElementwiseProjector(tau=tau, top_k=None).fit(
            emb("corpus", model)["embeddings"].astype(np.float64)[rows], m["numbers"][rows])
        self.tau = tau

    def __call__(self, x: np.ndarray, z: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        p = self.p
        out = {}
        for el in np.unique(z):
            i = np.searchsorted(p.elements_, el)
            if i >= p.elements_.size or p.elements_[i] != el:
                raise ValueError(f"element Z={el} has no anchors")
            rows = np.flatnonzero(z == el)
            cols = np.flatnonzero(p.anchor_numbers_ == el)
            u = _unit(x[rows] - p.means_[i]) if cols.size > 1 else _unit(x[rows])
            out[int(el)] = (rows, _sqrt_softmax(u @ p.unit_anchors_[cols].T, self.tau)[0])
        return out


def sims(ba: dict, bb: dict, qa: np.ndarray, n_a: int, n_b: int) -> np.ndarray:
    """Inner products (len(qa), n_b) of A's rows qa with every B row (0 across elements; every
    row has unit norm, so squared distance = 2 - 2 * sim)."""
    pos = np.full(n_a, -1)
    pos[qa] = np.arange(qa.size)
    s = np.zeros((qa.size, n_b))
    for el, (ra, xa) in ba.items():
        rb, xb = bb[el]
        keep = pos[ra] >= 0
        s[np.ix_(pos[ra[keep]], rb)] = xa[keep] @ xb.T
    return s


def rank_metrics(es: EvalSet, score: np.ndarray) -> dict:
    """top-1/top-5 (pool = all atoms) and site-resolved top-1 from scores (higher = closer),
    rows = es.reps; ties count as hits."""
    best = np.array([score[i, mm].max() for i, mm in enumerate(es.members)])
    r = (score > best[:, None]).sum(axis=1)
    site = []
    for qi, q in enumerate(es.reps):
        pool = np.flatnonzero((es.numbers == es.numbers[q]) & (es.sidx == es.sidx[q]))
        if np.unique(es.groups[pool]).size >= 2:
            site.append((score[qi, pool] > best[qi]).sum() == 0)
    return {"top1": float(np.mean(r < 1)), "top5": float(np.mean(r < 5)),
            "site_top1": float(np.mean(site)) if site else float("nan")}


def csls(s_qb: np.ndarray, s_ba_all: np.ndarray, s_qb_all: np.ndarray, k: int = KNN
         ) -> np.ndarray:
    """CSLS scores 2 s(q, p) - r_B(q) - r_A(p): r_B(q) mean of q's k largest similarities to B's
    pool, r_A(p) mean of p's k largest similarities to A's atoms (Conneau et al. 2018).
    s_qb: (q, n_b); s_ba_all: (n_b, n_a); s_qb_all: (q, n_b), the same as s_qb here."""
    r_b = np.sort(s_qb_all, axis=1)[:, -k:].mean(axis=1)
    r_a = np.sort(s_ba_all, axis=1)[:, -k:].mean(axis=1)
    return 2 * s_qb - r_b[:, None] - r_a[None, :]


def mknn_random_ties(da: np.ndarray, db: np.ndarray, k: int = KNN) -> np.ndarray:
    """Per-row mutual k-NN overlap with ties broken by independent random orders for the two
    spaces (seeded): tied neighbours (e.g. atoms of other elements, all at distance sqrt(2) in
    per-element coordinates) then agree only by chance, not by a shared row order."""
    def knn(d, seed):
        d = d.copy()
        np.fill_diagonal(d, np.inf)
        key = np.random.default_rng(seed).random(d.shape)
        return np.lexsort((key, d), axis=1)[:, :k]

    a, b = knn(da, 1), knn(db, 2)
    return (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1) / k


def eligible_rows(es: EvalSet, k: int = KNN) -> np.ndarray:
    """(n_reps,) bool: query rows whose element has more than k rows (one per symmetry class)
    in the set, so all k projected neighbours can be atoms of the same element."""
    z = es.numbers[es.reps]
    _, inv, cnt = np.unique(z, return_inverse=True, return_counts=True)
    return cnt[inv.ravel()] > k


def evaluate(es: EvalSet, coords, full: bool = False) -> dict:
    """coords(model) -> ('blocks', dict) or ('dense', (N, K) unit rows). Cross-family A -> B,
    same family A -> B_SAME, mkNN@10 (full: bootstrap intervals, CSLS)."""
    def sim_fn(ca, cb, q):
        if ca[0] == "dense":
            xa, xb = ca[1] / np.linalg.norm(ca[1], axis=1, keepdims=True), cb[1]
            xb = xb / np.linalg.norm(xb, axis=1, keepdims=True)
            return xa[q] @ xb.T
        return sims(ca[1], cb[1], q, es.n, es.n)

    ca, cb = coords(A), coords(B)
    s = sim_fn(ca, cb, es.reps)
    out = rank_metrics(es, s)
    cs = coords(B_SAME)
    rs = rank_metrics(es, sim_fn(ca, cs, es.reps))
    out["same_family_top1"], out["same_family_top5"] = rs["top1"], rs["top5"]
    da = 2 - 2 * sim_fn(ca, ca, es.reps)[:, es.reps]
    db = 2 - 2 * sim_fn(cb, cb, es.reps)[:, es.reps]
    rows = mknn_random_ties(da, db)
    raw = _raw_mknn_rows(es.name, A, B)
    elig = eligible_rows(es)
    out.update(mknn=float(rows.mean()), raw_mknn=float(raw.mean()),
               ratio=float(rows.mean() / raw.mean()),
               mknn_elig=float(rows[elig].mean()), raw_mknn_elig=float(raw[elig].mean()),
               ratio_elig=float(rows[elig].mean() / raw[elig].mean()),
               n_rows=int(rows.size), n_rows_elig=int(elig.sum()))
    if full:
        for tag, sel in (("", slice(None)), ("_elig", elig)):
            pr, rr = rows[sel], raw[sel]
            out["mknn_ci95" + tag], out["raw_mknn_ci95" + tag] = boot_ci(pr), boot_ci(rr)
            rng = np.random.default_rng(1)
            rat = []
            for _ in range(1000):
                i = rng.integers(0, pr.size, pr.size)
                rat.append(pr[i].mean() / rr[i].mean())
            out["ratio_ci95" + tag] = [float(np.percentile(rat, 2.5)),
                                       float(np.percentile(rat, 97.5))]
        # apples to apples for per-element coordinates: raw neighbours restricted to atoms of
        # the same element (cosine), on the eligible rows
        from common import cosdist

        z = es.numbers[es.reps]
        same = z[:, None] == z[None, :]
        ra, rb = es.raw(A)[es.reps], es.raw(B)[es.reps]
        rw = mknn_random_ties(np.where(same, cosdist(ra, ra), np.inf),
                              np.where(same, cosdist(rb, rb), np.inf))[elig]
        out["raw_within_element_mknn_elig"] = float(rw.mean())
        out["raw_within_element_mknn_elig_ci95"] = boot_ci(rw)
        out["ratio_within_element_elig"] = float(rows[elig].mean() / rw.mean())
        allr = np.arange(es.n)
        c = csls(s, sim_fn(cb, ca, allr), s)
        rc = rank_metrics(es, c)
        out["csls_top1"], out["csls_top5"], out["csls_site_top1"] = (
            rc["top1"], rc["top5"], rc["site_top1"])
    return out


def element_coords(rows: np.ndarray, tau: float):
    cache_: dict = {}

    def coords_for(name: str):
        def f(model: str):
            if model not in cache_:
                cache_[model] = ElementBlocks(rows, model, tau)
            x = emb(name, model)["embeddings"].astype(np.float64)
            return "blocks", cache_[model](x, emb(name, model)["numbers"].astype(np.int64))
        return f
    return coords_for


# ----------------------------------------------------------------------------- stages

SWEEP = (
    [("atom_random", c, None) for c in (64, 256, 1024, 2048, 0)]
    + [("atom_direct", c, None) for c in (64, 128, 256, 1024, 2048)]
    + [("struct", c, b) for b in (4000, 8000, 12000) for c in (64, 256, 512, 1024, 0)]
    + [("struct_vote", c, b) for b in (8000, 12000) for c in (256, 512, 0)]
    + [("struct_quota", c, q) for q in QUOTAS for c in (128, 256, 512)]
)
TAUS = (0.015, 0.05, 0.1)


def describe(rows: np.ndarray) -> dict:
    n_atoms, n_struct = atoms_to_embed(rows)
    return {"n_anchors": int(rows.size), "atoms_to_embed": n_atoms, "n_structures": n_struct,
            "n_elements": int(np.unique(meta()["numbers"][rows]).size),
            "within_budget": bool(n_atoms <= MAX_ATOMS and rows.size <= MAX_K),
            "within_unconstrained_k": bool(rows.size <= MAX_K_UNCONSTRAINED)}


def score(res: dict, names) -> float:
    return float(np.mean([res[n]["top5"] for n in names]))


def stage_sweep(args) -> dict:
    sets = {n: EvalSet(n) for n in EVAL_SETS}
    out = {"provenance": _prov(), "baselines": {n: baselines(s) for n, s in sets.items()},
           "split1": list(SPLIT1), "split2": list(SPLIT2), "configs": []}
    if args.append and args.out.is_file():
        old = json.loads(args.out.read_text())
        out["configs"] = old["configs"]
        out["provenance_earlier"] = [old["provenance"], *old.get("provenance_earlier", [])]
    done = {(c["method"], c["cap"], c["budget"], c["tau"]) for c in out["configs"]}
    for method, cap, budget in SWEEP:
        if all((method, cap, budget, t) in done for t in TAUS):
            continue
        rows = select(method, cap, budget or MAX_ATOMS)
        d = describe(rows)
        if method.startswith("struct") and not d["within_budget"]:
            print(f"{method} cap={cap} budget={budget}: K={d['n_anchors']} over budget, skipped")
            continue
        for tau in TAUS:
            t0 = time.perf_counter()
            cf = element_coords(rows, tau)
            res = {n: evaluate(s, cf(n)) for n, s in sets.items()}
            out["configs"].append({"method": method, "cap": cap, "budget": budget, "tau": tau,
                                   **d, "results": res})
            print(f"{method} cap={cap} budget={budget} tau={tau} K={d['n_anchors']} "
                  f"atoms={d['atoms_to_embed']} ({time.perf_counter() - t0:.0f} s): "
                  + "; ".join(f"{n[:6]} {v['top1']:.3f}/{v['top5']:.3f} "
                              f"mk {v['ratio']:.2f}/{v['ratio_elig']:.2f} sf5 {v['same_family_top5']:.3f}"
                              for n, v in res.items()), flush=True)
            save_json(args.out, out)
    out["choices"] = choose(out["configs"])
    save_json(args.out, out)
    return out


def choose(configs: list[dict]) -> dict:
    """Best configuration by mean cross-family top-5 on one split (ties within 0.005: fewer
    anchors), reported on the other split; among (a) ``unconstrained``: the per-element
    atom-level selections (random / DIRECT) with K <= MAX_K_UNCONSTRAINED (the shipped
    default), (b) ``budgeted``: every configuration within <= 12k atoms to embed, K <= 8k."""
    pools = {"unconstrained": [c for c in configs if c["method"].startswith("atom_")
                               and c.get("within_unconstrained_k", c["n_anchors"] <= 45000)],
             "budgeted": [c for c in configs if c["within_budget"]]}
    out = {}
    for pool, ok in pools.items():
        for sel, rep in ((SPLIT1, SPLIT2), (SPLIT2, SPLIT1)):
            best = max(ok, key=lambda c: (round(score(c["results"], sel) / 0.005),
                                          -c["n_anchors"]))
            out[f"{pool}:select_on={'+'.join(sel)}"] = {
                "chosen": {k: best[k] for k in ("method", "cap", "budget", "tau", "n_anchors",
                                                "atoms_to_embed", "n_structures")},
                "selection_score_mean_top5": score(best["results"], sel),
                "reported_on": {n: best["results"][n] for n in rep}}
    return out


def _prov() -> dict:
    from common import provenance

    from platoscope.provenance import invocation

    p = provenance()
    try:
        p["invocation"] = invocation()
    except Exception as err:
        p["invocation_error"] = str(err)
    return p


def stage_final(args) -> dict:
    from study import dense_coords, shipped_rows

    sweep = json.loads(args.sweep.read_text())
    choices = sweep["choices"]
    sets = {n: EvalSet(n) for n in EVAL_SETS}
    out = {"provenance": _prov(), "sweep": str(args.sweep.relative_to(ROOT)),
           "default": "unconstrained, chosen on split 1 (" + "+".join(SPLIT1) + "), reported "
                      "on split 2 (" + "+".join(SPLIT2) + ")",
           "baselines": {n: baselines(s) for n, s in sets.items()}, "rows": {}}
    labels = {f"unconstrained:select_on={'+'.join(SPLIT1)}": "element default (chosen on split 1)",
              f"unconstrained:select_on={'+'.join(SPLIT2)}": "element (chosen on split 2)",
              f"budgeted:select_on={'+'.join(SPLIT1)}":
                  "element, <=12k atoms / K<=8k budget (chosen on split 1)",
              f"budgeted:select_on={'+'.join(SPLIT2)}":
                  "element, <=12k atoms / K<=8k budget (chosen on split 2)"}
    done: dict = {}
    for key, label in labels.items():
        ch = choices[key]["chosen"]
        cfg = (ch["method"], ch["cap"], ch["budget"], ch["tau"])
        if cfg in done:
            out["rows"][done[cfg]]["also"] = label
            continue
        rows = select(ch["method"], ch["cap"], ch["budget"] or MAX_ATOMS)
        cf = element_coords(rows, ch["tau"])
        res = {n: evaluate(s, cf(n), full=True) for n, s in sets.items()}
        for n in sets:
            for model in (A, B):
                res[n][f"entries_99.99pct_{model}"] = mass_entries(cf(n)(model)[1])
        out["rows"][label] = {"config": {**dict(zip(("method", "cap", "budget", "tau"), cfg,
                                                    strict=True)),
                                         "floor": FLOOR, "seed": SEED, **describe(rows)},
                              "results": res}
        done[cfg] = label
        print(label, {n: (round(v["top1"], 3), round(v["top5"], 3)) for n, v in res.items()},
              flush=True)
        save_json(args.out, out)
    ship = shipped_rows()
    out["rows"]["shared (old default, K=3000 MP-20 train)"] = {
        "config": {"projection": "shared", "tau": 0.015, "n_anchors": int(ship.size),
                   **{k: v for k, v in describe(ship).items() if k.startswith(("atoms", "n_s"))}},
        "results": {n: evaluate(s, lambda m, n=n: ("dense", dense_coords(ship, n, m)), full=True)
                    for n, s in sets.items()}}
    print("shared done", flush=True)
    save_json(args.out, out)
    out["periodicity"] = periodicity(ship)
    save_json(args.out, out)
    return out


def mass_entries(blocks: dict) -> dict:
    """Entries per atom that hold 99.99 % of its squared mass (sparse storage size):
    median, 99th percentile and max over atoms."""
    need = []
    for _, x in blocks.values():
        v = -np.sort(-x ** 2, axis=1)
        need.append((np.cumsum(v, axis=1) < 0.9999).sum(axis=1) + 1)
    need = np.concatenate(need)
    return {"median": float(np.median(need)), "p99": float(np.percentile(need, 99)),
            "max": int(need.max())}


def periodicity(ship: np.ndarray) -> dict:
    """Cross-element view: an element's nearest other element (cosine of element-mean vectors)
    in its own group / period, in the old ``shared`` projection (K=3000 MP-20 train anchors,
    tau 0.015) and in each model's raw features, over (a) MP-20 train atoms of the corpus and
    (b) every corpus atom valid in all models. Per-element coordinates cannot answer this:
    their element means are orthogonal by construction (every cosine 0)."""
    from study import model_emb

    from platoscope.analysis.periodicity import element_means, periodicity_score
    from platoscope.projection import Projector

    m = meta()
    src = m["struct_source"][m["sidx"]]
    sets = {"mp20_train atoms": np.flatnonzero(m["valid"] & (src == "mp20_train")),
            "all corpus atoms": np.flatnonzero(m["valid"])}
    out = {"metric": "cosine of element means", "f_block": "group3", "spaces": {}}
    for model in (A, B, B_SAME):
        x = model_emb("corpus", model)
        proj = Projector("shared", tau=0.015).fit(x[ship])
        for label, rows in sets.items():
            z = m["numbers"][rows]
            for space in ("raw", "shared K=3000"):
                if space == "raw":
                    el, mu = element_means(z, x[rows])
                else:
                    sums: dict = {}
                    for i in range(0, rows.size, 4000):
                        c = proj.transform(x[rows[i:i + 4000]])
                        for e_ in np.unique(z[i:i + 4000]):
                            sums[int(e_)] = sums.get(int(e_), 0) + c[z[i:i + 4000] == e_].sum(0)
                    el = np.array(sorted(sums))
                    cnt = np.bincount(z)[el]
                    mu = np.stack([sums[int(e_)] for e_ in el]) / cnt[:, None]
                r = periodicity_score(el, mu)
                r["nearest"] = {int(a): int(b) for a, b in zip(el, r["nearest"], strict=True)}
                out["spaces"].setdefault(space, {}).setdefault(model, {})[label] = r
                print(f"periodicity {space} {model} {label}: group {r['group']:.3f} "
                      f"(chance {r['group_chance']:.3f}) period {r['period']:.3f} "
                      f"n={r['n_elements']}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["sweep", "final"], required=True)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--append", action="store_true",
                   help="sweep: keep the configurations already in --out, run the rest")
    p.add_argument("--sweep", type=Path, default=ROOT / "results" / "coverage_sweep.json")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if a.out is None:
        a.out = ROOT / "results" / ("coverage_sweep.json" if a.stage == "sweep"
                                    else "coverage_final.json")
    {"sweep": stage_sweep, "final": stage_final}[a.stage](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
