#!/usr/bin/env python
"""Coverage thresholds held out by anchor structure instead of by anchor: before / after.

The shipped projection (``element``, tau 0.015) on the shipped ``default`` anchor set and the
shipped anchor matrices of CHGNet 0.3.0 and SevenNet-0, through the library's
:class:`platoscope.projection.Projector`, fitted twice: without anchor groups (each anchor's
own coverage leave-one-ANCHOR-out, the rule before) and with ``AnchorSet.groups``
(leave-one-STRUCTURE-out, the rule now). Both keep :data:`COVERAGE_QUANTILE` (5 %); nothing is
tuned on the evaluation sets. Reports, per model, every element's two thresholds (largest
changes first) and, per evaluation set (``embed_eval.py``: MP-20 val, Perov-5 / Carbon-24 eval
halves), the fraction of CHGNet 0.3.0 query atoms flagged under each rule and the
cross-family (CHGNet 0.3.0 -> SevenNet-0) top-1 / top-5 retrieval of flagged and unflagged
queries (one query per symmetry class, pool = all atoms; ``common.retrieval``).

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/coverage/embed_eval.py
    OMP_NUM_THREADS=1 PYTHONPATH=src python research/coverage/signal_loso.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
from common import EVAL_SETS, ROOT, A, B, EvalSet, retrieval, save_json

from platoscope.anchors import AnchorSet
from platoscope.backends import load_backend
from platoscope.projection import COVERAGE_QUANTILE, PRESETS, Projector
from platoscope.provenance import invocation

OUT = ROOT / "results" / "coverage_signal_loso.json"
RULES = ("anchor", "structure")


def _split(flag: np.ndarray, r: np.ndarray) -> dict:
    out = {}
    for key, sel in (("flagged", flag), ("unflagged", ~flag)):
        out[key] = ({"n": int(sel.sum()), "top1": float(np.mean(r[sel] < 1)),
                     "top5": float(np.mean(r[sel] < 5))} if sel.any() else {"n": 0})
    return out


def main() -> dict:
    from ase.data import chemical_symbols

    common.MODELS = (A, B)  # EvalSet checks the models embedded here (not chgnet:0.2.0)
    anchors = AnchorSet.default()
    zs, groups = anchors.numbers, anchors.groups
    proj: dict[str, dict[str, Projector]] = {}
    out: dict = {"provenance": invocation(), "projection": "element",
                 "tau": PRESETS["element"]["tau"], "quantile": COVERAGE_QUANTILE,
                 "anchor_set": anchors.hash, "n_anchors": len(anchors),
                 "n_anchor_structures": len(anchors.structures),
                 "n_groups": int(groups.max() + 1), "thresholds": {}, "sets": {}}
    for m in (A, B):
        mat = anchors.embed(load_backend(m))
        proj[m] = {"anchor": Projector("element").fit(mat, anchor_numbers=zs),
                   "structure": Projector("element").fit(mat, anchor_numbers=zs,
                                                         anchor_groups=groups)}
        els = np.unique(zs)
        t = {r: proj[m][r].coverage_threshold(els) for r in RULES}
        per_struct = {r: dict(proj[m][r]._thresholds[0]) for r in RULES}
        rows = []
        for i, z in enumerate(els):
            sel = zs == z
            rows.append({"element": chemical_symbols[z], "n_anchors": int(sel.sum()),
                         "n_structures": int(np.unique(groups[sel]).size),
                         "anchor": float(t["anchor"][i]), "structure": float(t["structure"][i]),
                         "pooled_anchor": int(z) not in per_struct["anchor"],
                         "pooled_structure": int(z) not in per_struct["structure"]})
        rows.sort(key=lambda x: x["structure"] - x["anchor"])
        out["thresholds"][m] = {
            "pooled": {r: float(proj[m][r]._thresholds[1]) for r in RULES},
            "median_change": float(np.median([x["structure"] - x["anchor"] for x in rows])),
            "n_elements_above_0.99": {r: int(sum(x[r] > 0.99 for x in rows)) for r in RULES},
            "elements": rows}
        print(m, "largest drops:", [(x["element"], round(x["anchor"], 4),
                                     round(x["structure"], 4)) for x in rows[:8]], flush=True)
    for name in EVAL_SETS:
        es = EvalSet(name)
        za, cov = proj[A]["anchor"].transform_with_coverage(es.raw(A), es.numbers)
        zb = proj[B]["anchor"].transform(es.raw(B), es.numbers)
        r = retrieval(es, csr_matrix(za), csr_matrix(zb))["rank"]
        q_cov, q_z = cov[es.reps], es.numbers[es.reps]
        res: dict = {"n_atoms": int(es.n), "n_queries": int(es.reps.size),
                     "top1": float(np.mean(r < 1)), "top5": float(np.mean(r < 5))}
        for rule in RULES:
            atom_flag = cov < proj[A][rule].coverage_threshold(es.numbers)
            flag = q_cov < proj[A][rule].coverage_threshold(q_z)
            els, counts = np.unique(q_z[flag], return_counts=True)
            top = np.argsort(-counts, kind="stable")[:8]
            res[rule] = {"flagged_fraction_atoms": float(atom_flag.mean()),
                         "flagged_fraction_queries": float(flag.mean()), **_split(flag, r),
                         "flagged_queries_by_element": {
                             chemical_symbols[els[i]]: f"{counts[i]}/{int((q_z == els[i]).sum())}"
                             for i in top}}
        out["sets"][name] = res
        print(name, {k: res[k] for k in ("n_queries", *RULES)}, flush=True)
    save_json(OUT, out)
    return out


if __name__ == "__main__":
    main()
