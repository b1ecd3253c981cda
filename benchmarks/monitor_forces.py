"""What ``platoscope monitor --forces model`` costs against ``--forces file``.

``file``: features from the backend's batched feature-only pass (``Backend.embed``, batch
``--batch-size``); ``model``: one ``Backend.compute(atoms, ("energy", "forces"))`` per frame
(forward and backward pass), the path the uncertainty monitor selects under ``--forces auto``.
Both: the in-process executor with its default prefetch, the shipped anchors and projection,
no monitor (what differs is the forward pass), run files written. Rattled 64-atom Si frames,
torch ``--torch-threads`` threads, alternating rounds after a warm-up (benchmarks/_timing.py).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/monitor_forces.py --frames 32 --rounds 3

Writes ``results/benchmark_monitor_forces.json``: seconds per frame per round, medians, and the
median per-round ratio time(model) / time(file). The load average is recorded: on a shared
machine absolute times move with other work; the ratio within a round is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import alternate, median_ratios  # noqa: E402


def frames(n: int, seed: int = 0):
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    base = bulk("Si", "diamond", a=5.43).repeat(2)  # 16 atoms
    base = base.repeat((2, 2, 1))  # 64 atoms
    out = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        out.append(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="chgnet:0.3.0")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "results" / "benchmark_monitor_forces.json"))
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    import torch

    from platoscope.anchors import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.calculator import PlatonicCalculator
    from platoscope.distributed import ModelSpec, open_executor
    from platoscope.runner import monitor_frames

    torch.set_num_threads(args.torch_threads)
    backend = load_backend(args.model)
    calc = PlatonicCalculator(backend, anchors=AnchorSet.default())
    data = frames(args.frames)
    tmp = Path(tempfile.mkdtemp(prefix="bench_forces_"))
    load_before = [round(x, 2) for x in os.getloadavg()]

    def run(mode: str):
        def fn(_):
            out = tmp / mode
            shutil.rmtree(out, ignore_errors=True)
            with open_executor(ModelSpec.of(backend), backend=backend,
                               chunk_size=args.batch_size) as ex:
                res = monitor_frames(data, calc, [], out, executor=ex, progress=False,
                                     resume=False, forces=mode)
            assert res["status"] == "completed", res
        return fn

    try:
        times = alternate({"file": run("file"), "model": run("model")}, lambda r: None,
                          rounds=args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per_frame = {k: [t / args.frames for t in v] for k, v in times.items()}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    result = {"note": args.note, "commit": commit, "src_uncommitted_changes": dirty,
              "model": args.model, "frames": args.frames, "atoms_per_frame": len(data[0]),
              "batch_size": args.batch_size, "torch_threads": args.torch_threads,
              "rounds": args.rounds, "loadavg_before": load_before,
              "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "seconds_per_frame": {k: [round(t, 4) for t in v] for k, v in per_frame.items()},
              "median_seconds_per_frame": {k: round(statistics.median(v), 4)
                                           for k, v in per_frame.items()},
              "median_ratio_model_over_file": round(
                  median_ratios(times, "file")["model"], 3)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
