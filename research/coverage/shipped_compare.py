#!/usr/bin/env python
"""Cross-model comparison through the shipped product path, on the three evaluation sets.

For each set of ``common.EVAL_SETS`` (mp20_val, perov5_eval, carbon24_eval; embeddings cached by
``embed_eval.py`` in ``_cache/emb/``) and the pair chgnet:0.3.0 (A) vs sevenn:7net-0 (B)
(``--pair`` names another, e.g. the same-family chgnet:0.3.0 vs chgnet:0.2.0):

1. each model's projector is the shipped default one,
   ``default_bank(load_backend(model), AnchorSet.default()).projector``;
2. the cached embeddings are projected with ``projector.transform_with_coverage(emb, numbers)``
   (what ``embed_structures`` / ``platoscope embed`` call; the same ``_transform`` as
   ``transform``) and wrapped in :class:`platoscope.coords.AtomCoordinates` in memory, with the
   numbers, structure/atom indices, anchor-set hash, data hash, provenance (as
   ``PlatonicCalculator.provenance`` records it, with the bank's projector) and raw embeddings
   that ``embed`` records;
3. ``platoscope.compare.compare`` runs on them with ``groups=common.groups(set)`` (one query
   per symmetry-distinct environment) and ``max_atoms`` = all atoms (no subsample).

``in_memory`` is that comparison on the exact (untruncated) coordinates. ``file_roundtrip``
(skipped with ``--no-roundtrip``) is the path a user actually takes, ``platoscope embed`` then
``platoscope compare``: the same AtomCoordinates written with ``AtomCoordinates.save`` (default
layout: ``topk`` with ``coords.TOP_K`` entries for sparse or softmax-kernel coordinates) and read
back with ``AtomCoordinates.load`` before ``compare``.

Per set and variant: retrieval top-1/top-5 both directions, chance, element+structure baseline,
site-resolved top-1 and chance, mutual kNN@10 projected (CI95, tied fraction, untied-rows
mean), mutual kNN@10 raw, ratio projected/raw with a paired bootstrap CI95 (same resampled
environments for both, 1000 resamples, seed 0; recomputed from the per-row terms of
``analysis.mutual_knn_rows`` on the rows compare scores, checked against compare's figure), the
coordinate width, in-memory bytes per atom and the bytes per atom of the top-k storage.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/coverage/shipped_compare.py \
        --src /work/main/src --out results/shipped_compare_after.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
WT = HERE.parent.parent
PAIR = ("chgnet:0.3.0", "sevenn:7net-0")
K = 10
N_BOOT = 1000


def git_info(src: Path) -> dict:
    repo = src.resolve().parent

    def run(*args: str) -> str:
        try:
            return subprocess.check_output(["git", "-C", str(repo), *args], text=True,
                                           stderr=subprocess.STDOUT).strip()
        except Exception as exc:
            return f"unavailable: {exc}"

    return {"repo": str(repo), "head": run("rev-parse", "HEAD"),
            "branch": run("rev-parse", "--abbrev-ref", "HEAD"),
            "status_short": run("status", "--short")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=WT / "src",
                   help="platoscope src directory to import (first on sys.path)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--sets", nargs="+", default=None, help="subset of common.EVAL_SETS")
    p.add_argument("--max-atoms", type=int, default=None,
                   help="cap on scored atoms (default: all atoms of each set)")
    p.add_argument("--pair", nargs=2, metavar=("A", "B"), default=list(PAIR),
                   help="the two models (default: %(default)s); e.g. chgnet:0.3.0 chgnet:0.2.0 "
                        "for the same-family pair (embeddings cached by embed_eval.py --models)")
    p.add_argument("--no-roundtrip", action="store_true",
                   help="skip the save/load (top-k file) variant")
    p.add_argument("--with-transport", action="store_true",
                   help="run compare's optimal transport too (default: replaced by a stub that "
                        "returns NaN; it records nothing this script reports, and on perov5_eval "
                        "(3000 atoms, the k-NN matching of analysis.optimal_transport) it ran for "
                        "more than 17 min without finishing)")
    a = p.parse_args(argv)
    pair = tuple(a.pair)
    t_start = time.perf_counter()
    src = a.src.resolve()
    sys.path.insert(0, str(src))
    sys.path.insert(1, str(HERE))
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import common

    import platoscope
    from platoscope import analysis as an
    from platoscope import coords as pc
    from platoscope.anchors import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.compare import compare
    from platoscope.coords import AtomCoordinates
    from platoscope.provenance import package_versions
    from platoscope.reference import default_bank

    if not a.with_transport:
        from types import SimpleNamespace

        def _no_transport(*args, **kwargs):
            nan = float("nan")
            return SimpleNamespace(cost=nan, method="skipped by shipped_compare.py",
                                   same_atom_mass=nan, same_element_mass=nan)

        an.transport = _no_transport  # compare calls platoscope.analysis.transport

    if not Path(platoscope.__file__).resolve().is_relative_to(src):
        raise SystemExit(f"imported platoscope from {platoscope.__file__}, not from {src}")
    sets = a.sets or list(common.EVAL_SETS)
    anchors = AnchorSet.default()
    res: dict = {"script": "research/coverage/shipped_compare.py",
                 "command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "src": str(src), "platoscope_file": platoscope.__file__, "git": git_info(src),
                 "script_git": git_info(WT / "src"),
                 "pair": {"A": pair[0], "B": pair[1]}, "k": K, "symprec": common.SYMPREC,
                 "anchor_set_hash": anchors.hash, "n_anchors": len(anchors),
                 "top_k": pc.TOP_K, "transport": ("run" if a.with_transport else
                                                   "skipped (stubbed, see --with-transport)"), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "models": {}, "sets": {}}

    t0 = time.perf_counter()
    backends, projectors = {}, {}
    for m in pair:
        backends[m] = load_backend(m)
        bank = default_bank(backends[m], anchors)
        projectors[m] = bank.projector
        res["models"][m] = {"fingerprint": backends[m].fingerprint, "layer": backends[m].layer,
                            "bank": repr(bank), "projection": bank.projector.name,
                            "projection_params": bank.projector.get_params()}
    res["seconds_load_banks"] = time.perf_counter() - t0

    def provenance(m: str) -> dict:  # PlatonicCalculator.provenance with the bank's projector
        proj = projectors[m]
        return {**backends[m].provenance().to_dict(), "anchor_set_hash": anchors.hash,
                "n_anchors": len(anchors),
                "anchors_left_out": int((~proj.valid_).sum()) if hasattr(proj, "valid_") else 0,
                "projection": proj.name, "projection_params": proj.get_params(),
                "coverage_holdout": getattr(proj, "coverage_holdout", None),
                "versions": package_versions()}

    for name in sets:
        ts = time.perf_counter()
        groups = np.asarray(common.groups(name))
        coords, info = [], {}
        for m in pair:
            e = common.emb(name, m)
            if not e["valid"].all():
                raise SystemExit(f"{name}: {m} has invalid embeddings")
            emb = e["embeddings"]
            numbers = e["numbers"].astype(np.int64)
            tp = time.perf_counter()
            z, cov = projectors[m].transform_with_coverage(emb, numbers)
            tproj = time.perf_counter() - tp
            coords.append(AtomCoordinates(
                platonic=z, coverage=cov, numbers=numbers,
                structure_index=e["structure_index"].astype(np.int64),
                atom_index=e["atom_index"].astype(np.int64),
                anchor_set_hash=anchors.hash, data_hash=str(e["data_hash"]),
                provenance=provenance(m), embeddings=emb,
                # the projection's global block (columns K.., absent before it existed)
                **({"n_global": int(z.shape[1]) - len(anchors)}
                   if "n_global" in AtomCoordinates.__dataclass_fields__ else {})))
            n = len(numbers)
            width = int(z.shape[1])
            kk = min(pc.TOP_K, width)
            info[m] = {"width": width, "sparse": bool(pc.is_sparse(z)),
                       "in_memory_bytes_per_atom": pc.nbytes(z) / n,
                       "stored_entries_per_atom": (float(z.nnz / n) if pc.is_sparse(z)
                                                   else float(width)),
                       # topk layout: int32 indices + float32 values per kept entry, float32
                       # residual; (+8 for the float64 coverage column embed also writes)
                       "topk_bytes_per_atom": kk * 8 + 4,
                       "topk_bytes_per_atom_with_coverage": kk * 8 + 4 + 8,
                       "dense_float64_bytes_per_atom": width * 8,
                       "projection_seconds": tproj}
        n = len(coords[0])
        max_atoms = n if a.max_atoms is None else min(a.max_atoms, n)
        out_set: dict = {"n_atoms": n, "n_structures": int(np.unique(coords[0].structure_index).size),
                         "n_environments": int(np.unique(groups).size),
                         "max_atoms": max_atoms, "subsampled": max_atoms < n,
                         "subsample_seed": 0 if max_atoms < n else None,
                         "coordinates": info}
        variants = [("in_memory", coords)]
        tmp = None
        if not a.no_roundtrip:
            tmp = tempfile.TemporaryDirectory(prefix="shipped_compare_")
            rt = []
            for m, c in zip(pair, coords, strict=True):
                path = c.save(Path(tmp.name) / f"{common.slug(m)}.h5")
                out_set["coordinates"][m]["file_bytes_per_atom"] = path.stat().st_size / n
                loaded = AtomCoordinates.load(path)
                if loaded.residual is not None:
                    out_set["coordinates"][m]["topk_residual_mean"] = float(loaded.residual.mean())
                    out_set["coordinates"][m]["topk_residual_max"] = float(loaded.residual.max())
                    out_set["coordinates"][m]["topk_rows_truncated_fraction"] = float(
                        (loaded.residual > 1e-6).mean())
                rt.append(loaded)
            variants.append(("file_roundtrip", rt))
        for vname, cs in variants:
            tv = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="shipped_compare_out_") as d:
                r = compare(cs, d, k=K, max_atoms=max_atoms, seed=0, groups=groups)
            tcmp = time.perf_counter() - tv
            al = r["alignment"]
            v = {"top1_A_to_B": al["retrieval_top1"][0][1], "top1_B_to_A": al["retrieval_top1"][1][0],
                 "top5_A_to_B": al["retrieval_top5"][0][1], "top5_B_to_A": al["retrieval_top5"][1][0],
                 "chance_top1": al["retrieval_chance_top1"], "chance_top5": al["retrieval_chance_top5"],
                 "elem_struct_baseline_top1": al["element_structure_baseline_top1"],
                 "elem_struct_baseline_top5": al["element_structure_baseline_top5"],
                 "site_top1_A_to_B": al["site_resolved_top1"][0][1],
                 "site_top1_B_to_A": al["site_resolved_top1"][1][0],
                 "site_chance": al["site_resolved_chance"],
                 "site_queries": al["site_resolved_queries"],
                 "n_scored": r["n_scored"], "n_environments": al["n_environments"],
                 f"mknn{K}_projected": al[f"mutual_knn{K}_projected"][0][1],
                 f"mknn{K}_projected_ci95": al[f"mutual_knn{K}_projected_ci95"][0][1],
                 f"mknn{K}_tied_fraction": al[f"mutual_knn{K}_projected_tied_fraction"][0][1],
                 f"mknn{K}_untied": al[f"mutual_knn{K}_projected_untied"][0][1],
                 f"mknn{K}_raw": al[f"mutual_knn{K}_raw"][0][1],
                 "linear_cka": al["linear_cka"][0][1],
                 "cosine_agreement_mean": al["cosine_agreement_mean"][0][1],
                 "compare_seconds": tcmp}
            v["ratio_projected_over_raw"] = v[f"mknn{K}_projected"] / v[f"mknn{K}_raw"]
            v.update(_ratio_ci(cs, groups, max_atoms, v, an, pc, np))
            out_set[vname] = v
            print(f"{name} [{vname}]: mkNN proj {v[f'mknn{K}_projected']:.3f} "
                  f"raw {v[f'mknn{K}_raw']:.3f} ratio {v['ratio_projected_over_raw']:.3f} "
                  f"{v['ratio_ci95']}; top1 {v['top1_A_to_B']:.3f}/{v['top1_B_to_A']:.3f} "
                  f"top5 {v['top5_A_to_B']:.3f}/{v['top5_B_to_A']:.3f} "
                  f"(chance {v['chance_top1']:.4f}, e+s {v['elem_struct_baseline_top1']:.3f}); "
                  f"{tcmp:.0f} s", flush=True)
        if tmp is not None:
            tmp.cleanup()
        out_set["seconds"] = time.perf_counter() - ts
        res["sets"][name] = out_set
    res["wall_seconds"] = time.perf_counter() - t_start
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=partial(common.jsonable, strict=False)))
    print(f"wrote {a.out} in {res['wall_seconds']:.0f} s", flush=True)
    return 0


def _ratio_ci(cs, groups, max_atoms, v, an, pc, np) -> dict:
    """Paired bootstrap CI95 of mkNN projected / raw on the environments compare scores
    (compare's subsample and representatives rebuilt; its figures checked)."""
    n = len(cs[0])
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(n, max_atoms, replace=False)) if n > max_atoms else np.arange(n)
    rep = np.unique(groups[idx], return_index=True)[1]
    sel = idx[rep]
    pa, pb = pc.compact_columns(cs[0].platonic[sel], cs[1].platonic[sel])[0]
    o, _ = an.mutual_knn_rows(pc.dense_rows(pa), pc.dense_rows(pb), k=K, metric="euclidean")
    r, _ = an.mutual_knn_rows(cs[0].embeddings[sel], cs[1].embeddings[sel], k=K,
                              metric="cosine")
    boot = np.random.default_rng(0)
    rat = []
    for _ in range(N_BOOT):
        i = boot.integers(0, o.size, o.size)
        rat.append(o[i].mean() / r[i].mean())
    return {"ratio_ci95": [float(np.quantile(rat, 0.025)), float(np.quantile(rat, 0.975))],
            "check_projected_rows_mean_minus_compare": float(o.mean() - v[f"mknn{K}_projected"]),
            "check_raw_rows_mean_minus_compare": float(r.mean() - v[f"mknn{K}_raw"])}


if __name__ == "__main__":
    sys.exit(main())
