#!/usr/bin/env python
"""Coverage signal, sparse storage and the cross-element view for one per-element configuration.

Stages (``--stage``), each writing ``results/coverage_<stage>.json``:

* ``signal``: per-atom coverage (best centred cosine to own-element anchors) and n_eff, their
  AUROC for cross-family top-5 retrieval failure, a threshold calibrated leave-one-structure-out
  on corpus atoms, and its flag rate on the evaluation sets with union-corpus anchors vs
  MP-20-train-only anchors;
* ``sparse``: entries holding 99.99 % of the squared mass, top-k truncation error bound,
  retrieval and mkNN after truncation, bytes per atom;
* ``crosselement``: periodicity (element means, nearest element in its own group) and perovskite
  substitution arithmetic on a global block of K_g anchors vs the shipped space vs raw.

    PYTHONPATH=src python research/coverage/extras.py --stage signal --k 64 --tau 0.015
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    EVAL_SETS,
    ROOT,
    A,
    B,
    EvalSet,
    corpus_source,
    emb,
    mknn,
    provenance,
    retrieval,
    save_json,
    structures,
)
from study import (
    corpus_rows,
    elem_coords,
    elem_projector,
    model_emb,
    per_element_selection,
    shipped_rows,
)

LOSO_SAMPLE = 4000
QUANTILES = (0.005, 0.01, 0.02, 0.05)


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    label = np.asarray(label, bool)
    if label.all() or not label.any():
        return float("nan")
    return float(roc_auc_score(label, score))


def loso_coverage(rows: np.ndarray, model: str, sample: np.ndarray) -> np.ndarray:
    """Best centred cosine of sampled corpus atoms to own-element anchors of OTHER structures
    (anchors in the atom's own corpus structure are excluded; element means from all anchors)."""
    z = emb("corpus", A)["numbers"].astype(np.int64)
    sidx = emb("corpus", A)["structure_index"].astype(np.int64)
    p = elem_projector(rows, None, model, 0.015)
    x = model_emb("corpus", model)
    out = np.full(sample.size, np.nan)
    for i, el in enumerate(p.elements_):
        q = np.flatnonzero(z[sample] == el)
        if q.size == 0:
            continue
        cols = np.flatnonzero(p.anchor_numbers_ == el)
        if cols.size < 2:
            continue
        u = x[sample[q]] - p.means_[i]
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        c = u @ p.unit_anchors_[cols].T
        c[sidx[sample[q]][:, None] == sidx[rows[cols]][None, :]] = -np.inf
        out[q] = c.max(axis=1)
    return out


def stage_signal(a) -> dict:
    out = {"provenance": provenance(), "config": {"k_per_element": a.k, "method": a.method,
                                                  "tau": a.tau}, "anchor_sets": {}}
    rng = np.random.default_rng(0)
    for label, prefix in (("union_corpus", None), ("mp20_train_only", "mp20_train")):
        rows, gi = per_element_selection(a.k, a.method, prefix)
        pool = corpus_rows(prefix)
        sample = np.sort(rng.choice(pool, min(LOSO_SAMPLE, pool.size), replace=False))
        entry = {"n_anchors": int(rows.size), "loso_sample": int(sample.size), "models": {}}
        for model in (A, B):
            cov = loso_coverage(rows, model, sample)
            ok = np.isfinite(cov)
            thr = {f"q{q:g}": float(np.quantile(cov[ok], q)) for q in QUANTILES}
            m = {"loso_quantiles": thr, "loso_median": float(np.median(cov[ok])),
                 "loso_per_source_median": {}, "eval": {}}
            src = corpus_source()[sample]
            for s in np.unique(src[ok]):
                m["loso_per_source_median"][str(s)] = float(np.median(cov[ok & (src == s)]))
            for n in EVAL_SETS:
                es = EvalSet(n)
                xa, ra = elem_coords(rows, gi, n, A, a.tau)
                xb, rb = elem_coords(rows, gi, n, B, a.tau)
                r_own = ra if model == A else rb
                cov_e = r_own.coverage
                ev = {"median_coverage": float(np.nanmedian(cov_e)),
                      "uncovered_atoms": int((~r_own.covered).sum()),
                      "flag_rate": {k: float(np.mean(~(cov_e >= t))) for k, t in thr.items()}}
                if model == A:
                    rr = retrieval(es, xa, xb)
                    miss = rr["rank"] >= 5
                    reps = es.reps
                    ev.update({
                        "top5": float(np.mean(~miss)),
                        "auroc_miss_vs_low_coverage": auroc(-ra.coverage[reps], miss),
                        "auroc_miss_vs_low_min_coverage_AB":
                            auroc(-np.minimum(ra.coverage, rb.coverage)[reps], miss),
                        "auroc_miss_vs_low_n_eff": auroc(-ra.n_eff[reps], miss),
                        "auroc_miss_vs_high_n_eff": auroc(ra.n_eff[reps], miss),
                        "top5_flagged_vs_not_q0.01": _split_rate(
                            miss, ~(ra.coverage[reps] >= thr["q0.01"])),
                    })
                m["eval"][n] = ev
            entry["models"][model] = m
            print(label, model, {n: (v["flag_rate"]["q0.01"], v.get("auroc_miss_vs_low_coverage"))
                                 for n, v in m["eval"].items()}, flush=True)
        out["anchor_sets"][label] = entry
    save_json(a.out, out)
    return out


def _split_rate(miss: np.ndarray, flagged: np.ndarray) -> dict:
    return {"n_flagged": int(flagged.sum()),
            "top5_flagged": float(np.mean(~miss[flagged])) if flagged.any() else None,
            "top5_unflagged": float(np.mean(~miss[~flagged])) if (~flagged).any() else None}


def stage_sparse(a) -> dict:
    rows, gi = per_element_selection(a.k, a.method, None)
    out = {"provenance": provenance(), "config": {"k_per_element": a.k, "method": a.method,
                                                  "tau": a.tau}, "sets": {}}
    for n in EVAL_SETS:
        es = EvalSet(n)
        full_a, ra = elem_coords(rows, gi, n, A, a.tau)
        full_b, rb = elem_coords(rows, gi, n, B, a.tau)
        entry = {}
        for model, r in ((A, ra), (B, rb)):
            v = np.sort(r.values ** 2, axis=1)[:, ::-1]
            need = (np.cumsum(v, axis=1) < 0.9999).sum(axis=1) + 1
            need = np.minimum(need, (r.indices >= 0).sum(axis=1))
            entry[model] = {"entries_for_99.99pct_median": float(np.median(need)),
                            "entries_for_99.99pct_p99": float(np.percentile(need, 99)),
                            "entries_for_99.99pct_max": int(need.max())}
        base = retrieval(es, full_a, full_b)
        base_m = mknn(es, full_a, full_b)
        entry["untruncated"] = {"top1": base["top1"], "top5": base["top5"],
                                "mknn": base_m["mknn"]}
        for k in (8, 16, 32, 64, 128):
            ta, rta = elem_coords(rows, gi, n, A, a.tau, top_k=k)
            tb, rtb = elem_coords(rows, gi, n, B, a.tau, top_k=k)
            rr = retrieval(es, ta, tb)
            mm = mknn(es, ta, tb)
            entry[f"top_k={k}"] = {
                "max_l2_error": float(max(rta.residual.max(), rtb.residual.max())),
                "p99_l2_error": float(np.percentile(np.r_[rta.residual, rtb.residual], 99)),
                "top1": rr["top1"], "top5": rr["top5"], "mknn": mm["mknn"],
                "queries_with_changed_rank": int(np.sum(rr["rank"] != base["rank"])),
                "bytes_per_atom_float32": 8 * k + 4, "bytes_per_atom_float64": 12 * k + 4}
            print(n, k, entry[f"top_k={k}"], flush=True)
        out["sets"][n] = entry
    save_json(a.out, out)
    return out


def substitution_pairs(structs) -> list[tuple[int, int, int]]:
    pairs = []
    for site in (0, 1):
        frames: dict = {}
        for i, at in enumerate(structs):
            sym = at.get_chemical_symbols()
            if len(sym) != 5:
                continue
            frames.setdefault(tuple(s for t, s in enumerate(sym) if t != site), []).append(i)
        for members in frames.values():
            pairs.extend((i, j, site) for i, j in itertools.permutations(members, 2))
    return pairs


def _kernel(c: np.ndarray, tau: float) -> np.ndarray:
    s = c / tau
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return np.sqrt(p / p.sum(axis=1, keepdims=True))


def stage_crosselement(a) -> dict:
    from platoscope.analysis import arithmetic_retrieval, element_means, periodicity_score
    from platoscope.projection import Projector

    mp = corpus_rows("mp20_train")
    z_mp = emb("corpus", A)["numbers"].astype(np.int64)[mp]
    pv = structures("perov5_eval")
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in pv])])
    pairs = substitution_pairs(pv)
    present = set(np.unique(z_mp).tolist())
    src, tgt, ea, eb = [], [], [], []
    for i, j, site in pairs:
        x, y = int(pv[i].numbers[site]), int(pv[j].numbers[site])
        if x in present and y in present and x != y:
            src.append(offsets[i] + site)
            tgt.append(offsets[j] + site)
            ea.append(x)
            eb.append(y)
    src, tgt = np.asarray(src), np.asarray(tgt)
    out = {"provenance": provenance(), "periodicity_atoms": "MP-20 train atoms of the corpus",
           "arithmetic": {"n_pairs": int(src.size), "pool": int(offsets[-1]),
                          "set": "perov5_eval", "vector": "MP-20 train element means"},
           "spaces": {}}
    rows, _ = per_element_selection(a.k, a.method, None)

    def spaces():
        yield "raw", None, None
        yield "shipped shared K=3000", shipped_rows(), 0.015
        for kg in (128, 512):
            _, gi = per_element_selection(a.k, a.method, None, global_k=kg)
            for tg in (0.05,):
                yield f"global block K_g={kg} tau_g={tg:g}", rows[gi], tg
        yield "per-element block only", "elem", a.tau

    for label, arows, tau in spaces():
        res = {}
        for model in (A, B):
            x_mp = model_emb("corpus", model)[mp]
            x_pv = model_emb("perov5_eval", model)
            if arows is None:
                lin_mp, lin_pv, kern = x_mp, x_pv, None
            elif isinstance(arows, str):
                xe, _ = elem_coords(rows, None, "corpus", model, tau)
                coords = xe.tocsr()[mp].toarray()
                el, means = element_means(z_mp, coords)
                s = periodicity_score(el, means)
                res[model] = {"periodicity_group": s["group"], "group_chance": s["group_chance"],
                              "periodicity_period": s["period"], "n_elements": s["n_elements"],
                              "arithmetic": "not defined: blocks of different elements are "
                                            "orthogonal"}
                continue
            else:
                p = Projector("centered").fit(model_emb("corpus", model)[arows])
                lin_mp, lin_pv, kern = p.transform(x_mp), p.transform(x_pv), tau
            coords = lin_mp if kern is None else _kernel(lin_mp, kern)
            el, means = element_means(z_mp, coords)
            s = periodicity_score(el, means)
            r = {"periodicity_group": s["group"], "group_chance": s["group_chance"],
                 "periodicity_period": s["period"], "n_elements": s["n_elements"]}
            if src.size:
                el_l, means_l = element_means(z_mp, lin_mp)
                row = {int(e): i for i, e in enumerate(el_l)}
                vec = np.asarray([means_l[row[y]] - means_l[row[x]]
                                  for x, y in zip(ea, eb, strict=True)])

                def k(c, kern=kern):
                    return c if kern is None else _kernel(c, kern)
                pool = k(lin_pv)
                zero = np.zeros(pool.shape[1])
                ar = arithmetic_retrieval(k(lin_pv[src] + vec), None, pool, tgt, vector=zero,
                                          ks=(1, 5))
                a0 = arithmetic_retrieval(k(lin_pv[src]), None, pool, tgt, vector=zero,
                                          ks=(1, 5))
                r.update({"arith_top1": ar.accuracy[1], "arith_top5": ar.accuracy[5],
                          "no_vector_top5": a0.accuracy[5], "chance_top5": ar.chance[5]})
            res[model] = r
        out["spaces"][label] = res
        print(label, res, flush=True)
        save_json(a.out, out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=["signal", "sparse", "crosselement"], required=True)
    p.add_argument("--k", type=int, default=64, help="anchors per element")
    p.add_argument("--method", default="fps")
    p.add_argument("--tau", type=float, default=0.015)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    a.out = a.out or ROOT / "results" / f"coverage_{a.stage}.json"
    {"signal": stage_signal, "sparse": stage_sparse, "crosselement": stage_crosselement}[
        a.stage](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
