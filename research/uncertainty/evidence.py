"""Force-error estimator (issue 11): choose on mlearn Li/Si TRAINING, report once on TEST.

Needs the cache of ``compute_outputs.py`` (features and forces of each model). Choice on the
training splits: 5-fold grouped-by-structure cross-validation of the three variants (|F| alone,
u alone, both) by pinball loss, AUROC and coverage; the variant with the lowest held-out pinball
loss is refitted on all training atoms and reported on the test splits, beside random, |F| and
the 2-/3-model committees. Writes results/uncertainty.json and
docs/figures/uncertainty_calibration.png.

    OMP_NUM_THREADS=1 PYTHONPATH=src MPLBACKEND=Agg .venv-sevenn/bin/python \
        research/uncertainty/evidence.py
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compute_outputs import cache_path, load_split  # noqa: E402

MAIN = "chgnet:0.3.0"
OTHERS = ("chgnet:0.2.0", "sevenn:7net-0")
VARIANTS = {"force": (("force",), True), "distance": (("distance",), True),
            "combined": (("force", "distance"), True),
            "combined_one_intercept": (("force", "distance"), False)}
"""name: (terms, per-element intercept)."""


def split_data(spec: str, kind: str) -> dict[str, np.ndarray]:
    """Concatenated Li + Si arrays of one split kind ('training' or 'test')."""
    out: dict[str, list] = {k: [] for k in ("X", "F", "G", "Z", "S", "el")}
    off = 0
    for el in ("Li", "Si"):
        fname = f"{el}_{kind}.json.gz" if kind == "training" else f"{el}_{kind}.json"
        d = np.load(cache_path(spec, fname))
        structs = load_split(fname)
        out["X"].append(d["X"])
        out["F"].append(d["F"])
        out["G"].append(np.concatenate([a.arrays["dft_forces"] for a in structs]))
        out["Z"].append(np.concatenate([a.numbers for a in structs]))
        out["S"].append(np.concatenate([np.full(len(a), off + i) for i, a in enumerate(structs)]))
        out["el"].append(np.full(sum(len(a) for a in structs), el))
        off += len(structs)
    return {k: np.concatenate(v) for k, v in out.items()}


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score))


def metrics(score: np.ndarray, err: np.ndarray, fdft: np.ndarray, el: np.ndarray,
            sigma: bool = False) -> dict:
    """AUROC for the top 10 % by |ΔF| and by |ΔF|/(|F_DFT|+0.1), Spearman, pooled and per
    element; with ``sigma`` also the coverage of |ΔF| <= sigma and <= 2 sigma."""
    from scipy.stats import spearmanr

    rel = err / (fdft + 0.1)
    out = {}
    for name, m in (("pooled", np.ones(len(err), bool)), ("Li", el == "Li"), ("Si", el == "Si")):
        e, r, s = err[m], rel[m], score[m]
        row = {"auroc_abs_top10": auroc(s, e >= np.quantile(e, 0.9)),
               "auroc_rel_top10": auroc(s, r >= np.quantile(r, 0.9)),
               "spearman": float(spearmanr(s, e).statistic), "n_atoms": int(m.sum())}
        if sigma:
            row["coverage_1sigma"] = float(np.mean(e <= s))
            row["coverage_2sigma"] = float(np.mean(e <= 2 * s))
        out[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
    return out


def main() -> None:
    import torch

    from platoscope import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.provenance import invocation
    from platoscope.reference import default_bank
    from platoscope.uncertainty import ForceErrorModel, backend_provenance

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    be = load_backend(MAIN)
    bank = default_bank(be, AnchorSet.default())
    tr = split_data(MAIN, "training")
    err_tr = np.linalg.norm(tr["F"] - tr["G"], axis=1)
    # --- choice: grouped CV on training only
    structs = np.unique(tr["S"])
    rng = np.random.default_rng(0)
    folds = np.array_split(rng.permutation(structs), 5)
    cv: dict[str, dict] = {}
    for name, (terms, per_el) in VARIANTS.items():
        sig = np.empty(len(err_tr))
        for f in folds:
            held = np.isin(tr["S"], f)
            m = ForceErrorModel(bank, terms=terms, per_element=per_el).fit(
                tr["X"][~held], tr["F"][~held], tr["G"][~held], tr["Z"][~held],
                tr["S"][~held])
            sig[held] = m.predict(tr["X"][held], tr["F"][held], tr["Z"][held])
        y = np.log(np.maximum(err_tr, 1e-6)) - np.log(sig)
        cv[name] = metrics(sig, err_tr, np.linalg.norm(tr["G"], axis=1), tr["el"], sigma=True)
        cv[name]["pinball_log"] = round(float(np.mean(np.maximum(0.68 * y, -0.32 * y))), 5)
        print(name, cv[name], flush=True)
    chosen = min(cv, key=lambda k: cv[k]["pinball_log"])
    # --- n-structure curve (training only: fit on n, evaluate on the other training structs)
    curve = {}
    for n in (5, 10, 20, 50):
        covs = []
        for rep in range(5):
            pick = np.random.default_rng(100 + rep).choice(structs, n, replace=False)
            fit = np.isin(tr["S"], pick)
            m = ForceErrorModel(bank, terms=VARIANTS[chosen][0],
                                per_element=VARIANTS[chosen][1]).fit(
                tr["X"][fit], tr["F"][fit], tr["G"][fit], tr["Z"][fit], tr["S"][fit])
            s = m.predict(tr["X"][~fit], tr["F"][~fit], tr["Z"][~fit])
            covs.append(float(np.mean(err_tr[~fit] <= s)))
        curve[str(n)] = {"coverage_mean": round(float(np.mean(covs)), 4),
                         "coverage_min": round(float(np.min(covs)), 4),
                         "coverage_max": round(float(np.max(covs)), 4), "repeats": 5}
        print("n", n, curve[str(n)], flush=True)
    # --- final fit on all training, report once on test
    final = ForceErrorModel(bank, terms=VARIANTS[chosen][0],
                            per_element=VARIANTS[chosen][1]).fit(
        tr["X"], tr["F"], tr["G"], tr["Z"], tr["S"], provenance=backend_provenance(be))
    te = split_data(MAIN, "test")
    err = np.linalg.norm(te["F"] - te["G"], axis=1)
    fdft = np.linalg.norm(te["G"], axis=1)
    sig = final.predict(te["X"], te["F"], te["Z"])
    others = {s: split_data(s, "test")["F"] for s in OTHERS}
    c2 = np.linalg.norm(te["F"] - others["chgnet:0.2.0"], axis=1)
    stack = np.stack([te["F"], others["chgnet:0.2.0"], others["sevenn:7net-0"]])
    c3 = np.linalg.norm(stack - stack.mean(0), axis=2).mean(0)
    test = {"sigma_" + chosen: metrics(sig, err, fdft, te["el"], sigma=True),
            "random": metrics(np.random.default_rng(1).random(len(err)), err, fdft, te["el"]),
            "model_force_norm": metrics(np.linalg.norm(te["F"], axis=1), err, fdft, te["el"]),
            "committee_2_chgnet030_020": metrics(c2, err, fdft, te["el"]),
            "committee_3_plus_7net0": metrics(c3, err, fdft, te["el"])}
    for k, v in test.items():
        print("TEST", k, v, flush=True)
    out = {"invocation": invocation(), "model": MAIN, "bank_data_hash": bank.data_hash,
           "choice_split": "mlearn Li+Si training, 5-fold grouped by structure",
           "report_split": "mlearn Li+Si test (seen once, after the choice)",
           "training_cv": cv, "chosen": chosen, "variants": VARIANTS,
           "coef_a_b_d": [round(float(x), 5) for x in final.coef_], "c": final.c_,
           "n_structures_curve_training_heldout": curve, "test": test}
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "uncertainty.json").write_text(json.dumps(out, indent=1))
    plot(sig, err, te["el"], REPO / "docs" / "figures" / "uncertainty_calibration.png")


def plot(sig: np.ndarray, err: np.ndarray, el: np.ndarray, path: Path) -> None:
    """Binned predicted sigma vs observed 68th-percentile |ΔF| (test split), per element."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for e, col in (("Li", "C0"), ("Si", "C1")):
        m = el == e
        s, r = sig[m], err[m]
        edges = np.quantile(s, np.linspace(0, 1, 11))
        b = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, 9)
        xs = [np.median(s[b == i]) for i in range(10) if (b == i).any()]
        ys = [np.quantile(r[b == i], 0.68) for i in range(10) if (b == i).any()]
        ax.loglog(xs, ys, "o-", color=col, label=f"{e} (test)")
    lim = [min(sig.min(), 1e-3), max(sig.max(), err.max())]
    ax.loglog(lim, lim, "k--", lw=0.8, label="ideal")
    ax.set_xlabel("predicted sigma (eV/Å), decile median")
    ax.set_ylabel("observed 68th pct |ΔF| (eV/Å)")
    ax.set_title("CHGNet 0.3.0 force-error estimate")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
