"""The common backend interface: an ASE calculator plus per-atom features from its own forward pass.

A backend never runs the model twice. It arms a forward hook on one submodule of the model,
lets the bare ASE calculator do its ordinary work (energy, forces, stress), and reads the
tensor the hook captured on the way. Results therefore equal the bare calculator's exactly.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from platoscope.checks import nonfinite_rows
from platoscope.errors import InputError, InvalidStructureError, UnsupportedElementError
from platoscope.provenance import package_versions

Extractor = Callable[[Any, Any], torch.Tensor]
"""Maps a hooked module's (inputs, output) to a (n_atoms, D) tensor."""

_FORWARD_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = (
    weakref.WeakKeyDictionary())
_FORWARD_LOCKS_GUARD = threading.Lock()


def forward_lock(model: torch.nn.Module) -> threading.RLock:
    """The lock that serialises hooked forward passes of ``model`` across threads (one per
    torch module, shared by every backend wrapping it). A feature hook collects whatever
    passes through its module, so two threads running the same model at once would mix their
    rows; :meth:`Backend.tap` holds this lock while its hook is armed."""
    with _FORWARD_LOCKS_GUARD:
        lock = _FORWARD_LOCKS.get(model)
        if lock is None:
            lock = _FORWARD_LOCKS[model] = threading.RLock()
        return lock


@dataclass(frozen=True)
class LayerSpec:
    """Where features are read: a submodule, whether before or after it runs, and a column slice."""

    module: str
    extract: Extractor
    pre: bool = False
    columns: slice | np.ndarray | None = None
    description: str = ""


class StopForward(Exception):
    """Raised by a FeatureTap with ``stop=True`` once it has the features: the rest of the
    forward pass (later layers, the force backward pass) is skipped."""


class FeatureTap:
    """Context manager that collects a submodule's features during forward passes.

    stop: raise :class:`StopForward` right after capturing (embedding only: the caller
    catches it; the model's outputs of that call are then not computed).
    """

    def __init__(self, module: torch.nn.Module, spec: LayerSpec, *, stop: bool = False):
        self.module = module
        self.spec = spec
        self.stop = stop
        self.chunks: list[torch.Tensor] = []
        self._handle: Any = None

    def _store(self, inputs: Any, output: Any) -> None:
        t = self.spec.extract(inputs, output)
        if self.spec.columns is not None:
            t = t[:, self.spec.columns]
        self.chunks.append(t.detach().to("cpu", copy=True))
        if self.stop:
            raise StopForward

    def __enter__(self) -> FeatureTap:
        if self.spec.pre:
            self._handle = self.module.register_forward_pre_hook(
                lambda _m, inputs: self._store(inputs, None)
            )
        else:
            self._handle = self.module.register_forward_hook(
                lambda _m, inputs, output: self._store(inputs, output)
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def features(self) -> np.ndarray:
        """All captured rows, concatenated over hook calls, as float64 (n_rows, D)."""
        if not self.chunks:
            raise RuntimeError(
                f"the feature hook on {self.spec.module!r} never fired: the model did not run "
                "through that layer"
            )
        return torch.cat(self.chunks, dim=0).to(torch.float64).numpy()


def invariant_columns(irreps: Any) -> np.ndarray:
    """Column indices of the scalar (0e) channels of an e3nn ``Irreps`` layout."""
    cols: list[int] = []
    start = 0
    for mul, ir in irreps:
        width = mul * ir.dim
        if ir.l == 0 and ir.p == 1:
            cols.extend(range(start, start + width))
        start += width
    return np.asarray(cols, dtype=np.int64)


def validate_atoms(atoms: Atoms, *, model: str, supported: frozenset[int] | None) -> None:
    """Raise a clear error for inputs no model should see: empty, non-finite, unknown elements."""
    if not isinstance(atoms, Atoms):
        raise InvalidStructureError(f"expected ase.Atoms, got {type(atoms).__name__}")
    if len(atoms) == 0:
        raise InvalidStructureError("empty Atoms: there are no atoms to compute")
    pos = atoms.get_positions()
    bad = nonfinite_rows(pos)
    if bad.size:
        raise InvalidStructureError(
            f"non-finite (NaN or inf) positions at atom indices {bad[:10].tolist()}"
            + (" ..." if bad.size > 10 else "")
        )
    if atoms.pbc.any() and not np.isfinite(atoms.cell.array).all():
        raise InvalidStructureError("non-finite (NaN or inf) cell")
    require_elements(atoms, model=model, supported=supported)


def _closest_pair(atoms: Atoms) -> str:
    """'; the closest atoms, i and j, are d Å apart' (minimum image), to explain a model's
    NaN output; empty for fewer than two atoms."""
    if len(atoms) < 2:
        return ""
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    np.fill_diagonal(d, np.inf)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    return (f"; the closest atoms, {min(i, j)} and {max(i, j)}, are {d[i, j]:.3g} Å apart"
            + (" (overlapping atoms?)" if d[i, j] < 0.5 else ""))


def require_elements(atoms: Atoms, *, model: str, supported: frozenset[int] | None,
                     role: str = "model", hint: str = "") -> None:
    """The one element check: UnsupportedElementError naming the element(s) of ``atoms`` that
    ``model`` has no parameters for. role: who the model is to the user (``"model"``, or
    ``"bias monitor: the second model"``); hint: what to do about it."""
    if supported is None:
        return
    missing = sorted(set(np.asarray(atoms.numbers).tolist()) - set(supported))
    if missing:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in missing)
        raise UnsupportedElementError(
            f"{role} {model!r} has no parameters for element(s) {names} of "
            f"{atoms.get_chemical_formula()}; it covers {len(supported)} elements: "
            f"{format_elements(supported)}{hint}")


def format_elements(numbers: frozenset[int] | Sequence[int]) -> str:
    zs = sorted(numbers)
    if len(zs) > 20:
        return " ".join(chemical_symbols[z] for z in zs[:10]) + " ... " + " ".join(
            chemical_symbols[z] for z in zs[-5:]
        )
    return " ".join(chemical_symbols[z] for z in zs)


@dataclass
class BackendProvenance:
    """What made a set of features: enough to reproduce them or refuse to mix them."""

    backend: str
    model: str
    weights_sha256: str | None
    layer: str
    feature_dim: int
    device: str = "cpu"
    versions: dict[str, str] = field(default_factory=package_versions)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model,
            "weights_sha256": self.weights_sha256,
            "layer": self.layer,
            "feature_dim": self.feature_dim,
            "device": self.device,
            "versions": dict(self.versions),
            **({"extra": self.extra} if self.extra else {}),
        }


class Backend(ABC):
    """One MLIP behind a small interface.

    Subclasses build the bare ASE calculator, name their layers, and say which elements the
    model covers. ``compute`` returns the calculator's own results plus per-atom features
    ``(N, D)`` float64 from the same forward pass.
    """

    family: str = ""
    default_layer: str = ""
    prefetch: int = 0
    """Chunks the in-process executor may embed ahead in a background thread (0: none), used
    when torch leaves a CPU core free (:func:`platoscope.distributed.default_prefetch`).
    CHGNet and SevenNet set 1: with 1 torch thread on an idle 2-core machine their forward
    pass overlaps the main thread's projection, top-k and writes (docs/distributed.md,
    "Throughput"). 0 for backends where that was not measured."""

    def __init__(self, calc: Calculator, *, model: str, weights_path: str | None,
                 layer: str | None = None):
        self.calc = calc
        self.model = model
        self.weights_path = weights_path
        self.layer = layer or self.default_layer
        layers = self.available_layers()
        if self.layer not in layers:
            raise InputError(
                f"unknown layer {self.layer!r} for {self.spec}; available: {', '.join(layers)}"
            )
        self._layer_spec = self.layer_spec(self.layer)
        self._feature_dim: int | None = None

    # -- what subclasses provide -------------------------------------------------------------
    @property
    @abstractmethod
    def torch_model(self) -> torch.nn.Module:
        """The torch module that the calculator runs."""

    @abstractmethod
    def available_layers(self) -> list[str]:
        """Names accepted for ``layer``."""

    @abstractmethod
    def layer_spec(self, layer: str) -> LayerSpec:
        """Where and how to read the features of ``layer``."""

    @property
    @abstractmethod
    def supported_numbers(self) -> frozenset[int] | None:
        """Atomic numbers the model has parameters for (None: unknown, do not check)."""

    def weights_sha256(self) -> str | None:
        from platoscope.provenance import sha256_file

        return sha256_file(self.weights_path) if self.weights_path else None

    # -- shared behaviour ----------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """The spec string that rebuilds this backend, e.g. ``'chgnet:0.3.0'``."""
        return f"{self.family}:{self.model}"

    @property
    def implemented_properties(self) -> list[str]:
        return list(getattr(self.calc, "implemented_properties", ["energy", "forces"]))

    def check_atoms(self, atoms: Atoms) -> None:
        validate_atoms(atoms, model=self.spec, supported=self.supported_numbers)

    @property
    def forward_lock(self) -> threading.RLock:
        """Held while a feature hook of this model is armed (:func:`forward_lock`): a thread
        that embeds in the background (``Executor`` prefetch) and a monitor that runs the
        same model in the caller's thread take turns instead of mixing features."""
        return forward_lock(self.torch_model)

    @contextmanager
    def tap(self, *, stop: bool = False) -> Iterator[FeatureTap]:
        """Arm the feature hook for the duration of the block (``stop``: see FeatureTap),
        holding :attr:`forward_lock`."""
        module = self.torch_model.get_submodule(self._layer_spec.module)
        with self.forward_lock, FeatureTap(module, self._layer_spec, stop=stop) as t:
            yield t

    def compute(self, atoms: Atoms, properties: Sequence[str] = ("energy", "forces"),
                system_changes: Sequence[str] = tuple(all_changes)
                ) -> tuple[dict[str, Any], np.ndarray]:
        """One forward pass: (the bare calculator's results, per-atom features (N, D) float64)."""
        self.check_atoms(atoms)
        with self.tap() as t:
            self.calc.calculate(atoms, list(properties), list(system_changes))
            results = dict(self.calc.results)  # under the lock: the calculator is shared
        feats = t.features()[: len(atoms)]
        self._check_rows(feats, len(atoms))
        bad = nonfinite_rows(feats)
        if bad.size:
            raise InvalidStructureError(f"{self.spec} returned NaN or inf features for atoms "
                                        f"{bad[:10].tolist()}{_closest_pair(atoms)}")
        return results, feats

    def embed(self, structures: Sequence[Atoms], *, batch_size: int = 16,
              progress: bool = False) -> list[np.ndarray]:
        """Per-atom features of many structures, one (N_i, D) array each.

        The default runs the calculator structure by structure; backends that can batch
        override this. Errors name the structure index that failed.
        """
        from tqdm.auto import tqdm

        out = []
        for i, atoms in enumerate(tqdm(structures, disable=not progress, desc=f"embed {self.spec}",
                                       unit="struct")):
            try:
                out.append(self.compute(atoms, ("energy",))[1])
            except Exception as err:
                raise type(err)(f"structure {i}: {err}") from err
        return out

    def _check_rows(self, feats: np.ndarray, n: int) -> None:
        if feats.shape[0] != n:
            raise RuntimeError(
                f"{self.spec}: layer {self.layer!r} gave {feats.shape[0]} rows for {n} atoms"
            )
        self._feature_dim = feats.shape[1]

    @property
    def feature_dim(self) -> int:
        """Width D of the features of the chosen layer (runs a tiny probe if not yet known)."""
        if self._feature_dim is None:
            self._feature_dim = self._probe_dim()
        return self._feature_dim

    def _probe_dim(self) -> int:
        from ase.build import bulk

        zs = sorted(self.supported_numbers or {14})
        z = 14 if 14 in zs else zs[0]
        atoms = bulk("X", "sc", a=2.6)
        atoms.numbers = [z]
        return self.compute(atoms.repeat(2), ("energy",))[1].shape[1]

    def provenance(self) -> BackendProvenance:
        return BackendProvenance(
            backend=self.family,
            model=self.spec,
            weights_sha256=self.weights_sha256(),
            layer=self.layer,
            feature_dim=self.feature_dim,
            device=self.device,
            extra=self.provenance_extra(),
        )

    def provenance_extra(self) -> dict[str, Any]:
        return {}

    @property
    def device(self) -> str:
        """Torch device the model's weights are on (``cpu``, ``cuda:0`` ...): recorded in
        provenance, not in :attr:`fingerprint` (the same weights give the same features within
        float noise on any device)."""
        param = next(iter(self.torch_model.parameters()), None)
        return str(param.device) if param is not None else "cpu"

    @property
    def fingerprint(self) -> str:
        """Hash of what determines the features: model id, weight bytes, layer."""
        key = json.dumps([self.spec, self.weights_sha256(), self.layer, self.provenance_extra()],
                         sort_keys=True, default=str)
        return hashlib.sha256(key.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, layer={self.layer!r})"


def check_elements(backend: Any, atoms: Atoms, *, monitor: str = "bias") -> None:
    """Raise UnsupportedElementError naming the element(s) of ``atoms`` that the second
    model ``backend`` has no parameters for, and the model; ``monitor`` names the caller."""
    require_elements(atoms, model=backend.spec, supported=backend.supported_numbers,
                     role=f"{monitor} monitor: the second model",
                     hint="; choose a second model that covers every element of the structure")
