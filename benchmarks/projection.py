"""Throughput of the projection onto anchors (``platoscope.projection.project``).

Synthetic float32 embeddings (like a model's output) of N atoms x D features against K anchors,
for the paper's plain cosines and the default ``shared`` projection (centring + softmax
kernel). Coordinates are consumed chunk by chunk (as a trajectory post-processor would), so
N = 1M at K = 3000 does not need 24 GB; the table gives atoms/s and the peak resident memory
the process reached (RSS, MiB). Target (issue 3): 1M atoms against 100 anchors.

    python benchmarks/projection.py [--n 1000000] [--d 64] [--ks 100 3000] [--chunk 8192]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from platoscope.projection import Projector


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n: int, d: int, k: int, preset: str, chunk: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, d)).astype(np.float32) * 3
    proj = Projector(preset).fit(centres[rng.integers(0, 50, k)]
                                 + rng.normal(size=(k, d)).astype(np.float32))
    block = (centres[rng.integers(0, 50, chunk)]
             + rng.normal(size=(chunk, d)).astype(np.float32))
    checksum = 0.0
    t0 = time.perf_counter()
    for s in range(0, n, chunk):
        z = proj.transform(block[: min(chunk, n - s)])
        checksum += float(z[:, 0].sum())
    dt = time.perf_counter() - t0
    return {"n": n, "d": d, "k": k, "projection": preset, "seconds": dt,
            "atoms_per_s": n / dt, "peak_rss_mib": peak_rss_mib(), "checksum": checksum}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--ks", type=int, nargs="+", default=[100, 3000])
    p.add_argument("--chunk", type=int, default=8192)
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; N={a.n:,} D={a.d}, "
          f"chunks of {a.chunk:,}")
    print(f"{'K':>5} {'projection':>10} {'seconds':>8} {'atoms/s':>12} {'peak RSS MiB':>13}")
    for k in a.ks:
        for preset in ("paper", "shared"):
            r = run(a.n, a.d, k, preset, a.chunk)
            print(f"{k:>5} {preset:>10} {r['seconds']:>8.2f} {r['atoms_per_s']:>12,.0f} "
                  f"{r['peak_rss_mib']:>13.0f}")


if __name__ == "__main__":
    main()
