"""Cost of on-the-fly monitors per MD step, and of trajectory post-processing per frame.

1. Per step, alternating in one run: the bare CHGNet calculator; PlatonicCalculator alone; and
   PlatonicCalculator plus the atypical and symmetry monitors (Watcher, no file output) scoring
   against the shipped CHGNet reference bank (23,288 atoms; K = 3000 anchors, default
   projection). Reported as median ratios to the bare step and, because a 2-core VM's step time
   varies by +-10 % from call to call (more than the effect), also as the wrapper's and the
   monitors' own time per step (projection and Watcher call, timed in isolation inside the
   monitored variant): ``1 + own/bare`` is the cost those add to one bare step.
2. Per frame, for an existing trajectory: ``monitor_frames`` (batched embedding, no forces)
   against calling the PlatonicCalculator frame by frame.

    python benchmarks/monitors.py [--sizes 64,512] [--rounds 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from _timing import alternate, median_ratios
from ase.build import bulk

from platoscope import AnchorSet, PlatonicCalculator, load_backend
from platoscope.monitors.atypical import AtypicalMonitor
from platoscope.monitors.base import Watcher
from platoscope.provenance import invocation
from platoscope.reference import ReferenceBank, default_bank
from platoscope.runner import monitor_frames


def monitors_for(bank: ReferenceBank) -> list:
    mons = [AtypicalMonitor(bank)]
    try:
        from platoscope.monitors.symmetry import SymmetryMonitor

        mons.append(SymmetryMonitor())
    except ImportError:
        pass
    return mons


def per_step(backend, anchors, bank, n: int, rounds: int) -> dict:
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat({64: 2, 512: 4}[n])
    calc = PlatonicCalculator(backend, anchors=anchors, projection=bank.projector)
    mons = monitors_for(bank)
    watcher = Watcher(mons)
    props = ["energy", "forces", "stress"]

    def bare(a):
        backend.calc.calculate(a, props)

    def platonic(a):
        calc.calculate(a, props)

    own: dict[str, list[float]] = {"projection": [], "monitors": []}

    def monitored(a):
        a.calc = calc
        calc.calculate(a, props)
        t0 = time.perf_counter()
        calc.projector.transform(calc.results["embeddings"], a.numbers)  # its own work, again
        t1 = time.perf_counter()
        watcher(a)
        own["projection"].append(t1 - t0)
        own["monitors"].append(time.perf_counter() - t1)

    fns = {"bare": bare, "platonic": platonic, "monitored": monitored}
    watcher(_first(atoms, calc))  # start(): symmetry classes of the perfect crystal

    def rattled(r: int):
        a = atoms.copy()
        a.rattle(0.01, seed=r + 1)
        return a

    times = alternate(fns, rattled, rounds)
    ratio = median_ratios(times, "bare")
    own = {k: v[-rounds:] for k, v in own.items()}  # drop the warm-up call
    times["monitored"] = [t - p for t, p in zip(times["monitored"], own["projection"],
                                                strict=True)]  # without the timing re-run
    ratio_monitored = median_ratios(times, "bare")["monitored"]
    bare = statistics.median(times["bare"])
    return {"n_atoms": n, "bank_atoms": len(bank), "monitors": [m.name for m in mons],
            "bare_s": bare, "ratio_platonic": ratio["platonic"],
            "ratio_monitored": ratio_monitored,
            "projection_s": statistics.median(own["projection"]),
            "monitors_s": statistics.median(own["monitors"]),
            "added_fraction": (statistics.median(own["projection"])
                               + statistics.median(own["monitors"])) / bare}


def _first(atoms, calc):
    a = atoms.copy()
    a.calc = calc
    calc.calculate(a, ["energy", "forces"])
    return a


def per_frame(backend, anchors, bank, n_frames: int = 32) -> dict:
    base = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    frames = []
    for s in range(n_frames):
        a = base.copy()
        a.rattle(0.05, seed=s)
        frames.append(a)
    calc = PlatonicCalculator(backend, anchors=anchors, projection=bank.projector)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        monitor_frames(frames, calc, [AtypicalMonitor(bank)], Path(d) / "m", batch_size=16,
                       progress=False)
        batched = (time.perf_counter() - t0) / n_frames
    watcher = Watcher([AtypicalMonitor(bank)])
    t0 = time.perf_counter()
    for a in frames:
        a = a.copy()
        a.calc = calc
        a.get_forces()
        watcher(a)
    single = (time.perf_counter() - t0) / n_frames
    return {"n_frames": n_frames, "n_atoms": len(base), "batched_s_per_frame": batched,
            "calculator_s_per_frame": single, "speedup": single / batched}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,512")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    backend = load_backend("chgnet")
    anchors = AnchorSet.default()
    bank = default_bank(backend, anchors)
    rows = []
    print(f"{'N':>5s} {'bank':>7s} {'bare s':>7s} {'platonic/bare':>14s} {'monitored/bare':>15s}"
          f" {'projection ms':>14s} {'monitors ms':>12s} {'1 + own/bare':>13s}")
    for n in (int(x) for x in args.sizes.split(",")):
        r = per_step(backend, anchors, bank, n, args.rounds)
        rows.append(r)
        print(f"{n:5d} {r['bank_atoms']:7d} {r['bare_s']:7.3f} {r['ratio_platonic']:14.3f} "
              f"{r['ratio_monitored']:15.3f} {r['projection_s'] * 1e3:14.1f} "
              f"{r['monitors_s'] * 1e3:12.1f} {1 + r['added_fraction']:13.3f}   "
              f"({', '.join(r['monitors'])})", flush=True)
    pf = per_frame(backend, anchors, bank)
    print(f"trajectory: batched {pf['batched_s_per_frame']:.3f} s/frame vs calculator "
          f"{pf['calculator_s_per_frame']:.3f} s/frame: {pf['speedup']:.2f}x faster")
    if args.out:
        Path(args.out).write_text(json.dumps({"per_step": rows, "per_frame": pf,
                                              "provenance": invocation()}, indent=2))


if __name__ == "__main__":
    main()
