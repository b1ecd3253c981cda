#!/usr/bin/env python
"""Markdown tables for docs/shared_space.md from results/coverage_final.json and
results/coverage_sweep.json (research/coverage/default_set.py).

    python research/coverage/tables.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SETS = {"mp20_val": "MP-20 val", "perov5_eval": "Perov-5 eval", "carbon24_eval": "Carbon-24 eval"}


def load(name: str) -> dict:
    return json.loads((ROOT / "results" / name).read_text())


def f2(x: float) -> str:
    return f"{x:.2f}"


def main() -> int:
    fin, sw = load("coverage_final.json"), load("coverage_sweep.json")
    base = fin["baselines"]
    print("### Baselines\n")
    print("| set | atoms / queries | chance top-1 / top-5 | element+structure top-1 / top-5 |"
          " site-resolved chance |")
    print("|---|---|---|---|---|")
    for n, b in base.items():
        print(f"| {SETS[n]} | {b['n_atoms']} / {b['n_queries']} | {b['chance_top1']:.4f} / "
              f"{b['chance_top5']:.4f} | {f2(b['elem_struct_top1'])} / "
              f"{f2(b['elem_struct_top5'])} | {f2(b['site_chance_top1'])} |")
    rows = fin["rows"]
    print("\n### Cross-family top-1 / top-5 (CHGNet 0.3.0 -> SevenNet-0), pool = all atoms\n")
    print("| configuration | K | atoms to embed | " + " | ".join(SETS.values()) + " |")
    print("|---|---|---|---|---|---|")
    print("| element+structure baseline | | | " + " | ".join(
        f"{f2(base[n]['elem_struct_top1'])} / {f2(base[n]['elem_struct_top5'])}"
        for n in SETS) + " |")
    for label, r in rows.items():
        c = r["config"]
        print(f"| {label} | {c['n_anchors']} | {c.get('atoms_to_embed', '')} | " + " | ".join(
            f"{f2(r['results'][n]['top1'])} / {f2(r['results'][n]['top5'])}" for n in SETS)
            + " |")
    for title, key, extra in (
            ("Same family (CHGNet 0.3.0 -> 0.2.0) top-1 / top-5", "same_family_top", None),
            ("CSLS (k=10) cross-family top-1 / top-5", "csls_top", None),
            ("Site-resolved top-1 (beside its chance)", "site_top1", "site")):
        print(f"\n### {title}\n")
        print("| configuration | " + " | ".join(SETS.values()) + " |")
        print("|---|---|---|---|")
        if extra:
            print("| chance | " + " | ".join(f2(base[n]["site_chance_top1"]) for n in SETS)
                  + " |")
        for label, r in rows.items():
            res = r["results"]
            if extra:
                cells = [f"{f2(res[n]['site_top1'])} (CSLS {f2(res[n]['csls_site_top1'])})"
                         for n in SETS]
            else:
                cells = [f"{f2(res[n][key + '1'])} / {f2(res[n][key + '5'])}" for n in SETS]
            print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n### Mutual k-NN@10 (one row per class), projected / raw, 95 % bootstrap intervals\n")
    print("| configuration | rows | " + " | ".join(SETS.values()) + " |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        res = r["results"]
        for tag, name in (("", "all rows, random tie order"),
                          ("_elig", "element has > 10 rows")):
            cells = []
            for n in SETS:
                v = res[n]
                lo, hi = v["mknn_ci95" + tag]
                rl, rh = v["ratio_ci95" + tag]
                cells.append(f"{v['mknn' + tag]:.3f} [{lo:.3f}, {hi:.3f}] / "
                             f"{v['raw_mknn' + tag]:.3f}; ratio {v['ratio' + tag]:.2f} "
                             f"[{rl:.2f}, {rh:.2f}]")
            print(f"| {label} | {name} | " + " | ".join(cells) + " |")
        cells = [f"{res[n]['raw_within_element_mknn_elig']:.3f}; ratio "
                 f"{res[n]['ratio_within_element_elig']:.2f}" for n in SETS]
        print(f"| {label} | raw within element (eligible rows) | " + " | ".join(cells) + " |")
    print("\n### Sweep (cross-family top-1 / top-5; split 1 = MP-20 val + Perov-5 eval, "
          "split 2 = Carbon-24 eval)\n")
    print("| method | cap | budget | tau | K | atoms to embed | " + " | ".join(SETS.values())
          + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in sw["configs"]:
        print(f"| {c['method']} | {c['cap'] or 'all'} | {c['budget'] or ''} | {c['tau']:g} | "
              f"{c['n_anchors']} | {c['atoms_to_embed']} | " + " | ".join(
                  f"{f2(c['results'][n]['top1'])} / {f2(c['results'][n]['top5'])}"
                  for n in SETS) + " |")
    print("\n### Choices\n")
    for k, v in sw["choices"].items():
        ch = v["chosen"]
        rep = "; ".join(f"{SETS[n]} {f2(r['top1'])} / {f2(r['top5'])}"
                        for n, r in v["reported_on"].items())
        print(f"* {k}: {ch['method']} cap {ch['cap'] or 'all'} budget {ch['budget']} tau "
              f"{ch['tau']:g} (K={ch['n_anchors']}, score {v['selection_score_mean_top5']:.3f})"
              f"; reported: {rep}")
    if "periodicity" in fin:
        print("\n### Periodicity (nearest other element in its own group; cosine of element "
              "means)\n")
        sp = fin["periodicity"]["spaces"]
        print("| space | model | MP-20 train atoms | all corpus atoms |")
        print("|---|---|---|---|")
        for space, models in sp.items():
            for model, d in models.items():
                print(f"| {space} | {model} | " + " | ".join(
                    f"{v['group']:.2f} (chance {v['group_chance']:.2f}, n={v['n_elements']})"
                    for v in d.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
