"""Throughput of ``embed`` and ``monitor`` against the bare backend, and 1 vs 2 Dask workers.

Part 1, in one process, alternating rounds on the same frames (median of per-round ratios):
  bare     the backend's own batched inference, ``Backend.embed(frames, batch_size=B)``
  embed    what ``platoscope embed`` runs: the in-process executor, projection (shipped
           anchors, K=3000, ``shared``), streaming .h5 write with chunk files for resume
  monitor  what ``platoscope monitor`` runs: the same forward passes plus the atypical monitor
           and the run files (frames.extxyz, frames.h5, events, summary)
  Target: embed and monitor atoms/s >= 0.9 x bare.

Part 2, forward passes only (``embed_list`` on an executor): LocalCluster with 1 worker x 1
thread vs 2 workers x 1 thread, after a warm-up pass (cluster start and model load excluded).
Target on a 2-core machine: >= 1.6x.

    python benchmarks/distributed.py                                  # chgnet, defaults
    python benchmarks/distributed.py --backends chgnet,sevenn:7net-0 --frames 96 --rounds 3

Timings are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import sys
from pathlib import Path

# this file is named like the ``distributed`` package: keep its folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.build import bulk  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def frames_for(n: int, reps: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    base = bulk("Si", "diamond", a=5.43, cubic=True).repeat(reps)  # 8 * reps^3 atoms
    out = []
    for i in range(n):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.info.update(source="bench/si.extxyz", source_index=i)
        out.append(a)
    return out


def single_process(spec: str, frames: list, batch: int, rounds: int) -> dict:
    from platoscope import AnchorSet, PlatonicCalculator, load_backend
    from platoscope.distributed import ModelSpec, embed_to_file, open_executor
    from platoscope.monitors import build_monitors
    from platoscope.readers import structures_hash
    from platoscope.reference import default_bank
    from platoscope.runner import monitor_frames

    backend = load_backend(spec)
    anchors = AnchorSet.default()
    bank = default_bank(backend, anchors)
    calc = PlatonicCalculator(backend, anchors=anchors, projection=bank.projector)
    n_atoms = sum(len(a) for a in frames)
    h = structures_hash(frames)
    tmp = Path(tempfile.mkdtemp())

    def bare():
        backend.embed(frames, batch_size=batch)

    def embed():
        with open_executor(ModelSpec.of(backend), backend=backend, chunk_size=batch) as ex:
            embed_to_file(frames, calc, tmp / "c.h5", ex, data_hash=h, progress=False)

    def monitor():
        shutil.rmtree(tmp / "mon", ignore_errors=True)
        mons = build_monitors("atypical", calc=calc, bank=bank, action="record",
                              dump_dir=tmp / "mon" / "dumps")
        monitor_frames(frames, calc, mons, tmp / "mon", batch_size=batch, progress=False)

    fns = {"bare": bare, "embed": embed, "monitor": monitor}
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for _ in range(rounds):
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
        order = order[1:] + order[:1]
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "atoms": n_atoms, "frames": len(frames), "batch_size": batch, "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "atoms_per_s": {k: round(n_atoms / v, 1) for k, v in med.items()},
        "ratio_to_bare": {k: round(statistics.median(b / t for t, b in zip(
            times[k], times["bare"], strict=True)), 4) for k in ("embed", "monitor")},
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }


def scaling(spec: str, frames: list, batch: int, rounds: int) -> dict:
    from platoscope import load_backend
    from platoscope.distributed import ModelSpec, embed_list, open_executor

    model = ModelSpec.of(load_backend(spec))
    n_atoms = sum(len(a) for a in frames)
    out: dict = {}
    for workers in (1, 2):
        with open_executor(model, workers=workers, chunk_size=batch) as ex:
            embed_list(ex, frames[: 2 * workers * batch])  # warm-up: every worker loads
            ts = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                embed_list(ex, frames)
                ts.append(time.perf_counter() - t0)
            out[f"{workers}x1"] = {"seconds": [round(t, 3) for t in ts],
                                   "atoms_per_s": round(n_atoms / statistics.median(ts), 1),
                                   "cluster": ex.info()}
    out["speedup_2_vs_1"] = round(out["2x1"]["atoms_per_s"] / out["1x1"]["atoms_per_s"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="chgnet")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--reps", type=int, default=2, help="Si supercell repeats (8*r^3 atoms)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads of the single-process part (1: as a worker)")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--out", default=str(REPO / "results" / "benchmark_distributed.json"))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.torch_threads)
    frames = frames_for(args.frames, args.reps)
    rows = {}
    for spec in args.backends.split(","):
        row = {"single_process": single_process(spec, frames, args.batch_size, args.rounds)}
        if not args.skip_scaling:
            row["workers"] = scaling(spec, frames, args.batch_size, args.rounds)
        rows[spec] = row
        print(json.dumps({spec: row}, indent=1))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    from platoscope.provenance import package_versions

    result = {"commit": commit, "command": "python " + " ".join(sys.argv),
              "cpu_count": os.cpu_count(), "versions": package_versions(),
              "targets": {"ratio_to_bare": 0.9, "speedup_2_vs_1": 1.6},
              "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
