"""Evidence: do single-model monitors find real prediction errors? (issue 4)

For CHGNet 0.3.0 and SevenNet-0 on every mlearn Li and Si structure (train + test, Zuo et al.
2020, DFT PBE), compare per-atom force errors against DFT with per-atom scores:

* the atypical monitor as shipped (k=5 NN distance, projected space, MP-20 reference bank),
* variants (other k, whitened projection, raw feature space, Mahalanobis / GMM densities, a bank
  with rattled reference structures, per-element normalisation, combinations with the model's
  own force magnitude),
* the committee baseline (force disagreement between 2, 3 or 4 models, as DP-GEN),
* the model's own force magnitude.

Metrics: Spearman correlation with the error and AUROC for flagging the atoms with the largest
10% errors (top decile recomputed inside each subset), per element, per config_type, for absolute
|dF| and relative |dF| / (|F_DFT| + EPS) errors, and at structure level (max / mean score per
structure against force RMSE and |energy error per atom|). Plus each score's cost per frame
relative to one model evaluation.

    .venv-sevenn/bin/python research/evidence_detection.py            # full (timings: docs/detection.md)
    .venv-sevenn/bin/python research/evidence_detection.py --quick    # test splits, 2+1 models

Model outputs (energies, forces, per-atom features, timings) are cached under
~/.cache/platoscope/evidence/ so reruns only recompute scores. Writes results/detection.json
(or results/detection_quick.json with --quick), docs/figures/detection_*.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "mlearn"
CACHE = Path(os.environ.get("PLATOSCOPE_EVIDENCE_CACHE",
                            Path.home() / ".cache" / "platoscope" / "evidence"))
FILES = ["Li_training.json.gz", "Li_test.json", "Si_training.json.gz", "Si_test.json"]
TARGETS = {"chgnet-0.3.0": "chgnet:0.3.0", "7net-0": "sevenn:7net-0"}
EXTRA_COMMITTEE = {"chgnet-0.2.0": "chgnet:0.2.0", "7net-l3i5": "sevenn:7net-l3i5"}
EPS = 0.1  # eV/Å, relative error = |dF| / (|F_DFT| + EPS)
EPS_ALT = 0.5
TOP = 0.10  # positives: the atoms (structures) with the largest 10% errors
RATTLE = (0.05, 0.1, 0.2)  # Å, Gaussian displacements of the rattled reference copies
CONFIG_TYPES = ("AIMD-NVT", "Elastic", "Surface", "Vacancy")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# data and model outputs
# ----------------------------------------------------------------------------------------------
def load_data(quick: bool) -> tuple[list, dict[str, np.ndarray]]:
    from platoscope.readers import read_structures, structures_hash

    structures = []
    for f in FILES:
        if quick and "training" in f:
            continue
        structures.extend(read_structures(DATA / f))
    n = np.array([len(a) for a in structures])
    meta = {
        "sid": np.repeat(np.arange(len(structures)), n),
        "Z": np.concatenate([a.numbers for a in structures]),
        "config": np.repeat([a.info["config_type"] for a in structures], n),
        "split": np.repeat([a.info["split"] for a in structures], n),
        "F_dft": np.concatenate([a.arrays["dft_forces"] for a in structures]),
        "E_dft": np.array([a.info["dft_energy"] for a in structures]),
        "n_atoms": n,
        "s_config": np.array([a.info["config_type"] for a in structures]),
        "s_Z": np.array([a.numbers[0] for a in structures]),
    }
    meta["hash"] = structures_hash(structures)
    return structures, meta


def _key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def model_outputs(spec: str, structures: list, data_hash: str, tag: str) -> dict[str, np.ndarray]:
    """Energies (S,), forces (N,3), features (N,D), wall time per structure (S,) of one model.

    One backend.compute per structure (energy + forces + features from one forward pass), as a
    monitored MD step does. Cached.
    """
    from platoscope.backends import load_backend

    be = load_backend(spec)
    path = CACHE / f"{tag}_{spec.replace(':', '-')}_{_key(spec, be.fingerprint, data_hash)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    log(f"{spec}: computing {len(structures)} structures ({sum(map(len, structures))} atoms)")
    be.compute(structures[0], ["energy", "forces"])  # warm-up (lazy init, JIT)
    E, F, X, T, TC = [], [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, atoms in enumerate(structures):
            a = atoms.copy()
            t0, c0 = time.perf_counter(), time.process_time()
            res, feats = be.compute(a, ["energy", "forces"])
            T.append(time.perf_counter() - t0)
            TC.append(time.process_time() - c0)
            E.append(float(res["energy"]))
            F.append(np.asarray(res["forces"], dtype=np.float64))
            X.append(feats.astype(np.float32))
            if (i + 1) % 100 == 0:
                log(f"  {i + 1}/{len(structures)}")
    out = {"E": np.array(E), "F": np.concatenate(F), "X": np.concatenate(X), "T": np.array(T),
           "TC": np.array(TC)}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def bank_extras(spec: str, anchors: Any, light: bool = False) -> dict[str, Any]:
    """The model's default reference bank plus, cached: the model's forces on the (relaxed)
    MP-20 reference atoms, embeddings of rattled copies of the Li/Si reference structures, and
    of elemental Li/Si crystals. ``light`` (--quick) skips the first two unless cached."""
    from platoscope.backends import load_backend
    from platoscope.reference import default_bank, reference_structures

    be = load_backend(spec)
    bank = default_bank(be, anchors, progress=False)
    refs = reference_structures()
    path = CACHE / f"bank_{spec.replace(':', '-')}_{_key(spec, be.fingerprint, bank.data_hash, 'v2')}.npz"
    if path.is_file():
        with np.load(path) as z:
            extra = {k: z[k] for k in z.files}
    elif light:
        extra = {}
    else:
        log(f"{spec}: forces on {len(refs)} reference structures, rattled copies")
        forces = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for a in refs:
                res, _ = be.compute(a.copy(), ["energy", "forces"])
                forces.append(np.asarray(res["forces"]))
        sel = [i for i, a in enumerate(refs) if {3, 14} & set(a.numbers.tolist())]
        rng = np.random.default_rng(0)
        rattled, r_sid = [], []
        for sigma in RATTLE:
            for i in sel:
                a = refs[i].copy()
                a.positions += rng.normal(scale=sigma, size=a.positions.shape)
                rattled.append(a)
                r_sid.append(i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            feats = be.embed(rattled, batch_size=8)
        extra = {"bank_F": np.concatenate(forces),
                 "rat_X": np.concatenate(feats).astype(np.float32),
                 "rat_Z": np.concatenate([a.numbers for a in rattled]),
                 "rat_sid": np.repeat(np.array(r_sid), [len(a) for a in rattled]),
                 "rat_sigma": np.repeat(np.repeat(RATTLE, len(sel)), [len(a) for a in rattled])}
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(path, **extra)
    extra.update(elemental_extras(be))
    extra["bank"] = bank
    extra["backend"] = be
    return extra


ELEMENTAL_RATTLE = (0.0, 0.05, 0.1, 0.2, 0.3)  # Å


def elemental_structures() -> list:
    """Elemental Li and Si crystals (ASE's builders and ase.collections.dcdft), supercells of
    27-64 atoms, each perfect and rattled (Gaussian, ELEMENTAL_RATTLE, two seeds). Only Li and
    Si are built because only they are scored here; a shipped bank would do every element."""
    from ase.build import bulk
    from ase.collections import dcdft

    bases = [bulk("Li", "bcc", a=3.44, cubic=True) * (3, 3, 3),
             bulk("Li", "fcc", a=4.33, cubic=True) * (2, 2, 2),
             dcdft["Li"] * (3, 3, 1),
             bulk("Si", "diamond", a=5.47, cubic=True) * (2, 2, 2)]
    rng = np.random.default_rng(1)
    out = []
    for i, b in enumerate(bases):
        for sigma in ELEMENTAL_RATTLE:
            for _ in range(1 if sigma == 0 else 2):
                a = b.copy()
                a.positions += rng.normal(scale=sigma, size=a.positions.shape)
                a.info["base"] = i
                a.info["copy"] = len(out)
                out.append(a)
    return out


def elemental_extras(be: Any) -> dict[str, np.ndarray]:
    structs = elemental_structures()
    path = CACHE / f"elemental_{be.spec.replace(':', '-')}_{_key(be.spec, be.fingerprint, 'elem-v3')}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        feats = be.embed(structs, batch_size=8)
    out = {"elem_X": np.concatenate(feats).astype(np.float32),
           "elem_Z": np.concatenate([a.numbers for a in structs]),
           "elem_sid": np.concatenate([np.full(len(a), a.info["base"]) for a in structs]),
           "elem_copy": np.concatenate([np.full(len(a), a.info["copy"]) for a in structs])}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


# ----------------------------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------------------------
def knn_by_element(q: np.ndarray, qZ: np.ndarray, pool: np.ndarray, pZ: np.ndarray, k: int,
                   metric: str = "euclidean") -> np.ndarray:
    from platoscope.analysis.neighbors import knn_distance

    out = np.empty(len(q))
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    for z in np.unique(qZ):
        m = qZ == z
        p = pool[pZ == z]
        if len(p) == 0:
            p = pool
        out[m] = knn_distance(q[m], p, k)
    return out


def knn_mean_value(q, qZ, pool, pZ, values, k):
    """Mean of ``values`` over each query's k nearest same-element pool rows."""
    import torch

    out = np.empty(len(q))
    for z in np.unique(qZ):
        m = np.flatnonzero(qZ == z)
        sel = np.flatnonzero(pZ == z)
        d = torch.cdist(torch.as_tensor(q[m], dtype=torch.float64),
                        torch.as_tensor(pool[sel], dtype=torch.float64))
        idx = torch.topk(d, min(k, len(sel)), dim=1, largest=False).indices.numpy()
        out[m] = values[sel][idx].mean(axis=1)
    return out


class Scorers:
    """All single-model scores of one target model, fitted on its reference bank.

    Each entry of ``self.fns`` maps (X raw features, P projected coords, Z numbers, F model
    forces) of any set of atoms (one frame or all) to a score per atom; the same function is
    used for evaluation (all atoms at once) and for per-frame timing.
    """

    def __init__(self, ex: dict[str, Any]):
        from sklearn.covariance import LedoitWolf
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        from platoscope.coords import dense_rows
        from platoscope.monitors.atypical import AtypicalMonitor
        from platoscope.projection import Projector

        bank = ex["bank"]
        self.bank = bank
        self.monitor = AtypicalMonitor(bank, k=5, quantile=0.999)
        bX = bank.embeddings.astype(np.float64)
        bZ = bank.numbers
        bP = dense_rows(bank.coords)  # CSR for the element projection
        self.whiten = Projector("whiten").fit(bank.projector.anchors_, bX)
        bPw = self.whiten.transform(bX)
        mu, sd = bX.mean(0), bX.std(0) + 1e-8
        bXs = (bX - mu) / sd
        # per-element Mahalanobis (Ledoit-Wolf shrinkage) on raw features
        self.maha = {}
        for z in (3, 14):
            xs = bX[bZ == z]
            lw = LedoitWolf().fit(xs)
            self.maha[z] = (lw.location_, lw.precision_)
        # global GMM on standardised raw features, PCA-32
        self.pca = PCA(n_components=min(32, bX.shape[1]), random_state=0).fit(bXs)
        self.gmm = GaussianMixture(n_components=16, covariance_type="full", reg_covar=1e-3,
                                   random_state=0).fit(self.pca.transform(bXs))
        with_rattle = "rat_X" in ex
        # per-element scale of the shipped score: median leave-one-structure-out bank score
        self.med = {z: float(np.median(s)) for z, s in self.monitor.calibration_scores_.items()}
        thr = self.monitor.element_thresholds_
        if with_rattle:
            rX = np.concatenate([bX, ex["rat_X"].astype(np.float64)])
            rZ = np.concatenate([bZ, ex["rat_Z"]])
            rP = bank.projector.transform(rX)
        med = self.med

        def shipped(X, P, Z, F):
            # exactly the monitor as shipped; one Frame per call
            from ase import Atoms

            from platoscope.monitors.base import Frame

            return self.monitor.score(Frame(0, Atoms(numbers=Z), platonic=P, embeddings=X))

        def ratio(X, P, Z, F):
            s = shipped(X, P, Z, F)
            return s / np.array([thr[int(z)] for z in Z])

        def maha(X, P, Z, F):
            out = np.empty(len(X))
            for z in np.unique(Z):
                m = Z == z
                loc, prec = self.maha[int(z)]
                d = X[m] - loc
                out[m] = np.sqrt(np.einsum("ij,jk,ik->i", d, prec, d))
            return out

        def gmm(X, P, Z, F):
            return -self.gmm.score_samples(self.pca.transform((X - mu) / sd))

        def fmag(X, P, Z, F):
            return np.linalg.norm(F, axis=1)

        def dnorm(X, P, Z, F):
            return shipped(X, P, Z, F) / np.array([med[int(z)] for z in Z])

        self.fns: dict[str, Callable] = {
            "atyp_shipped": shipped,
            "atyp_ratio_to_threshold": ratio,
            "proj_k1": lambda X, P, Z, F: knn_by_element(P, Z, bP, bZ, 1),
            "proj_k20": lambda X, P, Z, F: knn_by_element(P, Z, bP, bZ, 20),
            "proj_whiten_k5": lambda X, P, Z, F: knn_by_element(self.whiten.transform(X), Z,
                                                                bPw, bZ, 5),
            "raw_k5": lambda X, P, Z, F: knn_by_element(X, Z, bX, bZ, 5),
            "raw_std_k5": lambda X, P, Z, F: knn_by_element((X - mu) / sd, Z, bXs, bZ, 5),
            "raw_cos_k5": lambda X, P, Z, F: knn_by_element(X, Z, bX, bZ, 5, "cosine"),
            "maha_element": maha,
            "gmm_nll": gmm,
            "own_force": fmag,
            "own_force_x_atyp": lambda X, P, Z, F: fmag(X, P, Z, F) * dnorm(X, P, Z, F),
            "own_force_plus_atyp": lambda X, P, Z, F: (fmag(X, P, Z, F) + EPS)
            * dnorm(X, P, Z, F),
        }
        eX = np.concatenate([bX, ex["elem_X"].astype(np.float64)])
        eZ = np.concatenate([bZ, ex["elem_Z"]])
        eP = bank.projector.transform(eX)
        self.fns["proj_k5_elemental_bank"] = lambda X, P, Z, F: knn_by_element(P, Z, eP, eZ, 5)
        self.fns["raw_k5_elemental_bank"] = lambda X, P, Z, F: knn_by_element(X, Z, eX, eZ, 5)
        # the same, through the library's own monitor (calibrated thresholds): a bank whose
        # reference set is MP-20 plus the elemental crystals, in projected and in raw space
        from platoscope.reference import ReferenceBank

        esid = np.concatenate([bank.structure_index,
                               bank.structure_index.max() + 1 + ex["elem_sid"]])

        # calibration groups: every copy of one crystal together (strict), or each rattled copy
        # on its own (its siblings stay in the pool: thresholds for thermal noise)
        esid_copy = np.concatenate([bank.structure_index,
                                    bank.structure_index.max() + 1 + ex["elem_copy"]])

        def aug_bank(projector: Any, groups: np.ndarray = esid) -> ReferenceBank:
            return ReferenceBank(eX, eZ, groups, projector=projector,
                                 anchor_set_hash=bank.anchor_set_hash, data_hash="augmented",
                                 provenance=bank.provenance)

        self.monitor_elem = AtypicalMonitor(aug_bank(bank.projector), k=5, quantile=0.999,
                                            space="projected")
        self.monitor_elem_raw = AtypicalMonitor(aug_bank(bank.projector), k=5, quantile=0.999)
        self.monitor_elem_raw_copy = AtypicalMonitor(aug_bank(bank.projector, esid_copy), k=5,
                                                     quantile=0.999)

        def mon_score(mon: AtypicalMonitor) -> Callable:
            def f(X, P, Z, F):
                from ase import Atoms

                from platoscope.monitors.base import Frame

                return mon.score(Frame(0, Atoms(numbers=Z), platonic=P, embeddings=X))
            return f

        self.fns["monitor_elemental_bank"] = mon_score(self.monitor_elem)
        self.fns["monitor_elemental_bank_raw"] = mon_score(self.monitor_elem_raw)
        if "bank_F" in ex:
            bF = np.linalg.norm(ex["bank_F"], axis=1)
            self.fns["bank_error_knn"] = lambda X, P, Z, F: knn_mean_value(X, Z, bX, bZ, bF, 5)
        if with_rattle:
            self.fns["proj_k5_rattled_bank"] = lambda X, P, Z, F: knn_by_element(
                P, Z, rP, rZ, 5)
            self.fns["raw_k5_rattled_bank"] = lambda X, P, Z, F: knn_by_element(X, Z, rX, rZ, 5)
            self.fns["own_force_x_raw_rattled"] = lambda X, P, Z, F: fmag(X, P, Z, F) * \
                knn_by_element(X, Z, rX, rZ, 5)

    def all(self, X, P, Z, F) -> dict[str, np.ndarray]:
        return {name: np.asarray(fn(X, P, Z, F), dtype=np.float64)
                for name, fn in self.fns.items()}


def fitted_scores(scores: dict[str, np.ndarray], errs: dict[str, np.ndarray], Z: np.ndarray,
                  split: np.ndarray) -> dict[str, np.ndarray]:
    """Supervised upper bounds (NOT a monitor: they use DFT labels). Per element, a linear
    regression of log(error) on log(own |F|) and log(atypicality scores), fitted on the mlearn
    *train* split, evaluated on the *test* split (NaN on train atoms). Answers: does atypicality
    add information beyond the model's own force magnitude, if its weight were known?"""
    from sklearn.linear_model import LinearRegression

    atyp = ["atyp_shipped", "raw_k5", "proj_k1"] + (
        ["raw_k5_rattled_bank"] if "raw_k5_rattled_bank" in scores else [])
    sets = {"fit_force": ["own_force"], "fit_atyp": atyp, "fit_force_atyp": ["own_force", *atyp]}
    out = {}
    for ename in ("abs", "rel"):
        y = np.log(errs[ename] + 1e-3)
        for sname, cols in sets.items():
            x = np.column_stack([np.log(scores[c] + 1e-3) for c in cols])
            pred = np.full(len(y), np.nan)
            for z in np.unique(Z):
                tr, te = (Z == z) & (split == "train"), (Z == z) & (split == "test")
                pred[te] = LinearRegression().fit(x[tr], y[tr]).predict(x[te])
            out[f"{sname}_{ename}"] = pred
    return out


def committee(forces: list[np.ndarray]) -> np.ndarray:
    """DP-GEN model deviation: sqrt(mean_m |F_m - <F>|^2) per atom; for two models this is
    |F_a - F_b| / 2, a monotone function of the pairwise disagreement."""
    f = np.stack(forces)
    return np.sqrt(((f - f.mean(0)) ** 2).sum(-1).mean(0))


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
def metrics(score: np.ndarray, err: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(score) & np.isfinite(err)
    s, e = score[ok], err[ok]
    if len(e) < 20:
        return {"spearman": float("nan"), "auroc": float("nan"), "n": len(e)}
    cut = np.quantile(e, 1 - TOP)
    y = e >= cut
    auc = roc_auc_score(y, s) if 0 < y.sum() < len(y) else float("nan")
    return {"spearman": float(spearmanr(s, e).statistic), "auroc": float(auc), "n": len(e)}


def struct_reduce(v: np.ndarray, sid: np.ndarray, n_struct: int, how: str) -> np.ndarray:
    if how == "max":
        out = np.full(n_struct, -np.inf)
        np.maximum.at(out, sid, v)
        return out
    return np.bincount(sid, weights=v, minlength=n_struct) / np.bincount(sid, minlength=n_struct)


# ----------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="test splits only, committee of the two target models plus "
                         "chgnet:0.2.0, no rattled bank")
    ap.add_argument("--out", default=None, help="JSON output (default results/detection.json)")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="also print the docs' tables")
    ap.add_argument("--timing-frames", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (timings are CPU "
                    "seconds of this process, so they do not depend on other load)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # nanmean of empty slices
    warnings.filterwarnings("ignore", message="An input array is constant")

    import torch

    torch.set_num_threads(args.threads)
    from platoscope import AnchorSet

    structures, meta = load_data(args.quick)
    tag = "quick" if args.quick else "full"
    N, S = len(meta["Z"]), len(structures)
    log(f"{S} structures, {N} atoms ({tag})")
    anchors = AnchorSet.default()

    extra = dict(EXTRA_COMMITTEE)
    if args.quick:
        extra.pop("7net-l3i5")
    outs = {name: model_outputs(spec, structures, meta["hash"], tag)
            for name, spec in {**TARGETS, **extra}.items()}

    sid, Z = meta["sid"], meta["Z"]
    fd = np.linalg.norm(meta["F_dft"], axis=1)
    n_at = meta["n_atoms"]
    # committee scores (same for both targets)
    comm = {
        "committee2": committee([outs["chgnet-0.3.0"]["F"], outs["7net-0"]["F"]]),
        "committee3": committee([outs[m]["F"] for m in ("chgnet-0.3.0", "7net-0",
                                                        "chgnet-0.2.0")]),
    }
    comm_E = {"committee2": np.abs(outs["chgnet-0.3.0"]["E"] - outs["7net-0"]["E"]) / n_at}
    if "7net-l3i5" in outs:
        comm["committee4"] = committee([outs[m]["F"] for m in outs])
        comm_E["committee4"] = np.std([outs[m]["E"] / n_at for m in outs], axis=0)

    results: dict[str, Any] = {
        "command": "python research/evidence_detection.py" + (" --quick" if args.quick else ""),
        "data": {"files": [f for f in FILES if not (args.quick and "training" in f)],
                 "structures": S, "atoms": N, "structures_hash": meta["hash"],
                 "atoms_per_element": {"Li": int((Z == 3).sum()), "Si": int((Z == 14).sum())},
                 "atoms_per_config_type": {c: int((meta["config"] == c).sum())
                                           for c in CONFIG_TYPES}},
        "definitions": {
            "abs_error": "|F_model - F_DFT| per atom (eV/Å)",
            "rel_error": f"|F_model - F_DFT| / (|F_DFT| + {EPS}) per atom",
            "rel_error_eps_alt": f"same with eps = {EPS_ALT} eV/Å (sensitivity)",
            "positives": f"atoms (structures) with the largest {int(TOP * 100)}% errors, "
                         "recomputed inside each subset",
            "struct_force_rmse": "sqrt(mean over the structure's atoms of |dF|^2)",
            "struct_energy_error": "|dE/atom - median_element(dE/atom)|: the per-element median "
                                   "offset (different PBE settings in mlearn and MP) removed",
            "committee": "DP-GEN model deviation sqrt(mean_m |F_m - <F>|^2); committee2 = "
                         "chgnet:0.3.0 + sevenn:7net-0, committee3 + chgnet:0.2.0, "
                         "committee4 + sevenn:7net-l3i5",
        },
        "models": {}, "costs": {},
    }

    per_target: dict[str, Any] = {}
    for tname, tspec in TARGETS.items():
        o = outs[tname]
        log(f"{tname}: reference bank and scores")
        ex = bank_extras(tspec, anchors, light=args.quick)
        bank = ex["bank"]
        X = o["X"].astype(np.float64)
        P = bank.projector.transform(X)
        # check: projecting the cached features equals what PlatonicCalculator would store
        t0 = time.perf_counter()
        sc = Scorers(ex)
        t_fit = time.perf_counter() - t0
        scores = sc.all(X, P, Z, o["F"])
        scores.update(comm)
        dF = np.linalg.norm(o["F"] - meta["F_dft"], axis=1)
        errs = {"abs": dF, "rel": dF / (fd + EPS), "rel_eps0.5": dF / (fd + EPS_ALT)}
        if not args.quick:
            scores.update(fitted_scores(scores, errs, Z, meta["split"]))
        # structure-level targets
        rmse = np.sqrt(np.bincount(sid, weights=dF ** 2, minlength=S) / n_at)
        dE = (o["E"] - meta["E_dft"]) / n_at
        offs = {int(z): float(np.median(dE[meta["s_Z"] == z])) for z in (3, 14)}
        dEc = np.abs(dE - np.array([offs[int(z)] for z in meta["s_Z"]]))
        test = meta["split"] == "test"
        subsets = {"all": np.ones(N, bool), "Li": Z == 3, "Si": Z == 14,
                   "test": test, "test/Li": test & (Z == 3), "test/Si": test & (Z == 14),
                   **{c: meta["config"] == c for c in CONFIG_TYPES},
                   **{f"{el}/{c}": (Z == zz) & (meta["config"] == c)
                      for el, zz in (("Li", 3), ("Si", 14)) for c in CONFIG_TYPES}}
        atom_tab: dict[str, Any] = {}
        for sname, s in scores.items():
            atom_tab[sname] = {ename: {sub: metrics(s[m], e[m]) for sub, m in subsets.items()}
                               for ename, e in errs.items()}
        s_test = np.array([a.info["split"] == "test" for a in structures])
        s_subsets = {"all": np.ones(S, bool), "Li": meta["s_Z"] == 3, "Si": meta["s_Z"] == 14,
                     "test": s_test,
                     "Li+Si, no Elastic": meta["s_config"] != "Elastic"}
        struct_tab: dict[str, Any] = {}
        for sname, s in scores.items():
            struct_tab[sname] = {}
            for how in ("max", "mean"):
                v = struct_reduce(s, sid, S, how)
                struct_tab[sname][how] = {
                    "force_rmse": {k: metrics(v[m], rmse[m]) for k, m in s_subsets.items()},
                    "energy_error": {k: metrics(v[m], dEc[m]) for k, m in s_subsets.items()}}
        for cname, v in comm_E.items():
            struct_tab[f"{cname}_energy"] = {"value": {
                "force_rmse": {k: metrics(v[m], rmse[m]) for k, m in s_subsets.items()},
                "energy_error": {k: metrics(v[m], dEc[m]) for k, m in s_subsets.items()}}}
        # the monitors' alarms at their calibrated thresholds (quantile 0.999)
        top = dF >= np.quantile(dF, 1 - TOP)
        topr = errs["rel"] >= np.quantile(errs["rel"], 1 - TOP)
        alarms = {}
        for mname, mon, key in (("shipped", sc.monitor, "atyp_shipped"),
                                ("elemental_bank", sc.monitor_elem, "monitor_elemental_bank"),
                                ("elemental_bank_raw", sc.monitor_elem_raw,
                                 "monitor_elemental_bank_raw"),
                                ("elemental_bank_raw_per_copy_calibration",
                                 sc.monitor_elem_raw_copy, "monitor_elemental_bank_raw")):
            thr_m = np.array([mon.element_thresholds_[int(z)] for z in Z])
            flag = scores[key] > thr_m
            if mname == "shipped":
                thr = thr_m
            alarms[mname] = {
                "thresholds": {"Li": mon.element_thresholds_[3],
                               "Si": mon.element_thresholds_[14]},
                "flagged_fraction": float(flag.mean()),
                "flagged_fraction_per_config": {c: float(flag[meta["config"] == c].mean())
                                                for c in CONFIG_TYPES},
                "flagged_structures": len(np.unique(sid[flag])),
                "precision_top10_abs": float(top[flag].mean()) if flag.any() else None,
                "recall_top10_abs": float(flag[top].mean()),
                "precision_top10_rel": float(topr[flag].mean()) if flag.any() else None,
                "recall_top10_rel": float(flag[topr].mean()),
                "mean_abs_error_flagged": float(dF[flag].mean()) if flag.any() else None,
                "mean_abs_error_unflagged": float(dF[~flag].mean()),
                "by_quantile": {},
            }
            for q in (0.5, 0.9, 0.99):
                tq = np.array([np.quantile(mon.calibration_scores_[int(z)], q) for z in Z])
                fq = scores[key] > tq
                alarms[mname]["by_quantile"][str(q)] = {
                    "flagged_fraction": float(fq.mean()),
                    "precision_top10_abs": float(top[fq].mean()) if fq.any() else None,
                    "precision_top10_rel": float(topr[fq].mean()) if fq.any() else None,
                    "recall_top10_abs": float(fq[top].mean()),
                    "recall_top10_rel": float(fq[topr].mean())}
        # costs per frame, in CPU seconds of this process (robust to other load on the
        # machine): one model call (cached timing) vs each score on the same frames
        rng = np.random.default_rng(0)
        frames = rng.choice(S, size=min(args.timing_frames, S), replace=False)
        t_model = float(np.mean(o["TC"][frames]))
        cost = {}
        for sname, fn in sc.fns.items():
            fn(X[sid == frames[0]], P[sid == frames[0]], Z[sid == frames[0]],
               o["F"][sid == frames[0]])  # warm-up
            c0 = time.process_time()
            for i in frames:
                m = sid == i
                fn(X[m], P[m], Z[m], o["F"][m])
            cost[sname] = (time.process_time() - c0) / len(frames)
        c0 = time.process_time()
        for i in frames:
            bank.projector.transform(X[sid == i])
        t_proj = (time.process_time() - c0) / len(frames)

        def model_cost(name: str, frames: np.ndarray = frames) -> float:
            return float(np.mean(outs[name]["TC"][frames]))

        rel = {k: (t_model + t_proj + v) / t_model for k, v in cost.items()}
        rel["own_force"] = 1.0
        rel["committee2"] = 1 + model_cost("7net-0" if tname == "chgnet-0.3.0"
                                           else "chgnet-0.3.0") / t_model
        rel["committee3"] = 1 + sum(model_cost(m) for m in ("chgnet-0.3.0", "7net-0",
                                                             "chgnet-0.2.0")
                                    if m != tname) / t_model
        if "committee4" in comm:
            rel["committee4"] = 1 + sum(model_cost(m) for m in outs if m != tname) / t_model
        costs = {
            "model_cpu_s_per_frame": t_model,
            "model_wall_s_per_frame": float(np.mean(o["T"][frames])),
            "mean_atoms_per_frame": float(np.mean(n_at[frames])),
            "projection_cpu_s_per_frame": t_proj,
            "fit_s_once": t_fit,
            "score_cpu_s_per_frame": cost,
            "relative": rel,
        }
        results["models"][tname] = {
            "spec": tspec, "bank": {"atoms": len(bank), "Li": int((bank.numbers == 3).sum()),
                                    "Si": int((bank.numbers == 14).sum()),
                                    "rattled_extra_atoms": len(ex.get("rat_Z", [])),
                                    "elemental_extra_atoms": len(ex["elem_Z"])},
            "force_mae": float(dF.mean()), "force_rmse": float(np.sqrt((dF ** 2).mean())),
            "force_mae_per_config": {c: float(dF[meta["config"] == c].mean())
                                     for c in CONFIG_TYPES},
            "energy_offset_per_atom": {"Li": offs[3], "Si": offs[14]},
            "energy_mae_per_atom_offset_removed": float(dEc.mean()),
            "atom": atom_tab, "structure": struct_tab, "alarms": alarms, "costs": costs}
        per_target[tname] = {"scores": scores, "errs": errs, "rmse": rmse, "dEc": dEc}
        np.savez(CACHE / f"scores_{tag}_{tname}.npz", **scores, dF=dF, F_dft_norm=fd,
                 rmse=rmse, dEc=dEc, thr=thr)
        log(f"{tname}: done")

    results["runtime_s"] = time.perf_counter() - t_start
    from platoscope.provenance import invocation

    results["provenance"] = invocation()
    out = Path(args.out) if args.out else REPO / "results" / (
        "detection.json" if not args.quick else "detection_quick.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float))
    log(f"wrote {out}")
    print_tables(results)
    if args.markdown:
        print(markdown_tables(results))
    if not args.no_figures and not args.quick:
        figures(results, per_target, meta)
    log(f"total {time.perf_counter() - t_start:.0f} s")


SHOW = ["atyp_shipped", "atyp_ratio_to_threshold", "proj_k1", "proj_k20", "proj_whiten_k5",
        "raw_k5", "raw_std_k5", "raw_cos_k5", "maha_element", "gmm_nll", "bank_error_knn",
        "proj_k5_rattled_bank", "raw_k5_rattled_bank", "proj_k5_elemental_bank",
        "raw_k5_elemental_bank", "monitor_elemental_bank", "monitor_elemental_bank_raw",
        "own_force", "own_force_x_atyp",
        "own_force_plus_atyp", "own_force_x_raw_rattled", "committee2", "committee3",
        "committee4", "fit_force_abs", "fit_atyp_abs", "fit_force_atyp_abs", "fit_force_rel",
        "fit_atyp_rel", "fit_force_atyp_rel"]


def print_tables(res: dict[str, Any]) -> None:
    for tname, r in res["models"].items():
        print(f"\n== {tname}: force MAE {r['force_mae']:.3f} eV/Å; AUROC (Spearman) ==")
        cols = [("abs", "all"), ("abs", "Li"), ("abs", "Si"), ("rel", "all"), ("rel", "Li"),
                ("rel", "Si")]
        print(f"{'score':28s}" + "".join(f"{e + ':' + s:>16s}" for e, s in cols)
              + f"{'struct max/rmse':>18s}{'cost':>7s}")
        for name in SHOW:
            if name not in r["atom"]:
                continue
            a = r["atom"][name]
            row = "".join(f"{a[e][s]['auroc']:8.3f} ({a[e][s]['spearman']:+.2f})"
                          for e, s in cols)
            st = r["structure"][name]["max"]["force_rmse"]["all"]
            c = r["costs"]["relative"].get(name, float("nan"))
            print(f"{name:28s}{row}{st['auroc']:10.3f} ({st['spearman']:+.2f}){c:7.2f}")


MD_ROWS = ["atyp_shipped", "proj_k1", "proj_k20", "proj_whiten_k5", "raw_k5", "raw_std_k5",
           "maha_element", "gmm_nll", "bank_error_knn", "proj_k5_rattled_bank",
           "raw_k5_rattled_bank", "proj_k5_elemental_bank", "raw_k5_elemental_bank",
           "own_force", "own_force_x_atyp", "own_force_x_raw_rattled", "committee2",
           "committee3", "committee4"]


def markdown_tables(res: dict[str, Any]) -> str:
    """The tables of docs/detection.md, from results/detection.json."""
    out = []
    for tname, r in res["models"].items():
        rel = r["costs"]["relative"]
        out.append(f"\n#### {tname} (force MAE {r['force_mae']:.3f} eV/Å per atom |ΔF|)\n")
        out.append("| score | abs all | abs Li | abs Si | rel all | rel Li | rel Si "
                   "| str. F-RMSE Li | str. F-RMSE Si | str. ΔE Li | str. ΔE Si | cost |")
        out.append("|---" * 12 + "|")
        for n in MD_ROWS:
            if n not in r["atom"]:
                continue
            a, st = r["atom"][n], r["structure"][n]["max"]
            cells = [a[e][sub]["auroc"] for e in ("abs", "rel") for sub in ("all", "Li", "Si")]
            cells += [st[t][sub]["auroc"] for t in ("force_rmse", "energy_error")
                      for sub in ("Li", "Si")]
            cost = rel.get(n)
            out.append(f"| {n} | " + " | ".join(f"{c:.2f}" for c in cells)
                       + f" | {cost:.3f}x |" if cost else " | ")
        out.append("")
        out.append(f"Spearman ρ, {tname} (atoms, all / Li / Si; abs then rel):\n")
        out.append("| score | abs all | abs Li | abs Si | rel all | rel Li | rel Si |")
        out.append("|---" * 7 + "|")
        for n in ("atyp_shipped", "proj_k1", "raw_k5", "raw_k5_elemental_bank", "own_force",
                  "own_force_x_atyp", "committee2", "committee3", "committee4"):
            if n in r["atom"]:
                a = r["atom"][n]
                out.append(f"| {n} | " + " | ".join(
                    f"{a[e][sub]['spearman']:+.2f}" for e in ("abs", "rel")
                    for sub in ("all", "Li", "Si")) + " |")
        out.append("")
        out.append(f"Per config type, {tname} (AUROC, abs / rel):\n")
        out.append("| score | " + " | ".join(CONFIG_TYPES) + " |")
        out.append("|---" * 5 + "|")
        for n in ("atyp_shipped", "raw_k5_elemental_bank", "own_force", "committee2",
                  "committee4"):
            if n in r["atom"]:
                a = r["atom"][n]
                out.append(f"| {n} | " + " | ".join(
                    f"{a['abs'][c]['auroc']:.2f} / {a['rel'][c]['auroc']:.2f}"
                    for c in CONFIG_TYPES) + " |")
        if "fit_force_atyp_abs" in r["atom"]:
            out.append("")
            out.append(f"Test split only, {tname}: supervised fits (trained on the train "
                       "split's DFT errors) against the unsupervised scores (AUROC):\n")
            out.append("| score | abs test | abs test Li | abs test Si | rel test | rel test Li "
                       "| rel test Si |")
            out.append("|---" * 7 + "|")
            for n in ("atyp_shipped", "raw_k5_elemental_bank", "own_force", "committee2",
                      "committee3", "committee4", "fit_force_abs", "fit_atyp_abs",
                      "fit_force_atyp_abs", "fit_atyp_rel", "fit_force_atyp_rel"):
                a = r["atom"][n]
                out.append(f"| {n} | " + " | ".join(
                    f"{a[e][sub]['auroc']:.2f}" for e in ("abs", "rel")
                    for sub in ("test", "test/Li", "test/Si")) + " |")
    return "\n".join(out)


def figures(res: dict[str, Any], per_target: dict[str, Any], meta: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figdir = REPO / "docs" / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    names = ["atyp_shipped", "proj_k1", "raw_k5", "raw_k5_elemental_bank", "own_force",
             "own_force_x_atyp", "committee2", "committee3", "committee4"]
    subsets = ["all", "Li", "Si", "AIMD-NVT", "Elastic", "Surface", "Vacancy"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharey=True)
    for j, tname in enumerate(res["models"]):
        for i, e in enumerate(("abs", "rel")):
            ax = axes[i, j]
            tab = res["models"][tname]["atom"]
            w = 0.8 / len(names)
            for k, n in enumerate(names):
                if n not in tab:
                    continue
                vals = [tab[n][e][s]["auroc"] for s in subsets]
                ax.bar(np.arange(len(subsets)) + k * w, vals, w, label=n)
            ax.axhline(0.5, color="k", lw=0.5)
            ax.set_xticks(np.arange(len(subsets)) + 0.4 - w / 2, subsets)
            ax.set_ylim(0.3, 1.0)
            ax.set_title(f"{tname}: {'|ΔF|' if e == 'abs' else '|ΔF|/(|F_DFT|+0.1)'}, "
                         "AUROC top 10%")
    axes[0, 0].legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(figdir / "detection_auroc.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    for j, tname in enumerate(res["models"]):
        d = per_target[tname]
        e = d["errs"]["abs"]
        for i, (n, lab) in enumerate((("atyp_shipped", "atypical (shipped)"),
                                      ("own_force", "own |F|"),
                                      ("committee2", "committee (2 models)"))):
            ax = axes[j, i]
            for c, col in zip(CONFIG_TYPES, ("C0", "C1", "C2", "C3"), strict=True):
                m = meta["config"] == c
                ax.scatter(d["scores"][n][m], e[m], s=2, alpha=0.3, color=col, label=c)
            if n != "atyp_shipped":
                ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(lab)
            ax.set_ylabel(f"|ΔF| {tname} (eV/Å)")
            r = res["models"][tname]["atom"][n]["abs"]["all"]
            ax.set_title(f"{tname}: AUROC {r['auroc']:.2f}, ρ {r['spearman']:.2f}")
        axes[j, 0].legend(markerscale=5, fontsize=7)
    fig.tight_layout()
    fig.savefig(figdir / "detection_scatter.png", dpi=110)
    plt.close(fig)
    log(f"figures in {figdir}")


if __name__ == "__main__":
    sys.exit(main())
