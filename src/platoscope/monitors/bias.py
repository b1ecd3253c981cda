"""Cross-model (representational bias) monitor: where does a second model see the atom differently?

Every ``interval`` steps a second model B evaluates the same structure, projected on the *same*
anchor atoms (its own PlatonicCalculator on the same AnchorSet, with the projector of its own
reference bank). Per atom the score is the Euclidean distance between A's and B's projected
coordinates (one K-dimensional space, so the distance is defined without any fitted map); the
force disagreement ``|F_A - F_B|`` (eV/Å) is kept beside it (``score_bias_force``) as the
committee baseline (DP-GEN style).

Thresholds are calibrated per element on the two models' reference banks, which hold the same
reference atoms in the same order (:func:`calibrate_thresholds`): each element's median
distance (floored at the median over all atoms) times the ``quantile`` of the distances divided
by their element's scale, pooled over all elements (elements with fewer than
``MIN_ATOMS_PER_ELEMENT`` reference atoms, or none, use the pooled median): plain per-element
quantiles fitted on few atoms do not hold out of sample, the median-scaled pooled quantile does
(measured in docs/symmetry_switch.md). So on
reference-like atoms an atom crosses its threshold with probability about ``1 - quantile`` per
evaluation (the stated false-alarm rate). With two models the score is
symmetric: it says *where* they disagree, not which one is wrong (use three or more models and
:mod:`platoscope.analysis.bias` for that); the summary ranks elements by how far their
disagreement sits above their threshold.

A second model that lacks an element of the structure is refused at construction (when the
structure is given) or at ``start``, with the element and model named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_changes
from ase.data import chemical_symbols

from platoscope.backends.base import check_elements
from platoscope.coords import as_coords, row_distances
from platoscope.errors import AnchorSetMismatchError, ConfigError, InputError
from platoscope.monitors.base import Frame, Monitor
from platoscope.monitors.registry import (
    DEFAULT_INTERVAL,
    ModelLoader,
    MonitorContext,
    MonitorOption,
    register_monitor,
)
from platoscope.reference import ReferenceBank, shared_rows

MIN_ATOMS_PER_ELEMENT = 5


def calibrate_thresholds(d: np.ndarray, numbers: np.ndarray, quantile: float
                         ) -> tuple[dict[int, float], float]:
    """Per-element thresholds on reference distances d (M,) of atoms with ``numbers`` (M,).

    threshold_e = s_e * q-quantile(d_i / s_e(i)), pooled over all atoms, with s_e = max(median
    of element e's distances, median of all distances); elements with fewer than
    MIN_ATOMS_PER_ELEMENT atoms use the median of all. The floor matters: where both models
    put an element's atoms (nearly) on the same coordinates (median ~1e-16 in the element
    projection), its ratios would be ~1e15 and set every threshold far above any distance.
    Returns ({Z: threshold}, threshold for elements not in the reference).
    """
    d, numbers = np.asarray(d, np.float64), np.asarray(numbers)
    pooled = float(np.median(d))
    if not pooled > 0:
        raise InputError("the two models' reference coordinates coincide for most atoms "
                         "(median distance 0): no threshold can be calibrated on them")
    med = {}
    for z in np.unique(numbers):
        dz = d[numbers == z]
        med[int(z)] = (max(float(np.median(dz)), pooled) if dz.size >= MIN_ATOMS_PER_ELEMENT
                       else pooled)
    scale = np.array([med[int(z)] for z in numbers])
    rq = float(np.quantile(d / scale, quantile))
    return {z: m * rq for z, m in med.items()}, pooled * rq


def paired_distances(bank_a: ReferenceBank, bank_b: ReferenceBank) -> np.ndarray:
    """(M,) distance between two models' coordinates of the M reference atoms both banks
    hold (rows :func:`shared_rows`)."""
    ia, ib = shared_rows(bank_a, bank_b)
    # in blocks of ~128 MiB per model (dense worst case): one bank's coordinates can be many GB
    step = max(1, 2**27 // (8 * bank_a.projector.anchors_.shape[0]))
    return np.concatenate([
        row_distances(bank_a.projector.transform(bank_a.embeddings[ia[s:s + step]],
                                                 bank_a.numbers[ia[s:s + step]]),
                      bank_b.projector.transform(bank_b.embeddings[ib[s:s + step]],
                                                 bank_b.numbers[ib[s:s + step]]))
        for s in range(0, len(ia), step)])


@register_monitor
class BiasMonitor(Monitor):
    """Per-atom disagreement between the running model A and a second model B.

    calc_b: B's PlatonicCalculator (same AnchorSet as A's, B's own projector); bank_a, bank_b:
    the two models' reference banks on the same reference atoms, for per-element thresholds
    (or give a fixed ``threshold=``); quantile: calibration quantile (false-alarm rate
    ``1 - quantile``); atoms: check B's element coverage now; interval: evaluate B every
    ``interval`` frames (default 10: B costs a full forward pass).
    """

    name = "bias"
    options = (MonitorOption("interval", int, DEFAULT_INTERVAL,
                             "Evaluate the second model every N steps",
                             check=lambda v: None if int(v) >= 1 else f"must be >= 1, got {v}"),)
    units = "distance between the two models' Platonic coordinates"
    extra_units = {"force": "eV/Å"}  # noqa: RUF012

    def __init__(self, calc_b: Any, *, bank_a: ReferenceBank | None = None,
                 bank_b: ReferenceBank | None = None, quantile: float = 0.999,
                 atoms: Atoms | None = None, interval: int = DEFAULT_INTERVAL, **kwargs: Any):
        super().__init__(interval=interval, **kwargs)
        if not 0 < quantile < 1:
            raise InputError(f"quantile must be in (0, 1), got {quantile}")
        if getattr(calc_b, "projector", None) is None:
            raise InputError("calc_b must be a PlatonicCalculator with anchors (the same "
                             "AnchorSet as the running model's)")
        self.calc_b = calc_b
        self.quantile = quantile
        self.element_thresholds_: dict[int, float] = {}
        self.global_threshold_: float | None = None
        self.calibration_max_: float | None = None
        self.bank_models_: tuple[str, str] | None = None
        if bank_a is not None and bank_b is not None:
            self.calibrate(bank_a, bank_b)
        elif self.threshold is None:
            raise InputError("BiasMonitor needs both models' reference banks (bank_a, bank_b) "
                             "to calibrate its thresholds, or a fixed threshold=")
        self.expected_false_alarm_rate = 1.0 - quantile if self.threshold is None else None
        self._stats: dict[int, np.ndarray] = {}  # Z -> [n, sum s, max s, n over, sum f, max f]
        self._force: np.ndarray | None = None
        self._frames_evaluated = 0
        self._worst_force: tuple[float, int, int, int] | None = None  # (eV/Å, step, atom, Z)
        self._checked = False
        if atoms is not None:
            self.check(atoms)

    @classmethod
    def from_spec(cls, arg: str, context: MonitorContext | None = None, *, calc: Any = None,
                  atoms: Atoms | None = None, interval: int | None = None,
                  progress: bool = True, **kwargs: Any) -> BiasMonitor:
        """B from a backend spec (``"sevenn:7net-0"``) on the running calculator's anchors and
        projection; both reference banks from :func:`~platoscope.reference.default_bank` (B's
        is built once and cached). ``context``: a
        :class:`~platoscope.monitors.registry.MonitorContext` (its loader loads B); without
        one, ``calc`` (and ``atoms``) build it. B lacking an element of the starting atoms is
        refused before any bank is built."""
        if not arg:
            raise ConfigError("bias needs a second model: bias:<spec>, e.g. bias:sevenn:7net-0")
        if context is None:
            context = MonitorContext(calc=calc, atoms=atoms, loader=ModelLoader(calc, progress))
            opts = {"interval": DEFAULT_INTERVAL if interval is None else interval}
        else:
            opts = {**context.options_for(cls), **context.common}
        loader = context.loader
        backend_b = loader.backend(arg, atoms=context.atoms, monitor="bias")
        bank_a = loader.running_bank()
        bank_b = loader.bank(backend_b)
        calc_b = loader.calculator(backend_b, projection=bank_b.projector)
        return cls(calc_b, bank_a=bank_a, bank_b=bank_b, atoms=context.atoms,
                   **{**opts, **kwargs})

    @classmethod
    def report_plots(cls, data: dict[str, Any], run_dir: Path) -> list[Path]:
        """``model_disagreement.png``: mean and worst per-atom disagreement per step."""
        import matplotlib.pyplot as plt

        from platoscope.report import model_of, save_figure, score_names_of, step_axis, units_of

        frames, units = data["frames"], units_of(data)
        names = [n for n in score_names_of(data) if n.startswith("bias")]
        if not names:
            return []
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
        for ax, name in zip(axes[0], names, strict=True):
            xs = [f["step"] for f in frames if name in f["scores"]]
            vals = [f["scores"][name] for f in frames if name in f["scores"]]
            ax.plot(xs, [np.nanmean(v) for v in vals], label="mean over atoms")
            ax.plot(xs, [np.nanmax(v) for v in vals], label="worst atom")
            step_axis(ax)
            ax.set_ylabel(units.get(name, name), fontsize=8)
            ax.set_title(("force disagreement |F_A - F_B|" if name.endswith("_force")
                          else "Platonic-coordinate disagreement"), fontsize=9)
            ax.legend()
        other = (data["monitors"].get("bias") or {}).get("model_b", "second model")
        fig.suptitle(f"Disagreement between {model_of(data)} (A, running) and {other} (B)")
        return [save_figure(fig, Path(run_dir) / "model_disagreement.png")]

    # -- calibration -----------------------------------------------------------------------
    def calibrate(self, bank_a: ReferenceBank, bank_b: ReferenceBank) -> BiasMonitor:
        """Per-element thresholds from the A-B distances of the reference atoms
        (:func:`calibrate_thresholds`)."""
        d = paired_distances(bank_a, bank_b)
        self.element_thresholds_, self.global_threshold_ = calibrate_thresholds(
            d, bank_a.numbers[shared_rows(bank_a, bank_b)[0]], self.quantile)
        self.bank_models_ = (bank_a.model, bank_b.model)
        self.calibration_median_ = float(np.median(d))
        self.calibration_max_ = float(d.max())
        return self

    # -- checks ----------------------------------------------------------------------------
    @property
    def model_b(self) -> str:
        return self.calc_b.backend.spec

    def check(self, atoms: Atoms) -> None:
        """Raise UnsupportedElementError if B has no parameters for an element of ``atoms``."""
        check_elements(self.calc_b.backend, atoms)
        self._checked = True

    def start(self, frame: Frame) -> None:
        self.check(frame.atoms)
        k_b = self.calc_b.projector.n_columns
        if np.shape(frame.platonic)[1] != k_b:
            raise AnchorSetMismatchError(f"frames have {np.shape(frame.platonic)[1]} coordinate "
                                         f"columns, the second model's projection {k_b}")

    # -- scoring ---------------------------------------------------------------------------
    def score(self, frame: Frame) -> np.ndarray:
        """(N,) |z_A - z_B| per atom; B is evaluated on a copy of the frame's atoms."""
        if not self._checked:
            self.check(frame.atoms)
        atoms = frame.atoms.copy()
        atoms.calc = None
        self.calc_b.calculate(atoms, ["energy", "forces"], list(all_changes))
        res = self.calc_b.results
        z_a, z_b = as_coords(frame.platonic), as_coords(res["platonic"])  # dense or sparse
        if z_a.shape != z_b.shape:
            raise AnchorSetMismatchError(f"A gives coordinates {z_a.shape}, B {z_b.shape}")
        s = row_distances(z_a, z_b)
        f_b = res.get("forces")
        self._force = (np.linalg.norm(np.asarray(frame.forces) - f_b, axis=1)
                       if frame.forces is not None and f_b is not None
                       else np.full(len(s), np.nan))
        self._accumulate(frame.atoms.numbers, s, self.thresholds_for(frame), self._force)
        self._frames_evaluated += 1
        if np.isfinite(self._force).any():
            i = int(np.nanargmax(self._force))
            if self._worst_force is None or self._force[i] > self._worst_force[0]:
                self._worst_force = (float(self._force[i]), frame.step, i,
                                     int(frame.atoms.numbers[i]))
        return s

    def extra_scores(self, frame: Frame) -> dict[str, np.ndarray]:
        """``force``: (N,) |F_A - F_B| in eV/Å (NaN when the frame carries no forces)."""
        return {} if self._force is None else {"force": self._force}

    def thresholds_for(self, frame: Frame) -> np.ndarray:
        if self.threshold is not None:
            return np.full(len(frame.atoms), float(self.threshold))
        return np.array([self.element_thresholds_.get(int(z), self.global_threshold_)
                         for z in frame.atoms.numbers])

    def _accumulate(self, numbers: np.ndarray, s: np.ndarray, thr: np.ndarray,
                    f: np.ndarray) -> None:
        for z in np.unique(numbers):
            m = numbers == z
            st = self._stats.setdefault(int(z), np.zeros(6))
            st += [m.sum(), s[m].sum(), 0, (s[m] > thr[m]).sum(), np.nansum(f[m]), 0]
            st[2] = max(st[2], s[m].max())
            st[5] = max(st[5], np.nanmax(f[m]) if np.isfinite(f[m]).any() else 0.0)

    def describe(self, frame: Frame, atoms: np.ndarray) -> dict[str, Any]:
        d = super().describe(frame, atoms)
        d["model_b"] = self.model_b
        if self._force is not None:
            d["force_disagreement"] = [round(float(self._force[i]), 4) for i in atoms[:20]]
        return d

    def element_summary(self) -> dict[str, dict[str, float]]:
        """Per element: atoms scored, mean and max disagreement, its threshold, mean/threshold,
        atoms over threshold, mean and max force disagreement (eV/Å); worst (mean/thr) first."""
        out = {}
        for z, (n, ss, smax, over, fs, fmax) in self._stats.items():
            thr = (self.threshold if self.threshold is not None
                   else self.element_thresholds_.get(z, self.global_threshold_))
            out[chemical_symbols[z]] = {
                "atoms_scored": int(n), "mean": ss / n, "max": smax, "threshold": thr,
                "mean_over_threshold": ss / n / thr, "n_over_threshold": int(over),
                "mean_force_disagreement": fs / n, "max_force_disagreement": fmax}
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["mean_over_threshold"]))

    def force_summary(self) -> dict[str, Any]:
        """Run-level |F_A - F_B| (eV/Å): frames where B was evaluated, atom-frames, mean, and
        the largest with its step, atom and element (None before any evaluation)."""
        n = sum(int(st[0]) for st in self._stats.values())
        mean = sum(float(st[4]) for st in self._stats.values()) / n if n else None
        worst = self._worst_force
        return {"units": "eV/Å", "frames_evaluated": self._frames_evaluated,
                "atom_frames": n, "mean": mean,
                "max": None if worst is None else worst[0],
                "max_step": None if worst is None else worst[1],
                "max_atom": None if worst is None else worst[2],
                "max_element": None if worst is None else chemical_symbols[worst[3]]}

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "model_b": self.model_b, "quantile": self.quantile,
                "calibrated_on": list(self.bank_models_) if self.bank_models_ else None}

    def summary(self) -> dict[str, Any]:
        s = super().summary()
        per = self.element_summary()
        s.update(element_thresholds={chemical_symbols[z]: round(t, 6)
                                     for z, t in sorted(self.element_thresholds_.items())},
                 global_threshold=self.global_threshold_, elements=per,
                 # thresholds above every reference distance: the monitor cannot flag these
                 elements_above_every_reference_distance=sorted(
                     chemical_symbols[z] for z, t in self.element_thresholds_.items()
                     if self.calibration_max_ is not None and t > self.calibration_max_),
                 force_disagreement=self.force_summary(),
                 most_disagreeing=list(per)[:5],
                 note="two models: the score is symmetric; it locates disagreement, not blame")
        return s
