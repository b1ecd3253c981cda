#!/usr/bin/env python
"""Markdown tables from results/coverage_*.json (for docs/shared_space_coverage.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SETS = {"mp20_val": "MP-20 val", "perov5_eval": "Perov-5 eval half",
        "carbon24_eval": "Carbon-24 eval half"}


def load(name):
    p = ROOT / "results" / name
    return json.loads(p.read_text()) if p.exists() else None


def main() -> int:
    grids = [g for g in (load("coverage_grid.json"), load("coverage_grid_random.json"),
                         load("coverage_grid_large.json")) if g]
    base = grids[0]["baselines"]
    print("| set | atoms / queries | chance top-1 / top-5 | element+structure top-1 / top-5 |"
          " site-resolved chance |")
    print("|---|---|---|---|---|")
    for n, b in base.items():
        print(f"| {SETS[n]} | {b['n_atoms']} / {b['n_queries']} | {b['chance_top1']:.4f} / "
              f"{b['chance_top5']:.4f} | {b['elem_struct_top1']:.2f} / "
              f"{b['elem_struct_top5']:.2f} | {b['site_chance_top1']:.2f} |")
    print()
    print("| configuration | " + " | ".join(SETS.values()) + " |")
    print("|---|---|---|---|")
    for g in grids:
        for c in g["configs"]:
            cells = []
            for n in SETS:
                v = c["results"][n]
                cells.append(f"{v['top1']:.2f} / {v['top5']:.2f}; site {v['site_top1']:.2f}; "
                             f"mkNN {v['mknn']:.2f} [{v['mknn_ci95'][0]:.2f}, "
                             f"{v['mknn_ci95'][1]:.2f}] / raw {v['raw_mknn']:.2f}; "
                             f"same-fam top-5 {v['same_family_top5']:.2f}")
            lab = c["label"].replace("per element, union corpus, ", "per element, ")
            print(f"| {lab} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
