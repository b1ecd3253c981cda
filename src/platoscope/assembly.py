"""One assembly path from a plain configuration to a running, monitored calculation.

:class:`RunConfig` holds what a command line or a script chooses (model, anchors, reference,
monitors and their options, action, output folder); :func:`build_run` turns it into a
:class:`Run` (backend, anchors, reference bank, PlatonicCalculator, monitors) and
:meth:`Run.md`, :meth:`Run.relax` and :meth:`Run.monitor` drive the runner with its writers.
``platoscope md|relax|monitor`` and the Python API both go through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from platoscope.errors import AnchorSetMismatchError, ConfigError
from platoscope.writers.runfiles import DUMPS

__all__ = ["Run", "RunConfig", "build_run", "load_anchors", "load_reference", "prepare_out"]


def load_anchors(value: Any = "default") -> Any:
    """An AnchorSet: None or a shipped set's name (``default``, ``mp20``), a path, or an
    AnchorSet."""
    from platoscope.anchors import NAMED_ANCHORS, AnchorSet

    if isinstance(value, AnchorSet):
        return value
    if value is None:
        return AnchorSet.default()
    if isinstance(value, str) and value in NAMED_ANCHORS:
        return AnchorSet.named(value)
    if isinstance(value, str) and not Path(value).exists() and "/" not in value \
            and not value.endswith(".npz"):
        raise FileNotFoundError(f"--anchors {value!r} is neither a shipped anchor set "
                                f"({', '.join(NAMED_ANCHORS)}) nor an existing file")
    return AnchorSet.load(value)


def load_reference(path: str | Path, backend: Any, anchor_set: Any, *,
                   projection: str | None = None, anchors_label: str | None = None) -> Any:
    """The reference bank at ``path``, checked against the run it serves: built by
    ``backend`` (:meth:`ReferenceBank.check_backend`), on ``anchor_set``
    (:class:`~platoscope.errors.AnchorSetMismatchError` otherwise: coordinates would lie on
    another set's axes) and, when ``projection`` (a preset name) is given, holding that
    projection (:class:`~platoscope.errors.ConfigError` otherwise). anchors_label: how the
    user named the anchor set (e.g. ``--anchors`` value), added to the mismatch message."""
    from platoscope.projection import Projector
    from platoscope.reference import ReferenceBank

    bank = ReferenceBank.load(path)
    bank.check_backend(backend)
    if bank.anchor_set_hash != anchor_set.hash:
        named = f" (--anchors {anchors_label})" if anchors_label is not None else ""
        raise AnchorSetMismatchError(
            f"reference bank {path} was built on anchor set {bank.anchor_set_hash[:12]}, "
            f"not {anchor_set.hash[:12]}{named}")
    if projection is not None and bank.projector.name != Projector(projection).name:
        raise ConfigError(
            f"reference bank {path} holds the {bank.projector.name!r} projection, not "
            f"{projection!r}: leave out --projection (the bank's is used) or build a bank "
            "with that projection (platoscope reference build --projection)")
    return bank


@dataclass
class RunConfig:
    """A monitored run, as plain values.

    model: backend spec (see ``platoscope.backends.SPEC_HELP``) or a built Backend; layer:
    feature layer (None: the backend's default); device: torch device; anchors: ``"default"``,
    a path or an AnchorSet; reference: a reference-bank path (None: the default bank, built
    once and cached); monitors: a ``--monitor`` string (``"atypical,bias:sevenn:7net-0"``);
    projection: a projection preset (``element``, ``shared``, ``paper`` ...) of the default
    reference bank and the calculator; None: ``element``, or the ``reference`` bank's own
    (a ``reference`` bank of another projection is refused);
    monitor_options: ``{"<monitor>_<option>": value}`` (e.g. ``{"atypical_space":
    "projected"}``; an option of a monitor not in ``monitors`` is refused); action: what a
    monitor does at a threshold; out: output folder; strict: a failing monitor stops the run;
    embeddings: keep raw embeddings in frames.h5; store_coords: ``auto``, ``always`` or
    ``never``; progress: progress bars; overwrite: clear a non-empty ``out`` (a previous run
    folder) first; restart: continue the run in ``out`` (MD). A non-empty ``out`` is refused
    unless one of the two is set (or it is the folder of an interrupted ``monitor`` whose
    ``<out>.parts`` resumes it).
    """

    model: Any = "chgnet"
    layer: str | None = None
    device: str = "cpu"
    anchors: Any = "default"
    reference: str | Path | None = None
    projection: str | None = None
    monitors: str = "atypical"
    monitor_options: dict[str, Any] = field(default_factory=dict)
    action: str = "record"
    out: str | Path = "run"
    strict: bool = False
    embeddings: bool = True
    store_coords: str = "auto"
    progress: bool = True
    overwrite: bool = False
    restart: bool = False


def prepare_out(out: str | Path, *, overwrite: bool = False, restart: bool = False,
                clear: bool = True) -> Path:
    """Check (and with ``overwrite``, clear) a run's output folder before anything runs.
    ``clear=False`` only checks: :func:`build_run` checks first and clears once
    the model, anchors, bank and monitors have loaded, so a mistyped option never costs the
    previous run's files.

    A non-empty folder would mix two runs' events, plots and dumps, so it is refused
    (:class:`~platoscope.errors.ConfigError` naming --overwrite and --restart) unless
    ``restart`` (continue it), ``overwrite`` (its contents are removed; only a folder holding
    a run's summary.json, so a mistyped --out never empties an unrelated folder) or an
    interrupted monitor run's ``<out>.parts`` exists (the rerun resumes it and rewrites the
    folder).
    """
    import shutil

    from platoscope.distributed import parts_folder
    from platoscope.writers.runfiles import SUMMARY

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a folder")
    if restart or not path.is_dir() or not any(path.iterdir()):
        return path
    resuming = parts_folder(path).is_dir()
    if not (overwrite or resuming):
        raise ConfigError(f"--out {path} is not empty (a previous run's files would mix with "
                          "this one's): pass --overwrite to clear it, --restart to continue "
                          "that run, or choose another folder")
    if not (path / SUMMARY).is_file():
        raise ConfigError(f"--out {path} is not empty and holds no {SUMMARY}, so it is not a "
                          "platoscope run folder; --overwrite clears only run folders: choose "
                          "another folder")
    if not clear:
        return path
    for item in path.iterdir():
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()
    return path


@dataclass
class Run:
    """What :func:`build_run` assembled; ``md``/``relax``/``monitor`` run it into
    ``config.out`` and return the final summary dict."""

    config: RunConfig
    backend: Any
    anchors: Any
    bank: Any
    calc: Any
    monitors: list

    def _writing(self) -> dict[str, Any]:
        c = self.config
        return {"strict": c.strict, "embeddings": c.embeddings, "store_coords": c.store_coords,
                "progress": c.progress}

    def _check(self, atoms: Atoms) -> None:
        """An element the model has no parameters for, or (element projection) no anchor of,
        is refused before the run writes anything: it failed at step 0 and left a 'failed'
        run folder that the corrected command then had to --overwrite."""
        from platoscope.backends.base import require_elements

        require_elements(atoms, model=self.backend.spec,
                         supported=getattr(self.backend, "supported_numbers", None))
        self.calc.projector.check_numbers(atoms.numbers)

    def md(self, atoms: Atoms, **md_options: Any) -> dict[str, Any]:
        """:func:`~platoscope.runner.run_md` of ``atoms`` (given this run's calculator)."""
        from platoscope.runner import run_md

        self._check(atoms)
        atoms.calc = self.calc
        md_options.setdefault("restart", self.config.restart)
        return run_md(atoms, self.monitors, self.config.out, **self._writing(), **md_options)

    def relax(self, atoms: Atoms, **relax_options: Any) -> dict[str, Any]:
        """:func:`~platoscope.runner.run_relax` of ``atoms``."""
        from platoscope.runner import run_relax

        self._check(atoms)
        atoms.calc = self.calc
        return run_relax(atoms, self.monitors, self.config.out, **self._writing(),
                         **relax_options)

    def monitor(self, frames: list[Atoms], **options: Any) -> dict[str, Any]:
        """:func:`~platoscope.runner.monitor_frames` over existing ``frames``."""
        from platoscope.runner import monitor_frames

        return monitor_frames(frames, self.calc, self.monitors, self.config.out,
                              **self._writing(), **options)


def build_run(config: RunConfig, atoms: Atoms | None = None) -> Run:
    """Backend, anchors, reference bank, calculator and monitors of ``config``.

    atoms: the starting structure (or first frame): a second model lacking one of its
    elements is refused here, before any bank is built or step run.
    """
    from platoscope.backends import load_backend
    from platoscope.calculator import PlatonicCalculator
    from platoscope.monitors.registry import (
        ModelLoader,
        MonitorContext,
        build_monitors,
        monitor_options,
        parse_monitor_spec,
    )
    from platoscope.projection import Projector
    from platoscope.reference import default_bank

    # a misspelt monitor fails before any model loads
    selected = {cls.name for cls, _ in parse_monitor_spec(config.monitors)}
    owners = {opt.key(name): (name, opt) for name, opt in monitor_options()}
    unknown = sorted(set(config.monitor_options) - set(owners))
    if unknown:  # an option no monitor declares would be dropped without a word
        raise ConfigError(f"unknown monitor option(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(owners))}")
    idle = [owners[k] for k in config.monitor_options if owners[k][0] not in selected]
    if idle:  # an option of a monitor that does not run would be dropped without a word
        raise ConfigError(
            f"{', '.join(opt.flag(name) for name, opt in idle)} given, but the "
            f"{', '.join(sorted({name for name, _ in idle}))} monitor is not in --monitor "
            f"{config.monitors!r}: add it there, or leave the option out")
    if config.projection is not None:
        Projector(config.projection)  # an unknown preset fails before any model loads
    prepare_out(config.out, overwrite=config.overwrite, restart=config.restart, clear=False)
    backend = load_backend(config.model, layer=config.layer, device=config.device)
    anchor_set = load_anchors(config.anchors)
    from platoscope.runner import STORE_COORDS_MAX_K

    if not config.embeddings and config.store_coords == "auto" and \
            len(anchor_set) > STORE_COORDS_MAX_K:
        raise ConfigError(
            f"--no-embeddings with K={len(anchor_set)} anchors would store every frame's "
            f"coordinates dense, {len(anchor_set)} values per atom per frame in both "
            "frames.extxyz and frames.h5 (with the embeddings, frames.h5 derives them): keep "
            "the embeddings, or pass --store-coords always to store them anyway")
    if config.reference:
        bank = load_reference(config.reference, backend, anchor_set,
                              projection=config.projection)
    else:
        bank = default_bank(backend, anchor_set, projection=config.projection,
                            progress=config.progress)
    calc = PlatonicCalculator(backend, anchors=anchor_set, projection=bank.projector)
    context = MonitorContext(calc=calc, bank=bank, atoms=atoms, action=config.action,
                             dump_dir=Path(config.out) / DUMPS,
                             options=dict(config.monitor_options),
                             loader=ModelLoader(calc, progress=config.progress))
    monitors = build_monitors(config.monitors, context)
    prepare_out(config.out, overwrite=config.overwrite, restart=config.restart)
    return Run(config=config, backend=backend, anchors=anchor_set, bank=bank, calc=calc,
               monitors=monitors)
