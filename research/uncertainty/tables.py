"""Markdown tables of docs/detection.md (uncertainty section) from results/uncertainty*.json.

    python research/uncertainty/tables.py
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def variants_table(path: Path) -> str:
    d = json.loads(path.read_text())
    rows = ["| variant | pinball | AUROC abs pooled / Li / Si | AUROC rel pooled / Li / Si | "
            "cover pooled / Li / Si | LOEO cover Li→Si / Si→Li | score |",
            "|---|---|---|---|---|---|---|"]
    for name, r in d["variants"].items():
        cv, lo = r["cv"], r["loeo"]
        mark = "**" if name == d.get("chosen") else ""
        rows.append(
            f"| {mark}{name}{mark} | {cv['pooled']['pinball_log']:.3f} | "
            + " / ".join(f"{cv[e]['auroc_abs_top10']:.3f}" for e in ("pooled", "Li", "Si"))
            + " | " + " / ".join(f"{cv[e]['auroc_rel_top10']:.3f}" for e in ("pooled", "Li", "Si"))
            + " | " + " / ".join(pct(cv[e]["coverage_1sigma"]) for e in ("pooled", "Li", "Si"))
            + f" | {pct(lo['Li->Si']['coverage_1sigma'])} / {pct(lo['Si->Li']['coverage_1sigma'])}"
            + f" | {r['selection_score']:.3f} |")
    return "\n".join(rows)


def test_table(spec: str) -> str:
    d = json.loads((REPO / "results" / "uncertainty.json").read_text())["models"][spec]
    rows = ["| score | pooled | Li | Si | coverage ≤ σ / ≤ 2σ: pooled, Li, Si |",
            "|---|---|---|---|---|"]
    for name, m in d["test"].items():
        cells = [f"{m[e]['auroc_abs_top10']:.3f} / {m[e]['auroc_rel_top10']:.3f} / "
                 f"{m[e]['spearman']:.3f}" for e in ("pooled", "Li", "Si")]
        cov = ", ".join(f"{pct(m[e]['coverage_1sigma'])} / {pct(m[e]['coverage_2sigma'])}"
                        for e in ("pooled", "Li", "Si")) if "coverage_1sigma" in m["pooled"] \
            else "–"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {cov} |")
    return "\n".join(rows)


if __name__ == "__main__":
    for p in sorted((REPO / "results").glob("uncertainty_variants_*.json")):
        print(f"\n### {p.name}\n")
        print(variants_table(p))
    res = REPO / "results" / "uncertainty.json"
    if res.is_file():
        d = json.loads(res.read_text())
        for spec, m in d["models"].items():
            print(f"\n### test, {spec}\n")
            print(test_table(spec))
            print("\ncurve", m["n_structures_curve_training_heldout"])
            print("cost", m["cost_per_step"], "structure", m["structure_level_test"])
            print("params", m["params"], "c", m["c"], "offsets", m["offsets"])
