"""The monitor registry: monitors by name, their options, and what a run hands them.

A monitor is one class registered under a name with :func:`register_monitor`. It builds
itself from the ``--monitor`` item (``name`` or ``name:arg``) with
``from_spec(arg, context)``, where :class:`MonitorContext` carries what the run already built
(the running calculator and its backend, the reference bank, the anchors, the starting atoms, a
:class:`ModelLoader` for a second model and its bank, the action, the dump folder and the
monitor's options). Options are declared on the class as :class:`MonitorOption`; the CLI turns
each into ``--<monitor>-<option>`` (e.g. ``--atypical-space``, ``--bias-interval``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platoscope.errors import ConfigError
from platoscope.registry import Registry

DEFAULT_INTERVAL = 10
"""Steps between evaluations of a second model (bias, switch)."""

_MONITORS: Registry[type] = Registry(
    "monitor", tuple(f"platoscope.monitors.{m}" for m in ("atypical", "symmetry", "bias",
                                                           "switch", "uncertainty")))


@dataclass(frozen=True)
class MonitorOption:
    """One setting of a monitor: ``name`` (a keyword of ``from_spec``'s options), ``type``,
    ``default``, ``help``; ``choices`` limits the values. The CLI flag is
    ``--<monitor>-<name>`` with ``_`` written ``-``."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()
    """Extra CLI flags for the same option (e.g. ``--max-force-error``)."""
    check: Any = None
    """Optional ``check(value) -> str | None``: why a given value is refused (None: accepted);
    the CLI refuses such a value before anything loads, naming the flag."""

    def flag(self, monitor: str) -> str:
        return f"--{monitor}-{self.name.replace('_', '-')}"

    def key(self, monitor: str) -> str:
        """The keyword the CLI passes the value under."""
        return f"{monitor}_{self.name}".replace("-", "_")


@dataclass
class ModelLoader:
    """Loads a second model on the running calculator's anchors, projection and torch device.

    calc: the running PlatonicCalculator; progress: show progress while a bank is built.
    """

    calc: Any
    progress: bool = True

    def _anchored(self, monitor: str) -> None:
        if getattr(self.calc, "anchors", None) is None or \
                getattr(self.calc, "projector", None) is None:
            raise ConfigError(f"the {monitor} monitor needs the running PlatonicCalculator's "
                              "anchors")

    def backend(self, spec: str, *, atoms: Any = None, monitor: str = "bias") -> Any:
        """The backend of ``spec``; with ``atoms``, refused (UnsupportedElementError naming
        element and model) if it lacks one of their elements, before any bank is built."""
        from platoscope.backends import load_backend
        from platoscope.backends.base import check_elements

        self._anchored(monitor)
        backend = load_backend(spec, device=getattr(self.calc.backend, "device", "cpu"))
        if atoms is not None:
            check_elements(backend, atoms, monitor=monitor)
        return backend

    def bank(self, backend: Any, projection: Any = None) -> Any:
        """``backend``'s default reference bank on the running anchors (built once, cached)."""
        from platoscope.reference import default_bank

        return default_bank(backend, self.calc.anchors,
                            projection=self.calc.projector if projection is None else projection,
                            progress=self.progress)

    def running_bank(self) -> Any:
        """The running model's default bank on its own anchors and projection."""
        return self.bank(self.calc.backend)

    def calculator(self, backend: Any, projection: Any = None) -> Any:
        """A PlatonicCalculator of ``backend`` on the running anchors (and ``projection``,
        default the running one)."""
        from platoscope.calculator import PlatonicCalculator

        return PlatonicCalculator(backend, self.calc.anchors,
                                  projection=self.calc.projector if projection is None
                                  else projection)


@dataclass
class MonitorContext:
    """What a run hands each monitor's ``from_spec``.

    calc: the running PlatonicCalculator (``calc.backend``, ``calc.anchors``); bank: its
    reference bank (or None); atoms: the starting structure (or None); action, dump_dir: as
    for :class:`~platoscope.monitors.base.Monitor`; options: ``{"<monitor>_<option>": value}``
    as the CLI passes them; loader: for a second model.
    """

    calc: Any = None
    bank: Any = None
    atoms: Any = None
    action: str = "record"
    dump_dir: str | Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    loader: ModelLoader | None = None

    def __post_init__(self) -> None:
        if self.loader is None and self.calc is not None:
            self.loader = ModelLoader(self.calc)

    @property
    def backend(self) -> Any:
        return getattr(self.calc, "backend", None)

    @property
    def anchors(self) -> Any:
        return getattr(self.calc, "anchors", None)

    @property
    def common(self) -> dict[str, Any]:
        """Keywords every Monitor takes: action and dump_dir."""
        return {"action": self.action, "dump_dir": self.dump_dir}

    def options_for(self, cls: type) -> dict[str, Any]:
        """``cls``'s declared options: the given value, else the declared default."""
        out = {}
        for opt in getattr(cls, "options", ()):
            value = self.options.get(opt.key(cls.name), opt.default)
            if opt.choices is not None and value not in opt.choices:
                raise ConfigError(f"{opt.flag(cls.name)} must be one of "
                                  f"{', '.join(map(str, opt.choices))}, got {value!r}")
            out[opt.name] = value
        return out


def register_monitor(cls: type | None = None, *, name: str | None = None,
                     replace: bool = False) -> Any:
    """Register a Monitor subclass under ``name`` (default ``cls.name``); usable as
    ``@register_monitor`` or ``@register_monitor(name="x")``. The class needs
    ``from_spec(arg, context)`` (the base class's builds ``cls(**options, **common)``)."""

    def deco(c: type) -> type:
        if name is not None:
            c.name = name
        return _MONITORS.add(c.name, c, replace=replace)

    return deco(cls) if cls is not None else deco


def unregister_monitor(name: str) -> None:
    """Remove the monitor ``name`` (e.g. a test's toy monitor)."""
    _MONITORS.remove(name)


def monitor_classes() -> dict[str, type]:
    """Registered monitor classes by name (built-ins first)."""
    return _MONITORS.entries()


def monitor_options() -> list[tuple[str, MonitorOption]]:
    """Every registered monitor's options as (monitor name, option)."""
    return [(n, o) for n, c in monitor_classes().items() for o in getattr(c, "options", ())]


def build_monitors(spec: str, context: MonitorContext | None = None, **legacy: Any) -> list:
    """Monitors from a string such as ``"atypical,symmetry,bias:sevenn:7net-0"``.

    Each comma-separated item is ``name`` or ``name:arg`` (``arg``: e.g. a second model's
    spec); ``none`` or an empty string gives none. ``context`` carries what the run built.
    The older keywords (``calc=, bank=, action=, dump_dir=, atoms=, bias_interval=,
    atypical_space=``) still work and build the context.
    """
    if context is None:
        context = _legacy_context(**legacy)
    elif legacy:
        raise TypeError(f"pass either a context or keywords, not both: {sorted(legacy)}")
    return [cls.from_spec(arg, context) for cls, arg in parse_monitor_spec(spec)]


def parse_monitor_spec(spec: str) -> list[tuple[type, str]]:
    """(registered class, argument) of each item of a ``--monitor`` string; an unknown name
    is a ConfigError listing the valid ones (checked before anything is built)."""
    classes = monitor_classes()
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item or item == "none":
            continue
        name, _, arg = item.partition(":")
        if name not in classes:
            raise ConfigError(f"unknown monitor {name!r}; valid: {', '.join(classes)}")
        out.append((classes[name], arg))
    names = [cls.name for cls, _ in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # the Watcher refused it only after the models and banks had loaded
        raise ConfigError(f"monitor {', '.join(twice)} given twice in {spec!r}: each monitor "
                          "runs once (one second model per run for bias and switch)")
    return out


def _legacy_context(*, calc: Any = None, bank: Any = None, action: str = "record",
                    dump_dir: str | Path | None = None, atoms: Any = None,
                    bias_interval: int = DEFAULT_INTERVAL, atypical_space: str = "raw",
                    **options: Any) -> MonitorContext:
    return MonitorContext(calc=calc, bank=bank, atoms=atoms, action=action, dump_dir=dump_dir,
                          options={"bias_interval": bias_interval,
                                   "atypical_space": atypical_space, **options})


__all__ = ["DEFAULT_INTERVAL", "ModelLoader", "MonitorContext", "MonitorOption",
           "build_monitors", "monitor_classes", "monitor_options", "parse_monitor_spec",
           "register_monitor", "unregister_monitor"]
