"""Force-error estimator (issue 11): report ONCE on mlearn Li/Si TEST the form chosen on TRAINING.

The form is chosen by research/uncertainty/variants.py (5-fold grouped CV and leave-one-element-
out on the training splits only; results/uncertainty_variants_<model>.json). This script refits
that form with the library (platoscope.uncertainty.ForceErrorModel) on all training atoms of
each running model, measures the n-structure curve on training only, then scores the test
splits once, beside random, |F|, the local force scale alone and the 2-/3-model committees,
and times sigma against the bare model in the same run. Needs the cache of
``compute_outputs.py``. Writes results/uncertainty.json and
docs/figures/uncertainty_calibration.png.

    OMP_NUM_THREADS=1 PYTHONPATH=src MPLBACKEND=Agg .venv-sevenn/bin/python \
        research/uncertainty/evidence.py [chgnet:0.3.0 sevenn:7net-0]
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compute_outputs import cache_path, load_split  # noqa: E402
from scores import metrics  # noqa: E402

MODELS = ("chgnet:0.3.0", "sevenn:7net-0")
ALL = ("chgnet:0.3.0", "chgnet:0.2.0", "sevenn:7net-0")


def chosen_form(spec: str = "chgnet:0.3.0") -> tuple[str, dict]:
    """(name, ForceErrorModel kwargs) of the variant chosen on training for ``spec``."""
    from variants import VARIANTS

    res = json.loads((REPO / "results" / f"uncertainty_variants_{spec.replace(':', '_')}.json")
                     .read_text())
    name = res["chosen"]
    (v,) = [v for v in VARIANTS if v.name() == name]
    kw = v.kwargs()
    kw["unseen"] = res.get("unseen_rule", kw["unseen"])
    return name, kw


def split_data(spec: str, kind: str) -> dict[str, np.ndarray]:
    """Concatenated Li + Si arrays of one split kind ('training' or 'test'), with the local
    force scale L of each atom (library function, model forces)."""
    from platoscope.uncertainty import local_force_scale

    out: dict[str, list] = {k: [] for k in ("X", "F", "G", "Z", "S", "el", "L")}
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
        o = 0
        for a in structs:
            out["L"].append(local_force_scale(a, d["F"][o:o + len(a)]))
            o += len(a)
        off += len(structs)
    return {k: np.concatenate(v) for k, v in out.items()}


def fit_all(spec, kw, bank, tr, provenance=None):
    from platoscope.uncertainty import ForceErrorModel

    return ForceErrorModel(bank, **kw).fit(tr["X"], tr["F"], tr["G"], tr["Z"], tr["S"],
                                           force_scale=tr["L"], provenance=provenance)


def cost(be, est, n: int = 12, repeats: int = 3) -> dict:
    """Per-step time of backend.compute and of sigma (predict, local scale included) on the
    first n Si test structures (64 atoms), same run, best of ``repeats``."""
    structs = load_split("Si_test.json")[:n]
    t_model, t_sig = [], []
    for a in structs:
        tm, ts = [], []
        for _ in range(repeats):
            b = a.copy()
            t0 = time.perf_counter()
            res, feats = be.compute(b, ["energy", "forces"])
            t1 = time.perf_counter()
            est.predict(feats, res["forces"], b.numbers, atoms=b)
            ts.append(time.perf_counter() - t1)
            tm.append(t1 - t0)
        t_model.append(min(tm))
        t_sig.append(min(ts))
    tm, ts = float(np.median(t_model)), float(np.median(t_sig))
    return {"structures": n, "atoms_each": len(structs[0]), "model_s_median": round(tm, 4),
            "sigma_s_median": round(ts, 5), "ratio_model_plus_sigma_over_model":
            round((tm + ts) / tm, 4)}


def report_model(spec: str, name: str, kw: dict) -> dict:
    import torch

    from platoscope import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.reference import default_bank
    from platoscope.uncertainty import backend_provenance

    torch.set_num_threads(1)
    be = load_backend(spec)
    bank = default_bank(be, AnchorSet.default())
    tr = split_data(spec, "training")
    err_tr = np.linalg.norm(tr["F"] - tr["G"], axis=1)
    structs = np.unique(tr["S"])
    # --- n-structure curve (training only: fit on n, evaluate on the other training structs)
    curve = {}
    for n in (5, 10, 20, 50):
        covs = []
        for rep in range(5):
            pick = np.random.default_rng(100 + rep).choice(structs, n, replace=False)
            fit = np.isin(tr["S"], pick)
            sub = {k: v[fit] for k, v in tr.items()}
            m = fit_all(spec, kw, bank, sub)
            s = m.predict(tr["X"][~fit], tr["F"][~fit], tr["Z"][~fit], force_scale=tr["L"][~fit])
            covs.append(float(np.mean(err_tr[~fit] <= s)))
        curve[str(n)] = {"coverage_mean": round(float(np.mean(covs)), 4),
                         "coverage_min": round(float(np.min(covs)), 4),
                         "coverage_max": round(float(np.max(covs)), 4), "repeats": 5}
        print(spec, "n", n, curve[str(n)], flush=True)
    # --- final fit on all training, report once on test
    final = fit_all(spec, kw, bank, tr, provenance=backend_provenance(be))
    te = split_data(spec, "test")
    err = np.linalg.norm(te["F"] - te["G"], axis=1)
    fdft = np.linalg.norm(te["G"], axis=1)
    sig = final.predict(te["X"], te["F"], te["Z"], force_scale=te["L"])
    others = {s: split_data(s, "test")["F"] for s in ALL if s != spec}
    peer = "chgnet:0.2.0" if spec == "chgnet:0.3.0" else "chgnet:0.3.0"
    c2 = np.linalg.norm(te["F"] - others[peer], axis=1)
    stack = np.stack([te["F"], *others.values()])
    c3 = np.linalg.norm(stack - stack.mean(0), axis=2).mean(0)
    test = {"sigma": metrics(sig, err, fdft, te["el"], sigma=True),
            "random": metrics(np.random.default_rng(1).random(len(err)), err, fdft, te["el"]),
            "model_force_norm": metrics(np.linalg.norm(te["F"], axis=1), err, fdft, te["el"]),
            "local_force_scale": metrics(te["L"], err, fdft, te["el"]),
            f"committee_2_with_{peer}": metrics(c2, err, fdft, te["el"]),
            "committee_3_chgnet030_chgnet020_7net0": metrics(c3, err, fdft, te["el"])}
    for k, v in test.items():
        print("TEST", spec, k, v, flush=True)
    # structure-level: mean sigma vs |ΔE| per atom
    from scipy.stats import spearmanr

    e_mod = np.concatenate([np.load(cache_path(spec, f))["E"] for f in ("Li_test.json",
                                                                         "Si_test.json")])
    e_dft, nat = [], []
    for f in ("Li_test.json", "Si_test.json"):
        for a in load_split(f):
            e_dft.append(a.info["dft_energy"])
            nat.append(len(a))
    de = np.abs(e_mod - np.array(e_dft)) / np.array(nat)
    msig = np.array([sig[te["S"] == s].mean() for s in np.unique(te["S"])])
    structure = {"spearman_mean_sigma_vs_abs_dE_per_atom": round(float(
        spearmanr(msig, de).statistic), 4), "n_structures": len(de)}
    return {"model": spec, "bank_data_hash": bank.data_hash, "form": name,
            "form_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()},
            "params": final.params_, "c": final.c_,
            "offsets": {str(z): round(v, 4) for z, v in final.offsets_.items()},
            "n_structures_curve_training_heldout": curve, "test": test,
            "structure_level_test": structure, "cost_per_step": cost(be, final),
            "_sig": sig, "_err": err, "_el": te["el"]}


def main(*specs: str) -> None:
    from platoscope.provenance import invocation

    warnings.simplefilter("ignore")
    name, kw = chosen_form("chgnet:0.3.0")
    out = {"invocation": invocation(),
           "choice_split": "mlearn Li+Si training only: 5-fold CV grouped by structure and "
                           "leave-one-element-out (research/uncertainty/variants.py, "
                           "results/uncertainty_variants_chgnet_0.3.0.json); the form chosen "
                           "for CHGNet 0.3.0 is used unchanged for SevenNet-0",
           "report_split": "mlearn Li+Si test (seen once, after the choice)",
           "chosen": name, "models": {}}
    for spec in specs or MODELS:
        r = report_model(spec, name, kw)
        sig, err, el = r.pop("_sig"), r.pop("_err"), r.pop("_el")
        out["models"][spec] = r
        if spec == "chgnet:0.3.0":
            plot(sig, err, el, REPO / "docs" / "figures" / "uncertainty_calibration.png")
    (REPO / "results").mkdir(exist_ok=True)
    (REPO / "results" / "uncertainty.json").write_text(json.dumps(out, indent=1))


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
    main(*sys.argv[1:])
