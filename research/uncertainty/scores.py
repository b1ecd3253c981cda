"""Ranking and coverage metrics of a per-atom force-error score (shared by evidence.py and
variants.py)."""

from __future__ import annotations

import numpy as np


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score`` for the boolean labels ``positive`` (nan if one class is empty)."""
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score))


def metrics(score: np.ndarray, err: np.ndarray, fdft: np.ndarray, el: np.ndarray,
            sigma: bool = False, pinball: tuple[float, float] | None = None) -> dict:
    """AUROC for the top 10 % by |ΔF| and by |ΔF|/(|F_DFT|+0.1), Spearman, pooled and per
    element (Li, Si; an element with no atoms is left out); with ``sigma`` also the coverage of
    |ΔF| <= sigma and <= 2 sigma, and with ``pinball = (quantile, error floor in eV/Å)`` the
    pinball loss of log max(|ΔF|, floor) against log sigma."""
    from scipy.stats import spearmanr

    rel = err / (fdft + 0.1)
    out = {}
    for name in ("pooled", "Li", "Si"):
        m = np.ones(len(err), bool) if name == "pooled" else el == name
        if not m.any():
            continue
        e, r, s = err[m], rel[m], score[m]
        row = {"auroc_abs_top10": auroc(s, e >= np.quantile(e, 0.9)),
               "auroc_rel_top10": auroc(s, r >= np.quantile(r, 0.9)),
               "spearman": float(spearmanr(s, e).statistic), "n_atoms": int(m.sum())}
        if sigma:
            row["coverage_1sigma"] = float(np.mean(e <= s))
            row["coverage_2sigma"] = float(np.mean(e <= 2 * s))
            if pinball is not None:
                q, floor = pinball
                y = np.log(np.maximum(e, floor)) - np.log(s)
                row["pinball_log"] = float(np.mean(np.maximum(q * y, (q - 1) * y)))
        out[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
    return out
