"""Held-out false-alarm rate of the bias monitor's per-element thresholds (docs/symmetry_switch.md).

CHGNet 0.3.0 and SevenNet-0 on their shipped default banks (the same reference atoms): the
per-atom distance between the two models' coordinates (``bias.paired_distances``, the shipped
default projection), thresholds fitted by ``bias.calibrate_thresholds`` on the atoms of even
structures and counted on the odd ones, then the reverse. Also: how many elements' thresholds
lie above every reference distance of the fit half (``elements_above_every_reference_distance``
in the monitor's summary: they cannot be flagged).

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/bias_holdout.py
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "results" / "bias_holdout.json"
PAIR = ("chgnet:0.3.0", "sevenn:7net-0")


def main() -> dict:
    from platoscope.anchors import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.monitors.bias import calibrate_thresholds, paired_distances
    from platoscope.provenance import invocation
    from platoscope.reference import default_bank, shared_rows

    warnings.simplefilter("ignore")
    anchors = AnchorSet.default()
    ba, bb = (default_bank(load_backend(m), anchors) for m in PAIR)
    d = paired_distances(ba, bb)
    ia, _ = shared_rows(ba, bb)
    z, s = ba.numbers[ia], ba.structure_index[ia]
    out: dict = {"invocation": invocation(), "pair": PAIR,
                 "projection": ba.projector.name, "projection_params": ba.projector.get_params(),
                 "atoms": int(d.size), "elements": int(np.unique(z).size),
                 "median_distance": float(np.median(d)), "quantiles": {}}
    for q in (0.99, 0.999):
        rows = []
        for fit in (0, 1):
            on, off = s % 2 == fit, s % 2 != fit
            per, other = calibrate_thresholds(d[on], z[on], q)
            t = np.array([per.get(int(x), other) for x in z[off]])
            # as the monitor's summary counts them: above every distance of the fit half
            never = [int(e) for e, v in per.items() if v > d[on].max()]
            rows.append({"fit_on": "even" if fit == 0 else "odd",
                         "held_out_rate": float(np.mean(d[off] > t)),
                         "elements_above_every_reference_distance": len(never)})
        out["quantiles"][str(q)] = rows
        print(q, rows, flush=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
