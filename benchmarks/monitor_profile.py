"""Where ``platoscope monitor`` spends its time after start-up, stage by stage.

One process, one torch thread, the benchmark frames of ``benchmarks/distributed.py`` (rattled
diamond Si), shipped defaults (default anchors, the default reference bank's projector, the
``atypical`` monitor, action ``record``; building it, which calibrates it on the bank, is
timed apart as ``build_monitors_s``, like the other start-up). Each stage is timed by
wrapping the function that does it (wall time, seconds per pass over all frames, mean of
``--rounds`` passes):

  forward      ``Backend.embed`` (the batched forward pass to the feature layer)
  projection   ``Projector.transform_with_coverage`` (per frame before commit "project per
               chunk", per chunk after)
  monitor:<n>  each monitor's ``start``, ``score``, ``extra_scores``, ``events`` and
               ``thresholds_for`` (the watcher calls the last for the progress line)
  extxyz       ``ase.io.write`` of frames.extxyz
  frames.h5    ``FrameSidecar.append`` (and ``append_many`` where it exists)
  events       ``EventLog.append``
  summary      ``write_json_atomic`` (summary.json, during the run and at its end)
  open run files  ``RunRecorder(...)``: creates frames.h5 (with the projector, once) and
               writes the first summary.json
  other        the run's total minus all of the above: per-frame Python in the runner and the
               watcher (copies, Atoms construction, progress bar), chunk-resume files, set-up

    python benchmarks/monitor_profile.py --backends chgnet,sevenn:7net-0 --frames 64
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from distributed import frames_for, loadavg  # noqa: E402

# distributed.py removes its folder from sys.path itself: remove it by value, if still there
sys.path[:] = [p for p in sys.path if p != str(REPO / "benchmarks")]


class Timers:
    def __init__(self):
        self.t: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.depth = 0

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        def timed(*a, **k):
            if self.depth:  # nested timed call: its parent counts it
                return fn(*a, **k)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[name] += time.perf_counter() - t0
                self.calls[name] += 1
                self.depth -= 1

        setattr(owner, attr, timed)


def profile(spec: str, frames: list, batch: int, rounds: int) -> dict:
    import platoscope.runner as runner
    from platoscope import AnchorSet, PlatonicCalculator, load_backend
    from platoscope.monitors import build_monitors
    from platoscope.reference import default_bank
    from platoscope.writers import EventLog, FrameSidecar

    backend = load_backend(spec)
    anchors = AnchorSet.default()
    bank = default_bank(backend, anchors)
    calc = PlatonicCalculator(backend, anchors=anchors, projection=bank.projector)
    tmp = Path(tempfile.mkdtemp())

    def build():
        return build_monitors("atypical", calc=calc, bank=bank, action="record",
                              dump_dir=tmp / "mon" / "dumps")

    def run(timers: Timers | None) -> float:
        shutil.rmtree(tmp / "mon", ignore_errors=True)
        mons = build()  # start-up of the run (calibration on the bank): timed apart
        if timers is not None:
            for m in mons:
                for attr in ("start", "score", "extra_scores", "events", "thresholds_for"):
                    timers.wrap(m, attr, f"monitor:{m.name}")
        t0 = time.perf_counter()
        runner.monitor_frames(frames, calc, mons, tmp / "mon", batch_size=batch, progress=False)
        return time.perf_counter() - t0

    run(None)  # warm-up
    plain = [run(None) for _ in range(rounds)]
    build_s = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        build()
        build_s.append(round(time.perf_counter() - t0, 3))
    timers = Timers()
    many = [(FrameSidecar, "append_many")] if hasattr(FrameSidecar, "append_many") else []
    patched = [*many, (runner, "write"), (FrameSidecar, "append"), (EventLog, "append"),
               (runner, "write_json_atomic"), (runner, "RunRecorder")]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr in patched]
    timers.wrap(backend, "embed", "forward")  # instance attributes, deleted afterwards
    timers.wrap(calc.projector, "transform_with_coverage", "projection")
    timers.wrap(runner, "write", "extxyz")
    timers.wrap(FrameSidecar, "append", "frames.h5")
    for owner, attr in many:  # frames written a chunk at a time (append calls it too)
        timers.wrap(owner, attr, "frames.h5")
    timers.wrap(EventLog, "append", "events")
    timers.wrap(runner, "write_json_atomic", "summary")
    timers.wrap(runner, "RunRecorder", "open run files")
    try:
        total = sum(run(timers) for _ in range(rounds))
    finally:
        del backend.embed, calc.projector.transform_with_coverage
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)
    bare = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        backend.embed(frames, batch_size=batch)
        bare.append(time.perf_counter() - t0)
    shutil.rmtree(tmp, ignore_errors=True)
    per = {k: round(v / rounds, 3) for k, v in sorted(timers.t.items())}
    per["other"] = round(total / rounds - sum(timers.t.values()) / rounds, 3)
    return {"seconds_per_pass": per,
            "calls_per_pass": {k: v // rounds for k, v in sorted(timers.calls.items())},
            "total_per_pass_instrumented_s": round(total / rounds, 3),
            "monitor_uninstrumented_s": [round(x, 3) for x in plain],
            "build_monitors_s": build_s,
            "bare_forward_s": [round(x, 3) for x in bare],
            "share_of_total": {k: round(v / (total / rounds), 3) for k, v in per.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="chgnet")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--note", default="")
    p.add_argument("--out", default=str(REPO / "results" / "benchmark_monitor_profile.json"))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    frames = frames_for(args.frames, args.reps)
    rows = {}
    for spec in args.backends.split(","):
        before = loadavg()
        rows[spec] = {"loadavg_before": before,
                      **profile(spec, frames, args.batch_size, args.rounds),
                      "loadavg_after": loadavg()}
        print(json.dumps({spec: rows[spec]}, indent=1), flush=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    import platoscope

    out = {"note": args.note, "commit": commit, "platoscope_imported_from": platoscope.__file__,
           "command": "python " + " ".join(sys.argv),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": 1,
           "frames": {"what": f"rattled diamond Si, {8 * args.reps ** 3} atoms each",
                      "n": args.frames, "batch_size": args.batch_size},
           "results": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
