"""Cross-model comparison of coordinate files (what ``platoscope compare`` runs).

Given two or more :class:`~platoscope.coords.AtomCoordinates` of the same atoms on the same
anchors (possibly written in different environments), it computes the alignment matrix
(same-atom retrieval, mutual k-NN in projected and raw space with bootstrap intervals, CKA,
per-atom cosine agreement), optimal transport between each pair, the periodicity score of each
model and the per-element bias table, and writes ``compare.json``, ``compare.txt`` and PNG
plots. Every retrieval figure stands beside chance and the element+structure baseline (what
knowing only an atom's element and structure gives on the same pool), and the site-resolved
top-1 beside its chance. Mutual k-NN is tie-aware (:func:`platoscope.analysis.mutual_knn`):
atoms of different elements in an ``element`` projection without a global block all sit at
sqrt(2) (the default projection's global block separates them), and a neighbour
tied at the k-th distance counts with its probability under a random tie break, each space
breaking its ties independently (ties shared by construction earn chance credit only), never
by row order or float rounding. Sparse (top-k) coordinates are densified for the scored subsample
only. Orthogonal Procrustes (:func:`platoscope.analysis.procrustes`, an SVD of a K x K matrix)
is left to the library.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from platoscope.coords import (
    AtomCoordinates,
    check_comparable,
    compact_columns,
    dense_rows,
    is_sparse,
)
from platoscope.errors import InputError
from platoscope.paths import safe_file_name
from platoscope.writers import write_json_atomic


def compare(coords: list[AtomCoordinates], out: str | Path, *, k: int = 10,
            max_atoms: int = 5000, seed: int = 0, groups: Any = None,
            csls: int = 0) -> dict[str, Any]:
    """Compare models; subsample to ``max_atoms`` atoms for the O(N^2) metrics.

    groups: optional (N,) int ids of equivalent atoms (e.g. from
    :func:`platoscope.symmetry.symmetry_groups`): retrieval then counts a hit on any equivalent
    atom and queries each distinct environment once, and mutual k-NN uses one atom per
    environment (equivalent copies would otherwise tie). csls: also report retrieval ranked by
    CSLS with this many neighbours (0: not).
    """
    from ase.data import chemical_symbols

    from platoscope import analysis as an

    if len(coords) < 2:
        raise InputError("compare needs at least two coordinate files")
    for c in coords[1:]:
        check_comparable(coords[0], c)
    if k < 1 or max_atoms < 1:
        raise InputError(f"k and max_atoms must be >= 1, got k={k}, max_atoms={max_atoms}")
    out = Path(out)
    names = _unique_names(coords)
    n = len(coords[0])
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, max_atoms, replace=False)) if n > max_atoms else np.arange(n)
    Z = coords[0].numbers[idx]
    g = None
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise InputError(f"groups has shape {groups.shape}, the coordinates {n} atoms")
        g = groups[idx]
    rep = np.arange(len(idx)) if g is None else np.unique(g, return_index=True)[1]
    if k >= len(rep):  # mutual k-NN needs more than k points (was 'X has shape ...')
        what = ("symmetry-distinct environments" if g is not None else "atoms")
        raise InputError(
            f"--k {k} needs more than {k} scored points, and there are {len(rep)} {what} "
            f"among the {len(idx)} atoms scored (of {n}; --max-atoms {max_atoms}): lower --k"
            + (" or raise --max-atoms" if len(idx) < n else ""))
    _prepare_out(out)
    proj = _scored_rows(coords, names, idx)
    S = coords[0].structure_index[idx]
    raw = {nm: c.embeddings[idx] for nm, c in zip(names, coords, strict=True)
           if c.embeddings is not None}
    m = len(names)
    res: dict[str, Any] = {"models": names, "n_atoms": int(n), "n_scored": len(idx),
                           "subsample": ({"max_atoms": int(max_atoms), "seed": int(seed),
                                          "note": "retrieval, mutual k-NN, CKA, cosine and "
                                          "transport use a random subsample of the atoms"}
                                         if len(idx) < n else None),
                           "anchor_set_hash": coords[0].anchor_set_hash,
                           "data_hash": coords[0].data_hash,
                           "provenance": {nm: c.provenance for nm, c in
                                          zip(names, coords, strict=True)}}
    top1 = np.eye(m)
    top5 = np.eye(m)
    top1_csls = np.eye(m)
    site = np.eye(m)
    site_chance = n_site = None
    knn_p = np.eye(m)
    knn_p_ci = [[[1.0, 1.0] for _ in range(m)] for _ in range(m)]
    knn_p_untied = np.eye(m)
    knn_p_tied = np.zeros((m, m))
    knn_r = np.full((m, m), np.nan)
    for i, nm in enumerate(names):
        knn_r[i, i] = 1.0 if nm in raw else np.nan
    cka = np.eye(m)
    cos = np.eye(m)
    ot_rows = []
    for i, j in itertools.permutations(range(m), 2):
        a, b = names[i], names[j]
        top1[i, j] = an.retrieval_accuracy(proj[a], proj[b], k=1, groups=g)
        top5[i, j] = an.retrieval_accuracy(proj[a], proj[b], k=5, groups=g)
        if csls:
            top1_csls[i, j] = an.retrieval_accuracy(proj[a], proj[b], k=1, groups=g, csls=csls)
        site[i, j], site_chance, n_site = an.site_resolved_retrieval(proj[a], proj[b], Z, S, g)
    for i, j in itertools.combinations(range(m), 2):
        a, b = names[i], names[j]
        o, tied = an.mutual_knn_rows(proj[a][rep], proj[b][rep], k=k, metric="euclidean")
        lo, hi = an.bootstrap_interval(o, seed=seed)
        knn_p[i, j] = knn_p[j, i] = float(o.mean())
        knn_p_ci[i][j] = knn_p_ci[j][i] = [lo, hi]
        knn_p_tied[i, j] = knn_p_tied[j, i] = float(tied.mean())
        knn_p_untied[i, j] = knn_p_untied[j, i] = (float(o[~tied].mean()) if (~tied).any()
                                                   else np.nan)
        cka[i, j] = cka[j, i] = an.linear_cka(proj[a], proj[b])
        cos[i, j] = cos[j, i] = float(np.mean(an.cosine_agreement(proj[a], proj[b])))
        if a in raw and b in raw:
            knn_r[i, j] = knn_r[j, i] = an.mutual_knn(raw[a][rep], raw[b][rep], k=k)
        t = an.transport(proj[a], proj[b], elements=Z)
        ot_rows.append({"source": a, "target": b, "cost": t.cost, "method": t.method,
                        "same_atom_mass": t.same_atom_mass,
                        "same_element_mass": t.same_element_mass})
    res["alignment"] = {"retrieval_top1": top1.tolist(), "retrieval_top5": top5.tolist(),
                        "retrieval_chance_top1": an.retrieval_chance(len(idx), 1, g),
                        "retrieval_chance_top5": an.retrieval_chance(len(idx), 5, g),
                        "element_structure_baseline_top1":
                            an.element_structure_baseline(Z, S, g, k=1),
                        "element_structure_baseline_top5":
                            an.element_structure_baseline(Z, S, g, k=5),
                        "site_resolved_top1": site.tolist(),
                        "site_resolved_chance": site_chance,
                        "site_resolved_queries": n_site,
                        "retrieval_top1_csls": top1_csls.tolist() if csls else None,
                        "csls_k": int(csls),
                        f"mutual_knn{k}_projected_ci95": knn_p_ci,
                        "symmetry_aware": g is not None, "n_environments": len(rep),
                        f"mutual_knn{k}_projected": knn_p.tolist(),
                        # rows whose k-th neighbour distance is tied in either model (e.g. in
                        # the element projection, atoms of elements with <= k scored atoms:
                        # they score 1 between any two models) and the mean over the others
                        f"mutual_knn{k}_projected_tied_fraction": knn_p_tied.tolist(),
                        f"mutual_knn{k}_projected_untied": [
                            [None if v != v else v for v in row] for row in knn_p_untied.tolist()],
                        f"mutual_knn{k}_raw": knn_r.tolist(), "linear_cka": cka.tolist(),
                        "cosine_agreement_mean": cos.tolist()}
    res["transport"] = ot_rows
    period = {}
    for nm, c in zip(names, coords, strict=True):
        blocks = (c.provenance.get("projection_params") or {}).get("normalize") == "element"
        if blocks and nm not in raw:
            continue
        # element blocks are disjoint: elements compare in the model's own feature space
        els, means = an.element_means(Z, raw[nm] if blocks else proj[nm])
        if len(els) >= 3:
            s = an.periodicity_score(els, means)
            period[nm] = {k2: s[k2] for k2 in ("group", "period", "group_chance",
                                               "period_chance", "n_elements")}
            period[nm]["space"] = "raw features" if blocks else "projected"
            an.plot_periodicity_heatmap(els, means, out / f"periodicity_{safe_file_name(nm)}.png",
                                        title=f"{nm}: element-element similarity")
    res["periodicity"] = period
    table = an.bias_table(proj, Z, leave_one_out=m > 2)
    res["bias"] = {"elements": [chemical_symbols[z] for z in table.elements],
                   "counts": table.counts.tolist(), "models": table.models,
                   "deviation": table.deviation.tolist(), "excess": table.excess.tolist(),
                   # two models are equally far from their mean: no model is "most deviant"
                   "most_deviant": ({chemical_symbols[z]: mdl for z, mdl in
                                     an.most_deviant_model(table, by="excess").items()}
                                    if m > 2 else None)}
    _plots(res, out, k)
    write_json_atomic(out / "compare.json", res)
    (out / "compare.txt").write_text(_text(res, k))
    return res


OUTPUTS = ("compare.json", "compare.txt", "alignment.png", "bias_per_element.png")
"""What :func:`compare` writes into ``out``, beside one ``periodicity_<model>.png`` per model."""


def _prepare_out(out: Path) -> None:
    """Make the ``out`` folder. An existing file there is refused; an earlier comparison's
    outputs there are removed first (its periodicity maps are named after the models it
    compared, and stayed beside the new ones); nothing else in the folder is touched."""
    if out.exists() and not out.is_dir():
        raise InputError(f"out {out} is a file, not a folder: compare writes a folder "
                         f"({', '.join(OUTPUTS)}, periodicity maps)")
    if (out / "compare.json").is_file():
        for path in [*(out / name for name in OUTPUTS), *out.glob("periodicity_*.png")]:
            path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _scored_rows(coords: list[AtomCoordinates], names: list[str], idx: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """Dense rows ``idx`` of every model, in as few columns as keep every distance, inner
    product, cosine, mean, CKA and transport cost of the full rows (within float64 rounding).

    Sparse (top-k) files of the element projection: :func:`_isometric_by_element` (each
    element's rows live on that element's anchors only); other sparse files: the anchor columns
    any scored row uses (:func:`~platoscope.coords.compact_columns`); dense files as they are.
    """
    rows = [c.platonic[idx] for c in coords]
    if not all(is_sparse(r) for r in rows):
        return {nm: dense_rows(r) for nm, r in zip(names, rows, strict=True)}
    blocks = _isometric_by_element(rows, coords[0].numbers[idx])
    if blocks is None:
        blocks, _ = compact_columns(*rows)
    return dict(zip(names, blocks, strict=True))


def _isometric_by_element(rows: list[Any], numbers: np.ndarray) -> list[np.ndarray] | None:
    """The sparse rows (n, K) of m models as dense (n, d) arrays with the same pairwise inner
    products within and across models, or None when most columns are shared between elements
    (not an element projection).

    The rows of element z (all models together, m * n_z of them) use only the columns c_z of
    z's anchors, disjoint from every other element's, so the blocks are orthogonal; columns
    that rows of several elements use (the projection's global block) are kept as they are,
    after the blocks. A block with more columns than rows is replaced by the R factor of a QR
    decomposition of its transpose (an isometry onto the span of its rows; exact up to float64
    rounding, Householder QR, errors ~1e-15 relative); d = sum_z min(c_z, m * n_z) + shared.
    With the default anchors (K = 38,076) and 5,000 scored atoms of MP-20 the compacted
    columns alone were ~30,000 (1.2 GB per model, and CKA's d x d products did not fit in
    12 GB); this gives d <= m * n + shared.
    """
    import scipy.sparse as sp

    m = len(rows)
    csr = [sp.csr_array(r) for r in rows]
    elements = np.unique(numbers)
    users = np.zeros(csr[0].shape[1], dtype=np.int64)  # how many elements use each column
    subs = []
    for z in elements:
        sel = np.flatnonzero(numbers == z)
        sub = sp.vstack([r[sel] for r in csr], format="csr")
        cols = np.unique(sub.indices[:sub.nnz])
        users[cols] += 1
        subs.append((sel, sub, cols))
    shared = np.flatnonzero(users > 1)
    if shared.size and 2 * shared.size > np.count_nonzero(users):
        return None
    parts = []
    for sel, sub, cols in subs:
        cols = np.setdiff1d(cols, shared, assume_unique=True)
        block = sub[:, cols].toarray() if cols.size else np.zeros((sub.shape[0], 0))
        if block.shape[1] > block.shape[0]:
            block = np.linalg.qr(block.T, mode="r").T  # (m n_z, m n_z), same Gram matrix
        parts.append((sel, block))
    d = sum(b.shape[1] for _, b in parts)
    out = [np.zeros((csr[0].shape[0], d + shared.size)) for _ in range(m)]
    col = 0
    for sel, block in parts:
        w = block.shape[1]
        for i in range(m):
            out[i][sel, col:col + w] = block[i * sel.size:(i + 1) * sel.size]
        col += w
    for i in range(m):
        out[i][:, d:] = csr[i][:, shared].toarray()
    return out


def _unique_names(coords: list[AtomCoordinates]) -> list[str]:
    names: list[str] = []
    for c in coords:
        nm = c.model
        if nm in names:
            nm = f"{nm} ({Path(c.path).name if c.path else len(names)})"
        names.append(nm)
    return names


def _plots(res: dict[str, Any], out: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = res["models"]
    what = ("same-environment" if res["alignment"]["symmetry_aware"] else "same-atom")
    panels = [("retrieval_top5", f"{what} retrieval top-5 (row -> column)"),
              (f"mutual_knn{k}_projected", f"mutual k-NN@{k}, projected"),
              (f"mutual_knn{k}_raw", f"mutual k-NN@{k}, raw features")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for n_ax, (ax, (key, title)) in enumerate(zip(axes, panels, strict=True)):
        mat = np.array(res["alignment"][key], dtype=float)
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names if n_ax == 0 else [], fontsize=8)
        for (i, j), v in np.ndenumerate(mat):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="w" if v < 0.5 else "k")
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8)
    fig.savefig(out / "alignment.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    b = res["bias"]
    ex = np.array(b["excess"])
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(b["elements"])), 1 + 0.5 * len(names)))
    im = ax.imshow(ex, aspect="auto", cmap="magma")
    ax.set_xticks(range(len(b["elements"])), b["elements"], fontsize=7, rotation=90)
    ax.set_yticks(range(len(b["models"])), b["models"], fontsize=8)
    ax.set_title("deviation from the other models' consensus, per element "
                 "(relative to each model's median)", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.savefig(out / "bias_per_element.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _text(res: dict[str, Any], k: int) -> str:
    names = res["models"]
    al = res["alignment"]
    what = (f"same-environment retrieval ({al['n_environments']} environments, a hit on any "
            "symmetry-equivalent atom)" if al["symmetry_aware"] else "same-atom retrieval")
    sub = res.get("subsample")
    lines = [f"{len(names)} models, {res['n_atoms']} atoms ({res['n_scored']} scored), anchors "
             f"{res['anchor_set_hash'][:12]}"]
    if sub:
        lines.append(f"NOTE: alignment and transport use a random subsample of "
                     f"{res['n_scored']} of {res['n_atoms']} atoms (--max-atoms "
                     f"{sub['max_atoms']}, seed {sub['seed']}); raise --max-atoms to use all")
    lines += ["", f"{what}, pool = all scored atoms:",
              f"  chance: top-1 {al['retrieval_chance_top1']:.4f} / top-5 "
              f"{al['retrieval_chance_top5']:.4f}",
              f"  element+structure baseline (knowing only each atom's element and structure): "
              f"top-1 {al['element_structure_baseline_top1']:.3f} / top-5 "
              f"{al['element_structure_baseline_top5']:.3f}"]
    if al["site_resolved_queries"]:
        lines.append(f"  site-resolved top-1 (pool = same element in the same structure, "
                     f"{al['site_resolved_queries']} queries): chance "
                     f"{al['site_resolved_chance']:.3f}")
    lines.append(f"  per pair: top-1 / top-5{' / top-1 CSLS' if al['csls_k'] else ''}; "
                 f"site-resolved top-1; mutual k-NN@{k} (tie-aware) projected [95 % CI] / raw; "
                 "linear CKA; mean per-atom cosine")
    for i, j in itertools.permutations(range(len(names)), 2):
        raw = al[f"mutual_knn{k}_raw"][i][j]
        lo, hi = al[f"mutual_knn{k}_projected_ci95"][i][j]
        csls = (f" / {al['retrieval_top1_csls'][i][j]:.3f}" if al["csls_k"] else "")
        site = al["site_resolved_top1"][i][j]
        lines.append(f"  {names[i]} -> {names[j]}: {al['retrieval_top1'][i][j]:.3f} / "
                     f"{al['retrieval_top5'][i][j]:.3f}{csls}; "
                     f"{'n/a' if site != site else f'{site:.3f}'}; "
                     f"{al[f'mutual_knn{k}_projected'][i][j]:.3f} [{lo:.3f}, {hi:.3f}]"
                     f" / {'n/a' if raw is None or raw != raw else f'{raw:.3f}'}; "
                     f"{al['linear_cka'][i][j]:.3f}; {al['cosine_agreement_mean'][i][j]:.3f}")
    tied = np.array(al[f"mutual_knn{k}_projected_tied_fraction"])
    if tied.max() > 0:
        lines += [f"  tied rows: neighbours tied at the k-th distance (k = {k}) count by their "
                  "probability under independent random tie breaks, so a tie two models share "
                  "by construction earns chance credit only",
                  f"  (element projection: atoms of elements with <= {k} scored atoms). Per "
                  "pair: share of tied rows; mutual k-NN over the others:"]
        for i, j in itertools.combinations(range(len(names)), 2):
            u = al[f"mutual_knn{k}_projected_untied"][i][j]
            lines.append(f"  {names[i]} / {names[j]}: {tied[i, j]:.1%} tied; "
                         f"{'n/a' if u is None else f'{u:.3f}'}")
    lines.append("\noptimal transport:")
    for r in res["transport"]:
        lines.append(f"  {r['source']} -> {r['target']}: cost {r['cost']:.4g}, same atom "
                     f"{r['same_atom_mass']:.3f}, same element {r['same_element_mass']:.3f} "
                     f"[{r['method']}]")
    lines.append("\nperiodicity (nearest other element in the same group / period):")
    for nm, p in res["periodicity"].items():
        lines.append(f"  {nm}: group {p['group']:.2f} (chance {p['group_chance']:.2f}), "
                     f"period {p['period']:.2f} (chance {p['period_chance']:.2f}) "
                     f"[{p['space']}]")
    deviant = res["bias"]["most_deviant"]
    lines.append("\nmost deviant model per element: " + (
        ", ".join(f"{el}:{m}" for el, m in list(deviant.items())[:40]) if deviant is not None
        else "n/a with two models (each is as far from their consensus as the other; needs "
             "three or more files)"))
    return "\n".join(lines) + "\n"
