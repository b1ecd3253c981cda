"""Monitored runs: MD, relaxation and trajectory post-processing with outputs that lose nothing.

Every run writes to one folder:

- ``frames.extxyz``: one frame per recorded step with ``platonic`` (N, K) and
  ``score_<monitor>`` (N,) per atom, energy and forces, and ``score_coverage`` (N,): each atom's
  largest cosine to the anchors it is projected on (see :mod:`platoscope.projection`);
- ``frames.h5``: HDF5 sidecar with full embeddings and coordinates, appended and flushed every
  frame (``monitor_frames``: every chunk of frames; a SIGKILL leaves every committed frame
  readable);

  with more than :data:`STORE_COORDS_MAX_K` anchors (``store_coords="auto"``) no file stores
  per-frame coordinates: frames.h5 keeps the projector once and ``read_sidecar`` derives each
  frame's coordinates from its embeddings (within ``projection.TOLERANCE``); extxyz frames
  then have no ``platonic`` and say so in ``info["platonic_source"]``, as summary.json does;
- ``events.jsonl``: one JSON object per event (``step``, ``monitor``, ``atoms``, ``score``,
  ``threshold``, ``action`` ...), fsynced;
- ``summary.json``: provenance (models, weight hashes, anchor-set hash, versions), monitor
  thresholds and false-alarm rates, status (``completed``, ``stopped``, ``interrupted``,
  ``failed``), written atomically at start and at the end.

A run restarted with ``restart=True`` continues from the last complete frame.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from platoscope.calculator import PlatonicCalculator, attach_coordinates
from platoscope.checks import require_int
from platoscope.coords import dense_rows, row_slice
from platoscope.errors import InputError, SimulationError
from platoscope.monitors.base import Event, Frame, Monitor, RunStopped, Watcher, score_units
from platoscope.provenance import package_versions
from platoscope.readers import frame_error
from platoscope.records import check_restart, count_events, count_frames
from platoscope.writers import EventLog, FrameSidecar, write_json_atomic
from platoscope.writers.events import drop_events_after
from platoscope.writers.runfiles import EVENTS, FRAMES, SIDECAR, SUMMARY

STORE_COORDS_MAX_K = 256
"""Largest K whose coordinates ``store_coords="auto"`` writes with every frame; above it they
are derived from the embeddings in frames.h5 (N x K float64 per frame is large: K = 3000)."""
STORE_COORDS = ("auto", "always", "never")
PLATONIC_STORED = f"{FRAMES}, {SIDECAR}"
PLATONIC_DERIVED = f"{SIDECAR} (derived from embeddings)"
COVERAGE = "coverage"
"""Stored score name of each atom's coverage (not a monitor: every projected frame has it)."""
COVERAGE_UNITS = "cosine to the best-matching anchor (1 = an anchor has the same environment)"


def store_coords_for(mode: str, n_anchors: int, *, embeddings: bool = True) -> bool:
    """Whether a run keeps per-frame coordinates: ``always``, ``never`` (derive them from the
    embeddings) or ``auto`` (keep them while K <= :data:`STORE_COORDS_MAX_K`)."""
    if mode not in STORE_COORDS:
        raise InputError(f"store_coords must be one of {', '.join(STORE_COORDS)}, not {mode!r}")
    if mode == "never" and not embeddings:
        raise InputError("store_coords='never' derives coordinates from the embeddings in "
                         "frames.h5, which embeddings=False (--no-embeddings) leaves out")
    return mode == "always" or not embeddings or (
        mode == "auto" and n_anchors <= STORE_COORDS_MAX_K)


class RunRecorder:
    """A Watcher sink that writes frames, sidecar, events and summary into ``out``.

    projector: the calculator's fitted Projector (stored once in frames.h5); store_coords:
    see :func:`store_coords_for` (K from ``provenance["n_anchors"]``); score_units: units per
    stored score name (:func:`~platoscope.monitors.base.score_units`), kept in frames.h5;
    verify: when coordinates are derived rather than stored, re-project each frame to check
    that the stored projector gives them (one extra projection per frame); False where the
    caller projects every frame with that same projector (``monitor_frames``; ``run_md`` and
    ``run_relax`` with a PlatonicCalculator: :func:`_verify_coords`);
    score_names: stored score names known before the first frame (frames.h5 then creates their
    datasets with the file instead of rewriting it when the first frame brings them);
    batch: keep frames until :meth:`flush` (called by :meth:`write_summary` and :meth:`close`)
    and write them with one extxyz write and one frames.h5 commit (``monitor_frames``: once
    per chunk; a kill then loses the frames of the chunk under way, which a resumed run
    rewrites); False writes and commits every frame as it comes (MD, relaxations);
    first_summary: extra entries of the ``running`` summary.json written on opening (the
    runners pass their watcher's ``monitoring`` here instead of rewriting it at once);
    final_step: a step written whatever ``interval`` says (MD's last step: the run's final
    structure was lost when ``interval`` did not divide ``steps``).
    """

    def __init__(self, out: str | Path, *, provenance: dict[str, Any], config: dict[str, Any],
                 interval: int = 1, embeddings: bool = True, append: bool = False,
                 projector: Any = None, store_coords: str = "auto",
                 score_units: dict[str, str] | None = None, verify: bool = True,
                 score_names: Sequence[str] = (), batch: bool = False,
                 first_summary: dict[str, Any] | None = None, final_step: int | None = None):
        self.store_platonic = store_coords_for(store_coords, int(provenance.get("n_anchors") or 0),
                                               embeddings=embeddings)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.interval = interval
        self.final_step = final_step
        self.embeddings = embeddings
        self.provenance = provenance
        self.config = config
        self.started = time.time()
        self.n_frames = 0
        self.batch = batch
        self._pending: list[tuple[Atoms, Any]] = []
        self.sidecar = FrameSidecar(
            self.out / SIDECAR, mode="a" if append else "w",
            attrs={"provenance": provenance, "config": config,
                   "score_units": {**dict(score_units or {}), COVERAGE: COVERAGE_UNITS}},
            projector_state=projector.get_state() if projector is not None else None,
            store_platonic=self.store_platonic, verify=verify, score_names=tuple(score_names))
        self.events = EventLog(self.out / EVENTS, mode="a" if append else "w")
        if append:
            self.n_frames = count_frames(self.out)
        if not append:
            for name in (FRAMES,):
                (self.out / name).unlink(missing_ok=True)
        self.write_summary("running", first_summary)

    def frame(self, frame: Frame, scores: dict[str, np.ndarray]) -> None:
        if frame.step % self.interval and frame.step != self.final_step:
            return
        if frame.coverage is not None:
            scores = {**scores, COVERAGE: np.asarray(frame.coverage, dtype=np.float64)}
        atoms = frame.atoms
        snap = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                     pbc=atoms.pbc, momenta=atoms.get_momenta() if atoms.has("momenta") else None)
        if self.store_platonic:  # extxyz holds dense (N, K) arrays: the file format
            snap.arrays["platonic"] = dense_rows(frame.platonic)
        else:
            snap.info["platonic_source"] = PLATONIC_DERIVED
        for name, s in scores.items():
            snap.arrays[f"score_{name}"] = s
        snap.info["step"] = frame.step
        if frame.energy is not None or frame.forces is not None:
            snap.calc = SinglePointCalculator(snap, energy=frame.energy, forces=frame.forces)
        data = self.sidecar.frame_data(
            frame.step, numbers=atoms.numbers, positions=atoms.positions,
            cell=np.asarray(atoms.cell), platonic=frame.platonic,
            embeddings=frame.embeddings if self.embeddings else None, scores=scores,
            energy=frame.energy, forces=frame.forces)
        self._pending.append((snap, data))
        if not self.batch:
            self.flush()

    def flush(self) -> None:
        """Write the frames kept so far (frames.extxyz, then one frames.h5 commit)."""
        if not self._pending:
            return
        snaps, data = zip(*self._pending, strict=True)
        self._pending = []
        write(self.out / FRAMES, list(snaps), format="extxyz", append=True)
        self.sidecar.append_many(data)
        self.n_frames += len(data)

    def event(self, event: Event) -> None:
        self.events.append(event.to_dict())

    def write_summary(self, status: str, extra: dict[str, Any] | None = None
                      ) -> dict[str, Any]:
        """Write summary.json; returns what it wrote (``extra`` with event counts over every
        segment of a restarted run, taken from the files, after the run's record)."""
        self.flush()
        extra = dict(extra or {})
        if "monitoring" in extra:
            extra["monitoring"] = {**extra["monitoring"], "n_events": count_events(self.out)}
        summary = {
            "status": status, "provenance": self.provenance, "config": self.config,
            "frames_written": self.n_frames, "wall_time_s": round(time.time() - self.started, 3),
            "versions": package_versions(),
            "platonic_source": PLATONIC_STORED if self.store_platonic else PLATONIC_DERIVED,
            **extra,
        }
        write_json_atomic(self.out / SUMMARY, summary)
        return summary

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.sidecar.close()


def last_frame(out: str | Path) -> tuple[Atoms, int]:
    """The last complete frame of a run folder and its step, for restarts."""
    from ase.io import read

    path = Path(out) / FRAMES
    if not path.is_file():
        raise FileNotFoundError(f"cannot restart: {path} does not exist")
    atoms = read(path, index=-1)
    return atoms, int(atoms.info.get("step", 0))


def first_frame(out: str | Path) -> Atoms:
    """The first recorded frame of a run folder (the run's starting structure), with its
    ``platonic`` (N, K) coordinates at full precision from the sidecar where it holds them
    (else from frames.extxyz), for the symmetry reference of a restart."""
    from ase.io import read

    from platoscope.writers import read_sidecar

    try:
        with read_sidecar(Path(out) / SIDECAR) as side:
            return side.to_atoms(0)
    except (OSError, ValueError, IndexError):
        path = Path(out) / FRAMES
        if not path.is_file():
            raise FileNotFoundError(f"cannot restart: {path} does not exist") from None
        return read(path, index=0)


def _verify_coords(calc: Any) -> bool:
    """Whether a run's recorder must check, per frame whose coordinates it derives rather than
    stores, that the stored projector gives the calculator's coordinates (one more projection
    per frame). Not for a :class:`~platoscope.calculator.PlatonicCalculator`: its coordinates
    come from its one fitted projector, the one stored. Yes for anything else, e.g. a
    :class:`~platoscope.switching.SwitchingCalculator`, whose projector changes at the
    switch."""
    return not isinstance(calc, PlatonicCalculator)


def _md_config(atoms: Atoms, ensemble: str, steps: int, timestep_fs: float,
               temperature_K: float, friction: float, pressure_GPa: float, interval: int,
               seed: int, temperature_end_K: float | None = None,
               files: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's config record; ``files``: what the run files hold (a restart must keep it, or
    part of frames.extxyz would carry coordinates and part not under one summary)."""
    cfg = {"kind": "md", "ensemble": ensemble, "steps": steps, "timestep_fs": timestep_fs,
           "temperature_K": temperature_K, "interval": interval, "seed": seed,
           "n_atoms": len(atoms), "formula": atoms.get_chemical_formula()}
    # only what the integrator uses (make_dynamics): Langevin's friction, Berendsen's pressure
    if ensemble == "nvt":
        cfg["friction"] = friction
    if ensemble == "npt":
        cfg["pressure_GPa"] = pressure_GPa
    if temperature_end_K is not None:  # only when set: older runs' configs stay comparable
        cfg["temperature_end_K"] = temperature_end_K
    cfg.update(files or {})
    return cfg


def ramp_temperature(step: int, steps: int, temperature_K: float,
                     temperature_end_K: float | None) -> float:
    """Thermostat target (K) at MD ``step`` of ``steps``: ``temperature_K`` without a ramp,
    else linear from ``temperature_K`` (step 0) to ``temperature_end_K`` (step ``steps``)."""
    if temperature_end_K is None or steps <= 0:
        return temperature_K
    frac = min(max(step / steps, 0.0), 1.0)
    return temperature_K + (temperature_end_K - temperature_K) * frac


def make_dynamics(atoms: Atoms, *, ensemble: str, timestep_fs: float, temperature_K: float,
                  friction: float = 0.01, pressure_GPa: float = 0.0, seed: int = 0):
    """An ASE integrator for ``nve`` (velocity Verlet), ``nvt`` (Langevin) or ``npt``
    (Berendsen barostat and thermostat). friction: 1/fs (converted to ASE's time unit, about
    10.18 fs, for ASE's Langevin). Langevin runs with ``fixcm=False`` (ASE >= 3.28
    deprecates its centre-of-mass fix as not sampling NVT exactly): the centre of mass may
    drift, which changes no energy, force or score of a periodic system; add
    :class:`ase.constraints.FixCom` to the atoms to pin it."""
    dt = timestep_fs * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    if ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, temperature_K=temperature_K, friction=friction / units.fs,
                        fixcm=False, rng=np.random.default_rng(seed))
    if ensemble == "npt":
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(atoms, dt, temperature_K=temperature_K,
                            pressure_au=pressure_GPa * units.GPa, taut=100 * units.fs,
                            taup=1000 * units.fs, compressibility_au=4.57e-5 / units.bar)
    raise InputError(f"unknown ensemble {ensemble!r}; valid: nve, nvt, npt")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True)


def _postfix(bar: Any, watcher: Watcher, atoms: Atoms) -> None:
    if watcher.worst is None:
        return
    name, i, ratio = watcher.worst
    bar.set_postfix_str(f"worst atom {i} ({atoms.get_chemical_symbols()[i]}) {name} "
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
    except Exception as err:
        state["status"] = "failed"
        state["error"] = f"{type(err).__name__}: {err}"  # the record says why, not only that
        raise
    finally:
        bar.close()
        extra = {k: v for k, v in state.items() if k not in ("status", "result")}
        last = watcher.step - 1 if watcher.step > 0 else None  # MD: the number of steps taken
        if watcher.stop_requested is not None:
            last = watcher.stop_requested.step  # the frame that stopped it was written
        state["result"] = _finish(recorder, watcher, state["status"], last_step=last, **extra)


def _finish(recorder: RunRecorder, watcher: Watcher, status: str, **extra: Any) -> dict[str, Any]:
    summary = {"monitoring": watcher.summary(), **extra}
    if watcher.stop_requested is not None:
        summary["stopped_by"] = watcher.stop_requested.to_dict()
    summary = recorder.write_summary(status, summary)
    recorder.close()
    return {"status": status, **summary}


def check_settings(**given: tuple[Any, str]) -> None:
    """Refuse run settings out of range before anything runs, naming each (the CLI checks
    its flags the same way; the Python path let ``temperature_K=-5`` start a run that failed
    with NaN positions). ``given``: name -> (value, rule), rule one of ``count`` (integer
    >= 0), ``positive_int``, ``positive``, ``non_negative``, ``finite`` (floats finite)."""
    for name, (value, rule) in given.items():
        if rule in ("count", "positive_int"):
            require_int(value, name, 0 if rule == "count" else 1)
            continue
        ok = (not isinstance(value, bool) and isinstance(value, int | float | np.number)
              and bool(np.isfinite(value))
              and {"positive": value > 0, "non_negative": value >= 0, "finite": True}[rule])
        if not ok:
            want = {"positive": "a finite number > 0", "non_negative": "a finite number >= 0",
                    "finite": "a finite number"}[rule]
            raise InputError(f"{name} must be {want}, got {value!r}")


def run_md(atoms: Atoms, monitors: Sequence[Monitor], out: str | Path, *, steps: int,
           ensemble: str = "nvt", timestep_fs: float = 1.0, temperature_K: float = 300.0,
           friction: float = 0.01, pressure_GPa: float = 0.0, interval: int = 1,
           seed: int = 0, restart: bool = False, strict: bool = False, progress: bool = True,
           embeddings: bool = True, store_coords: str = "auto",
           temperature_end_K: float | None = None) -> dict[str, Any]:
    """Molecular dynamics of ``atoms`` (whose calc is a PlatonicCalculator) with monitors.

    steps: MD steps to run (on restart: the total, counting those already done);
    temperature_end_K: ramp the thermostat linearly from ``temperature_K`` at step 0 to this
    (K) at the last step (``nvt`` and ``npt``; e.g. heating through a melt);
    store_coords: ``auto``, ``always`` or ``never`` (:func:`store_coords_for`);
    interval: record every ``interval``-th step. On restart, every monitor's ``on_restart``
    gets the run's original first frame (:func:`first_frame`), not the thermal frame the run
    continues from. Returns the final summary dict.
    """
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    check_settings(steps=(steps, "count"), timestep_fs=(timestep_fs, "positive"),
                   temperature_K=(temperature_K, "non_negative"),
                   friction=(friction, "non_negative"), pressure_GPa=(pressure_GPa, "finite"),
                   interval=(interval, "positive_int"), seed=(seed, "count"),
                   **({"temperature_end_K": (temperature_end_K, "non_negative")}
                      if temperature_end_K is not None else {}))
    calc = atoms.calc
    first_step, n_steps = 0, steps
    files = {"embeddings": bool(embeddings), "coordinates_stored": store_coords_for(
        store_coords, int(calc.provenance().get("n_anchors") or 0), embeddings=embeddings)}
    if restart:
        prev, last = last_frame(out)
        if len(prev) != len(atoms) or (prev.numbers != atoms.numbers).any():
            raise InputError(f"cannot restart: the last frame in {out} holds "
                             f"{prev.get_chemical_formula()}, not {atoms.get_chemical_formula()}")
        atoms.positions, atoms.cell = prev.positions, prev.cell
        if prev.has("momenta"):
            atoms.set_momenta(prev.get_momenta())
        if steps < last:  # the record would say `steps` for a run that went further
            raise InputError(f"cannot restart the run in {out} with steps={steps}: it has "
                             f"already run {last} steps (steps is the total, counting those "
                             f"already done: give more than {last} to continue it)")
        first_step, n_steps = last + 1, steps - last
        check_restart(out, _md_config(atoms, ensemble, steps, timestep_fs, temperature_K,
                                      friction, pressure_GPa, interval, seed,
                                      temperature_end_K, files),
                      calc.provenance(), monitors)
        start = first_frame(out)
        for m in monitors:
            m.on_restart(start)
        drop_events_after(out, last)
    if temperature_end_K is not None and ensemble == "nve":
        raise InputError("a temperature ramp (temperature_end_K) needs a thermostat: "
                         "ensemble nvt or npt, not nve")
    if restart:  # the run's own record of where its first velocities came from
        velocities = json.loads((Path(out) / SUMMARY).read_text()).get(
            "config", {}).get("initial_velocities")
    elif ensemble != "nve" or not atoms.has("momenta"):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K,
                                     rng=np.random.default_rng(seed))
        velocities = f"Maxwell-Boltzmann at {temperature_K} K (seed {seed})"
    else:  # nve keeps a structure's momenta: temperature_K was not applied
        velocities = "the starting structure's momenta (temperature_K not applied)"
    config = _md_config(atoms, ensemble, steps, timestep_fs, temperature_K, friction,
                        pressure_GPa, interval, seed, temperature_end_K, files)
    if velocities is not None:
        config["initial_velocities"] = velocities
    # the watcher first: the recorder's first summary.json carries its ``monitoring`` (one
    # atomic write, two fsyncs, instead of two)
    watcher = Watcher(monitors, strict=strict, start_step=first_step)
    recorder = RunRecorder(out, provenance=calc.provenance(), config=config,
                           score_units=score_units(monitors), interval=interval,
                           final_step=steps,
                           embeddings=embeddings, append=restart,
                           projector=getattr(calc, "projector", None), store_coords=store_coords,
                           verify=_verify_coords(calc),
                           first_summary={"monitoring": watcher.summary()})
    watcher.sinks.append(recorder)

    def target(step: int) -> float:  # thermostat target of the step about to be taken
        return ramp_temperature(step, steps, temperature_K, temperature_end_K)

    dyn = make_dynamics(atoms, ensemble=ensemble, timestep_fs=timestep_fs,
                        temperature_K=target(first_step),
                        friction=friction, pressure_GPa=pressure_GPa, seed=seed + first_step)
    bar = _progress(max(n_steps, 0) + (0 if restart else 1), f"md {ensemble}", progress)
    volume = _volume(atoms)
    with _lifecycle(recorder, watcher, bar) as state:
        try:
            for i, _ in enumerate(dyn.irun(steps=max(n_steps, 0))):
                if restart and i == 0:
                    continue  # the restored frame is already on disk
                _observe(watcher, atoms, bar)
                if temperature_end_K is not None:
                    dyn.set_temperature(temperature_K=target(watcher.step))
        except MemoryError as err:
            raise SimulationError(_out_of_memory(atoms, volume, watcher.step)) from err
    return state["result"]


def _volume(atoms: Atoms) -> float | None:
    return float(abs(atoms.cell.volume)) if atoms.cell.rank == 3 else None


def _out_of_memory(atoms: Atoms, start_volume: float | None, step: int) -> str:
    """Why MD step ``step`` ran out of memory, in the user's terms: a cell the dynamics blew up
    or collapsed (the model's neighbour list then asks for petabytes), or a system too big."""
    where = f"MD step {step}: the model ran out of memory"
    volume = _volume(atoms)
    if start_volume and volume is not None:
        ratio = volume / start_volume
        if not 0.5 < ratio < 2:
            return (f"{where}; the cell volume is {volume:.3g} Å^3, {ratio:.3g} x the starting "
                    f"{start_volume:.3g} Å^3: the dynamics blew the cell up (npt: check the "
                    "pressure, in GPa; any ensemble: the timestep and temperature)")
    return (f"{where} with {len(atoms)} atoms (cell volume {volume:.3g} Å^3): a smaller "
            "structure or a machine with more memory is needed" if volume is not None else
            f"{where} with {len(atoms)} atoms: a smaller structure or more memory is needed")


def optimizer_class(name: str) -> type:
    """The ASE optimizer class called ``name`` (any case: ``bfgs`` is BFGS); an unknown name is
    an InputError listing the valid ones (``bfgs``, ASE's module of that name, was called and
    failed with "'module' object is not callable")."""
    from ase import optimize
    from ase.optimize.optimize import Optimizer

    valid = {n: c for n in dir(optimize) if isinstance(c := getattr(optimize, n), type)
             and issubclass(c, Optimizer)}
    found = [c for n, c in valid.items() if n.lower() == str(name).lower()]
    if len(found) != 1:
        raise InputError(f"unknown optimizer {name!r}; valid: {', '.join(sorted(valid))}")
    return found[0]


def run_relax(atoms: Atoms, monitors: Sequence[Monitor], out: str | Path, *, fmax: float = 0.05,
              steps: int = 500, cell: bool = False, optimizer: str = "BFGS",
              strict: bool = False, progress: bool = True, embeddings: bool = True,
              store_coords: str = "auto") -> dict[str, Any]:
    """Relax ``atoms`` (positions, and the cell with ``cell=True`` via FrechetCellFilter)."""
    from ase.filters import FrechetCellFilter

    check_settings(fmax=(fmax, "positive"), steps=(steps, "positive_int"))
    opt_cls = optimizer_class(optimizer)
    optimizer = opt_cls.__name__
    calc = atoms.calc
    config = {"kind": "relax", "fmax": fmax, "steps": steps, "cell": cell,
              "optimizer": optimizer, "n_atoms": len(atoms),
              "formula": atoms.get_chemical_formula()}
    watcher = Watcher(monitors, strict=strict)
    recorder = RunRecorder(out, provenance=calc.provenance(), config=config,
                           score_units=score_units(monitors),
                           embeddings=embeddings, projector=getattr(calc, "projector", None),
                           store_coords=store_coords, verify=_verify_coords(calc),
                           first_summary={"monitoring": watcher.summary()})
    watcher.sinks.append(recorder)
    target = FrechetCellFilter(atoms) if cell else atoms
    opt = opt_cls(target, logfile=None)
    bar = _progress(steps, f"relax {optimizer}", progress)
    with _lifecycle(recorder, watcher, bar) as state:
        state["converged"] = False
        state["fmax_target"] = fmax
        for conv in opt.irun(fmax=fmax, steps=steps):
            state["converged"] = bool(conv)
            _observe(watcher, atoms, bar)
            state["optimizer_steps"] = int(opt.nsteps)
            state["fmax_final"] = float(np.linalg.norm(target.get_forces(), axis=1).max())
    return state["result"]


PROJECT_BATCH_VALUES = 1 << 22
"""Most coordinate values (rows x K, float64: 32 MiB) that ``monitor_frames`` projects in one
call for a projector whose output is dense; the element projection's output is sparse and a
whole chunk goes in one call."""


def _project_chunk(projector: Any, chunk: Sequence[Atoms], features: Sequence[Any]
                   ) -> list[Any]:
    """Per frame of a chunk, ``(coordinates, coverage)`` of its features (None where the frame
    has none; the exception where that frame alone cannot be projected), from few projections
    of stacked rows: the same rows as one call per frame (each row's coordinates depend on that
    row alone), without the per-call cost. Dense outputs are made in groups of frames of at most
    :data:`PROJECT_BATCH_VALUES` values (one frame alone may exceed it)."""
    out: list[Any] = [None] * len(features)
    k = len(getattr(projector, "anchors_", ())) or 1
    limit = None if getattr(projector, "by_element", False) else PROJECT_BATCH_VALUES // k
    groups: list[list[int]] = []
    rows = 0
    for j, e in enumerate(features):
        if e is None:
            continue
        if not groups or (limit is not None and rows + len(e) > limit):
            groups.append([])
            rows = 0
        groups[-1].append(j)
        rows += len(e)
    for group in groups:
        _project_group(projector, chunk, features, group, out)
    return out


def _project_group(projector: Any, chunk: Sequence[Atoms], features: Sequence[Any],
                   group: list[int], out: list[Any]) -> None:
    if len(group) > 1:
        try:
            z, cov = projector.transform_with_coverage(
                np.concatenate([features[j] for j in group]),
                np.concatenate([chunk[j].numbers for j in group]))
        except Exception:  # a frame that cannot be projected: each alone below
            pass
        else:
            bounds = np.cumsum([0, *(len(features[j]) for j in group)])
            for j, a, b in zip(group, bounds[:-1], bounds[1:], strict=True):
                out[j] = (row_slice(z, a, b), cov[a:b])
            return
    for j in group:
        try:
            out[j] = projector.transform_with_coverage(features[j], chunk[j].numbers)
        except Exception as err:  # raised when the run reaches that frame
            out[j] = err


FORCES = ("auto", "model", "file")
"""Where ``monitor_frames`` takes each frame's energy and forces from (:func:`forces_from`)."""


def forces_from(mode: str, monitors: Sequence[Monitor]) -> str:
    """``"model"`` or ``"file"``: where a post-processing run takes frames' energy and forces.

    ``model``: computed by the running model in the pass that gives the features (one forward
    and backward pass per frame instead of the batched feature-only pass); ``file``: as stored
    in the source (frames without forces have none); ``auto``: ``model`` when a monitor
    declares :attr:`~platoscope.monitors.base.Monitor.uses_forces` (the uncertainty monitor's
    sigma was calibrated on the model's own |F|), else ``file``.
    """
    if mode not in FORCES:
        raise InputError(f"forces must be one of {', '.join(FORCES)}, not {mode!r}")
    if mode == "auto":
        return "model" if any(getattr(m, "uses_forces", False) for m in monitors) else "file"
    return mode


def monitor_frames(frames: Sequence[Atoms], calc: Any, monitors: Sequence[Monitor],
                   out: str | Path, *, batch_size: int = 16, strict: bool = False,
                   progress: bool = True, embeddings: bool = True,
                   source: str | None = None, store_coords: str = "auto",
                   executor: Any = None, resume: bool = True,
                   on_chunk: Any = None, index: str | None = None,
                   skipped_frames: Sequence[str] = (), forces: str = "auto") -> dict[str, Any]:
    """Run monitors over existing frames; ``step`` is the frame's index in its source
    (``info["source_index"]`` as :func:`platoscope.readers.read_frames` sets it, else its
    position in ``frames``), so ``--index ::2`` records steps 0, 2, 4 ...; index and
    skipped_frames (messages of frames the reader left out) are recorded in summary.json.

    forces: ``auto``, ``model`` or ``file`` (:func:`forces_from`). With ``model`` every frame
    runs alone through :meth:`Backend.compute`: energy, forces and features from one forward
    (and backward) pass, written to frames.extxyz and frames.h5 as an MD run writes them, and
    given to the monitors; the file's own energy and forces are not used. With ``file`` the
    features come from the backend's batched path (no forces computed) and frames carry the
    energy and forces stored in the source, if any. summary.json (``config["forces"]``)
    says which. Features are projected with ``calc``'s projector, so no frame is evaluated
    twice. executor: a
    :class:`platoscope.distributed.Executor` that runs the forward passes (in-process by
    default, or on a Dask cluster); frames are projected, monitored and written here in input
    order. A frame that cannot be embedded is reported (console and ``failed_frames`` in
    summary.json) and skipped, unless ``strict``. resume: completed chunks are kept in
    ``<out>.parts`` until the run ends, and a rerun with the same settings (``forces``
    included: the chunks of a ``model`` run hold the model's energies and forces) reuses them.
    """
    from platoscope.distributed import (
        MODEL_PROPERTIES,
        ChunkStore,
        ModelSpec,
        check_anchor_elements,
        open_executor,
        parts_folder,
    )

    check_anchor_elements(calc, frames)  # before any frame is embedded or written
    used = forces_from(forces, monitors)
    if used == "model":
        forces_note = (f"computed by {calc.backend.spec} in the same pass as the features "
                       "(the source's energies and forces, if any, are not used)")
    else:
        with_forces = sum(1 for a in frames if a.calc is not None
                          and a.calc.results.get("forces") is not None)
        forces_note = (f"as stored in the source ({with_forces} of {len(frames)} frames "
                       "hold forces), not computed by the model")
    config = {"kind": "monitor", "source": source, "index": index, "n_frames": len(frames),
              "batch_size": batch_size, "forces_mode": {"requested": forces, "used": used},
              # monitors that use forces (uncertainty's |F|) see these
              "forces": forces_note}
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(open_executor(
                ModelSpec.of(calc.backend), backend=calc.backend, chunk_size=batch_size))
        store = None
        if resume:  # first: chunks of other settings are refused before anything is written
            store = ChunkStore(parts_folder(out), {
                "kind": "monitor", "fingerprint": calc.backend.fingerprint,
                "layer": calc.backend.layer, "device": executor.model.device,
                "chunk_size": executor.chunk_size, "n_frames": len(frames), "source": source,
                "forces": used})
        watcher = Watcher(monitors, strict=strict)
        recorder = RunRecorder(out, provenance=calc.provenance(), config=config,
                               score_units=score_units(monitors),
                               embeddings=embeddings, projector=calc.projector,
                               store_coords=store_coords, verify=False,
                               score_names=[*(m.name for m in monitors), COVERAGE], batch=True,
                               first_summary={"monitoring": watcher.summary()})
        # verify=False: every frame below is projected with calc.projector, the one stored, so
        # a reader derives exactly these coordinates; checking it per frame cost a second
        # projection. score_names: the scores every frame has, declared so that frames.h5 is
        # not rewritten (projector included) when the first frame brings them; batch: one
        # commit per chunk
        watcher.sinks.append(recorder)
        bar = _progress(len(frames), "monitor", progress)
        t0, n_atoms = time.perf_counter(), 0
        with _lifecycle(recorder, watcher, bar) as state:
            state["cluster"] = executor.info()
            state["failed_frames"] = failed = []
            state["skipped_frames"] = list(skipped_frames)
            # closing: a stop or an error ends the executor's background forward-pass thread
            # here, before the chunk files are removed or kept below
            with contextlib.closing(executor.map(
                    frames, store=store, strict=strict, on_chunk=on_chunk,
                    properties=MODEL_PROPERTIES if used == "model" else None)) as chunks:
                for chunk, res in chunks:
                    for f in res.failures:
                        failed.append(f.describe())
                        bar.write(f"failed: {f.describe()}")
                    projected = _project_chunk(calc.projector, chunk, res.features)
                    for j, (src, e) in enumerate(zip(chunk, res.features, strict=True)):
                        step = int(src.info.get("source_index", res.start + j))
                        if e is None:
                            bar.update(1)
                            continue
                        a = src.copy()
                        if used == "model":  # this pass's, written as an MD run writes them
                            if res.forces is None:
                                raise RuntimeError(f"chunk {res.index} holds no forces: the "
                                                   "executor did not compute them")
                            res_src = {"forces": res.forces[j], "energy": res.energies[j]}
                        else:
                            res_src = src.calc.results if src.calc is not None else {}
                        a.calc = None
                        if isinstance(projected[j], Exception):
                            raise frame_error(projected[j], src, step) from projected[j]
                        z, cov = projected[j]
                        attach_coordinates(a, z)  # K > ARRAY_MAX_K: drops a file's array
                        watcher.step = step + 1
                        watcher.process(watcher.frame_from(
                            a, step, calc=calc, results={"platonic": z, "embeddings": e,
                                                         "coverage": cov,
                                                         "forces": res_src.get("forces"),
                                                         "energy": res_src.get("energy")}))
                        n_atoms += len(a)
                        bar.update(1)
                        _postfix(bar, watcher, a)
                    recorder.flush()  # the chunk's frames: one extxyz write, one frames.h5 commit
                    bar.set_postfix_str(f"{n_atoms / max(time.perf_counter() - t0, 1e-9):.0f} "
                                        f"atoms/s, failed {len(failed)}", refresh=False)
            state["resumed_chunks"] = store.n_resumed if store is not None else 0
        if store is not None and state["status"] in ("completed", "stopped"):
            store.remove()
    return state["result"]
