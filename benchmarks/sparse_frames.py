"""Per-frame coordinates of the element projection: sparse (CSR, each atom's element block)
against dense (N, K), on the shipped default anchors (K = 38,076) with CHGNet 0.3.0.

Per MD step, alternating in one run on the same rattled structure: the bare CHGNet calculator;
the PlatonicCalculator giving sparse frames (the default); the same projector forced dense
(``sparse=False``, what every frame was before); each of the two with a symmetry monitor
(Watcher, no file output) scoring the frame. Reported as median ratios to the bare step, beside
the bytes one frame's coordinates hold in each form.

    python benchmarks/sparse_frames.py [--sizes 64,216] [--rounds 9] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

from _timing import alternate, median_ratios
from ase.build import bulk

from platoscope import AnchorSet, PlatonicCalculator, load_backend
from platoscope.coords import nbytes
from platoscope.monitors.base import Watcher
from platoscope.monitors.symmetry import SymmetryMonitor
from platoscope.projection import Projector
from platoscope.provenance import invocation


class DenseProjector(Projector):
    """The same projector, every frame dense (N, K): the representation before sparse frames."""

    def transform_with_coverage(self, embeddings, numbers=None, *, sparse=None):
        return super().transform_with_coverage(embeddings, numbers, sparse=False)


def structure(n: int):
    reps = round((n / 8) ** (1 / 3))
    return bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(reps)


def per_step(backend, anchors, n: int, rounds: int) -> dict:
    sparse_calc = PlatonicCalculator(backend, anchors=anchors)
    dense_calc = PlatonicCalculator(
        backend, anchors=anchors,
        projection=DenseProjector.from_state(sparse_calc.projector.get_state()))
    base = structure(n)
    props = ["energy", "forces", "stress"]
    watchers = {}
    for name, calc in (("sparse", sparse_calc), ("dense", dense_calc)):
        a = base.copy()
        a.calc = calc
        w = Watcher([SymmetryMonitor()])
        w(a)  # start: classes and noise of the perfect crystal
        watchers[name] = w

    def make(r):
        a = base.copy()
        a.rattle(0.01, seed=1000 + r)
        return a

    def run(calc, watcher=None):
        def f(a):
            a.calc = calc
            calc.calculate(a, props)
            if watcher is not None:
                watcher(a)
        return f

    fns = {"bare": lambda a: backend.calc.calculate(a, props),
           "sparse": run(sparse_calc), "dense": run(dense_calc),
           "sparse+symmetry": run(sparse_calc, watchers["sparse"]),
           "dense+symmetry": run(dense_calc, watchers["dense"])}
    times = alternate(fns, make, rounds)
    a = make(0)
    a.calc = sparse_calc
    zs = sparse_calc.get_platonic(a)
    a.calc = dense_calc
    zd = dense_calc.get_platonic(a)
    return {"n_atoms": len(base), "n_anchors": len(anchors), "rounds": rounds,
            "bare_s": statistics.median(times["bare"]),
            "ratio_to_bare": median_ratios(times, "bare"),
            "frame_bytes_sparse": nbytes(zs), "frame_bytes_dense": nbytes(zd),
            "stored_values_sparse": int(zs.nnz), "values_dense": int(zd.size)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,216")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    backend = load_backend("chgnet")
    anchors = AnchorSet.default()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        r = per_step(backend, anchors, n, args.rounds)
        rows.append(r)
        rat = r["ratio_to_bare"]
        print(f"N={r['n_atoms']}: bare {r['bare_s']:.3f} s; per step / bare: "
              + ", ".join(f"{k} {v:.3f}" for k, v in rat.items())
              + f"; frame {r['frame_bytes_sparse'] / 2**20:.2f} MiB sparse vs "
              f"{r['frame_bytes_dense'] / 2**20:.2f} MiB dense", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"per_step": rows, "provenance": invocation()},
                                             indent=2))


if __name__ == "__main__":
    main()
