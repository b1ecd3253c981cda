"""Monitored runs: MD, relaxation and trajectory post-processing with outputs that lose nothing.

Every run writes to one folder:

- ``frames.extxyz``: one frame per recorded step with ``platonic`` (N, K) and
  ``score_<monitor>`` (N,) per atom, energy and forces;
- ``frames.h5``: HDF5 sidecar with full embeddings and coordinates, appended and flushed every
  frame (a SIGKILL leaves every completed frame readable);
- ``events.jsonl``: one JSON object per event (``step``, ``monitor``, ``atoms``, ``score``,
  ``threshold``, ``action`` ...), fsynced;
- ``summary.json``: provenance (models, weight hashes, anchor-set hash, versions), monitor
  thresholds and false-alarm rates, status (``completed``, ``stopped``, ``interrupted``,
  ``failed``), written atomically at start and at the end.

A run restarted with ``restart=True`` continues from the last complete frame.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from platoscope.monitors.base import Event, Frame, Monitor, RunStopped, Watcher
from platoscope.provenance import package_versions
from platoscope.writers import EventLog, FrameSidecar, write_json_atomic

FRAMES = "frames.extxyz"
SIDECAR = "frames.h5"
EVENTS = "events.jsonl"
SUMMARY = "summary.json"


class RunRecorder:
    """A Watcher sink that writes frames, sidecar, events and summary into ``out``."""

    def __init__(self, out: str | Path, *, provenance: dict[str, Any], config: dict[str, Any],
                 interval: int = 1, embeddings: bool = True, append: bool = False):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self.embeddings = embeddings
        self.provenance = provenance
        self.config = config
        self.started = time.time()
        self.n_frames = 0
        self.sidecar = FrameSidecar(self.out / SIDECAR, mode="a" if append else "w",
                                    attrs={"provenance": provenance, "config": config})
        self.events = EventLog(self.out / EVENTS)
        if not append:
            for name in (FRAMES,):
                (self.out / name).unlink(missing_ok=True)
        self.write_summary("running")

    def frame(self, frame: Frame, scores: dict[str, np.ndarray]) -> None:
        if frame.step % self.interval:
            return
        atoms = frame.atoms
        snap = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                     pbc=atoms.pbc, momenta=atoms.get_momenta() if atoms.has("momenta") else None)
        snap.arrays["platonic"] = np.asarray(frame.platonic)
        for name, s in scores.items():
            snap.arrays[f"score_{name}"] = s
        snap.info["step"] = frame.step
        if frame.energy is not None or frame.forces is not None:
            snap.calc = SinglePointCalculator(snap, energy=frame.energy, forces=frame.forces)
        write(self.out / FRAMES, snap, format="extxyz", append=True)
        self.sidecar.append(frame.step, numbers=atoms.numbers, positions=atoms.positions,
                            cell=np.asarray(atoms.cell), platonic=frame.platonic,
                            embeddings=frame.embeddings if self.embeddings else None,
                            scores=scores, energy=frame.energy, forces=frame.forces)
        self.n_frames += 1

    def event(self, event: Event) -> None:
        self.events.append(event.to_dict())

    def write_summary(self, status: str, extra: dict[str, Any] | None = None) -> None:
        write_json_atomic(self.out / SUMMARY, {
            "status": status, "provenance": self.provenance, "config": self.config,
            "frames_written": self.n_frames, "wall_time_s": round(time.time() - self.started, 3),
            "versions": package_versions(), **(extra or {}),
        })

    def close(self) -> None:
        self.sidecar.close()


def last_frame(out: str | Path) -> tuple[Atoms, int]:
    """The last complete frame of a run folder and its step, for restarts."""
    from ase.io import read

    path = Path(out) / FRAMES
    if not path.is_file():
        raise FileNotFoundError(f"cannot restart: {path} does not exist")
    atoms = read(path, index=-1)
    return atoms, int(atoms.info.get("step", 0))


def make_dynamics(atoms: Atoms, *, ensemble: str, timestep_fs: float, temperature_K: float,
                  friction: float = 0.01, pressure_GPa: float = 0.0, seed: int = 0):
    """An ASE integrator for ``nve`` (velocity Verlet), ``nvt`` (Langevin) or ``npt``
    (Berendsen barostat and thermostat)."""
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    if ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, temperature_K=temperature_K, friction=friction,
                        rng=np.random.default_rng(seed))
    if ensemble == "npt":
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(atoms, dt, temperature_K=temperature_K,
                            pressure_au=pressure_GPa * units.GPa, taut=100 * units.fs,
                            taup=1000 * units.fs, compressibility_au=4.57e-5 / units.bar)
    raise ValueError(f"unknown ensemble {ensemble!r}; valid: nve, nvt, npt")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)


def _postfix(bar: Any, watcher: Watcher, atoms: Atoms) -> None:
    if watcher.worst is None:
        return
    name, i, ratio = watcher.worst
    bar.set_postfix_str(f"worst {atoms.get_chemical_symbols()[i]}{i} {name} "
                        f"{ratio:.2f}x thr, events {watcher.n_events}", refresh=False)


def _observe(watcher: Watcher, atoms: Atoms, bar: Any) -> None:
    watcher(atoms)
    bar.update(1)
    _postfix(bar, watcher, atoms)


@contextmanager
def _lifecycle(recorder: RunRecorder, watcher: Watcher, bar: Any):
    """Run a loop; whatever ends it (done, a stop event, Ctrl-C, an error) the summary says so.

    Yields a dict the loop may add end-of-run facts to; ``state["result"]`` holds the final
    summary afterwards. A monitor's stop ends the loop cleanly; Ctrl-C and errors propagate.
    """
    state: dict[str, Any] = {"status": "completed"}
    try:
        yield state
    except RunStopped:
        state["status"] = "stopped"
    except KeyboardInterrupt:
        state["status"] = "interrupted"
        raise
    except Exception:
        state["status"] = "failed"
        raise
    finally:
        bar.close()
        extra = {k: v for k, v in state.items() if k not in ("status", "result")}
        state["result"] = _finish(recorder, watcher, state["status"], steps_done=watcher.step,
                                  **extra)


def _finish(recorder: RunRecorder, watcher: Watcher, status: str, **extra: Any) -> dict[str, Any]:
    summary = {"monitoring": watcher.summary(), **extra}
    if watcher.stop_requested is not None:
        summary["stopped_by"] = watcher.stop_requested.to_dict()
    recorder.write_summary(status, summary)
    recorder.close()
    return {"status": status, **summary}


def run_md(atoms: Atoms, monitors: Sequence[Monitor], out: str | Path, *, steps: int,
           ensemble: str = "nvt", timestep_fs: float = 1.0, temperature_K: float = 300.0,
           friction: float = 0.01, pressure_GPa: float = 0.0, interval: int = 1,
           seed: int = 0, restart: bool = False, strict: bool = False, progress: bool = True,
           embeddings: bool = True) -> dict[str, Any]:
    """Molecular dynamics of ``atoms`` (whose calc is a PlatonicCalculator) with monitors.

    steps: MD steps to run (on restart: the total, counting those already done);
    interval: record every ``interval``-th step. Returns the final summary dict.
    """
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    calc = atoms.calc
    first_step, n_steps = 0, steps
    if restart:
        prev, last = last_frame(out)
        if len(prev) != len(atoms) or (prev.numbers != atoms.numbers).any():
            raise ValueError(f"cannot restart: the last frame in {out} holds "
                             f"{prev.get_chemical_formula()}, not {atoms.get_chemical_formula()}")
        atoms.positions, atoms.cell = prev.positions, prev.cell
        if prev.has("momenta"):
            atoms.set_momenta(prev.get_momenta())
        first_step, n_steps = last + 1, steps - last
    elif ensemble != "nve" or not atoms.has("momenta"):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K,
                                     rng=np.random.default_rng(seed))
    config = {"kind": "md", "ensemble": ensemble, "steps": steps, "timestep_fs": timestep_fs,
              "temperature_K": temperature_K, "friction": friction, "pressure_GPa": pressure_GPa,
              "interval": interval, "seed": seed, "n_atoms": len(atoms),
              "formula": atoms.get_chemical_formula()}
    recorder = RunRecorder(out, provenance=calc.provenance(), config=config, interval=interval,
                           embeddings=embeddings, append=restart)
    watcher = Watcher(monitors, sinks=[recorder], strict=strict, start_step=first_step)
    recorder.write_summary("running", {"monitoring": watcher.summary()})
    dyn = make_dynamics(atoms, ensemble=ensemble, timestep_fs=timestep_fs,
                        temperature_K=temperature_K, friction=friction,
                        pressure_GPa=pressure_GPa, seed=seed + first_step)
    bar = _progress(max(n_steps, 0) + (0 if restart else 1), f"md {ensemble}", progress)
    with _lifecycle(recorder, watcher, bar) as state:
        for i, _ in enumerate(dyn.irun(steps=max(n_steps, 0))):
            if restart and i == 0:
                continue  # the restored frame is already on disk
            _observe(watcher, atoms, bar)
    return state["result"]


def run_relax(atoms: Atoms, monitors: Sequence[Monitor], out: str | Path, *, fmax: float = 0.05,
              steps: int = 500, cell: bool = False, optimizer: str = "BFGS",
              strict: bool = False, progress: bool = True, embeddings: bool = True
              ) -> dict[str, Any]:
    """Relax ``atoms`` (positions, and the cell with ``cell=True`` via FrechetCellFilter)."""
    from ase import optimize
    from ase.filters import FrechetCellFilter

    opt_cls = getattr(optimize, optimizer, None)
    if opt_cls is None:
        raise ValueError(f"unknown optimizer {optimizer!r} (try BFGS, FIRE, LBFGS)")
    calc = atoms.calc
    config = {"kind": "relax", "fmax": fmax, "steps": steps, "cell": cell,
              "optimizer": optimizer, "n_atoms": len(atoms),
              "formula": atoms.get_chemical_formula()}
    recorder = RunRecorder(out, provenance=calc.provenance(), config=config,
                           embeddings=embeddings)
    watcher = Watcher(monitors, sinks=[recorder], strict=strict)
    recorder.write_summary("running", {"monitoring": watcher.summary()})
    target = FrechetCellFilter(atoms) if cell else atoms
    opt = opt_cls(target, logfile=None)
    bar = _progress(steps, f"relax {optimizer}", progress)
    with _lifecycle(recorder, watcher, bar) as state:
        state["converged"] = False
        for conv in opt.irun(fmax=fmax, steps=steps):
            state["converged"] = bool(conv)
            _observe(watcher, atoms, bar)
    return state["result"]


def monitor_frames(frames: Sequence[Atoms], calc: Any, monitors: Sequence[Monitor],
                   out: str | Path, *, batch_size: int = 16, strict: bool = False,
                   progress: bool = True, embeddings: bool = True,
                   source: str | None = None) -> dict[str, Any]:
    """Run monitors over existing frames; ``step`` is the frame index.

    Embeddings come from the backend's batched path (no forces are computed) and are
    projected with ``calc``'s projector, so no frame is evaluated twice.
    """
    config = {"kind": "monitor", "source": source, "n_frames": len(frames),
              "batch_size": batch_size}
    recorder = RunRecorder(out, provenance=calc.provenance(), config=config,
                           embeddings=embeddings)
    watcher = Watcher(monitors, sinks=[recorder], strict=strict)
    recorder.write_summary("running", {"monitoring": watcher.summary()})
    bar = _progress(len(frames), "monitor", progress)
    with _lifecycle(recorder, watcher, bar) as state:
        for s in range(0, len(frames), batch_size):
            chunk = [a.copy() for a in frames[s:s + batch_size]]
            feats = calc.backend.embed(chunk, batch_size=batch_size)
            for j, (a, e) in enumerate(zip(chunk, feats, strict=True)):
                src = frames[s + j]
                res = src.calc.results if src.calc is not None else {}
                a.calc = None
                z = calc.projector.transform(e)
                a.arrays["platonic"] = z
                watcher.step = s + j + 1
                watcher.process(Frame(step=s + j, atoms=a, platonic=z, embeddings=e,
                                      forces=res.get("forces"), energy=res.get("energy"),
                                      calc=calc))
                bar.update(1)
                _postfix(bar, watcher, a)
    return state["result"]
