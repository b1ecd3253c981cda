"""Per-atom force-error estimate of one model: sigma_i in eV/Å (issue 11).

Two forms (``form``), every term optional (``terms``):

    mult:      log sigma_i = a + o_Z + b log(|F_i| + c) + e log(L_i + c) + d u_i
    additive:  sigma_i = sqrt((beta |F_i|)^2 + s_i^2),
               log s_i = a + o_Z + e log(L_i + c) + d u_i

``|F_i|``: the model's own force norm (eV/Å). ``L_i`` (``context`` term): the local force scale,
the RMS of the model's |F_j| over atom i and its neighbours within ``radius`` Å
(:func:`local_force_scale`; element-free, how hot or strained the neighbourhood is): an atom
near equilibrium in a hot neighbourhood keeps a floor instead of a sigma that falls with its own
force. ``u_i = log(D_i / s_Z)`` (``distance`` term): ``D_i`` the mean distance of the atom's
hooked-layer features to its ``k`` nearest reference-bank atoms of the same element, ``s_Z``
that element's median leave-one-structure-out k-NN distance in the bank (elements absent from
the bank: distance to all bank atoms over the pooled median; flagged in ``unknown_elements_``).
``o_Z``: per-element offset (``per_element``); an element absent from the fit gets the offset
named by ``unseen`` (``max``, ``mean`` of the fitted ones, ``none`` = 0, or ``prior``:
``mean_c(o_c - log D_c) + log D_Z`` over the calibrated elements c, with D_Z the element's
committee force disagreement on generated structures, :func:`element_prior`; ``mean`` for an
element outside that table) and is flagged in ``uncalibrated_elements_``. Parameters: the
0.68-quantile regression of ``log|ΔF_i|`` (``ΔF`` = model minus DFT force, eV/Å; errors below
``ERR_FLOOR`` = 0.01 eV/Å, about the precision of DFT forces, count as 0.01 so that atoms of
perfect crystals do not dominate the fit) on labelled atoms (pinball loss; linear programme for
``mult``, smoothed pinball minimised for ``additive``), ``c`` (eV/Å) picked on a grid by the
pinball loss; so on data like the calibration set about 68 % of atoms have
``|ΔF_i| <= sigma_i``.
How well it ranks and covers on held-out data, beside |F| and committees: docs/detection.md.
No extra model call: features and forces of the same forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from platoscope.analysis.neighbors import check_k, knn_distance
from platoscope.checks import nonfinite_rows
from platoscope.errors import ConfigError, CorruptFileError, InputError, PlatoscopeError

FORMAT = "platoscope.uncertainty/3"
OLD_FORMATS = ("platoscope.uncertainty/1", "platoscope.uncertainty/2")
C_GRID = (0.02, 0.1, 0.5)  # eV/Å
TERMS = ("force", "context", "distance")
FORMS = ("mult", "additive")
UNSEEN = ("max", "mean", "none", "prior")
CONTEXT_RADIUS = 3.2  # Å: first neighbour shell of most elemental solids (Si 2.35, Li 3.0)
MAX_FIT_ATOMS = 4000
ERR_FLOOR = 0.01  # eV/Å: smaller errors (about the precision of DFT forces) count as this
MIN_STRUCTURES = 2
DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_FORM: dict[str, Any] = {"terms": ("force", "context", "distance"), "form": "additive",
                                "per_element": True, "unseen": "prior"}
"""Form of the shipped calibrations and of ``platoscope calibrate`` (chosen on mlearn Li/Si
training: results/uncertainty_variants_chgnet_0.3.0.json; the unseen-element rule:
results/uncertainty_prior_chgnet_0.3.0.json and docs/detection.md)."""
ELEMENT_PRIOR = "element_prior.json"


def element_prior() -> dict[int, float]:
    """Shipped per-element difficulty D_Z (eV/Å): the median over atoms of the mean pairwise
    force disagreement of CHGNet 0.3.0, CHGNet 0.2.0 and SevenNet-0 on generated elemental
    structures (rattled, vacancy, slab: builders/build_element_prior.py; no DFT data).
    68 elements; the ``prior`` rule scales an uncalibrated element's error floor with it."""
    data = json.loads((DATA_DIR / ELEMENT_PRIOR).read_text())
    return {int(v["Z"]): float(v["D"]) for v in data["elements"].values()}


def default_file(spec: str) -> Path:
    """Path of the shipped calibration of backend ``spec`` (e.g. ``chgnet:0.3.0``)."""
    return DATA_DIR / f"uncertainty_{spec.replace(':', '_')}.npz"


def _pinball(r: np.ndarray, q: float) -> float:
    return float(np.mean(np.maximum(q * r, (q - 1) * r)))


def local_force_scale(atoms: Any, forces: np.ndarray,
                      radius: float = CONTEXT_RADIUS) -> np.ndarray:
    """(N,) RMS (eV/Å) of the force norms of each atom and its neighbours within ``radius`` Å.

    atoms: ase Atoms (positions, cell, pbc); forces: (N, 3) eV/Å, the model's forces on them.
    """
    from ase.neighborlist import neighbor_list

    f = np.asarray(forces, dtype=np.float64)
    if f.shape != (len(atoms), 3):
        raise InputError(f"forces have shape {f.shape}, expected ({len(atoms)}, 3)")
    if not radius > 0:
        raise InputError(f"radius must be > 0 Å, got {radius}")
    fn2 = (f * f).sum(1)
    i, j = neighbor_list("ij", atoms, float(radius))
    s2 = fn2 + np.bincount(i, weights=fn2[j], minlength=len(atoms))
    n = 1 + np.bincount(i, minlength=len(atoms))
    return np.sqrt(s2 / n)


class BankMismatchError(ConfigError):
    """A force-error model given a reference bank other than the one it was fitted against."""


class ForceErrorModel:
    """sigma_i (eV/Å) from the model's force norm, the local force scale and the feature
    distance to the bank (module docstring).

    bank: ReferenceBank of the running model and layer (raw embeddings (M, D)); k: neighbours;
    quantile: target coverage of ``|ΔF| <= sigma``; terms: subset of ``force``, ``context``,
    ``distance``; form: ``mult`` or ``additive`` (``additive`` needs ``force``); per_element:
    fit per-element offsets; unseen: offset of an element absent from the fit (``max``,
    ``mean``, ``none``, ``prior``); radius: Å of the local force scale.
    """

    def __init__(self, bank: Any, *, k: int = 5, quantile: float = 0.68,
                 terms: tuple[str, ...] = ("force", "distance"), form: str = "mult",
                 c_grid: tuple[float, ...] = C_GRID, per_element: bool = True,
                 unseen: str = "max", radius: float = CONTEXT_RADIUS):
        if getattr(bank, "embeddings", None) is None:
            raise InputError("ForceErrorModel needs a reference bank with raw embeddings")
        check_k(k)
        if not 0 < quantile < 1:
            raise InputError(f"quantile must be in (0, 1), got {quantile}")
        bad = set(terms) - set(TERMS)
        if bad or not terms:
            raise InputError(f"terms must be a non-empty subset of {TERMS}, got {terms}")
        if form not in FORMS:
            raise InputError(f"form must be one of {FORMS}, got {form!r}")
        if form == "additive" and "force" not in terms:
            raise InputError("the additive form needs the 'force' term")
        if unseen not in UNSEEN:
            raise InputError(f"unseen must be one of {UNSEEN}, got {unseen!r}")
        if not radius > 0:
            raise InputError(f"radius must be > 0 Å, got {radius}")
        self.bank = bank
        self.k = int(k)
        self.quantile = float(quantile)
        self.terms = tuple(t for t in TERMS if t in terms)
        self.form = form
        self.c_grid = tuple(float(c) for c in c_grid)
        self.per_element = bool(per_element)
        self.unseen = unseen
        self.radius = float(radius)
        self.offsets_: dict[int, float] = {}  # per-element intercept shift (log eV/Å)
        self._ref = np.asarray(bank.embeddings, dtype=np.float64)
        self._pool = {int(z): self._ref[bank.numbers == z] for z in np.unique(bank.numbers)}
        self.scales_: dict[int, float] | None = None
        self.pooled_scale_: float | None = None
        self.params_: dict[str, float] | None = None  # a, b, e, d (mult) / log_beta (additive)
        self.c_: float = 0.1
        self.provenance_: dict[str, Any] = {}
        self.unknown_elements_: list[int] = []  # not in the bank: pooled distance scale
        self.uncalibrated_elements_: list[int] = []  # not in the fit: the ``unseen`` offset
        self.prior_: dict[int, float] = element_prior() if unseen == "prior" else {}

    # -- distance term --------------------------------------------------------------------
    def _bank_scales(self) -> None:
        """Per-element median leave-one-structure-out k-NN distance in the bank."""
        bank, ref = self.bank, self._ref
        scales, pooled = {}, []
        for z in np.unique(bank.numbers):
            sel = np.flatnonzero(bank.numbers == z)
            s = knn_distance(ref[sel], ref[sel], self.k, exclude=bank.structure_index[sel],
                             groups=bank.structure_index[sel])
            s = s[np.isfinite(s)]
            if s.size:
                scales[int(z)] = float(np.median(s))
                pooled.append(s)
        if not pooled:
            raise InputError("reference bank too small: every element sits in one structure")
        self.pooled_scale_ = float(np.median(np.concatenate(pooled)))
        self.scales_ = scales

    def distance_term(self, features: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """(N,) u_i = log(k-NN distance / element scale) (dimensionless) of features (N, D)."""
        if self.scales_ is None:
            self._bank_scales()
        x = np.asarray(features, dtype=np.float64)
        numbers = np.asarray(numbers)
        if x.ndim != 2 or len(x) != len(numbers) or x.shape[1] != self._ref.shape[1]:
            raise InputError(f"features have shape {x.shape}, expected ({len(numbers)}, "
                             f"{self._ref.shape[1]}) (the bank's layer width) for "
                             f"{len(numbers)} atoms")
        u = np.empty(len(x))
        for z in np.unique(numbers):
            idx = np.flatnonzero(numbers == z)
            if int(z) in self._pool and int(z) in self.scales_:
                d = knn_distance(x[idx], self._pool[int(z)], self.k)
                u[idx] = np.log(np.maximum(d, 1e-12) / self.scales_[int(z)])
            else:
                if int(z) not in self.unknown_elements_:
                    self.unknown_elements_.append(int(z))
                d = knn_distance(x[idx], self._ref, self.k)
                u[idx] = np.log(np.maximum(d, 1e-12) / self.pooled_scale_)
        return u

    # -- the log-sigma function -------------------------------------------------------------
    def _inputs(self, features, forces, numbers, force_scale=None, atoms=None):
        """fnorm (N,), local scale L (N,) or None, u (N,) or None, after shape checks."""
        numbers = np.asarray(numbers)
        if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
            raise InputError(f"numbers must be atomic numbers, a 1-D integer array, got dtype "
                             f"{numbers.dtype} and shape {numbers.shape}")
        f = np.asarray(forces, dtype=np.float64)
        if f.shape != (len(numbers), 3):
            raise InputError(f"forces have shape {f.shape}, expected ({len(numbers)}, 3)")
        bad = nonfinite_rows(f)
        if bad.size:
            raise InputError(f"the model's forces are NaN or inf at atoms {bad[:10].tolist()}: "
                             "sigma needs finite forces (eV/Å)")
        L = None
        if "context" in self.terms:
            if force_scale is None and atoms is None:
                raise InputError("this force-error model has the local-force-scale term: pass "
                                 "atoms (positions of the frame) or force_scale (N,)")
            L = (local_force_scale(atoms, f, self.radius) if force_scale is None
                 else np.asarray(force_scale, dtype=np.float64))
            if L.shape != (len(numbers),):
                raise InputError(f"force_scale has shape {L.shape}, expected ({len(numbers)},)")
        u = self.distance_term(features, numbers) if "distance" in self.terms else None
        return np.linalg.norm(f, axis=1), L, u

    def _offset_column(self, numbers: np.ndarray, offsets: dict[int, float],
                       flag: bool = False) -> np.ndarray:
        if not offsets:
            return np.zeros(len(numbers))
        if flag:
            for z in set(np.unique(numbers).tolist()) - set(offsets):
                if int(z) not in self.uncalibrated_elements_:
                    self.uncalibrated_elements_.append(int(z))
        fill = self.unseen_offsets(np.unique(numbers), offsets)
        return np.array([offsets.get(int(z), fill.get(int(z), 0.0)) for z in numbers])

    def unseen_offsets(self, numbers: Any, offsets: dict[int, float] | None = None
                       ) -> dict[int, float]:
        """Offset (log eV/Å) that each element of ``numbers`` absent from ``offsets``
        (default: the fitted ones) gets under the ``unseen`` rule."""
        offsets = self.offsets_ if offsets is None else offsets
        known = list(offsets.values())
        if not known:
            return {}
        mean = float(np.mean(known))
        fill = {"max": max(known), "mean": mean, "none": 0.0, "prior": mean}[self.unseen]
        out = {int(z): fill for z in np.asarray(numbers).ravel() if int(z) not in offsets}
        base = [o - np.log(self.prior_[z]) for z, o in offsets.items() if z in self.prior_]
        if self.unseen == "prior" and base:
            for z in out:
                if z in self.prior_:
                    out[z] = float(np.mean(base)) + float(np.log(self.prior_[z]))
        return out

    def _log_sigma(self, p: dict[str, float], c: float, fnorm, L, u, off) -> np.ndarray:
        floor = p["a"] + off
        if L is not None:
            floor = floor + p["e"] * np.log(L + c)
        if u is not None:
            floor = floor + p["d"] * u
        if self.form == "additive":
            return 0.5 * np.logaddexp(2 * (p["log_beta"] + np.log(fnorm + 1e-12)), 2 * floor)
        if "force" in self.terms:
            floor = floor + p["b"] * np.log(fnorm + c)
        return floor

    def _names(self) -> list[str]:
        names = ["a"]
        if self.form == "additive":
            names.append("log_beta")
        elif "force" in self.terms:
            names.append("b")
        if "context" in self.terms:
            names.append("e")
        if "distance" in self.terms:
            names.append("d")
        return names

    # -- fit / predict --------------------------------------------------------------------
    def fit(self, features: np.ndarray, forces: np.ndarray, dft_forces: np.ndarray,
            numbers: np.ndarray, structure_index: np.ndarray, *,
            force_scale: np.ndarray | None = None,
            provenance: dict[str, Any] | None = None, seed: int = 0) -> ForceErrorModel:
        """Fit on labelled atoms. features (N, D); forces, dft_forces (N, 3) eV/Å (model and
        DFT); numbers (N,); structure_index (N,) which structure each atom is in; force_scale
        (N,) eV/Å, the local force scale of each atom in its own structure
        (:func:`local_force_scale`), needed with the ``context`` term. Returns self.
        """
        f = np.asarray(forces, dtype=np.float64)
        g = np.asarray(dft_forces, dtype=np.float64)
        n = len(np.asarray(numbers))
        if f.shape != (n, 3) or g.shape != (n, 3):
            raise InputError(f"forces {f.shape} and dft_forces {g.shape} must both be ({n}, 3) "
                             f"for {n} atoms")
        bad = nonfinite_rows(g)
        if bad.size:
            raise InputError(f"dft_forces are NaN or inf at atom rows {bad[:10].tolist()}: a "
                             "calibration needs finite DFT forces (eV/Å)")
        sidx = np.asarray(structure_index)
        if len(sidx) != n:
            raise InputError(f"structure_index has {len(sidx)} entries for {n} atoms")
        n_struct = len(np.unique(sidx))
        if n_struct < MIN_STRUCTURES:
            raise InputError(f"need DFT forces of at least {MIN_STRUCTURES} structures to "
                             f"calibrate, got {n_struct}")
        if "context" in self.terms and force_scale is None:
            raise InputError("the context term needs force_scale (N,): local_force_scale() of "
                             "each structure")
        fnorm, L, u = self._inputs(features, f, numbers, force_scale=force_scale)
        y = np.log(np.maximum(np.linalg.norm(f - g, axis=1), ERR_FLOOR))
        rng = np.random.default_rng(seed)
        sub = (np.sort(rng.choice(n, MAX_FIT_ATOMS, replace=False)) if n > MAX_FIT_ATOMS
               else np.arange(n))
        zs = np.asarray(numbers)[sub]
        elements = tuple(int(z) for z in np.unique(zs)) if self.per_element else ()
        onehot = np.stack([(zs == z).astype(np.float64) for z in elements[1:]], 1) \
            if len(elements) > 1 else np.zeros((len(sub), 0))
        parts = (fnorm[sub], None if L is None else L[sub], None if u is None else u[sub])
        uses_c = "context" in self.terms or ("force" in self.terms and self.form == "mult")
        best = None
        for c in (self.c_grid if uses_c else self.c_grid[:1]):
            fit = (self._fit_additive if self.form == "additive" else self._fit_mult)
            p, offs = fit(c, parts, onehot, y[sub])
            off = onehot @ offs if len(offs) else 0.0
            loss = _pinball(y[sub] - self._log_sigma(p, c, *parts, off), self.quantile)
            if best is None or loss < best[0]:
                best = (loss, c, p, offs)
        _, c, p, offs = best
        self.params_, self.c_ = p, float(c)
        self.offsets_ = ({elements[0]: 0.0, **{z: float(o) for z, o in
                                               zip(elements[1:], offs, strict=True)}}
                         if elements else {})
        self.provenance_ = {**(provenance or {}), "n_structures": int(n_struct),
                            "n_atoms": int(n), "n_atoms_fit": len(sub),
                            "bank_data_hash": self.bank.data_hash,
                            "bank_model": self.bank.model}
        return self

    def _fit_mult(self, c, parts, onehot, y):
        from sklearn.linear_model import QuantileRegressor

        fnorm, L, u = parts
        cols = [onehot]
        if "force" in self.terms:
            cols.append(np.log(fnorm + c)[:, None])
        if L is not None:
            cols.append(np.log(L + c)[:, None])
        if u is not None:
            cols.append(u[:, None])
        reg = QuantileRegressor(quantile=self.quantile, alpha=0.0, solver="highs")
        reg.fit(np.concatenate(cols, 1), y)
        k = onehot.shape[1]
        names = self._names()
        return ({"a": float(reg.intercept_), **{nm: float(v) for nm, v in
                                               zip(names[1:], reg.coef_[k:], strict=True)}},
                reg.coef_[:k].astype(np.float64))

    def _fit_additive(self, c, parts, onehot, y):
        from scipy.optimize import minimize

        names, k, q = self._names(), onehot.shape[1], self.quantile

        def unpack(x):
            return dict(zip(names, x[:len(names)], strict=True)), x[len(names):]

        def loss(x, tau=0.02):  # smoothed pinball (softplus), the pinball loss as tau -> 0
            p, offs = unpack(x)
            r = y - self._log_sigma(p, c, *parts, onehot @ offs)
            return float(np.mean(q * r + tau * np.logaddexp(0, -r / tau)))

        x0 = np.r_[np.log(0.05), np.log(0.3), np.full(len(names) - 2, 0.0), np.zeros(k)]
        if "e" in names:  # start: floor growing with the local force scale
            x0[names.index("e")] = 0.5
        res = minimize(loss, x0, method="L-BFGS-B")
        res = minimize(loss, res.x, method="Nelder-Mead",
                       options={"maxiter": 4000, "xatol": 1e-4, "fatol": 1e-7})
        p, offs = unpack(res.x)
        return {kk: float(v) for kk, v in p.items()}, np.asarray(offs, dtype=np.float64)

    def predict(self, features: np.ndarray, forces: np.ndarray, numbers: np.ndarray, *,
                atoms: Any = None, force_scale: np.ndarray | None = None) -> np.ndarray:
        """(N,) predicted force-error norm sigma_i in eV/Å. features (N, D); forces (N, 3)
        eV/Å of the model; numbers (N,); with the ``context`` term also the frame's ``atoms``
        (positions, cell) or its precomputed ``force_scale`` (N,) eV/Å."""
        if self.params_ is None:
            raise InputError("ForceErrorModel is not fitted: call fit() or load a state")
        numbers = np.asarray(numbers)
        fnorm, L, u = self._inputs(features, forces, numbers, force_scale, atoms)
        off = self._offset_column(numbers, self.offsets_, flag=True)
        return np.exp(self._log_sigma(self.params_, self.c_, fnorm, L, u, off))

    # -- state ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        """Plain arrays (npz-ready): form, terms, parameters (JSON), c, k, quantile, radius,
        bank scales, offsets and provenance (JSON). The bank itself is not stored."""
        if self.params_ is None:
            raise InputError("ForceErrorModel is not fitted")
        if self.scales_ is None:
            self._bank_scales()
        zs = sorted(self.scales_)
        return {"format": np.array(FORMAT), "form": np.array(self.form),
                "params": np.array(json.dumps(self.params_, sort_keys=True)),
                "c": np.array(self.c_), "k": np.array(self.k),
                "quantile": np.array(self.quantile), "radius": np.array(self.radius),
                "terms": np.array(",".join(self.terms)), "unseen": np.array(self.unseen),
                "scale_numbers": np.array(zs, dtype=np.int64),
                "scale_values": np.array([self.scales_[z] for z in zs]),
                "pooled_scale": np.array(self.pooled_scale_),
                "offset_numbers": np.array(sorted(self.offsets_), dtype=np.int64),
                "offset_values": np.array([self.offsets_[z] for z in sorted(self.offsets_)],
                                          dtype=np.float64),
                "prior_numbers": np.array(sorted(self.prior_), dtype=np.int64),
                "prior_values": np.array([self.prior_[z] for z in sorted(self.prior_)],
                                         dtype=np.float64),
                "provenance": np.array(json.dumps(self.provenance_, sort_keys=True))}

    @classmethod
    def from_state(cls, state: dict[str, Any], bank: Any) -> ForceErrorModel:
        """Rebuild from :meth:`get_state` (this format; format 2, without the element prior
        table; or format 1: force and distance terms, multiplicative) with the bank it was
        fitted against (refused when the bank's data hash differs)."""
        fmt = str(state.get("format", ""))
        if fmt != FORMAT and fmt not in OLD_FORMATS:
            raise InputError(f"not a platoscope force-error model (format "
                             f"{fmt or 'missing'!r}, expected {FORMAT!r})")
        prov = json.loads(str(state["provenance"]))
        if prov.get("bank_data_hash") and prov["bank_data_hash"] != bank.data_hash:
            raise BankMismatchError(f"force-error model was fitted against reference bank "
                              f"{prov['bank_data_hash'][:12]} ({prov.get('bank_model')}), not "
                              f"{bank.data_hash[:12]} ({bank.model}): sigma's feature-distance "
                              "term needs the bank it was fitted with; pass that bank as "
                              "--reference, or refit on this one with `platoscope calibrate "
                              "FILES --reference BANK`")
        terms = tuple(str(state["terms"]).split(","))
        if fmt != OLD_FORMATS[0]:
            m = cls(bank, k=int(state["k"]), quantile=float(state["quantile"]), terms=terms,
                    form=str(state["form"]), unseen=str(state["unseen"]),
                    radius=float(state["radius"]))
            m.params_ = {str(k): float(v) for k, v in json.loads(str(state["params"])).items()}
        else:  # format 1: coef (a, b, d), unseen elements got the largest offset
            m = cls(bank, k=int(state["k"]), quantile=float(state["quantile"]), terms=terms)
            a, b, d = (float(x) for x in state["coef"])
            m.params_ = {"a": a, **({"b": b} if "force" in terms else {}),
                         **({"d": d} if "distance" in terms else {})}
        m.c_ = float(state["c"])
        m.scales_ = {int(z): float(v) for z, v in zip(state["scale_numbers"],
                                                      state["scale_values"], strict=True)}
        m.pooled_scale_ = float(state["pooled_scale"])
        m.offsets_ = {int(z): float(v) for z, v in zip(state["offset_numbers"],
                                                       state["offset_values"], strict=True)}
        m.per_element = bool(m.offsets_)
        if "prior_numbers" in state:  # the table the file was saved with, not today's
            m.prior_ = {int(z): float(v) for z, v in zip(state["prior_numbers"],
                                                         state["prior_values"], strict=True)}
        m.provenance_ = prov
        return m

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (``.npz`` appended when it has another suffix, as
        numpy would) atomically; returns the path written."""
        from platoscope.npzfiles import savez_atomic

        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz")
        if path.is_dir():
            raise InputError(f"--out {path} is a folder: give a file name, e.g. {path}/model.npz")
        savez_atomic(path, **self.get_state())
        return path

    @classmethod
    def load(cls, path: str | Path, bank: Any) -> ForceErrorModel:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"force-error model file {path} does not exist")
        from platoscope.npzfiles import require_zip

        require_zip(path, "force-error model (from platoscope calibrate)")
        try:
            with np.load(path, allow_pickle=False) as z:
                state = {k: z[k] for k in z.files}
        except Exception as err:
            raise CorruptFileError(f"{path}: not a readable force-error model ({err})") from err
        try:
            return cls.from_state(state, bank)
        except InputError as err:
            raise type(err)(f"{path}: {err}") from err

    def check_backend(self, backend: Any) -> None:
        """Refuse a backend other than the one the model was fitted for (spec, weights,
        layer)."""
        p = self.provenance_
        want = (p.get("model"), p.get("weights_sha256"), p.get("layer"))
        got = (backend.spec, backend.weights_sha256(), backend.layer)
        if None not in want and want != got:
            raise ConfigError(f"force-error model was fitted for {want[0]} (layer {want[2]}, "
                              f"weights {str(want[1])[:12]}), not {got[0]} (layer {got[2]}, "
                              f"weights {str(got[1])[:12]})")

    @classmethod
    def default(cls, backend: Any, bank: Any) -> ForceErrorModel:
        """The shipped calibration of ``backend`` (fitted on mlearn Li/Si training; CHGNet
        0.3.0 and, where shipped, SevenNet-0); any other model: ConfigError naming
        ``platoscope calibrate``."""
        path = default_file(backend.spec)
        if not path.is_file():
            raise ConfigError(f"no shipped force-error calibration for {backend.spec}: fit one "
                              "on DFT-labelled structures with `platoscope calibrate FILES "
                              f"--model {backend.spec} --out model.npz` and pass "
                              "--uncertainty-model model.npz")
        m = cls.load(path, bank)
        m.check_backend(backend)
        return m


def backend_provenance(backend: Any) -> dict[str, Any]:
    """model spec, weights sha256 and layer of ``backend``, for a fit's provenance."""
    return {"model": backend.spec, "weights_sha256": backend.weights_sha256(),
            "layer": backend.layer}


def dft_forces_of(atoms: Any, key: str, where: str) -> np.ndarray:
    """(N, 3) DFT forces (eV/Å) of ``atoms`` under ``key``: a per-atom array, or (``forces``)
    the forces of an attached single-point calculator (extxyz); mlearn JSON stores
    ``dft_forces``. ``where`` names the structure in errors."""
    f = atoms.arrays.get(key)
    if f is None and key == "forces" and atoms.calc is not None:
        try:
            f = atoms.calc.get_forces()
        except Exception:
            f = None
    if f is None and key == "forces":
        f = atoms.arrays.get("dft_forces")
    if f is None:
        keys = sorted(set(atoms.arrays) - {"numbers", "positions"})
        raise InputError(f"{where}: no per-atom array {key!r} (has {keys or 'none'}); pass "
                         "--dft-forces-key")
    f = np.asarray(f, dtype=np.float64)
    if f.shape != (len(atoms), 3):
        raise InputError(f"{where}: {key!r} has shape {f.shape}, expected ({len(atoms)}, 3)")
    bad = nonfinite_rows(f)
    if bad.size:
        raise InputError(f"{where}: {key!r} is NaN or inf at atom indices {bad[:10].tolist()}"
                         f"{' ...' if bad.size > 10 else ''}; a calibration needs finite DFT "
                         "forces (eV/Å): fix or leave out that structure")
    return f


SAME_FORCES = 1e-3
"""eV/Å: labels that agree with the model's forces this closely on every atom carry no error
to calibrate on (``calibrate`` refuses them)."""


def calibrate(backend: Any, bank: Any, structures: list, *, dft_forces_key: str = "forces",
              holdout: float = 0.2, seed: int = 0, names: list[str] | None = None,
              **kwargs: Any) -> tuple[ForceErrorModel, dict[str, Any]]:
    """Fit a ForceErrorModel of ``backend`` on DFT-labelled ``structures`` (list of Atoms).

    kwargs go to :class:`ForceErrorModel` (default: the form of the shipped calibrations,
    :data:`DEFAULT_FORM`). One forward pass per structure (features and forces). Coverage of
    ``|ΔF| <= sigma`` is first measured on a held-out ``holdout`` fraction of the structures
    (fit on the rest); the returned model is then refitted on all. Returns (model, report)."""
    if len(structures) < 2 * MIN_STRUCTURES:
        raise InputError(f"need at least {2 * MIN_STRUCTURES} DFT-labelled structures to "
                         f"calibrate and check on held-out ones, got {len(structures)}")
    if not 0 < holdout < 1:
        raise InputError(f"holdout must be a fraction in (0, 1), got {holdout}")
    n_held = max(1, round(holdout * len(structures)))
    if len(structures) - n_held < MIN_STRUCTURES:
        raise InputError(f"holdout {holdout} of {len(structures)} structures leaves "
                         f"{len(structures) - n_held} to fit on (at least {MIN_STRUCTURES}): "
                         "hold out a smaller fraction")
    kwargs = {**DEFAULT_FORM, **kwargs}
    radius = float(kwargs.get("radius", CONTEXT_RADIUS))
    from platoscope.readers import frame_error, frame_name

    names = names or [frame_name(a, i) for i, a in enumerate(structures)]
    # every structure's DFT forces first: a missing key is named before any forward pass
    dft = [dft_forces_of(atoms, dft_forces_key, names[i]) for i, atoms in enumerate(structures)]
    # and every element: one the model has no parameters for is named before any forward pass
    from platoscope.backends.base import require_elements

    for i, atoms in enumerate(structures):
        try:
            require_elements(atoms, model=getattr(backend, "spec", "model"),
                             supported=getattr(backend, "supported_numbers", None))
        except PlatoscopeError as err:
            raise frame_error(err, atoms, i) from err
    X, F, G, Z, S, L = [], [], [], [], [], []
    for i, (atoms, g) in enumerate(zip(structures, dft, strict=True)):
        a = atoms.copy()
        a.calc = None
        try:
            res, feats = backend.compute(a, ["energy", "forces"])
        except PlatoscopeError as err:  # e.g. an element the model has no parameters for
            raise frame_error(err, atoms, i) from err
        X.append(np.asarray(feats, dtype=np.float64))
        F.append(np.asarray(res["forces"], dtype=np.float64))
        L.append(local_force_scale(a, F[-1], radius))
        G.append(g)
        Z.append(atoms.numbers)
        S.append(np.full(len(atoms), i))
    X, F, G, Z, S, L = (np.concatenate(v) for v in (X, F, G, Z, S, L))
    worst = float(np.linalg.norm(F - G, axis=1).max())
    if worst < SAME_FORCES:  # e.g. a platoscope run's frames.extxyz passed as "DFT"
        raise InputError(
            f"the {dft_forces_key!r} forces of all {len(F)} atoms agree with "
            f"{getattr(backend, 'spec', 'the model')}'s own within {worst:.1e} eV/Å: they are "
            "this model's forces, or structures where every force vanishes by symmetry; sigma "
            "fitted on them would be ~0.01 eV/Å everywhere. Calibrate on DFT forces of "
            "structures like those you simulate")
    rng = np.random.default_rng(seed)
    held_ids = rng.choice(len(structures), n_held, replace=False)
    held = np.isin(S, held_ids)
    prov = backend_provenance(backend)
    m = ForceErrorModel(bank, **kwargs).fit(X[~held], F[~held], G[~held], Z[~held], S[~held],
                                            force_scale=L[~held])
    sig = m.predict(X[held], F[held], Z[held], force_scale=L[held])
    err = np.linalg.norm(F[held] - G[held], axis=1)
    report = {"held_out_structures": int(n_held), "held_out_atoms": int(held.sum()),
              "held_out_coverage_1sigma": float(np.mean(err <= sig)),
              "held_out_coverage_2sigma": float(np.mean(err <= 2 * sig)),
              "target_quantile": m.quantile}
    final = ForceErrorModel(bank, **kwargs).fit(X, F, G, Z, S, force_scale=L, provenance={
        **prov, "held_out_check": report})
    return final, report
