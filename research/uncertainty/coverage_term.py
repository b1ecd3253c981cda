"""Does the per-atom coverage signal (issue 10) carry force-error information that the shipped
sigma lacks? Checked on mlearn Li/Si TRAINING only (the test splits stay for evidence.py).

Per element: AUROC of (1 - coverage) for the top 10 % of |ΔF| and of |ΔF|/(|F_DFT|+0.1), and the
Spearman correlation of coverage (and of the feature distance u, for comparison) with the
residual log(max(|ΔF|, 0.01)/sigma) of the shipped calibration, per element and per mlearn
config type. Caveat printed with the result: mlearn Li/Si training structures are part of the
anchor corpus, so these atoms are covered by construction (in-sample).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-sevenn/bin/python research/uncertainty/coverage_term.py
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
OUT = REPO / "results" / "uncertainty_coverage_term.json"


def main(spec: str = "chgnet:0.3.0") -> dict:
    from scipy.stats import spearmanr
    from scores import auroc
    from variants import ERR_FLOOR, load

    from platoscope import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.provenance import package_versions
    from platoscope.reference import default_bank
    from platoscope.uncertainty import ForceErrorModel

    warnings.simplefilter("ignore")
    be = load_backend(spec)
    bank = default_bank(be, AnchorSet.default())
    d = load(spec, "training", bank)
    x = d["X"].astype(np.float64)
    _, cov = bank.projector.transform_with_coverage(x, d["Z"])
    flagged = cov < bank.projector.coverage_threshold(d["Z"])
    sigma = ForceErrorModel.default(be, bank).predict(x, d["F"], d["Z"], force_scale=d["Fl"])
    resid = np.log(np.maximum(d["err"], ERR_FLOOR)) - np.log(sigma)
    rel = d["err"] / (d["fdft"] + 0.1)
    out: dict = {"model": spec, "data": "mlearn Li+Si training", "versions": package_versions(),
                 "caveat": "mlearn Li/Si training structures are in the anchor corpus: their "
                           "atoms are covered by construction", "elements": {}}
    for el in ("Li", "Si"):
        k = d["el"] == el
        e, r, c = d["err"][k], rel[k], cov[k]
        row = {"n_atoms": int(k.sum()), "coverage_median": float(np.median(c)),
               "flagged_fraction": float(flagged[k].mean()),
               "auroc_abs_top10_of_1_minus_coverage": auroc(-c, e >= np.quantile(e, 0.9)),
               "auroc_rel_top10_of_1_minus_coverage": auroc(-c, r >= np.quantile(r, 0.9)),
               "spearman_coverage_vs_residual": float(spearmanr(c, resid[k]).statistic),
               "spearman_u_vs_residual": float(spearmanr(d["u"][k], resid[k]).statistic),
               "by_config_type": {}}
        for g in np.unique(d["group"][k]):
            kk = k & (d["group"] == g)
            row["by_config_type"][str(g)] = {
                "n_atoms": int(kk.sum()), "coverage_median": float(np.median(cov[kk])),
                "error_median": float(np.median(d["err"][kk])),
                "residual_median": float(np.median(resid[kk]))}
        out["elements"][el] = row
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    for el, row in out["elements"].items():
        print(el, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                   if k != "by_config_type"})
    return out


if __name__ == "__main__":
    main(*sys.argv[1:])
