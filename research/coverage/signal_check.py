#!/usr/bin/env python
"""Does the coverage flag mark atoms whose coordinates are less trustworthy? (issue 10 item 4)

The shipped projection (``element``, tau 0.015) on the shipped anchors (DIRECT cap 2048 per
element), through the library's :class:`platoscope.projection.Projector`, on the cached
embeddings of the evaluation sets (no model runs). For each set: the fraction of query atoms
whose CHGNet 0.3.0 coverage is below their element's threshold
(``Projector.coverage_threshold``: the 5 % leave-one-out quantile of the anchors' own coverage),
and the cross-family (CHGNet 0.3.0 -> SevenNet-0) top-1 / top-5 retrieval of flagged and
unflagged queries, and by coverage quartile. The threshold was fixed before this was run
(5 %, a false-flag rate on anchor-like atoms); nothing here was tuned. This is the
leave-one-ANCHOR-out rule (projectors fitted without anchor groups); ``signal_loso.py``
measures it beside the leave-one-structure-out rule that ships now, from the shipped anchors
(this script needs the corpus cache under ``_cache/``).

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/coverage/signal_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EVAL_SETS, ROOT, A, B, EvalSet, emb, retrieval, save_json
from default_set import MAX_ATOMS, meta, select

from platoscope.projection import PRESETS, Projector
from platoscope.provenance import invocation

OUT = ROOT / "results" / "coverage_signal_shipped.json"


def main() -> dict:
    rows = select("atom_direct", 2048, MAX_ATOMS)
    z_anchor = meta()["numbers"][rows]
    proj = {m: Projector("element").fit(emb("corpus", m)["embeddings"][rows].astype(np.float64),
                                        anchor_numbers=z_anchor) for m in (A, B)}
    out = {"provenance": invocation(), "projection": "element",
           "tau": PRESETS["element"]["tau"], "n_anchors": int(rows.size), "sets": {}}
    for name in EVAL_SETS:
        es = EvalSet(name)
        za, cov = proj[A].transform_with_coverage(es.raw(A), es.numbers)
        zb = proj[B].transform(es.raw(B), es.numbers)
        r = retrieval(es, csr_matrix(za), csr_matrix(zb))["rank"]
        q_cov = cov[es.reps]
        flag = q_cov < proj[A].coverage_threshold(es.numbers[es.reps])
        res = {"n_queries": int(es.reps.size), "flagged_fraction": float(flag.mean())}
        for key, sel in (("flagged", flag), ("unflagged", ~flag)):
            res[key] = ({"n": int(sel.sum()), "top1": float(np.mean(r[sel] < 1)),
                         "top5": float(np.mean(r[sel] < 5))} if sel.any() else {"n": 0})
        qs = np.quantile(q_cov, [0.25, 0.5, 0.75])
        bins = np.digitize(q_cov, qs)
        res["by_coverage_quartile"] = [
            {"quartile": int(b) + 1, "coverage_max": float(q_cov[bins == b].max()),
             "top1": float(np.mean(r[bins == b] < 1)), "top5": float(np.mean(r[bins == b] < 5))}
            for b in range(4)]
        out["sets"][name] = res
        print(name, {k: res[k] for k in ("flagged_fraction", "flagged", "unflagged")},
              flush=True)
    save_json(OUT, out)
    return out


if __name__ == "__main__":
    main()
