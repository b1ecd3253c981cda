#!/usr/bin/env python
"""Is the shared (anchor-projected) space actually shared? Measurements on held-out atoms.

Reads the per-atom embeddings cached by ``research/embed_corpus.py`` (run that first) and
measures, for every pair of the six offline models (CHGNet 0.3.0 / 0.2.0 / r2scan, SevenNet
7net-0 / 7net-l3i5 / 7net-mf-0@PBE), on the held-out MP-20 ``val.csv`` atoms:

* same-environment retrieval top-1 / top-5: a query atom's coordinates from model A, ranked
  among *all* val atoms' coordinates from model B (Euclidean); a hit is the same atom or a
  symmetry-equivalent atom of the same structure; one query per distinct environment
  (equivalence class, spglib symprec 1e-3); exact chance level;
* mutual k-NN@10 (one row per equivalence class) in the raw spaces (cosine) and in the
  projected space; linear CKA raw and projected;

for a family of projections: the paper's recipe (plain cosine to K = 100 DIRECT anchors chosen on
CHGNet 0.3.0), feature normalisation (none / center / standardize / whiten, statistics fitted on
each model's *own* train embeddings), K, anchor selection (DIRECT / FPS / random, on CHGNet or on
SevenNet, with or without per-element coverage), a softmax kernel on the cosines
(``z = sqrt(softmax(cos / tau))``) and the feature layer of each model. No configuration fits
anything on pairs of models; a ridge map fitted on paired train atoms is reported as an upper
bound only. Then, for the paper recipe and the best configuration: OT same-atom / same-element
mass, periodicity, embedding arithmetic (perov5 A/B-site substitutions) and the bias table, and
retrieval on two more held-out sets (perov5, carbon24; not used to choose the configuration).

Outputs: ``results/shared_space.json``, ``docs/figures/shared_space_*.png``, markdown tables on
stdout. ``--quick`` runs a reduced grid (about a minute or two).

    python research/embed_corpus.py --corpora mp20_train mp20_val perov5 carbon24
    python research/evidence_shared_space.py            # full (timings: docs/shared_space.md)
    python research/evidence_shared_space.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from embed_corpus import CORPORA, default_cache, slug  # noqa: E402

from platoscope.analysis import (  # noqa: E402
    arithmetic_retrieval,
    bias_table,
    element_means,
    linear_cka,
    mutual_knn,
    periodicity_score,
    plot_periodicity_heatmap,
    retrieval_accuracy,
    retrieval_chance,
    substitution_vector,
    transport,
)
from platoscope.analysis.neighbors import knn_sets  # noqa: E402
from platoscope.projection import Projector  # noqa: E402
from platoscope.provenance import invocation  # noqa: E402
from platoscope.readers import read_structures  # noqa: E402
from platoscope.selection import select_anchors  # noqa: E402
from platoscope.symmetry import symmetry_groups  # noqa: E402

CHGNET = ["chgnet:0.3.0", "chgnet:0.2.0", "chgnet:r2scan"]
SEVENN = ["sevenn:7net-0", "sevenn:7net-l3i5", "sevenn:7net-mf-0@PBE"]
MODELS = CHGNET + SEVENN
SHORT = {"chgnet:0.3.0": "CH-0.3", "chgnet:0.2.0": "CH-0.2", "chgnet:r2scan": "CH-r2",
         "sevenn:7net-0": "7n-0", "sevenn:7net-l3i5": "7n-l3i5",
         "sevenn:7net-mf-0@PBE": "7n-mf0"}
CHGNET_LAYERS = ["conv0", "conv1", "atom_fea", "conv3"]  # atom_fea is conv2 (the paper's)
SEVENN_LAYERS = [f"{i}_equivariant_gate" for i in range(4)] + ["pre_readout"]  # 4_gate == pre
SYMPREC = 1e-3
KNN = 10


@dataclass(frozen=True)
class Config:
    """One member of the projection family; everything per model, nothing paired."""

    normalize: str = "none"        # none | center | standardize | whiten (Projector)
    k: int = 100                   # number of anchors
    select: str = "direct"         # direct | fps | random
    select_on: str = "chgnet:0.3.0"
    select_layer: str = "atom_fea"
    per_element: bool = False      # at least one anchor per element of the train set
    tau: float | None = None       # softmax kernel temperature; None: raw cosines (paper)
    perplexity: float | None = None  # instead of tau: per-atom temperature with this perplexity
    chgnet_layer: str = "atom_fea"
    sevenn_layer: str = "pre_readout"

    def label(self) -> str:
        kern = ("cos" if self.tau is None and self.perplexity is None
                else f"softmax perplexity={self.perplexity:g}" if self.perplexity
                else f"softmax tau={self.tau:g}")
        sel = self.select + ("" if self.select_on == "chgnet:0.3.0" else
                             f"@{SHORT[self.select_on]}/{self.select_layer.replace('_equivariant', '')}")
        sel += "+elem" if self.per_element else ""
        return (f"{self.normalize}, K={self.k}, {sel}, {kern}, "
                f"layers {self.chgnet_layer}/{self.sevenn_layer}")

    def layer(self, model: str) -> str:
        return self.chgnet_layer if model.startswith("chgnet") else self.sevenn_layer


PAPER = Config()
# The configuration this study recommends (chosen on MP-20 val; perov5/carbon24 confirm it).
BEST = Config(normalize="center", k=3000, tau=0.015, sevenn_layer="1_equivariant_gate")
BEST_PAPER_LAYERS = replace(BEST, sevenn_layer="pre_readout")


# ----------------------------------------------------------------------------- data

class Data:
    """Cached embeddings, symmetry classes and anchor selections; everything memoised."""

    def __init__(self, cache: Path, data_root: Path, models: list[str]):
        self.cache, self.data_root, self.models = cache, data_root, models
        self._emb: dict = {}
        self._sel: dict = {}
        self._stats: dict = {}
        self.train_valid = None
        self.meta: dict = {}

    def path(self, corpus: str, model: str, layer: str) -> Path:
        return self.cache / corpus / slug(model) / f"{layer}.npz"

    def raw(self, corpus: str, model: str, layer: str) -> dict:
        key = (corpus, model, layer)
        if key not in self._emb:
            p = self.path(corpus, model, layer)
            if not p.exists():
                raise FileNotFoundError(
                    f"{p} is missing: run python research/embed_corpus.py --models {model} "
                    f"--corpora {corpus}")
            with np.load(p) as z:
                self._emb[key] = {k: z[k] for k in z.files}
            self.meta.setdefault(corpus, {})[f"{model}/{layer}"] = {
                "fingerprint": str(self._emb[key]["fingerprint"]),
                "data_hash": str(self._emb[key]["data_hash"]),
                "ms_per_atom": float(self._emb[key]["ms_per_atom"])}
        return self._emb[key]

    def emb(self, corpus: str, model: str, layer: str) -> np.ndarray:
        """(M, D) float64; train rows restricted to atoms every model could embed."""
        e = self.raw(corpus, model, layer)["embeddings"].astype(np.float64)
        if corpus == "mp20_train":
            e = e[self.valid_train()]
        elif not np.isfinite(e).all():
            raise ValueError(f"{corpus}: {model} refused some structures; not supported here")
        return e

    def numbers(self, corpus: str) -> np.ndarray:
        z = self.raw(corpus, self.models[0], "atom_fea" if self.models[0].startswith("chgnet")
                     else "pre_readout")["numbers"].astype(np.int64)
        return z[self.valid_train()] if corpus == "mp20_train" else z

    def valid_train(self) -> np.ndarray:
        if self.train_valid is None:
            masks = [self.raw("mp20_train", m, "atom_fea" if m.startswith("chgnet")
                              else "pre_readout")["valid"] for m in self.models]
            self.train_valid = np.all(masks, axis=0)
        return self.train_valid

    def stats(self, model: str, layer: str, normalize: str, anchor_rows: np.ndarray
              ) -> Projector:
        key = (model, layer, normalize, anchor_rows.tobytes())
        if key not in self._stats:
            tr = self.emb("mp20_train", model, layer)
            self._stats[key] = Projector(normalize).fit(tr[anchor_rows], tr)
        return self._stats[key]

    def anchors(self, cfg: Config) -> np.ndarray:
        key = (cfg.select, cfg.k, cfg.select_on, cfg.select_layer, cfg.per_element)
        if key not in self._sel:
            feats = self.emb("mp20_train", cfg.select_on, cfg.select_layer)
            kw = {"per_element": self.numbers("mp20_train")} if cfg.per_element else {}
            t0 = time.perf_counter()
            res = select_anchors(feats, cfg.k, method=cfg.select, random_state=0, **kw)
            self._sel[key] = (np.asarray(res.indices), time.perf_counter() - t0)
        return self._sel[key][0]


def symmetry_classes(path: Path) -> tuple[np.ndarray, list]:
    """Global class id per atom (unique across structures) and the structures."""
    structures = read_structures(path)
    return symmetry_groups(structures, SYMPREC), structures


def representatives(groups: np.ndarray) -> np.ndarray:
    _, first = np.unique(groups, return_index=True)
    return np.sort(first)


# ----------------------------------------------------------------------------- projection

def kernel(z: np.ndarray, tau: float | None, perplexity: float | None = None) -> np.ndarray:
    """sqrt(softmax(z / tau)) row-wise (unit rows: Euclidean distance = Hellinger), or z.

    perplexity: per-row tau found by bisection so that exp(entropy) of the softmax equals it
    (as in t-SNE): scale-free, and wider where the anchors are sparse around an atom.
    """
    if perplexity is not None:
        lo, hi = np.full(len(z), 1e-5), np.full(len(z), 10.0)
        zc = z - z.max(axis=1, keepdims=True)
        for _ in range(40):
            t = np.sqrt(lo * hi)
            p = np.exp(zc / t[:, None])
            p /= p.sum(axis=1, keepdims=True)
            h = -(p * np.log(np.maximum(p, 1e-300))).sum(axis=1)
            wide = h > math.log(perplexity)
            hi, lo = np.where(wide, t, hi), np.where(wide, lo, t)
        return np.sqrt(p)
    if tau is None:
        return z
    x = (z - z.max(axis=1, keepdims=True)) / tau
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return np.sqrt(x, out=x)


def project_corpus(data: Data, cfg: Config, corpus: str, models: list[str] | None = None
                   ) -> dict[str, np.ndarray]:
    rows = data.anchors(cfg)
    out = {}
    for m in models or data.models:
        layer = cfg.layer(m)
        proj = data.stats(m, layer, cfg.normalize, rows)
        out[m] = kernel(proj.transform(data.emb(corpus, m, layer)), cfg.tau, cfg.perplexity)
    return out


# ----------------------------------------------------------------------------- alignment

def knn_overlap(na: np.ndarray, nb: np.ndarray) -> float:
    """Mutual k-NN from precomputed neighbour sets; equals analysis.mutual_knn on the rows that
    made them (each model's sets are computed once instead of once per pair)."""
    return float((na[:, :, None] == nb[:, None, :]).any(axis=2).sum() / na.size)


def family(m: str) -> str:
    return m.split(":")[0]


def evaluate(data: Data, cfg: Config, groups: np.ndarray, corpus: str = "mp20_val",
             full: bool = False, raw_cache: dict | None = None) -> dict:
    """Pairwise retrieval / mutual k-NN (and CKA if ``full``) of one configuration."""
    models = data.models
    z = project_corpus(data, cfg, corpus)
    reps = representatives(groups)
    n = len(models)
    top1, top5 = np.full((n, n), np.nan), np.full((n, n), np.nan)
    mk, mk_raw = np.full((n, n), np.nan), np.full((n, n), np.nan)
    cka, cka_raw = np.full((n, n), np.nan), np.full((n, n), np.nan)
    for i, j in itertools.permutations(range(n), 2):
        a, b = models[i], models[j]
        if full:
            top1[i, j] = retrieval_accuracy(z[a], z[b], 1, groups=groups)
        top5[i, j] = retrieval_accuracy(z[a], z[b], 5, groups=groups)
    raw_cache = {} if raw_cache is None else raw_cache
    nn = {m: knn_sets(z[m][reps], KNN, "euclidean") for m in models}
    nn_raw = {}
    for m in models:
        key = ("knn", corpus, m, cfg.layer(m))
        if key not in raw_cache:
            raw_cache[key] = knn_sets(data.emb(corpus, m, cfg.layer(m))[reps], KNN, "cosine")
        nn_raw[m] = raw_cache[key]
    for i, j in itertools.combinations(range(n), 2):
        a, b = models[i], models[j]
        mk[i, j] = mk[j, i] = knn_overlap(nn[a], nn[b])
        mk_raw[i, j] = mk_raw[j, i] = knn_overlap(nn_raw[a], nn_raw[b])
        if full:
            cka[i, j] = cka[j, i] = linear_cka(z[a][reps], z[b][reps])
            key = ("cka", corpus, a, cfg.layer(a), b, cfg.layer(b))
            if key not in raw_cache:
                raw_cache[key] = linear_cka(data.emb(corpus, a, cfg.layer(a))[reps],
                                            data.emb(corpus, b, cfg.layer(b))[reps])
            cka_raw[i, j] = cka_raw[j, i] = raw_cache[key]
    same = np.array([[family(a) == family(b) and a != b for b in models] for a in models])
    cross = np.array([[family(a) != family(b) for b in models] for a in models])
    res = {"config": asdict(cfg), "label": cfg.label(),
           "same_top5": float(np.nanmean(top5[same])), "cross_top5": float(np.nanmean(top5[cross])),
           "cross_top5_min": float(np.nanmin(top5[cross])),
           "mknn_cross": float(np.nanmean(mk[cross])), "mknn_cross_raw": float(np.nanmean(mk_raw[cross])),
           "mknn_same": float(np.nanmean(mk[same])), "mknn_same_raw": float(np.nanmean(mk_raw[same])),
           "mknn_pairs_at_or_above_raw": int(np.sum(mk[np.triu(same | cross, 1)]
                                                    >= mk_raw[np.triu(same | cross, 1)] - 1e-12)),
           "n_pairs": int(np.sum(np.triu(same | cross, 1)))}
    if full:
        res.update({"same_top1": float(np.nanmean(top1[same])),
                    "cross_top1": float(np.nanmean(top1[cross])),
                    "matrices": {"models": models, "top1": top1.tolist(), "top5": top5.tolist(),
                                 "mknn": mk.tolist(), "mknn_raw": mk_raw.tolist(),
                                 "cka": cka.tolist(), "cka_raw": cka_raw.tolist()}})
    return res


def ridge_upper_bound(data: Data, cfg: Config, groups: np.ndarray, alpha: float = 1.0) -> dict:
    """Supervised reference: ridge map A -> B fitted on *paired* train atoms (standardised raw
    features of the config's layers); the mapped val atoms are retrieved among B's val atoms."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    models = data.models
    n = len(models)
    top1, top5 = np.full((n, n), np.nan), np.full((n, n), np.nan)
    sc = {}
    for m in models:
        s = StandardScaler().fit(data.emb("mp20_train", m, cfg.layer(m)))
        sc[m] = (s.transform(data.emb("mp20_train", m, cfg.layer(m))),
                 s.transform(data.emb("mp20_val", m, cfg.layer(m))))
    for i, j in itertools.permutations(range(n), 2):
        a, b = models[i], models[j]
        pred = Ridge(alpha=alpha).fit(sc[a][0], sc[b][0]).predict(sc[a][1])
        top1[i, j] = retrieval_accuracy(pred, sc[b][1], 1, groups=groups)
        top5[i, j] = retrieval_accuracy(pred, sc[b][1], 5, groups=groups)
    same = np.array([[family(a) == family(b) and a != b for b in models] for a in models])
    cross = np.array([[family(a) != family(b) for b in models] for a in models])
    return {"layers": [cfg.chgnet_layer, cfg.sevenn_layer], "alpha": alpha,
            "same_top1": float(np.nanmean(top1[same])), "same_top5": float(np.nanmean(top5[same])),
            "cross_top1": float(np.nanmean(top1[cross])), "cross_top5": float(np.nanmean(top5[cross])),
            "top5": top5.tolist()}


# ----------------------------------------------------------------------------- other claims

def ot_table(z: dict, numbers: np.ndarray, groups: np.ndarray) -> dict:
    models = list(z)
    out = {}
    for a, b in itertools.combinations(models, 2):
        r = transport(z[a], z[b], elements=numbers)
        out[f"{a}|{b}"] = {"same_atom": r.same_atom_mass, "same_element": r.same_element_mass,
                           "same_class": float(np.mean(groups[r.matching] == groups)),
                           "cost": float(r.cost), "method": r.method.split(";")[0]}
    _, cnt = np.unique(numbers, return_counts=True)
    _, gcnt = np.unique(groups, return_counts=True)
    n = len(numbers)
    chance = {"same_atom": 1.0 / n, "same_element": float(np.sum((cnt / n) ** 2)),
              "same_class": float(np.sum(gcnt ** 2) / n ** 2)}
    return {"pairs": out, "chance": chance}


def periodicity_table(coords, numbers: np.ndarray) -> dict:
    """coords: iterable of (model, (N, D) array), consumed one model at a time."""
    out = {}
    for m, x in coords:
        el, means = element_means(numbers, x)
        s = periodicity_score(el, means)
        out[m] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in s.items()
                  if k != "nearest"}
    return out


def train_projections(data: Data, cfg: Config, models=None):
    """(model, train coordinates) one model at a time (K x 9k floats each)."""
    for m in models or data.models:
        yield m, project_corpus(data, cfg, "mp20_train", [m])[m]


def substitution_pairs(structures) -> list[tuple[int, int, int]]:
    """(structure i, structure j, site) for perovskites equal except at one cation site."""
    pairs = []
    for site in (0, 1):
        frames: dict = {}
        for i, a in enumerate(structures):
            sym = a.get_chemical_symbols()
            if len(sym) != 5:
                continue
            frames.setdefault(tuple(s for t, s in enumerate(sym) if t != site), []).append(i)
        for members in frames.values():
            for i, j in itertools.permutations(members, 2):
                pairs.append((i, j, site))
    return pairs


def arithmetic_table(data: Data, cfg: Config, structures, pairs) -> dict:
    """z(b at site) ~ z(a at site) + [mean_train(b) - mean_train(a)], retrieved among all
    perov5 atoms. The offset comes from MP-20 train element means (no perov5 data) and is added
    in the linear cosine coordinates; with a kernel, query and pool then go through it."""
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
    lin = replace(cfg, tau=None, perplexity=None)
    z_pv = project_corpus(data, lin, "perov5")
    num_tr = data.numbers("mp20_train")
    present = set(np.unique(num_tr).tolist())
    src, tgt, ea, eb = [], [], [], []
    for i, j, site in pairs:
        a, b = int(structures[i].numbers[site]), int(structures[j].numbers[site])
        if a in present and b in present and a != b:
            src.append(offsets[i] + site)
            tgt.append(offsets[j] + site)
            ea.append(a)
            eb.append(b)
    src, tgt = np.asarray(src), np.asarray(tgt)
    out = {"n_pairs": len(src), "pool": int(offsets[-1]), "per_model": {}, "stitching": {}}
    vec = {}
    for m, z_tr in train_projections(data, lin):
        # substitution_vector(Z, z, a, b) == means[b] - means[a]; element_means does all at once
        el, means = element_means(num_tr, z_tr)
        row = {int(e): i for i, e in enumerate(el)}
        vec[m] = np.asarray([means[row[b]] - means[row[a]] for a, b in zip(ea, eb)])
        if m == data.models[0] and ea:  # the same numbers as the library's one-pair helper
            assert np.allclose(vec[m][0], substitution_vector(num_tr, z_tr, ea[0], eb[0]))

    def score(a: str, b: str) -> dict:
        pool = kernel(z_pv[b], cfg.tau, cfg.perplexity)
        zero = np.zeros(pool.shape[1])
        r = arithmetic_retrieval(kernel(z_pv[a][src] + vec[b], cfg.tau, cfg.perplexity), None,
                                 pool, tgt, vector=zero, ks=(1, 5))
        r0 = arithmetic_retrieval(kernel(z_pv[a][src], cfg.tau, cfg.perplexity), None, pool,
                                  tgt, vector=zero, ks=(1, 5))
        return {"top1": r.accuracy[1], "top5": r.accuracy[5], "baseline_top1": r0.accuracy[1],
                "baseline_top5": r0.accuracy[5], "chance_top5": r.chance[5]}

    for m in data.models:
        out["per_model"][m] = score(m, m)
    # zero-shot stitching: source atom from model A, offset from model B, retrieved in B
    for a, b in [("chgnet:0.3.0", "sevenn:7net-0"), ("sevenn:7net-0", "chgnet:0.3.0"),
                 ("chgnet:0.3.0", "chgnet:0.2.0")]:
        out["stitching"][f"{a}->{b}"] = score(a, b)
    return out


def bias_summary(z: dict, numbers: np.ndarray, min_atoms: int = 10) -> dict:
    t = bias_table(z, numbers)
    keep = t.counts >= min_atoms
    from ase.data import chemical_symbols

    per_el = {}
    for e_i, e in enumerate(t.elements):
        if not keep[e_i]:
            continue
        col = t.excess[:, e_i]
        w = int(np.argmax(col))
        per_el[chemical_symbols[int(e)]] = {"n": int(t.counts[e_i]), "most_deviant": t.models[w],
                                            "excess": float(col[w]),
                                            "excess_by_model": {m: float(v) for m, v in
                                                                zip(t.models, col)}}
    overall = {m: float(np.median(t.deviation[i][keep])) for i, m in enumerate(t.models)}
    # elements on which each model is furthest off relative to its own typical deviation
    worst = {m: [chemical_symbols[int(e)] for e in t.elements[keep][np.argsort(-t.excess[i][keep])][:5]]
             for i, m in enumerate(t.models)}
    return {"median_deviation_by_model": overall, "worst_elements_by_model": worst,
            "per_element": per_el, "min_atoms": min_atoms}


# ----------------------------------------------------------------------------- figures

def plot_matrices(results: dict[str, dict], path: Path, key: str = "top5") -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(results), 4.6))
    FigureCanvasAgg(fig)
    for k, (title, res) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), k + 1)
        mat = np.array(res["matrices"][key], dtype=float)
        names = [SHORT[m] for m in res["matrices"]["models"]]
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
        for i, j in itertools.product(range(len(names)), repeat=2):
            if np.isfinite(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="w" if mat[i, j] < 0.6 else "k")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("retrieved in model B")
        ax.set_ylabel("query from model A")
        ax.set_title(title.replace(": ", ":\n", 1).replace(", layers", ",\nlayers"), fontsize=8)
    fig.colorbar(im, ax=fig.axes, fraction=0.02, label=f"same-environment {key}")
    fig.savefig(path, dpi=120, bbox_inches="tight")


def plot_layers(scan: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    for k, (key, title) in enumerate([("cross_top5", "cross-family top-5"),
                                      ("mknn_gain", "cross mutual kNN@10: projected - raw")]):
        ax = fig.add_subplot(1, 2, k + 1)
        mat = np.full((len(CHGNET_LAYERS), len(SEVENN_LAYERS)), np.nan)
        for r in scan:
            i = CHGNET_LAYERS.index(r["config"]["chgnet_layer"])
            j = SEVENN_LAYERS.index(r["config"]["sevenn_layer"])
            mat[i, j] = r["cross_top5"] if key == "cross_top5" else r["mknn_cross"] - r["mknn_cross_raw"]
        im = ax.imshow(mat, cmap="viridis" if k == 0 else "coolwarm",
                       vmin=None if k == 0 else -0.05, vmax=None if k == 0 else 0.05)
        for i, j in itertools.product(range(mat.shape[0]), range(mat.shape[1])):
            if np.isfinite(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.2f}" if k == 0 else f"{mat[i, j]:+.3f}",
                        ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(SEVENN_LAYERS)), [s.replace("_equivariant", "") for s in SEVENN_LAYERS],
                      rotation=30, fontsize=8)
        ax.set_yticks(range(len(CHGNET_LAYERS)), CHGNET_LAYERS, fontsize=8)
        ax.set_xlabel("SevenNet layer (all three SevenNet models)")
        ax.set_ylabel("CHGNet layer (all three)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ----------------------------------------------------------------------------- reporting

def row(r: dict) -> str:
    return (f"| {r['label']} | {r['same_top5']:.3f} | {r['cross_top5']:.3f} | "
            f"{r['cross_top5_min']:.3f} | {r['mknn_same']:.3f} / {r['mknn_same_raw']:.3f} | "
            f"{r['mknn_cross']:.3f} / {r['mknn_cross_raw']:.3f} | "
            f"{r['mknn_pairs_at_or_above_raw']}/{r['n_pairs']} |")


HEADER = ("| configuration | same-family top-5 | cross-family top-5 | cross min | "
          "mkNN@10 same (proj / raw) | mkNN@10 cross (proj / raw) | pairs proj >= raw |\n"
          "|---|---|---|---|---|---|---|")


def table(title: str, rows: list[dict]) -> str:
    return f"\n#### {title}\n\n{HEADER}\n" + "\n".join(row(r) for r in rows) + "\n"


def matrix_md(res: dict, key: str, fmt: str = "{:.2f}") -> str:
    models = res["matrices"]["models"]
    m = np.array(res["matrices"][key], dtype=float)
    lines = ["| A \\ B | " + " | ".join(SHORT[x] for x in models) + " |",
             "|---" * (len(models) + 1) + "|"]
    for i, a in enumerate(models):
        lines.append(f"| {SHORT[a]} | " + " | ".join("-" if not np.isfinite(v) else fmt.format(v)
                                                      for v in m[i]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=default_cache())
    p.add_argument("--data", type=Path, default=ROOT / "data")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON results (default results/shared_space.json; with --quick: none)")
    p.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    p.add_argument("--quick", action="store_true", help="reduced grids (a minute or two)")
    a = p.parse_args(argv)
    write_figures = not a.quick
    if a.out is None and not a.quick:
        a.out = ROOT / "results" / "shared_space.json"
    if write_figures:
        a.figures.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", category=UserWarning)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def tick(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 1)
        print(f"[{name}: {timings[name]:.1f} s]", file=sys.stderr, flush=True)

    data = Data(a.cache, a.data, MODELS)
    groups, _ = symmetry_classes(a.data / Path(CORPORA["mp20_val"]).relative_to("data"))
    numbers = data.numbers("mp20_val")
    n_val, n_cls = len(groups), len(np.unique(groups))
    info = {"val_atoms": n_val, "val_classes": n_cls, "train_atoms": int(data.valid_train().sum()),
            "train_atoms_dropped": int((~data.valid_train()).sum()), "symprec": SYMPREC,
            "chance_top1": retrieval_chance(len(groups), 1, groups), "chance_top5": retrieval_chance(len(groups), 5, groups),
            "chance_mknn": KNN / (n_cls - 1)}
    print(f"val: {n_val} atoms, {n_cls} distinct environments; chance top-1 "
          f"{info['chance_top1']:.4f}, top-5 {info['chance_top5']:.4f}, mkNN@10 "
          f"{info['chance_mknn']:.4f}", flush=True)
    raw_cache: dict = {}
    # the per-model neighbour sets used below reproduce analysis.mutual_knn exactly
    chk = evaluate(data, PAPER, groups, raw_cache={})["mknn_cross"]
    z0 = project_corpus(data, PAPER, "mp20_val")
    r0 = representatives(groups)
    lib = np.mean([mutual_knn(z0[x][r0], z0[y][r0], KNN, metric="euclidean")
                   for x in CHGNET for y in SEVENN])
    assert abs(chk - lib) < 1e-12, (chk, lib)
    out: dict = {"info": info, "paper": PAPER.label(), "best": BEST.label()}
    md: list[str] = []

    # 1. the paper's family: normalisation x K x selection, raw cosines, the paper's layers
    t0 = time.perf_counter()
    ks = [100, 1000] if a.quick else [100, 300, 1000]
    sels = ["direct"] if a.quick else ["direct", "fps", "random"]
    grid = []
    for sel, k, norm in itertools.product(sels, ks, ["none", "center", "standardize", "whiten"]):
        if sel != "direct" and k == 300:
            continue
        grid.append(evaluate(data, Config(normalize=norm, k=k, select=sel), groups,
                             raw_cache=raw_cache))
    out["grid_cosine"] = grid
    md.append(table("Plain cosine (the paper's kernel), paper layers: normalisation x K x "
                    "selection", grid))
    tick("grid_cosine", t0)

    # 2. the softmax kernel: tau x normalisation x K, DIRECT, paper layers
    t0 = time.perf_counter()
    taus = [0.02] if a.quick else [0.01, 0.02, 0.05]
    kgrid = []
    norms = ["none", "center", "standardize"] + ([] if a.quick else ["whiten"])
    combos = [(1000, n, 0.02) for n in norms]
    if not a.quick:
        combos += [(3000, n, t) for n in norms for t in taus]
    for k, norm, tau in combos:
        kgrid.append(evaluate(data, Config(normalize=norm, k=k, tau=tau), groups,
                              raw_cache=raw_cache))
    out["grid_kernel"] = kgrid
    md.append(table("Softmax kernel z = sqrt(softmax(cos/tau)), DIRECT on CHGNet 0.3.0, paper "
                    "layers", kgrid))
    tick("grid_kernel", t0)

    # 3. layers: every CHGNet layer x every SevenNet layer at the recommended projection
    t0 = time.perf_counter()
    base = replace(BEST, k=1000) if a.quick else BEST
    scan = []
    for cl, sl in itertools.product(CHGNET_LAYERS, SEVENN_LAYERS):
        if a.quick and cl not in ("atom_fea",):
            continue
        scan.append(evaluate(data, replace(base, chgnet_layer=cl, sevenn_layer=sl), groups,
                             raw_cache=raw_cache))
    out["layer_scan"] = scan
    md.append(table(f"Layers (projection: {base.normalize}, K={base.k}, softmax tau={base.tau})",
                    scan))
    if not a.quick:
        plot_layers(scan, a.figures / "shared_space_layers.png")
    tick("layer_scan", t0)

    # 4. anchor selection and K at the recommended projection
    t0 = time.perf_counter()
    sel_rows = []
    variants = [replace(BEST, k=k) for k in ([100, 300, 1000, 3000] if not a.quick else [100])]
    variants += [replace(BEST, select="fps"), replace(BEST, select="random"),
                 replace(BEST, normalize="none"), replace(BEST, normalize="standardize", tau=0.02),
                 replace(BEST, tau=None, perplexity=30.0),
                 replace(BEST, per_element=True),
                 replace(BEST, select_on="sevenn:7net-0", select_layer="pre_readout"),
                 replace(BEST, select_on="sevenn:7net-0", select_layer="1_equivariant_gate")]
    if a.quick:
        variants = [replace(v, k=min(v.k, 1000)) for v in variants]
    for v in variants:
        r = evaluate(data, v, groups, raw_cache=raw_cache)
        r["selection_seconds"] = round(data._sel[(v.select, v.k, v.select_on, v.select_layer,
                                                  v.per_element)][1], 2)
        sel_rows.append(r)
    out["selection"] = sel_rows
    md.append(table("Anchor selection, K and other variants at the recommended projection",
                    sel_rows))
    tick("selection", t0)

    # 5. full matrices: the paper, the recommended projection at the paper's layers, and at
    #    the recommended layers
    t0 = time.perf_counter()
    best = BEST if not a.quick else replace(BEST, k=1000)
    finals = {"paper": PAPER, "best_paper_layers": replace(best, sevenn_layer="pre_readout"),
              "best": best}
    full = {name: evaluate(data, cfg, groups, full=True, raw_cache=raw_cache)
            for name, cfg in finals.items()}
    out["full"] = full
    tick("full", t0)

    # 5b. supervised upper bound (paired ridge), paper layers and recommended layers
    t0 = time.perf_counter()
    out["ridge_upper_bound"] = {"paper_layers": ridge_upper_bound(data, PAPER, groups),
                                "best_layers": ridge_upper_bound(data, best, groups)}
    tick("ridge", t0)

    # 6. other held-out sets (never used to choose): perov5, carbon24
    t0 = time.perf_counter()
    other = {}
    if not a.quick:
        for corpus in ("perov5", "carbon24"):
            try:
                g2, _ = symmetry_classes(a.data / Path(CORPORA[corpus]).relative_to("data"))
            except FileNotFoundError:
                continue
            extra = {"best_perplexity30": replace(best, tau=None, perplexity=30.0),
                     "best_linear (no kernel)": replace(best, tau=None)}
            try:
                other[corpus] = {name: evaluate(data, cfg, g2, corpus=corpus, raw_cache=raw_cache)
                                 for name, cfg in {**finals, **extra}.items()}
            except FileNotFoundError as err:
                print(f"skipping {corpus}: {err}", file=sys.stderr)
                continue
            other[corpus]["info"] = {"atoms": len(g2), "classes": len(np.unique(g2)),
                                     "chance_top5": retrieval_chance(len(g2), 5, g2)}
    out["other_heldout"] = other
    tick("other_heldout", t0)

    # 7. OT, periodicity, arithmetic, bias: paper vs recommended
    t0 = time.perf_counter()
    z_val = {name: project_corpus(data, cfg, "mp20_val") for name, cfg in finals.items()}
    out["ot"] = {name: ot_table(z, numbers, groups) for name, z in z_val.items()}
    tick("ot", t0)
    t0 = time.perf_counter()
    num_tr = data.numbers("mp20_train")
    per = {}
    for name, cfg in finals.items():
        per[name] = {"train": periodicity_table(train_projections(data, cfg), num_tr),
                     "val": periodicity_table(z_val[name].items(), numbers)}
    lin = replace(best, tau=None)  # the same coordinates before the kernel
    per["best_linear"] = {"train": periodicity_table(train_projections(data, lin), num_tr)}
    per["raw"] = {"train": periodicity_table(
        ((m, data.emb("mp20_train", m, PAPER.layer(m))) for m in MODELS), num_tr)}
    per["raw_best_layers"] = {"train": periodicity_table(
        ((m, data.emb("mp20_train", m, best.layer(m))) for m in MODELS), num_tr)}
    out["periodicity"] = per
    # heat maps in the linear coordinates: the kernel is local (different elements share
    # almost no anchors), so its element-mean cosines are ~0 off the diagonal
    for m, z_tr in train_projections(data, lin, ["chgnet:0.3.0", "sevenn:7net-0"]):
        if not write_figures:
            break
        el, means = element_means(num_tr, z_tr)
        plot_periodicity_heatmap(el, means, a.figures / f"shared_space_periodicity_{slug(m)}.png",
                                 title=f"{m}: element means, {lin.label()}")
    tick("periodicity", t0)
    t0 = time.perf_counter()
    arith = {}
    pv_path = a.data / Path(CORPORA["perov5"]).relative_to("data")
    if pv_path.exists() and data.path("perov5", MODELS[0], "atom_fea").exists():
        pv = read_structures(pv_path)
        pairs = substitution_pairs(pv)
        arith = {name: arithmetic_table(data, cfg, pv, pairs) for name, cfg in finals.items()}
    out["arithmetic"] = arith
    tick("arithmetic", t0)
    t0 = time.perf_counter()
    out["bias"] = {name: bias_summary(z, numbers) for name, z in z_val.items()}
    tick("bias", t0)

    if write_figures:
        plot_matrices({f"paper: {PAPER.label()}": full["paper"],
                       f"recommended: {best.label()}": full["best"]},
                      a.figures / "shared_space_alignment.png", "top5")

    # ----- markdown summary
    md.append(f"\n#### Full matrices (val: {n_val} atoms, {n_cls} environments; chance top-1 "
              f"{info['chance_top1']:.4f}, top-5 {info['chance_top5']:.4f})\n")
    for name, res in full.items():
        md.append(f"\n**{name}** ({res['label']}): same top-1 {res['same_top1']:.3f}, top-5 "
                  f"{res['same_top5']:.3f}; cross top-1 {res['cross_top1']:.3f}, top-5 "
                  f"{res['cross_top5']:.3f}\n")
        for key in ("top1", "top5", "mknn", "mknn_raw", "cka", "cka_raw"):
            md.append(f"\n{key}:\n\n" + matrix_md(res, key) + "\n")
    md.append("\n#### Ridge upper bound (paired train atoms)\n")
    for name, r in out["ridge_upper_bound"].items():
        md.append(f"- {name} {r['layers']}: same top-1 {r['same_top1']:.3f} top-5 "
                  f"{r['same_top5']:.3f}; cross top-1 {r['cross_top1']:.3f} top-5 "
                  f"{r['cross_top5']:.3f}")
    if other:
        md.append("\n#### Other held-out sets\n")
        md.append("| set | config | same top-5 | cross top-5 | mkNN cross proj / raw |\n|---|---|---|---|---|")
        for corpus, d in other.items():
            for name in [x for x in d if x != "info"]:
                r = d[name]
                md.append(f"| {corpus} ({d['info']['atoms']} atoms, {d['info']['classes']} env., "
                          f"chance top-5 {d['info']['chance_top5']:.4f}) | {name} | "
                          f"{r['same_top5']:.3f} | {r['cross_top5']:.3f} | "
                          f"{r['mknn_cross']:.3f} / {r['mknn_cross_raw']:.3f} |")
    md.append("\n#### OT (exact EMD, val atoms, each pair)\n")
    md.append("| config | same atom | same class | same element (chance) | min same element |\n|---|---|---|---|---|")
    for name, d in out["ot"].items():
        v = list(d["pairs"].values())
        md.append(f"| {name} | {np.mean([x['same_atom'] for x in v]):.3f} | "
                  f"{np.mean([x['same_class'] for x in v]):.3f} | "
                  f"{np.mean([x['same_element'] for x in v]):.3f} ({d['chance']['same_element']:.3f}) | "
                  f"{np.min([x['same_element'] for x in v]):.3f} |")
    md.append("\n#### Periodicity (nearest other element in the same group; MP-20 train element means)\n")
    md.append("| space | " + " | ".join(SHORT[m] for m in MODELS) + " | chance |\n" + "|---" * 8 + "|")
    for name, d in per.items():
        t = d["train"]
        md.append(f"| {name} | " + " | ".join(f"{t[m]['group']:.2f}" for m in MODELS)
                  + f" | {t[MODELS[0]]['group_chance']:.3f} |")
    if arith:
        md.append(f"\n#### Arithmetic (perov5 substitutions, {arith['paper']['n_pairs']} pairs, "
                  f"pool {arith['paper']['pool']} atoms)\n")
        md.append("| config | model | top-1 | top-5 | unshifted top-5 | chance top-5 |\n|---|---|---|---|---|---|")
        for name, d in arith.items():
            for m, r in d["per_model"].items():
                md.append(f"| {name} | {SHORT[m]} | {r['top1']:.3f} | {r['top5']:.3f} | "
                          f"{r['baseline_top5']:.3f} | {r['chance_top5']:.4f} |")
            for k2, r in d["stitching"].items():
                md.append(f"| {name} | stitch {k2} | {r['top1']:.3f} | {r['top5']:.3f} | "
                          f"{r['baseline_top5']:.3f} | |")
    md.append("\n#### Bias (recommended config; worst elements per model by excess deviation)\n")
    for m, els in out["bias"]["best"]["worst_elements_by_model"].items():
        md.append(f"- {m}: median deviation {out['bias']['best']['median_deviation_by_model'][m]:.3f};"
                  f" worst elements {', '.join(els)}")

    timings["total"] = round(time.perf_counter() - t_start, 1)
    out["timings_s"] = timings
    out["data"] = data.meta
    out["anchor_selection_seconds"] = {f"{k[0]}/K={k[1]}/{k[2]}/{k[3]}/elem={k[4]}": round(v[1], 2)
                                       for k, v in data._sel.items()}
    print("\n".join(md))
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        out["provenance"] = invocation()
        a.out.write_text(json.dumps(out, indent=1, default=float))
        print(f"\nwrote {a.out}")
    if write_figures:
        print(f"figures under {a.figures}")
    print(f"total {timings['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
