"""Benchmark anchor selection (DIRECT, FPS, random) on synthetic per-atom features.

Two data sets of N rows x D features (default 100k x 64):

* ``blobs20``: 20 isotropic Gaussian blobs of equal weight;
* ``gmm80``: a "real-looking" mixture of 80 anisotropic Gaussians (rank-8 covariances plus
  noise, Dirichlet weights), with a synthetic atomic number per row (85 elements, Zipf-like
  frequencies tied to the components) for the ``per_element`` rows.

Prints, per selector: wall time, k, PCA components and BIRCH fits (DIRECT), mixture components
holding an anchor, and the covering radius (max distance of any row to its nearest anchor).
Target: DIRECT under 60 s for 100k x 64 on 2 cores.

    python benchmarks/selection.py [--n 100000] [--d 64] [--k 100] [--full]

``--full`` adds 128-d features and the MP-20 training-set size (282,847 atoms).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from platoscope.selection import (
    SelectionResult,
    covering_radius,
    select_direct,
    select_fps,
    select_random,
)


def blobs20(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)) * 4.0
    comp = rng.integers(0, 20, size=n)
    x = centres[comp] + rng.normal(size=(n, d))
    numbers = comp + 1
    return x, comp, numbers


def gmm80(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = 80
    means = rng.normal(size=(c, d)) * 3.0
    loadings = rng.normal(size=(c, d, 8)) * 0.5
    weights = rng.dirichlet(np.full(c, 0.7))
    comp = rng.choice(c, size=n, p=weights)
    x = np.empty((n, d))
    for a in range(0, n, 16384):  # rank-8 structure per component plus isotropic noise
        b = min(a + 16384, n)
        lat = rng.normal(size=(b - a, 8))
        x[a:b] = (means[comp[a:b]] + np.einsum("ndk,nk->nd", loadings[comp[a:b]], lat)
                  + rng.normal(size=(b - a, d)) * 0.3)
    # 85 elements: each component has a "home" element; 20 % of rows draw a Zipf-rare one
    home = rng.integers(1, 86, size=c)
    zipf = 1.0 / np.arange(1, 86) ** 1.5
    rare = rng.choice(np.arange(1, 86), size=n, p=zipf / zipf.sum())
    numbers = np.where(rng.random(n) < 0.2, rare, home[comp])
    numbers[rng.choice(n, 85, replace=False)] = np.arange(1, 86)  # every element present
    return x, comp, numbers


def run(name: str, x: np.ndarray, comp: np.ndarray, numbers: np.ndarray, k: int,
        rows: list[dict]) -> None:
    selectors: list[tuple[str, Callable[[], SelectionResult]]] = [
        ("direct", lambda: select_direct(x, k)),
        ("direct+elements", lambda: select_direct(x, k, per_element=numbers)),
        ("direct (no subsample)", lambda: select_direct(x, k, birch_subsample=None)),
        ("fps", lambda: select_fps(x, k)),
        ("fps cosine", lambda: select_fps(x, k, metric="cosine")),
        ("random", lambda: select_random(x, k)),
    ]
    for label, fn in selectors:
        t0 = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t0
        p = res.params
        rows.append({
            "data": name, "N": len(x), "D": x.shape[1], "method": label, "k": len(res.indices),
            "seconds": dt, "pcs": p.get("n_pca_components", "-"),
            "fits": len(p["threshold_trace"]) if "threshold_trace" in p else "-",
            "clusters": p.get("n_clusters_populated", "-"),
            "comps": len(np.unique(comp[res.indices])),
            "elements": len(np.unique(numbers[res.indices])),
            "radius": covering_radius(x, res.indices),
        })
        print(_fmt(rows[-1]), flush=True)


COLS = [("data", 8, "s"), ("N", 7, "d"), ("D", 4, "d"), ("method", 22, "s"), ("k", 4, "d"),
        ("seconds", 8, ".2f"), ("pcs", 4, ""), ("fits", 5, ""), ("clusters", 8, ""),
        ("comps", 6, "d"), ("elements", 8, "d"), ("radius", 7, ".2f")]


def _fmt(row: dict) -> str:
    return " ".join(format(row[c], f">{w}{f}" if f else f">{w}") if c != "method"
                    else format(row[c], f"<{w}") for c, w, f in COLS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--full", action="store_true", help="also 128-d and 282,847 rows")
    args = ap.parse_args()
    configs = [(args.n, args.d)]
    if args.full:
        configs += [(args.n, 128), (282_847, 128)]
    print(" ".join(format(c, f"<{w}" if c == "method" else f">{w}") for c, w, _ in COLS))
    rows: list[dict] = []
    for n, d in configs:
        for name, make in (("blobs20", blobs20), ("gmm80", gmm80)):
            t0 = time.perf_counter()
            x, comp, numbers = make(n, d)
            print(f"# {name}: {n} x {d} generated in {time.perf_counter() - t0:.1f} s; "
                  f"{len(np.unique(comp))} components, {len(np.unique(numbers))} elements",
                  flush=True)
            run(name, x, comp, numbers, args.k, rows)
    direct = [r["seconds"] for r in rows if r["method"] == "direct"]
    print(f"# slowest DIRECT: {max(direct):.2f} s (target < 60 s)")


if __name__ == "__main__":
    main()
