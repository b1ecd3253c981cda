"""Per-atom force-error estimate of one model: sigma_i in eV/Å (issue 11).

    sigma_i = exp(a + b * log(|F_i| + c) + d * u_i)

``|F_i|``: the model's own force norm (eV/Å); ``u_i = log(D_i / s_Z)``: ``D_i`` the mean
distance of the atom's hooked-layer features to its ``k`` nearest reference-bank atoms of the
same element, ``s_Z`` that element's median leave-one-structure-out k-NN distance in the bank
(elements absent from the bank: distance to all bank atoms over the pooled median; flagged in
``unknown_elements_``). ``a, b, d`` are the 0.68-quantile linear regression of ``log|ΔF_i|``
(``ΔF`` = model minus DFT force, eV/Å) on labelled atoms, ``c`` (eV/Å) picked on a grid by the
pinball loss; so on data like the calibration set about 68 % of atoms have
``|ΔF_i| <= sigma_i``. How well it ranks and covers on held-out data, beside |F| and committees:
docs/detection.md. No extra model call: features and forces of the same forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from platoscope.analysis.neighbors import knn_distance
from platoscope.errors import ConfigError, InputError

FORMAT = "platoscope.uncertainty/1"
C_GRID = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # eV/Å
TERMS = ("force", "distance")
MAX_FIT_ATOMS = 6000
MIN_STRUCTURES = 2
DATA_DIR = Path(__file__).resolve().parent / "data"


def default_file(spec: str) -> Path:
    """Path of the shipped calibration of backend ``spec`` (e.g. ``chgnet:0.3.0``)."""
    return DATA_DIR / f"uncertainty_{spec.replace(':', '_')}.npz"


def _pinball(r: np.ndarray, q: float) -> float:
    return float(np.mean(np.maximum(q * r, (q - 1) * r)))


class ForceErrorModel:
    """sigma_i (eV/Å) from the model's force norm and the feature distance to the bank.

    bank: ReferenceBank of the running model and layer (raw embeddings (M, D)); k: neighbours;
    quantile: target coverage of ``|ΔF| <= sigma``; terms: which of ``force``, ``distance`` enter
    (``("force",)`` or ``("distance",)`` for the one-term baselines).
    """

    def __init__(self, bank: Any, *, k: int = 5, quantile: float = 0.68,
                 terms: tuple[str, ...] = TERMS, c_grid: tuple[float, ...] = C_GRID,
                 per_element: bool = True):
        if getattr(bank, "embeddings", None) is None:
            raise InputError("ForceErrorModel needs a reference bank with raw embeddings")
        if not 0 < quantile < 1:
            raise InputError(f"quantile must be in (0, 1), got {quantile}")
        bad = set(terms) - set(TERMS)
        if bad or not terms:
            raise InputError(f"terms must be a non-empty subset of {TERMS}, got {terms}")
        self.bank = bank
        self.k = int(k)
        self.quantile = float(quantile)
        self.terms = tuple(t for t in TERMS if t in terms)
        self.c_grid = tuple(float(c) for c in c_grid)
        self.per_element = bool(per_element)
        self.offsets_: dict[int, float] = {}  # per-element intercept shift (log eV/Å)
        self._ref = np.asarray(bank.embeddings, dtype=np.float64)
        self._pool = {int(z): self._ref[bank.numbers == z] for z in np.unique(bank.numbers)}
        self.scales_: dict[int, float] | None = None
        self.pooled_scale_: float | None = None
        self.coef_: np.ndarray | None = None  # (a, b, d); unused terms 0
        self.c_: float = 0.1
        self.provenance_: dict[str, Any] = {}
        self.unknown_elements_: list[int] = []  # not in the bank: pooled distance scale
        self.uncalibrated_elements_: list[int] = []  # not in the fit: largest element offset

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

    def _design(self, fnorm: np.ndarray, u: np.ndarray, c: float,
                numbers: np.ndarray | None = None,
                elements: tuple[int, ...] = ()) -> np.ndarray:
        cols = [(numbers == z).astype(np.float64) for z in elements[1:]]
        if "force" in self.terms:
            cols.append(np.log(fnorm + c))
        if "distance" in self.terms:
            cols.append(u)
        return np.stack(cols, axis=1)

    # -- fit / predict --------------------------------------------------------------------
    def fit(self, features: np.ndarray, forces: np.ndarray, dft_forces: np.ndarray,
            numbers: np.ndarray, structure_index: np.ndarray, *,
            provenance: dict[str, Any] | None = None, seed: int = 0) -> ForceErrorModel:
        """Fit on labelled atoms. features (N, D); forces, dft_forces (N, 3) eV/Å (model and
        DFT); numbers (N,); structure_index (N,) which structure each atom is in. Returns self.
        """
        from sklearn.linear_model import QuantileRegressor

        f = np.asarray(forces, dtype=np.float64)
        g = np.asarray(dft_forces, dtype=np.float64)
        n = len(np.asarray(numbers))
        if f.shape != (n, 3) or g.shape != (n, 3):
            raise InputError(f"forces {f.shape} and dft_forces {g.shape} must both be ({n}, 3) "
                             f"for {n} atoms")
        sidx = np.asarray(structure_index)
        if len(sidx) != n:
            raise InputError(f"structure_index has {len(sidx)} entries for {n} atoms")
        n_struct = len(np.unique(sidx))
        if n_struct < MIN_STRUCTURES:
            raise InputError(f"need DFT forces of at least {MIN_STRUCTURES} structures to "
                             f"calibrate, got {n_struct}")
        u = self.distance_term(features, numbers)
        fnorm = np.linalg.norm(f, axis=1)
        y = np.log(np.maximum(np.linalg.norm(f - g, axis=1), 1e-6))
        rng = np.random.default_rng(seed)
        sub = (rng.choice(n, MAX_FIT_ATOMS, replace=False) if n > MAX_FIT_ATOMS
               else np.arange(n))
        best = None
        zs = np.asarray(numbers)
        elements = (tuple(int(z) for z in np.unique(zs[sub])) if self.per_element else ())
        for c in (self.c_grid if "force" in self.terms else (self.c_grid[0],)):
            X = self._design(fnorm[sub], u[sub], c, zs[sub], elements)
            reg = QuantileRegressor(quantile=self.quantile, alpha=0.0, solver="highs")
            reg.fit(X, y[sub])
            loss = _pinball(y[sub] - reg.predict(X), self.quantile)
            if best is None or loss < best[0]:
                best = (loss, c, reg)
        _, c, reg = best
        coef = np.zeros(3)
        coef[0] = reg.intercept_
        j = max(len(elements) - 1, 0)
        self.offsets_ = ({elements[0]: 0.0, **{z: float(reg.coef_[i])
                                                for i, z in enumerate(elements[1:])}}
                         if elements else {})
        for i, t in ((1, "force"), (2, "distance")):
            if t in self.terms:
                coef[i] = reg.coef_[j]
                j += 1
        self.coef_, self.c_ = coef, float(c)
        self.provenance_ = {**(provenance or {}), "n_structures": int(n_struct),
                            "n_atoms": int(n), "n_atoms_fit": len(sub),
                            "bank_data_hash": self.bank.data_hash,
                            "bank_model": self.bank.model}
        return self

    def predict(self, features: np.ndarray, forces: np.ndarray,
                numbers: np.ndarray) -> np.ndarray:
        """(N,) predicted force-error norm sigma_i in eV/Å. features (N, D); forces (N, 3)
        eV/Å of the model; numbers (N,)."""
        if self.coef_ is None:
            raise InputError("ForceErrorModel is not fitted: call fit() or load a state")
        f = np.asarray(forces, dtype=np.float64)
        if f.shape != (len(np.asarray(numbers)), 3):
            raise InputError(f"forces have shape {f.shape}, expected ({len(numbers)}, 3)")
        a, b, d = self.coef_
        out = np.full(len(f), a)
        if self.offsets_:
            worst = max(self.offsets_.values())
            for z in set(np.unique(numbers).tolist()) - set(self.offsets_):
                if int(z) not in self.uncalibrated_elements_:
                    self.uncalibrated_elements_.append(int(z))
            out += np.array([self.offsets_.get(int(z), worst) for z in numbers])
        if b:
            out += b * np.log(np.linalg.norm(f, axis=1) + self.c_)
        if d:
            out += d * self.distance_term(features, numbers)
        return np.exp(out)

    # -- state ------------------------------------------------------------------------------
    def get_state(self) -> dict[str, np.ndarray]:
        """Plain arrays (npz-ready): coefficients, c, k, quantile, terms, bank scales and
        provenance (JSON). The bank itself is not stored."""
        if self.coef_ is None:
            raise InputError("ForceErrorModel is not fitted")
        zs = sorted(self.scales_)
        return {"format": np.array(FORMAT), "coef": self.coef_.copy(), "c": np.array(self.c_),
                "k": np.array(self.k), "quantile": np.array(self.quantile),
                "terms": np.array(",".join(self.terms)),
                "scale_numbers": np.array(zs, dtype=np.int64),
                "scale_values": np.array([self.scales_[z] for z in zs]),
                "pooled_scale": np.array(self.pooled_scale_),
                "offset_numbers": np.array(sorted(self.offsets_), dtype=np.int64),
                "offset_values": np.array([self.offsets_[z] for z in sorted(self.offsets_)],
                                          dtype=np.float64),
                "provenance": np.array(json.dumps(self.provenance_, sort_keys=True))}

    @classmethod
    def from_state(cls, state: dict[str, Any], bank: Any) -> ForceErrorModel:
        """Rebuild from :meth:`get_state` with the bank it was fitted against (refused when
        the bank's data hash differs)."""
        if str(state.get("format", "")) != FORMAT:
            raise InputError(f"not a platoscope force-error model (format "
                             f"{state.get('format')!r}, expected {FORMAT!r})")
        prov = json.loads(str(state["provenance"]))
        if prov.get("bank_data_hash") and prov["bank_data_hash"] != bank.data_hash:
            raise ConfigError(f"force-error model was fitted against reference bank "
                              f"{prov['bank_data_hash'][:12]} ({prov.get('bank_model')}), not "
                              f"{bank.data_hash[:12]} ({bank.model})")
        m = cls(bank, k=int(state["k"]), quantile=float(state["quantile"]),
                terms=tuple(str(state["terms"]).split(",")))
        m.coef_ = np.asarray(state["coef"], dtype=np.float64)
        m.c_ = float(state["c"])
        m.scales_ = {int(z): float(v) for z, v in zip(state["scale_numbers"],
                                                      state["scale_values"], strict=True)}
        m.pooled_scale_ = float(state["pooled_scale"])
        m.offsets_ = {int(z): float(v) for z, v in zip(state["offset_numbers"],
                                                       state["offset_values"], strict=True)}
        m.per_element = bool(m.offsets_)
        m.provenance_ = prov
        return m

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez(path, **self.get_state())
        return path

    @classmethod
    def load(cls, path: str | Path, bank: Any) -> ForceErrorModel:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"force-error model file {path} does not exist")
        with np.load(path, allow_pickle=False) as z:
            return cls.from_state({k: z[k] for k in z.files}, bank)

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
        """The shipped calibration of ``backend`` (CHGNet 0.3.0 only, fitted on mlearn Li/Si
        training); any other model: ConfigError naming ``platoscope calibrate``."""
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
    return f


def calibrate(backend: Any, bank: Any, structures: list, *, dft_forces_key: str = "forces",
              holdout: float = 0.2, seed: int = 0, names: list[str] | None = None,
              **kwargs: Any) -> tuple[ForceErrorModel, dict[str, Any]]:
    """Fit a ForceErrorModel of ``backend`` on DFT-labelled ``structures`` (list of Atoms).

    One forward pass per structure (features and forces). Coverage of ``|ΔF| <= sigma`` is
    first measured on a held-out ``holdout`` fraction of the structures (fit on the rest);
    the returned model is then refitted on all. Returns (model, report)."""
    if len(structures) < 2 * MIN_STRUCTURES:
        raise InputError(f"need at least {2 * MIN_STRUCTURES} DFT-labelled structures to "
                         f"calibrate and check on held-out ones, got {len(structures)}")
    names = names or [f"structure {i}" for i in range(len(structures))]
    X, F, G, Z, S = [], [], [], [], []
    for i, atoms in enumerate(structures):
        g = dft_forces_of(atoms, dft_forces_key, names[i])
        a = atoms.copy()
        a.calc = None
        res, feats = backend.compute(a, ["energy", "forces"])
        X.append(np.asarray(feats, dtype=np.float64))
        F.append(np.asarray(res["forces"], dtype=np.float64))
        G.append(g)
        Z.append(atoms.numbers)
        S.append(np.full(len(atoms), i))
    X, F, G, Z, S = (np.concatenate(v) for v in (X, F, G, Z, S))
    rng = np.random.default_rng(seed)
    n_held = max(1, round(holdout * len(structures)))
    held_ids = rng.choice(len(structures), n_held, replace=False)
    held = np.isin(S, held_ids)
    prov = backend_provenance(backend)
    m = ForceErrorModel(bank, **kwargs).fit(X[~held], F[~held], G[~held], Z[~held], S[~held])
    sig = m.predict(X[held], F[held], Z[held])
    err = np.linalg.norm(F[held] - G[held], axis=1)
    report = {"held_out_structures": int(n_held), "held_out_atoms": int(held.sum()),
              "held_out_coverage_1sigma": float(np.mean(err <= sig)),
              "held_out_coverage_2sigma": float(np.mean(err <= 2 * sig)),
              "target_quantile": m.quantile}
    final = ForceErrorModel(bank, **kwargs).fit(X, F, G, Z, S, provenance={
        **prov, "held_out_check": report})
    return final, report
