"""Sparse reference-bank coordinates (element projection) on the shipped default anchors
(K = 38,076) with CHGNet 0.3.0's default bank of the shipped reference structures.

Reports the bytes ``ReferenceBank.coords`` holds (CSR, each atom's element block) against the
dense (M, K) array it replaces (never built here), the seconds to build it, to calibrate a
projected-space AtypicalMonitor on it, and to carry it into another space at a model switch
(per-element TransportMap, fitted on a switch frame's pair and on two banks); and, per MD step
of a rattled 64-atom NaCl cell, the calculator with the projected atypical monitor as a median
ratio to the bare model in the same run (alternating rounds).

With ``--switch-to SPEC`` (e.g. ``sevenn:7net-0``, in the environment that has it) also the
whole carry of the monitor into that model's space fitted on the two default banks (map and
recalibration), and how far the carried per-element thresholds sit from the model's own
(in sample: the map is fitted on those same atoms, so this checks the plumbing, not transfer).

    python benchmarks/sparse_bank.py [--rounds 9] [--switch-to sevenn:7net-0]
        [--out results/benchmark_sparse_bank.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

from _timing import alternate, median_ratios
from ase.build import bulk

from platoscope import AnchorSet, PlatonicCalculator, load_backend
from platoscope.coords import nbytes
from platoscope.monitors.atypical import AtypicalMonitor
from platoscope.monitors.base import Watcher
from platoscope.monitors.switch import carry_coordinates
from platoscope.provenance import invocation
from platoscope.reference import default_bank


def seconds(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--switch-to", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    backend = load_backend("chgnet")
    anchors = AnchorSet.default()
    bank = default_bank(backend, anchors)
    z, t_coords = seconds(lambda: bank.coords)
    mon, t_cal = seconds(lambda: AtypicalMonitor(bank, space="projected"))
    calc = PlatonicCalculator(backend, anchors, projection=bank.projector)
    base = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    views = []
    for amp, seed in ((0.05, 0), (0.1, 1)):
        a = base.copy()
        a.rattle(amp, seed=seed)
        a.calc = calc
        views.append(calc.get_property("platonic", a))
    _, t_frame = seconds(lambda: carry_coordinates(views[0], views[1], base.numbers, z,
                                                   bank.numbers))
    _, t_bank = seconds(lambda: carry_coordinates(z, z, bank.numbers, z, bank.numbers))
    props = ["energy", "forces", "stress"]
    watcher = Watcher([mon])

    def make(r):
        a = base.copy()
        a.rattle(0.01, seed=1000 + r)
        return a

    def with_monitor(a):
        a.calc = calc
        calc.calculate(a, props)
        watcher(a)

    def platonic_only(a):
        a.calc = calc
        calc.calculate(a, props)

    times = alternate({"bare": lambda a: backend.calc.calculate(a, props),
                       "platonic": platonic_only, "platonic+atypical_projected": with_monitor},
                      make, args.rounds)
    out = {"model": backend.spec, "anchors": "default", "n_anchors": len(anchors),
           "bank_atoms": len(bank), "stored_values": int(z.nnz),
           "max_values_per_atom": int((z.indptr[1:] - z.indptr[:-1]).max()),
           "coords_bytes_sparse": nbytes(z), "coords_bytes_dense": 8 * len(bank) * len(anchors),
           "coords_build_s": t_coords, "calibrate_projected_s": t_cal,
           "carry_fit_on_switch_frame_s": t_frame, "carry_fit_on_banks_s": t_bank,
           "per_step": {"n_atoms": len(base), "rounds": args.rounds,
                        "bare_s": statistics.median(times["bare"]),
                        "ratio_to_bare": median_ratios(times, "bare")},
           "provenance": invocation()}
    if args.switch_to:
        import numpy as np

        from platoscope.monitors.switch import SwitchMonitor

        bank_b = default_bank(load_backend(args.switch_to), anchors)
        own = AtypicalMonitor(bank_b, space="projected").element_thresholds_
        before = dict(mon.element_thresholds_)
        sw = SwitchMonitor(atypical=mon, bank_b=bank_b)
        carried, t_carry = seconds(lambda: sw.carry(mon, None, None, None))
        el = sorted(set(own) & set(carried.element_thresholds_))
        gap = np.array([abs(carried.element_thresholds_[e] - own[e]) for e in el])
        gap_a = np.array([abs(before[e] - own[e]) for e in el])
        out["switch"] = {"to": args.switch_to, "carry_on_banks_with_recalibration_s": t_carry,
                         "elements": len(el),
                         "median_abs_threshold_gap_carried_vs_own": float(np.median(gap)),
                         "max_abs_threshold_gap_carried_vs_own": float(gap.max()),
                         "median_abs_threshold_gap_uncarried_vs_own": float(np.median(gap_a))}
    print(json.dumps({k: v for k, v in out.items() if k != "provenance"}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
