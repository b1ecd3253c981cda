"""Symmetry-breaking monitor: do atoms that were equivalent still see identical environments?

At ``start`` the monitor fixes the reference structure (given, or the first frame), its classes
of symmetry-equivalent atoms (spglib, ``symprec`` in Å) and the *numerical noise* of the model
on it: the largest distance of an atom's projected coordinates from its class mean in the
reference frame (nonzero for float32 models). Every later frame is
scored per atom by the distance of its coordinates from its class mean (classes fixed from the
reference, so atom order must not change). The threshold is ``max(factor * noise, floor)``,
with the floor a distance in coordinate space. (It used to be ``floor * sqrt(K)``, per
coordinate; the default softmax kernel moves only the few coordinates of an atom's nearest
anchors, so the spread of a broken class does not grow with K.)

Classes the model itself does not respect: SevenNet-0 is invariant under rotations but not
under inversion (a mirror image gets another energy), so atoms related only by improper
operations (the two halves of the Al and O sites of corundum, R-3c) differ by ~2e-3 in the
perfect crystal. Such a class (reference spread above ``SPLIT * floor``) is split at
``start`` into the groups of atoms the model does see as identical (connected within that
distance); the split is logged and listed in the summary (``model_split_classes``), and the
noise and threshold come from the groups, so the run is still watched at float-noise level.

Sensitivity and false alarms on perfect, strained and shifted crystals are measured in
docs/symmetry_switch.md. The weakest response is rocksalt NaCl in its 8-atom cell, where the
displaced atom's own periodic images flank each neighbour, so the signal grows only
quadratically with the displacement.

Who broke it: an atom displaced from a non-polar site (inversion centre, cubic or tetrahedral
site ...) changes its own invariant features only to second order, its neighbours to first
order, so the largest scores sit on the *neighbours* of the atom that moved, often in another
class. Events therefore name the flagged atoms (worst first) and the classes whose spread
crossed the threshold (the representation's view), and, separately, ``most_displaced``: the
atom farthest from its reference position after removing the mean drift (the geometric view;
in thermal MD this is simply the hottest atom). Events fire when a class *breaks* (crosses the
threshold after being below it), not on every frame it stays broken, unless ``repeat=True``;
per-atom scores are stored every frame regardless.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from platoscope.coords import as_coords, compact_columns
from platoscope.errors import InputError
from platoscope.monitors.base import Event, Frame, Monitor
from platoscope.monitors.registry import register_monitor
from platoscope.symmetry import SymmetryInfo, analyse_symmetry, distance_from_class_mean

log = logging.getLogger("platoscope.monitors")

FACTOR = 10.0
"""Threshold = FACTOR x the reference frame's noise (later symmetric frames reached <= 2.9x)."""
FLOOR = 5e-6
"""Smallest threshold (a coordinate-space distance; docs/symmetry_switch.md for the margins)."""
SPLIT = 10.0
"""A reference class spreading over more than ``SPLIT * FLOOR`` is one the model does not
respect: it is split (module docstring)."""


@register_monitor
class SymmetryMonitor(Monitor):
    """Flags atoms whose projected coordinates leave those of their symmetry-equivalent atoms.

    symprec: spglib tolerance (Å) for the classes of the reference; reference: the symmetric
    structure (same atoms, same order as the frames; default: the first frame this monitor
    scores; a restarted :func:`~platoscope.runner.run_md` passes the run's original first
    frame); its ``arrays['platonic']`` (N, K), if present, are used as its coordinates, else the
    frame's calculator evaluates it once; factor, floor:
    threshold ``max(factor * noise, floor)`` (a fixed ``threshold=`` overrides both);
    repeat: fire an event on every frame a class is broken, not only when it breaks.

    After ``start``: ``info_`` (spglib's :class:`~platoscope.symmetry.SymmetryInfo`),
    ``classes_`` (N,) the classes scored (spglib's, split where the model does not respect
    them), ``spglib_class_`` (C,) spglib class of each, ``noise_``, ``class_noise_`` (C,).
    """

    name = "symmetry"
    units = "distance from class mean, Platonic coordinates"
    extra_units = {"class_spread": "distance from class mean, Platonic coordinates"}  # noqa: RUF012

    def __init__(self, *, symprec: float = 1e-3, reference: Atoms | None = None,
                 factor: float = FACTOR, floor: float = FLOOR, repeat: bool = False,
                 **kwargs: Any):
        super().__init__(**kwargs)
        if not symprec > 0:
            raise InputError(f"symprec must be > 0 Å, got {symprec}")
        if not factor >= 1:
            raise InputError(f"factor must be >= 1 (a multiple of the noise), got {factor}")
        if not floor >= 0:
            raise InputError(f"floor must be >= 0, got {floor}")
        self.symprec, self.factor, self.floor = float(symprec), float(factor), float(floor)
        self.reference, self.repeat = reference, repeat
        self.fixed_threshold = self.threshold
        self.expected_false_alarm_rate = 0.0
        self.info_: SymmetryInfo | None = None
        self.classes_: np.ndarray | None = None
        self.numbers_: np.ndarray | None = None  # the reference's atomic numbers
        self.spglib_class_: np.ndarray | None = None
        self.noise_: float | None = None
        self.class_noise_: np.ndarray | None = None
        self.model_split_classes_: list[dict[str, Any]] = []
        self.broken_: dict[int, int] = {}  # class -> step it broke (currently broken)
        self.history_: list[dict[str, Any]] = []  # every break and restore, in order
        self._spreads: np.ndarray | None = None

    # -- reference -----------------------------------------------------------------------
    @classmethod
    def report_plots(cls, data: dict[str, Any], run_dir: Path) -> list[Path]:
        """``symmetry_spread.png``: worst atom's distance from its class mean per class."""
        import matplotlib.pyplot as plt

        from platoscope.report import model_of, save_figure, score_names_of, step_axis, units_of

        sym, frames, syms = data["monitors"].get("symmetry"), data["frames"], data["symbols"]
        if not sym or sym.get("atom_classes") is None or "symmetry" not in score_names_of(data):
            return []
        classes = np.asarray(sym["atom_classes"], dtype=np.int64)
        fig, ax = plt.subplots(figsize=(8, 4))
        for c in np.unique(classes):
            xs, ys = [], []
            for f in frames:
                if "symmetry" in f["scores"] and len(f["numbers"]) == len(classes):
                    xs.append(f["step"])
                    ys.append(np.nanmax(f["scores"]["symmetry"][classes == c]))
            el = syms[0][int(np.flatnonzero(classes == c)[0])] if syms else ""
            ax.plot(xs, np.maximum(ys, 1e-12), label=f"class {c} ({el})")
        if sym.get("threshold") is not None:
            ax.axhline(sym["threshold"], color="k", ls="--", lw=1, label="threshold")
        ax.set_yscale("log")
        step_axis(ax)
        ax.set_ylabel(f"worst atom's distance from its class mean\n"
                      f"({units_of(data).get('symmetry', '')}, projection "
                      f"{data['summary'].get('provenance', {}).get('projection')})", fontsize=8)
        ax.set_title(f"Symmetry spread per class of equivalent atoms ({model_of(data)})")
        ax.legend(fontsize=7, ncol=2)
        return [save_figure(fig, Path(run_dir) / "symmetry_spread.png")]

    def on_restart(self, first_frame: Atoms) -> None:
        """Keep the run's original first frame as the reference (unless one was given)."""
        if self.reference is None:
            self.reference = first_frame

    def start(self, frame: Frame) -> None:
        ref = self.reference if self.reference is not None else frame.atoms
        n = len(frame.atoms)
        if len(ref) != n or (np.asarray(ref.numbers) != frame.atoms.numbers).any():
            raise InputError(
                f"symmetry reference {ref.get_chemical_formula()} ({len(ref)} atoms) does not "
                f"match the frames ({frame.atoms.get_chemical_formula()}, {n} atoms): same "
                "atoms in the same order needed")
        info = analyse_symmetry(ref, self.symprec)
        z = self._reference_coords(ref, frame)
        floor = self.floor
        classes, self.model_split_classes_ = _split_classes(z, info.classes, SPLIT * floor)
        for s in self.model_split_classes_:
            s["element"] = ref.get_chemical_symbols()[s["atoms"][0]]
            log.warning("symmetry monitor: the model does not see the %d %s atoms of class %d "
                        "as identical in the reference (spread %.2g): split into %d groups",
                        s["n_atoms"], s["element"], s["spglib_class"], s["spread"], s["into"])
        self.info_, self.classes_ = info, classes
        self.numbers_ = np.asarray(ref.numbers).copy()
        self.spglib_class_ = np.zeros(classes.max() + 1, dtype=np.int64)
        self.spglib_class_[classes] = info.classes
        self.class_noise_ = _class_max(distance_from_class_mean(z, classes), classes)
        self.noise_ = float(self.class_noise_.max())
        self.threshold = (self.fixed_threshold if self.fixed_threshold is not None
                          else float(max(self.factor * self.noise_, floor)))
        self._ref_frac = ref.get_scaled_positions(wrap=False)
        self.broken_, self.history_ = {}, []
        sizes = np.bincount(classes)
        if (sizes < 2).all():
            log.warning("symmetry monitor: the reference %s (space group %d, %s) has no two "
                        "equivalent atoms at symprec=%g; every score will be 0. Start from the "
                        "symmetric structure or pass reference=", ref.get_chemical_formula(),
                        info.spacegroup, info.symbol, self.symprec)
        elif (sizes < 2).any():
            log.info("symmetry monitor: %d of %d classes hold a single atom and cannot break "
                     "(use a supercell)", int((sizes < 2).sum()), len(sizes))

    def _reference_coords(self, ref: Atoms, frame: Frame) -> Any:
        """The reference's (N, K) coordinates, dense or sparse like the frames'."""
        if self.reference is None:
            return as_coords(frame.platonic)
        if "platonic" in ref.arrays:
            z = np.asarray(ref.arrays["platonic"], dtype=np.float64)
            if z.shape != np.shape(frame.platonic):
                raise InputError(f"the symmetry reference's 'platonic' array has shape "
                                 f"{z.shape}, the frames' {np.shape(frame.platonic)}: made with "
                                 "another anchor set; drop the array to recompute it")
            return z
        calc = frame.calc
        if calc is None or getattr(calc, "projector", None) is None:
            raise InputError("the symmetry reference has no 'platonic' array and the frame's "
                             "calculator cannot project it: pass a PlatonicCalculator")
        _, feats = calc.backend.compute(ref.copy(), ("energy",))
        return calc.projector.transform(feats, ref.numbers)

    # -- scoring -------------------------------------------------------------------------
    def _classes(self, frame: Frame) -> np.ndarray:
        if self.classes_ is None:  # not started (e.g. not due on the Watcher's first frame)
            self.start(frame)
        if len(frame.atoms) != len(self.classes_):
            raise InputError(f"frame has {len(frame.atoms)} atoms, the symmetry reference "
                             f"{len(self.classes_)}")
        if self.numbers_ is not None and (self.numbers_ != frame.atoms.numbers).any():
            # another structure of as many atoms (a trajectory of mixed structures) was scored
            # against the reference's classes, and a symmetric one showed as no event
            raise InputError(f"frame holds {frame.atoms.get_chemical_formula()}, the symmetry "
                             "reference other elements at the same atom positions: same atoms "
                             "in the same order needed")
        return self.classes_

    def score(self, frame: Frame) -> np.ndarray:
        """(N,) distance of each atom's coordinates from the mean of its reference class."""
        classes = self._classes(frame)
        s = distance_from_class_mean(frame.platonic, classes)
        self._spreads = _class_max(s, classes)
        return s

    def extra_scores(self, frame: Frame) -> dict[str, np.ndarray]:
        """``class_spread``: (N,) the largest score within each atom's class."""
        if self._spreads is None:
            return {}
        return {"class_spread": self._spreads[self._classes(frame)]}

    def displacements(self, atoms: Atoms) -> np.ndarray:
        """(N,) Å distance of each atom from its reference position, mean drift removed
        (fractional differences wrapped to the nearest image, then the current cell)."""
        df = atoms.get_scaled_positions(wrap=False) - self._ref_frac
        df -= np.round(df) * atoms.pbc
        u = df @ np.asarray(atoms.cell)
        return np.linalg.norm(u - u.mean(axis=0), axis=1)

    def events(self, frame: Frame, scores: np.ndarray) -> list[Event]:
        classes = self._classes(frame)
        thr = float(self.threshold)
        spreads = _class_max(scores, classes)
        broken = set(np.flatnonzero(spreads > thr).tolist())
        for c in sorted(set(self.broken_) - broken):
            self.history_.append({"class": c, "restored_at": frame.step,
                                  "broken_at": self.broken_.pop(c)})
        new = sorted(broken - set(self.broken_), key=lambda c: -spreads[c])
        for c in new:
            self.broken_[c] = frame.step
            self.history_.append({"class": c, "broken_at": frame.step})
        report = sorted(broken, key=lambda c: -spreads[c]) if self.repeat else new
        if not report:
            return []
        over = np.flatnonzero(scores > thr)
        order = over[np.argsort(-scores[over])]
        sym = frame.atoms.get_chemical_symbols()
        u = self.displacements(frame.atoms)
        o = int(np.argmax(u))
        details = {
            "spacegroup": self.info_.spacegroup, "symbol": self.info_.symbol,
            "broken_classes": [self._class_dict(c, spreads[c], sym) for c in report],
            "most_displaced": {"atom": o, "element": sym[o], "class": int(classes[o]),
                               "displacement_A": float(u[o]), "score": float(scores[o])},
            "elements": [sym[i] for i in order[:20]],
        }
        if not self.repeat and len(broken) > len(new):
            details["still_broken"] = sorted(broken - set(new))
        return [Event(step=frame.step, monitor=self.name, atoms=order.tolist(),
                      score=float(scores[order[0]]), threshold=thr, action=self.action,
                      details=details)]

    def _class_dict(self, c: int, spread: float, sym: list[str]) -> dict[str, Any]:
        members = np.flatnonzero(self.classes_ == c)
        return {"class": int(c), "element": sym[members[0]], "n_atoms": int(members.size),
                "spread": float(spread), "noise": float(self.class_noise_[c]),
                "ratio": float(spread / self.threshold) if self.threshold else None,
                "spglib_class": int(self.spglib_class_[c])}

    def settings(self) -> dict[str, Any]:
        # ``threshold`` is set from the first frame's noise unless given: keep what was given
        return {**super().settings(), "threshold": self.fixed_threshold,
                "symprec": self.symprec, "factor": self.factor, "floor": self.floor,
                "repeat": self.repeat}

    def summary(self) -> dict[str, Any]:
        s = super().summary()
        s.update(documentation="docs/symmetry_switch.md (measured elsewhere, not in this run)")
        if self.classes_ is None:
            return s
        sizes = np.bincount(self.classes_)
        s.update(
            spacegroup=self.info_.spacegroup, symbol=self.info_.symbol, noise=self.noise_,
            atom_classes=self.classes_.tolist(),  # each atom's class (members of class c)
            classes=[{"class": c, "spglib_class": int(self.spglib_class_[c]),
                      "n_atoms": int(sizes[c]), "noise": float(self.class_noise_[c])}
                     for c in range(len(sizes))],
            model_split_classes=[{k: v for k, v in d.items() if k != "atoms"}
                                 for d in self.model_split_classes_],
            broken_now=dict(sorted(self.broken_.items())), history=self.history_)
        return s


def _class_max(values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(C,) largest value within each class."""
    out = np.zeros(int(classes.max()) + 1 if classes.size else 0)
    np.maximum.at(out, classes, values)
    return out


def _split_classes(z: Any, classes: np.ndarray, link: float
                   ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Split every class whose spread exceeds ``link`` into groups connected within ``link``.

    z: (N, K) coordinates, dense or sparse (compacted to the columns they use: same distances).
    Returns new (N,) class ids (numbered by first atom, like spglib's) and one dict per split
    class (spglib class, atoms, size, spread, number of groups).
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import radius_neighbors_graph

    (z,), _ = compact_columns(z)
    spreads = _class_max(distance_from_class_mean(z, classes), classes)
    labels = classes.astype(np.int64).copy()
    nxt = int(labels.max()) + 1
    splits = []
    for c in np.flatnonzero(spreads > link):
        idx = np.flatnonzero(classes == c)
        n_groups, lab = connected_components(radius_neighbors_graph(z[idx], link),
                                             directed=False)
        if n_groups < 2:
            continue
        for g in range(1, n_groups):
            labels[idx[lab == g]] = nxt
            nxt += 1
        splits.append({"spglib_class": int(c), "atoms": idx.tolist(), "n_atoms": int(idx.size),
                       "spread": float(spreads[c]), "into": int(n_groups)})
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse].astype(np.int64), splits
