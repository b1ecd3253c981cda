"""Throughput of ``embed`` and ``monitor`` against the bare backend, and 1 vs 2 Dask workers.

Start-up (reported apart, never in a throughput): loading the model, the shipped anchor set,
the reference bank, and the projector's one-off preparation (its first projection); for a
cluster, starting it and the first task on every worker (each worker loads the model).

Part 1, one process, ``--torch-threads`` threads (default 1, as one worker), the same frames,
alternating rounds (the order rotates each round so load drifts hit every variant alike):
  bare     the backend's own batched forward pass to the feature layer,
           ``Backend.embed(frames, batch_size=B)``: nothing of platoscope's but the layer hook
  embed    what ``platoscope embed`` runs after start-up: the in-process executor, the
           projection (shipped defaults: ``element`` projection on the default anchors), top-k
           coordinates and the streaming .h5 write with chunk files for resume
  monitor  what ``platoscope monitor`` runs after start-up: the same forward passes, the
           projection, the ``atypical`` monitor and the run files (frames.extxyz, frames.h5,
           events, summary); building the monitor set (the ``atypical`` monitor calibrates its
           thresholds on the bank, a fixed cost per run) is start-up, untimed here and
           reported as ``build_monitors_s``
  embed_prefetchP, monitor_prefetchP   the same with the other ``prefetch`` than the
           default (``default_prefetch``: the backend's ``prefetch`` with a core free of torch):
           ``prefetch0`` runs each chunk's forward pass after the previous chunk's projection
           and writes (the path before the pipelining), ``prefetch1`` runs it in a background
           thread beside them (``--no-other-prefetch`` leaves these out)
  Figures: median atoms/s over rounds, and the median over rounds of the per-round ratio
  time(bare) / time(variant). Target: embed and monitor >= 0.9 x bare.
  ``stages``: one extra pass of the embed path's steps timed one by one (forward, chunk files
  for resume (``ChunkStore.save``, fsynced), projection, top-k, HDF5 write (the writer's
  append time minus the separately timed top-k it repeats, so approximate), closing the HDF5
  file (gzip of the chunks still in HDF5's cache)) to show where the time goes.

Part 2, LocalCluster of 1 worker x 1 thread vs 2 workers x 1 thread: ``forward`` (the forward
passes only, ``embed_list``) and ``embed`` (the whole ``embed_to_file`` with the driver
projecting and writing), alternating rounds after a warm-up. Target on a 2-core machine:
2 workers >= 1.6 x 1 worker. ``--scaling-frames N`` sizes this part apart from part 1.

Part 3 (``--ceiling``): two independent plain processes, each the bare batched forward pass on
the same frames, against one alone: what the machine's second core gives a forward pass with
neither Dask nor platoscope in the way, the ceiling of part 2's speed-up.

    python benchmarks/distributed.py --backends chgnet,sevenn:7net-0 --frames 96 --rounds 3

The load average (1, 5, 15 min) is recorded before and after each backend: on a shared machine
the absolute atoms/s move with other people's work; the ratios within one run are the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

# this file is named like the ``distributed`` package: keep its folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import contextlib  # noqa: E402
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
    """``n`` rattled (0.05 Å) diamond-Si supercells of 8 * reps^3 atoms."""
    rng = np.random.default_rng(seed)
    base = bulk("Si", "diamond", a=5.43, cubic=True).repeat(reps)
    out = []
    for i in range(n):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.info.update(source="bench/si.extxyz", source_index=i)
        out.append(a)
    return out


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 3)


def alternate(fns: dict, rounds: int, prepare: dict | None = None) -> dict[str, list[float]]:
    """Seconds of each function per round, in a rotating order, after one warm-up call each.

    prepare: per name, a function called untimed right before each call of that name's
    function (start-up that the timed function must not pay, e.g. building a monitor set)."""
    prepare = prepare or {}

    def call(name: str) -> float:
        if name in prepare:
            prepare[name]()
        t0 = time.perf_counter()
        fns[name]()
        return time.perf_counter() - t0

    for name in fns:
        call(name)
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for _ in range(rounds):
        for name in order:
            times[name].append(call(name))
        order = order[1:] + order[:1]
    return times


def summarise(times: dict[str, list[float]], n_atoms: int, base: str | None) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"atoms_per_s": {k: round(n_atoms / v, 1) for k, v in med.items()},
           "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()}}
    if base is not None:
        out["ratio_to_" + base] = {
            k: round(statistics.median(b / t for t, b in zip(v, times[base], strict=True)), 3)
            for k, v in times.items() if k != base}
    return out


def setup(spec: str, device: str = "cpu") -> tuple[dict, tuple]:
    """Start-up, timed: model, anchors, bank, calculator and the projector's first use."""
    from platoscope import AnchorSet, PlatonicCalculator, load_backend
    from platoscope.reference import default_bank

    backend, t_model = _timed(lambda: load_backend(spec, device=device))
    anchors, t_anchors = _timed(AnchorSet.default)
    bank, t_bank = _timed(lambda: default_bank(backend, anchors))
    calc, t_calc = _timed(lambda: PlatonicCalculator(backend, anchors=anchors,
                                                     projection=bank.projector))
    one = frames_for(1, 1)[0]
    _, t_first = _timed(lambda: calc.projector.transform_with_coverage(
        backend.embed([one])[0], one.numbers))
    startup = {"load_model_s": t_model, "load_anchors_s": t_anchors,
               "load_reference_bank_s": t_bank, "build_calculator_s": t_calc,
               "first_embed_and_projection_s": t_first, "n_anchors": len(anchors),
               "projection": calc.projector.get_params().get("normalize"),
               "kernel": calc.projector.get_params().get("kernel")}
    return startup, (backend, anchors, bank, calc)


def single_process(objs: tuple, frames: list, batch: int, rounds: int, other: bool = True
                   ) -> dict:
    from platoscope.distributed import ModelSpec, default_prefetch, embed_to_file, open_executor
    from platoscope.monitors import build_monitors
    from platoscope.readers import structures_hash
    from platoscope.runner import monitor_frames

    backend, _anchors, bank, calc = objs
    model = ModelSpec.of(backend, device=backend.device)
    n_atoms = sum(len(a) for a in frames)
    h = structures_hash(frames)
    tmp = Path(tempfile.mkdtemp())

    def bare():
        backend.embed(frames, batch_size=batch)

    def embed(prefetch: int | None = None):
        with open_executor(model, backend=backend, chunk_size=batch,
                           prefetch=prefetch) as ex:
            embed_to_file(frames, calc, tmp / "c.h5", ex, data_hash=h, progress=False)

    def build():
        return build_monitors("atypical", calc=calc, bank=bank, action="record",
                              dump_dir=tmp / "mon" / "dumps")

    fresh: list = []

    def prepare_monitor():
        # the monitor set is built (and calibrated on the bank) untimed, before the timed call
        # (``alternate``'s prepare): a per-run start-up cost, timed apart below; the previous
        # run's folder is removed untimed too; everything monitor_frames does is timed
        shutil.rmtree(tmp / "mon", ignore_errors=True)
        fresh.append(build())

    def monitor(prefetch: int | None = None):
        with open_executor(model, backend=backend, chunk_size=batch,
                           prefetch=prefetch) as ex:
            monitor_frames(frames, calc, fresh.pop(), tmp / "mon", batch_size=batch,
                           progress=False, executor=ex)

    fns = {"bare": bare, "embed": embed, "monitor": monitor}
    if other:  # the same with the other prefetch than the backend's default (0 <-> 1)
        p = 1 - min(default_prefetch(backend), 1)
        fns.update({f"embed_prefetch{p}": lambda: embed(p),
                    f"monitor_prefetch{p}": lambda: monitor(p)})
    times = alternate(fns, rounds, prepare={k: prepare_monitor for k in fns
                                            if k.startswith("monitor")})
    build_s = []
    for _ in range(3):
        t0 = time.perf_counter()
        build()
        build_s.append(time.perf_counter() - t0)
    stages = embed_stages(calc, frames, batch, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"atoms": n_atoms, "frames": len(frames), "batch_size": batch, "rounds": rounds,
            "torch_threads": torch.get_num_threads(), "prefetch_default": default_prefetch(backend),
            **summarise(times, n_atoms, "bare"),
            "build_monitors_s": round(statistics.median(build_s), 3),
            "embed_stages_s": stages}


def embed_stages(calc, frames: list, batch: int, tmp: Path) -> dict[str, float]:
    """One pass of the embed path's steps, each timed alone (seconds for all frames)."""
    import h5py

    from platoscope.coords import TOP_K, CoordinateWriter, layout_for
    from platoscope.distributed import ChunkResult, ChunkStore
    from platoscope.readers import structures_hash

    t = {"forward": 0.0, "projection": 0.0, "top_k": 0.0, "hdf5_write": 0.0,
         "hdf5_close": 0.0, "chunk_files": 0.0}
    store = ChunkStore(tmp / "stages.parts", {"kind": "stages"})
    h = h5py.File(tmp / "stages.h5", "w")
    with h:
        w = CoordinateWriter(h, len(calc.anchors), layout_for(calc.projector), TOP_K,
                             n_global=calc.projector.n_global)
        for s in range(0, len(frames), batch):
            chunk = frames[s:s + batch]
            t0 = time.perf_counter()
            parts = calc.backend.embed(chunk, batch_size=batch)
            t1 = time.perf_counter()
            store.save(ChunkResult(index=s // batch, start=s, features=parts),
                       [len(a) for a in chunk], structures_hash(chunk))
            t["chunk_files"] += time.perf_counter() - t1
            feats = np.concatenate(parts)
            t1 = time.perf_counter()
            z, cov = calc.projector.transform_with_coverage(
                feats, np.concatenate([a.numbers for a in chunk]))
            t2 = time.perf_counter()
            if w.layout == "topk":
                from platoscope.coords import topk_parts

                topk_parts(z, len(calc.anchors), TOP_K)
            t3 = time.perf_counter()
            w.append(z, cov)  # top-k again inside, subtracted below
            t4 = time.perf_counter()
            t["forward"] += t1 - t0
            t["projection"] += t2 - t1
            t["top_k"] += t3 - t2
            t["hdf5_write"] += max((t4 - t3) - (t3 - t2), 0.0)
        t5 = time.perf_counter()
    t["hdf5_close"] = time.perf_counter() - t5  # chunks still in HDF5's cache compressed here
    store.remove()
    return {k: round(v, 3) for k, v in t.items()}


def _cpu_timed(fn, log: list[float]):
    """``fn`` that appends the CPU seconds of this process (every thread) each call takes."""
    def call():
        t0 = time.process_time()
        try:
            return fn()
        finally:
            log.append(time.process_time() - t0)
    return call


def scaling(objs: tuple, frames: list, batch: int, rounds: int) -> dict:
    from platoscope.distributed import ModelSpec, embed_list, embed_to_file, open_executor
    from platoscope.readers import structures_hash

    backend, _anchors, _bank, calc = objs
    model = ModelSpec.of(backend, device=backend.device)
    n_atoms = sum(len(a) for a in frames)
    h = structures_hash(frames)
    tmp = Path(tempfile.mkdtemp())
    out: dict = {}
    for workers in (1, 2):
        with contextlib.ExitStack() as stack:
            ex, t_start = _timed(lambda w=workers: stack.enter_context(
                open_executor(model, workers=w, chunk_size=batch)))
            # every worker's first task loads its model: one chunk per worker, at once
            _, t_warm = _timed(lambda w=workers, ex=ex: embed_list(ex, frames[: w * batch]))
            fns = {"forward": lambda ex=ex: embed_list(ex, frames),
                   "embed": lambda ex=ex: embed_to_file(frames, calc, tmp / "c.h5", ex,
                                                        data_hash=h, progress=False)}
            cpu: dict[str, list[float]] = {k: [] for k in fns}
            times = alternate({k: _cpu_timed(f, cpu[k]) for k, f in fns.items()}, rounds)
            info = ex.info()
            t0 = time.perf_counter()
        t_close = round(time.perf_counter() - t0, 3)
        out[f"{workers}x1"] = {**summarise(times, n_atoms, None),
                               # CPU seconds of the driver process per round (all its threads:
                               # the projection and writes, Dask's client and, for a local
                               # cluster, its scheduler); the warm-up call first
                               "driver_cpu_s": {k: [round(x, 3) for x in v]
                                                for k, v in cpu.items()},
                               "startup": {"start_cluster_s": t_start,
                                           "first_chunk_per_worker_s": t_warm,
                                           "close_cluster_s": t_close},
                               "cluster": info}
    shutil.rmtree(tmp, ignore_errors=True)
    one, two = out["1x1"]["seconds"], out["2x1"]["seconds"]
    out["speedup_2_vs_1"] = {k: round(statistics.median(one[k]) / statistics.median(two[k]), 3)
                             for k in one}
    return out


def _ceiling_worker(spec: str, device: str, n: int, reps: int, batch: int, conn) -> None:
    """A plain process: the bare batched forward pass on ``conn``'s command, its seconds back."""
    import torch as _torch

    from platoscope import load_backend

    _torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    backend = load_backend(spec, device=device)
    frames = frames_for(n, reps)
    backend.embed(frames[:batch], batch_size=batch)
    conn.send("ready")
    while conn.recv() == "run":
        t0 = time.perf_counter()
        backend.embed(frames, batch_size=batch)
        conn.send(time.perf_counter() - t0)


def ceiling(spec: str, device: str, n: int, reps: int, batch: int, rounds: int) -> dict:
    """The machine's own 2-vs-1 limit: two independent processes (no Dask, no platoscope
    beyond the layer hook), each running the bare forward pass on all ``n`` frames at once,
    against one alone; alternating rounds after a warm-up. ``speedup_2_vs_1`` is
    2 x t(one) / max(t(two)), the throughput the second core adds."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for _ in range(2):
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_ceiling_worker, args=(spec, device, n, reps, batch, there))
        proc.start()
        pipes.append(here)
        procs.append(proc)
    try:
        for c in pipes:
            c.recv()

        def run(k: int) -> float:
            for c in pipes[:k]:
                c.send("run")
            return max(c.recv() for c in pipes[:k])

        fns = {"one_process": lambda: run(1), "two_processes": lambda: run(2)}
        times = alternate(fns, rounds)
    finally:
        for c in pipes:
            c.send("stop")
        for proc in procs:
            proc.join(timeout=30)
    one, two = (statistics.median(times[k]) for k in fns)
    return {"seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "speedup_2_vs_1": round(2 * one / two, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="chgnet")
    p.add_argument("--frames", type=int, default=96)
    p.add_argument("--reps", type=int, default=2, help="Si supercell repeats (8*r^3 atoms)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads of the single-process part (1: as a worker)")
    p.add_argument("--device", default="cpu", help="torch device of the models (cpu, cuda)")
    p.add_argument("--skip-scaling", action="store_true")
    p.add_argument("--skip-single", action="store_true",
                   help="leave out part 1 (one process against the bare backend)")
    p.add_argument("--ceiling", action="store_true",
                   help="also part 3: two independent bare processes against one (the "
                        "machine's own limit for the 2-vs-1 target, no Dask)")
    p.add_argument("--scaling-frames", type=int, default=None,
                   help="frames of part 2 (default: --frames); with batch B and W workers a "
                        "round has frames / B chunks, and the pipeline's fill and drain (the "
                        "first chunk per worker, the driver's last projection and write) weigh "
                        "more the fewer chunks each worker gets")
    p.add_argument("--no-other-prefetch", action="store_true",
                   help="leave out embed_prefetchP and monitor_prefetchP (P: the other setting "
                        "than the backend's default)")
    p.add_argument("--note", default="", help="free text stored in the JSON")
    p.add_argument("--out", default=str(REPO / "results" / "benchmark_distributed.json"))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.torch_threads)
    frames = frames_for(args.frames, args.reps)
    scaling_frames = (frames if args.scaling_frames in (None, args.frames)
                      else frames_for(args.scaling_frames, args.reps))
    rows = {}
    for spec in args.backends.split(","):
        row: dict = {"loadavg_before": loadavg()}
        t0 = time.perf_counter()
        row["startup"], objs = setup(spec, args.device)
        if not args.skip_single:
            row["single_process"] = single_process(objs, frames, args.batch_size, args.rounds,
                                                   other=not args.no_other_prefetch)
        if not args.skip_scaling:
            row["workers"] = scaling(objs, scaling_frames, args.batch_size, args.rounds)
        if args.ceiling:
            row["ceiling"] = ceiling(spec, args.device, len(scaling_frames), args.reps,
                                     args.batch_size, args.rounds)
        row["loadavg_after"] = loadavg()
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows[spec] = row
        print(json.dumps({spec: row}, indent=1), flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], cwd=REPO,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    from platoscope.provenance import package_versions

    result = {"note": args.note, "commit": commit, "src_uncommitted_changes": dirty,
              "command": "python " + " ".join(sys.argv), "cpu_count": os.cpu_count(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "device": args.device,
              "gpu": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                      else None),
              "frames": {"what": f"rattled diamond Si, {8 * args.reps ** 3} atoms each",
                         "n": args.frames, "n_scaling": len(scaling_frames)},
              "versions": package_versions(),
              "targets": {"ratio_to_bare": 0.9, "speedup_2_vs_1": 1.6},
              "results": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
