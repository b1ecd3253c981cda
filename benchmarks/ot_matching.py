"""Benchmark cross-model OT matching (:func:`platoscope.analysis.transport`) at 10k atoms per model.

Synthetic pair of "models" in one 100-d space: model A's atoms sit around 20 element centres
(element labels 1..20, equal or Zipf-like counts); model B sees the same atoms (same row order)
through a mild non-linear distortion plus noise, so the true partner of atom i is atom i.

Prints, per method: wall time, CPU time (all threads; on a busy machine wall time grows but CPU
time does not), peak traced memory (tracemalloc: numpy buffers included), the
process's peak RSS, the cost, and the fractions of mass on the same atom / same element.
Target: under 10 s for 10k x 10k on 2 cores.

    python benchmarks/ot_matching.py [--n 10000] [--d 100] [--elements 20] [--exact]

The ``knn`` rows are what ``auto`` runs without elements (it passes the labels only to report
the same-element mass). ``--exact`` adds exact EMD on 4000 atoms (the largest size ``auto``
solves exactly) next to ``blocks``, ``knn`` and ``multiscale`` on the same atoms, to show what
the faster methods cost.
``--noise 1.5`` makes the matching hard (same-atom mass of the exact plan well below 1).
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from platoscope.analysis import transport


def synthetic_pair(n: int, d: int, n_el: int, zipf: bool, noise: float = 0.3, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_el + 1) if zipf else np.ones(n_el)
    el = rng.choice(np.arange(1, n_el + 1), size=n, p=p / p.sum())
    centres = rng.normal(size=(n_el + 1, d)) * 3.0
    x = centres[el] + rng.normal(size=(n, d))
    y = x + 0.1 * np.tanh(x) + noise * rng.normal(size=(n, d))
    return x, y, el


def run(name: str, x: np.ndarray, y: np.ndarray, **kw: object) -> None:
    tracemalloc.start()
    t, c = time.perf_counter(), time.process_time()
    res = transport(x, y, **kw)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    sem = "-" if res.same_element_mass is None else f"{res.same_element_mass:.3f}"
    sam = "-" if res.same_atom_mass is None else f"{res.same_atom_mass:.3f}"
    print(f"{name:<28} {x.shape[0]:>6} {wall:>7.2f} s {cpu:>7.2f} s {peak / 2**20:>8.1f} MiB "
          f"{rss:>8.0f} MiB  cost {res.cost:>8.3f}  same-atom {sam}  "
          f"same-element {sem}")
    print(f"    method: {res.method}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--elements", type=int, default=20)
    ap.add_argument("--noise", type=float, default=0.3, help="model B's noise (element spread 1)")
    ap.add_argument("--exact", action="store_true")
    args = ap.parse_args()
    print(f"{'case':<28} {'atoms':>6} {'wall':>9} {'CPU':>9} {'peak traced':>12} "
          f"{'peak RSS':>12}")
    for zipf in (False, True):
        x, y, el = synthetic_pair(args.n, args.d, args.elements, zipf, args.noise)
        tag = "zipf" if zipf else "equal"
        print(f"-- {tag} element counts (largest element: {np.bincount(el).max()} atoms)")
        run(f"auto, elements ({tag})", x, y, elements=el)
        run(f"auto, no elements ({tag})", x, y, elements=(el, el), method="knn")
        run(f"multiscale ({tag})", x, y, method="multiscale", elements=el)
        run(f"sliced ({tag})", x, y, method="sliced", elements=el)
    x, y, el = synthetic_pair(args.n, args.d, args.elements, False, args.noise)
    m = int(0.9 * args.n)
    print(f"-- different sizes: {args.n} source atoms, {m} target atoms")
    run("auto, no elements", x, y[:m])
    if args.exact:
        x, y, el = synthetic_pair(min(args.n, 4000), args.d, args.elements, False, args.noise)
        print(f"-- exact reference on {x.shape[0]} atoms (equal element counts)")
        for method in ("emd", "blocks", "knn", "multiscale"):
            run(method, x, y, method=method, elements=el)

if __name__ == "__main__":
    main()
