"""The monitor protocol, and the observer that runs monitors inside any ASE dynamics.

A monitor turns one frame (Atoms plus the PlatonicCalculator's results of that frame) into a
per-atom score (N,) and compares it with a calibrated threshold. It never calls a model: the
coordinates come from the forward pass the dynamics already made (the cross-model monitor is
the one exception, by design: it evaluates a second model every ``interval`` steps).

    watcher = Watcher([AtypicalMonitor(bank), SymmetryMonitor()], on_event=...)
    dyn.attach(watcher, interval=1, atoms=atoms)      # ASE calls watcher(atoms=atoms)

Actions when a score exceeds its threshold: ``record`` (event only), ``warn`` (also a Python
warning), ``stop`` (ask the run to end cleanly: :class:`RunStopped` is raised after the frame
is fully written, or ``watcher.stop_requested`` is set when ``raise_on_stop=False``),
``callback`` (call ``callback(event, atoms)``), ``dump`` (write the frame to
``<dump_dir>/frame_<step>.extxyz``).
"""

from __future__ import annotations

import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from platoscope.errors import InputError

log = logging.getLogger("platoscope.monitors")

ACTIONS = ("record", "warn", "stop", "callback", "dump")


class RunStopped(RuntimeError):
    """A monitor with action='stop' fired; the frame that triggered it was written."""

    def __init__(self, event: Event):
        super().__init__(f"run stopped by monitor {event.monitor!r} at step {event.step}: "
                         f"score {event.score:.4g} > threshold {event.threshold:.4g} "
                         f"on atoms {event.atoms[:10]}")
        self.event = event


class MonitorWarning(UserWarning):
    """Issued by monitors whose action is 'warn'."""


@dataclass
class Event:
    """One threshold crossing. ``atoms``: indices of the offending atoms (worst first)."""

    step: int
    monitor: str
    atoms: list[int]
    score: float
    threshold: float
    action: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("details"))
        return d


@dataclass
class Frame:
    """What a monitor sees of one step: the atoms and the calculator's results (same pass).

    ``platonic`` is the projector's output as is: a dense ndarray, or for the element projection
    a ``scipy.sparse.csr_array`` (each row its element's block). Monitors use the helpers of
    :mod:`platoscope.coords`, which take either form without densifying the frame."""

    step: int
    atoms: Atoms
    platonic: Any  # (N, K) float64: ndarray, or scipy.sparse csr_array (element projection)
    embeddings: np.ndarray | None = None  # (N, D)
    forces: np.ndarray | None = None  # (N, 3) eV/Å
    energy: float | None = None  # eV
    calc: Any = None
    coverage: np.ndarray | None = None  # (N,) largest cosine to the anchors projected on


class Monitor(ABC):
    """Base class. Subclasses set ``name`` and implement ``score``; most also ``calibrate``.

    threshold: per-atom score above which an event fires (None: from ``calibrate``);
    action: one of ACTIONS; interval: score every ``interval``-th frame only;
    expected_false_alarm_rate: the per-atom rate the calibration targets (documented in
    summary.json).
    """

    name: str = "monitor"
    units: str = "1"
    """Units of the per-atom score (axis labels, frames.h5 attributes)."""
    extra_units: dict[str, str] = {}  # noqa: RUF012 - read-only per class
    """Units of each :meth:`extra_scores` key."""
    options: tuple[Any, ...] = ()
    """:class:`~platoscope.monitors.registry.MonitorOption` s; the CLI makes them flags."""
    uses_forces: bool = False
    """Whether :meth:`score` needs the running model's forces (``frame.forces``). In
    trajectory post-processing (``platoscope monitor --forces auto``, the default) a run with
    such a monitor computes them with the features, in one pass per frame; otherwise only
    features are computed and frames carry the forces stored in the file."""

    def __init__(self, *, threshold: float | None = None, action: str = "record",
                 callback: Callable[[Event, Atoms], Any] | None = None, interval: int = 1,
                 dump_dir: str | Path | None = None):
        if action not in ACTIONS:
            raise InputError(f"unknown action {action!r}; valid: {', '.join(ACTIONS)}")
        if action == "callback" and callback is None:
            raise InputError("action='callback' needs callback=")
        if interval < 1:
            raise InputError(f"interval must be >= 1, got {interval}")
        if threshold is not None and not np.isfinite(threshold):
            raise InputError(f"threshold must be a finite number, got {threshold}")
        self.threshold = threshold
        self.action = action
        self.callback = callback
        self.interval = interval
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.expected_false_alarm_rate: float | None = None

    @classmethod
    def from_spec(cls, arg: str, context: Any) -> Monitor:
        """Build from a ``--monitor`` item's argument (after ``name:``) and a
        :class:`~platoscope.monitors.registry.MonitorContext`; this default takes no argument
        and calls ``cls(**declared options, action=..., dump_dir=...)``."""
        from platoscope.errors import ConfigError

        if arg:
            raise ConfigError(f"the {cls.name} monitor takes no argument, got {arg!r}")
        return cls(**context.options_for(cls), **context.common)

    @classmethod
    def report_plots(cls, data: dict[str, Any], run_dir: Path) -> list[Path]:
        """This monitor's own report plots: PNGs written into ``run_dir`` from ``data``
        (:func:`platoscope.report.load_run`); called by ``make_report`` when the run used
        this monitor. The default writes none."""
        return []

    def on_restart(self, first_frame: Atoms) -> None:  # noqa: B027 - optional hook
        """Called by a restarted run before its first frame with the run's original first
        frame (e.g. to keep that as the reference rather than the frame it continues from)."""

    def start(self, frame: Frame) -> None:  # noqa: B027 - optional hook
        """Called by the Watcher on the first frame this monitor scores: its own first due
        frame (with ``interval`` > 1 or when added later, not the run's first frame), before
        ``score``; e.g. to record the reference symmetry. If it raises, the next due frame
        calls it again."""

    @abstractmethod
    def score(self, frame: Frame) -> np.ndarray:
        """Per-atom score (N,) float64; larger is more alarming."""

    def extra_scores(self, frame: Frame) -> dict[str, np.ndarray]:
        """Other per-atom (N,) arrays worth keeping for this frame (stored as
        ``score_<name>_<key>``, e.g. the force disagreement beside a representation one)."""
        return {}

    def thresholds_for(self, frame: Frame) -> np.ndarray:
        """Per-atom threshold (N,); the default broadcasts the scalar ``threshold``."""
        if self.threshold is None:
            raise RuntimeError(f"monitor {self.name!r} has no threshold: calibrate it first")
        return np.full(len(frame.atoms), float(self.threshold))

    def events(self, frame: Frame, scores: np.ndarray) -> list[Event]:
        """One event per frame where any atom exceeds its threshold (worst atoms first)."""
        thr = self.thresholds_for(frame)
        over = np.flatnonzero(scores > thr)
        if over.size == 0:
            return []
        ratio = scores[over] / np.maximum(thr[over], 1e-300)
        order = over[np.argsort(-ratio)]
        worst = order[0]
        return [Event(step=frame.step, monitor=self.name, atoms=order.tolist(),
                      score=float(scores[worst]), threshold=float(thr[worst]),
                      action=self.action, details=self.describe(frame, order))]

    def describe(self, frame: Frame, atoms: np.ndarray) -> dict[str, Any]:
        """Extra, JSON-serialisable context for an event (elements of the flagged atoms ...)."""
        sym = frame.atoms.get_chemical_symbols()
        return {"elements": [sym[i] for i in atoms[:20]]}

    def score_units(self) -> dict[str, str]:
        """Units of the stored scores: ``{name: units, name_<key>: units}`` (plots, frames.h5)."""
        out = {self.name: self.units}
        out.update({f"{self.name}_{k}": u for k, u in self.extra_units.items()})
        return out

    def settings(self) -> dict[str, Any]:
        """What this monitor was asked to do, JSON-ready (summary.json ``settings``): a restart
        that gives other settings is refused (:func:`platoscope.records.check_restart`), so
        one run never mixes two configurations under one record."""
        return {"threshold": self.threshold, "action": self.action, "interval": self.interval}

    def summary(self) -> dict[str, Any]:
        """Configuration for summary.json: the :meth:`settings` (also as they are, under
        ``settings``, for restarts), the threshold in use, false-alarm rate, units; subclasses
        add what the run found."""
        settings = self.settings()
        return {"name": self.name, **settings, "threshold": self.threshold,
                "units": self.score_units(),
                "expected_false_alarm_rate": self.expected_false_alarm_rate,
                "settings": settings}


def score_units(monitors: Sequence[Monitor]) -> dict[str, str]:
    """Units of every score the monitors store, by stored name."""
    out: dict[str, str] = {}
    for m in monitors:
        out.update(m.score_units())
    return out


class Watcher:
    """Runs monitors on each frame; an ASE observer (``dyn.attach(watcher, atoms=atoms)``).

    It stores each monitor's scores in ``atoms.arrays['score_<name>']`` (so writers keep them),
    passes frames and events to ``sinks`` (objects with ``frame(frame, scores)`` and
    ``event(event)`` methods: see :mod:`platoscope.runner`), and performs the actions.
    A monitor that raises is logged and skipped for that frame unless ``strict``. Each
    monitor is started (``Monitor.start``) on the first frame it is due, so one added later
    (:meth:`add`) or with ``interval`` > 1 takes its own first frame as its start.
    ``step`` (frames' and events' step) counts the calls from ``start_step``, not the
    dynamics' steps: attach it with ``interval=1`` and thin out with each monitor's own
    ``interval`` (``dyn.attach(w, interval=5)`` labels MD steps 0, 5, 10 as 0, 1, 2).
    """

    def __init__(self, monitors: Sequence[Monitor], *, sinks: Sequence[Any] = (),
                 strict: bool = False, raise_on_stop: bool = True, start_step: int = 0):
        wrong = [m for m in monitors if not isinstance(m, Monitor)]
        if wrong:
            raise InputError(f"Watcher takes Monitor instances, got {wrong[0]!r}: build them "
                             "with the classes (e.g. AtypicalMonitor(bank)) or "
                             "platoscope.monitors.build_monitors('atypical', ...)")
        names = [m.name for m in monitors]
        if len(set(names)) != len(names):
            raise InputError(f"monitor names must be unique, got {names}")
        self.monitors = list(monitors)
        self.sinks = list(sinks)
        self.strict = strict
        self.raise_on_stop = raise_on_stop
        self.step = start_step
        self._started: dict[int, Monitor] = {}  # started monitors by id (refs keep ids unique)
        self.stop_requested: Event | None = None
        self.errors: list[dict[str, Any]] = []
        self.n_events = 0
        self.worst: tuple[str, int, float] | None = None  # (monitor, atom, score/threshold)

    def add(self, monitor: Monitor) -> None:
        """Watch with one more monitor from the next frame on (started on its first due
        frame)."""
        if any(m.name == monitor.name for m in self.monitors):
            raise InputError(f"a monitor named {monitor.name!r} is already watching")
        self.monitors.append(monitor)

    def frame_from(self, atoms: Atoms, step: int, *, calc: Any = None,
                   results: dict[str, Any] | None = None) -> Frame:
        """The Frame of ``atoms`` at ``step`` from ``results`` (default: its calculator's
        latest results; the atoms are projected if there is no ``platonic`` result yet).
        calc: the calculator the frame names (default ``atoms.calc``)."""
        calc = atoms.calc if calc is None else calc
        res = getattr(calc, "results", {}) if results is None else results
        if "platonic" not in res:
            if not hasattr(calc, "get_platonic"):
                raise InputError(f"the Watcher reads Platonic coordinates from the atoms' "
                                 f"calculator, and {type(calc).__name__} has none: attach a "
                                 "PlatonicCalculator (atoms.calc = PlatonicCalculator(backend, "
                                 "anchors=...))")
            z = calc.get_platonic(atoms)
            res = calc.results
        else:
            z = res["platonic"]
        return Frame(step=step, atoms=atoms, platonic=z, embeddings=res.get("embeddings"),
                     forces=res.get("forces"), energy=res.get("energy"), calc=calc,
                     coverage=res.get("coverage"))

    def __call__(self, atoms: Atoms | None = None) -> None:
        if atoms is None:
            raise InputError("attach the watcher with atoms: dyn.attach(watcher, atoms=atoms)")
        self.process(self.frame_from(atoms, self.step))
        self.step += 1

    def process(self, frame: Frame) -> dict[str, np.ndarray]:
        """Score one frame with every due monitor, write it, act on events."""
        scores: dict[str, np.ndarray] = {}
        events: list[Event] = []
        for m in self.monitors:
            if frame.step % m.interval:
                continue
            try:
                if id(m) not in self._started:  # each monitor's own first frame
                    m.start(frame)
                    self._started[id(m)] = m
                s = np.asarray(m.score(frame), dtype=np.float64)
                if s.shape != (len(frame.atoms),):
                    raise InputError(f"score has shape {s.shape}, expected ({len(frame.atoms)},)")
                scores[m.name] = s
                for key, extra in m.extra_scores(frame).items():
                    scores[f"{m.name}_{key}"] = np.asarray(extra, dtype=np.float64)
                events.extend(m.events(frame, s))
            except Exception as err:
                if self.strict:
                    raise
                self.errors.append({"step": frame.step, "monitor": m.name, "error": repr(err)})
                log.error("monitor %s failed at step %d: %r", m.name, frame.step, err)
        for name, s in scores.items():
            frame.atoms.arrays[f"score_{name}"] = s
        self._track_worst(frame, scores)
        for sink in self.sinks:
            sink.frame(frame, scores)
        for ev in events:
            self._act(ev, frame)
        if self.stop_requested is not None and self.raise_on_stop:
            raise RunStopped(self.stop_requested)
        return scores

    def _track_worst(self, frame: Frame, scores: dict[str, np.ndarray]) -> None:
        best = None
        for m in self.monitors:
            if m.name not in scores:
                continue
            try:
                ratio = scores[m.name] / np.maximum(m.thresholds_for(frame), 1e-300)
            except RuntimeError:
                continue
            i = int(np.argmax(ratio))
            if best is None or ratio[i] > best[2]:
                best = (m.name, i, float(ratio[i]))
        self.worst = best

    def _act(self, ev: Event, frame: Frame) -> None:
        self.n_events += 1
        for sink in self.sinks:
            sink.event(ev)
        mon = next(m for m in self.monitors if m.name == ev.monitor)
        if ev.action == "warn":
            warnings.warn(f"step {ev.step}: {ev.monitor} score {ev.score:.4g} > "
                          f"{ev.threshold:.4g} on atoms {ev.atoms[:10]}", MonitorWarning,
                          stacklevel=3)
        elif ev.action == "stop" and self.stop_requested is None:
            self.stop_requested = ev
        elif ev.action == "callback" and mon.callback is not None:
            mon.callback(ev, frame.atoms)
        elif ev.action == "dump":
            from ase.io import write

            d = mon.dump_dir or Path(".")
            d.mkdir(parents=True, exist_ok=True)
            write(d / f"frame_{ev.step:07d}_{ev.monitor}.extxyz", frame.atoms, format="extxyz")

    def summary(self) -> dict[str, Any]:
        return {"monitors": [m.summary() for m in self.monitors], "n_events": self.n_events,
                "monitor_errors": self.errors, "frames_seen": self.step}
