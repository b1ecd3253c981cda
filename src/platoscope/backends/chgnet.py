"""CHGNet backend (chgnet >= 0.4.2): weights ship inside the wheel, so it works offline.

Layers: ``atom_fea`` (default, the paper's choice: atom features after the second-to-last
atom convolution, what ``predict_graph(return_atom_feas=True)`` returns) and ``conv<i>``, the
output of atom convolution ``i`` (``conv<n_conv-2>`` equals ``atom_fea``). All are 64-d.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import all_changes

from platoscope.backends.base import Backend, LayerSpec
from platoscope.errors import InvalidStructureError, UnknownBackendError

MODELS = ("0.3.0", "0.2.0", "r2scan")
N_ELEMENTS = 94  # CHGNet's atom embedding covers H..Pu


def _first(_inputs: Any, output: Any) -> torch.Tensor:
    return output


class CHGNetBackend(Backend):
    family = "chgnet"
    default_layer = "atom_fea"
    prefetch = 1  # batched graphs: the forward pass overlaps the caller's projection and writes

    def __init__(self, model: str = "0.3.0", *, layer: str | None = None, device: str = "cpu",
                 calc: Any = None):
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        # CHGNet prints on load and warns on every call about an internal tensor conversion
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad",
                                category=UserWarning)
        if calc is None:
            if model not in MODELS:
                raise UnknownBackendError(
                    f"unknown CHGNet model {model!r}; valid: "
                    + ", ".join("chgnet:" + m for m in MODELS)
                )
            with contextlib.redirect_stdout(io.StringIO()):
                net = CHGNet.load(model_name=model, use_device=device, verbose=False)
                calc = CHGNetCalculator(model=net, use_device=device, on_isolated_atoms="error")
        net = calc.model
        name = getattr(net, "version", None) or model
        weights = _weights_path(name)
        super().__init__(calc, model=name, weights_path=weights, layer=layer)

    @property
    def torch_model(self) -> torch.nn.Module:
        return self.calc.model

    @property
    def n_conv(self) -> int:
        return len(self.calc.model.atom_conv_layers)

    def available_layers(self) -> list[str]:
        return ["atom_fea", *(f"conv{i}" for i in range(self.n_conv))]

    def layer_spec(self, layer: str) -> LayerSpec:
        i = self.n_conv - 2 if layer == "atom_fea" else int(layer.removeprefix("conv"))
        return LayerSpec(module=f"atom_conv_layers.{i}", extract=_first,
                         description=f"output of atom convolution {i} of {self.n_conv}")

    @property
    def supported_numbers(self) -> frozenset[int]:
        return frozenset(range(1, N_ELEMENTS + 1))

    def check_atoms(self, atoms: Atoms) -> None:
        super().check_atoms(atoms)
        # CHGNet builds its graph from a pymatgen Structure, which needs three lattice vectors
        # (a cell-less .xyz molecule ended in numpy's "Singular matrix")
        if abs(float(np.linalg.det(atoms.cell.array))) < 1e-6:
            raise InvalidStructureError(
                f"{self.spec} needs a 3D cell and this structure's cell has zero volume (a "
                "molecule from a file without a cell?): give it a box, e.g. "
                "atoms.center(vacuum=10.0), with a vacuum larger than the model's cutoff")

    def compute(self, atoms: Atoms, properties: Sequence[str] = ("energy", "forces"),
                system_changes: Sequence[str] = tuple(all_changes)
                ) -> tuple[dict[str, Any], np.ndarray]:
        try:
            return super().compute(atoms, properties, system_changes)
        except ValueError as err:
            if "isolated atom" in str(err):
                raise InvalidStructureError(_isolated_message(self, atoms)) from err
            raise

    def embed(self, structures: Sequence[Atoms], *, batch_size: int = 16,
              progress: bool = False) -> list[np.ndarray]:
        """Batched: graphs are built per structure, the model runs ``batch_size`` at a time."""
        from pymatgen.io.ase import AseAtomsAdaptor
        from tqdm.auto import tqdm

        net = self.calc.model
        out: list[np.ndarray] = []
        bar = tqdm(total=len(structures), disable=not progress, desc=f"embed {self.spec}",
                   unit="struct")
        for start in range(0, len(structures), batch_size):
            chunk = structures[start:start + batch_size]
            graphs = []
            for j, atoms in enumerate(chunk):
                i = start + j
                try:
                    self.check_atoms(atoms)
                    graphs.append(net.graph_converter(AseAtomsAdaptor.get_structure(atoms),
                                                      graph_id=str(i)))
                except ValueError as err:
                    msg = (_isolated_message(self, atoms) if "isolated atom" in str(err)
                           else str(err))
                    raise type(err)(f"structure {i}: {msg}") from err
            with self.tap() as t, torch.no_grad():
                net.predict_graph([g.to(self.calc.device) for g in graphs], task="e",
                                  batch_size=len(graphs))
            feats = t.features()
            sizes = [len(a) for a in chunk]
            out.extend(np.split(feats, np.cumsum(sizes)[:-1]))
            bar.update(len(chunk))
        bar.close()
        return out


def _isolated_message(backend: CHGNetBackend, atoms: Atoms) -> str:
    from ase.neighborlist import neighbor_list

    cutoff = float(backend.calc.model.graph_converter.atom_graph_cutoff)
    i = neighbor_list("i", atoms, cutoff)
    lonely = sorted(set(range(len(atoms))) - set(i.tolist()))
    symbols = ", ".join(atoms[lonely[:10]].get_chemical_symbols())
    return (f"{backend.spec}: atom(s) {lonely[:10]} ({symbols}) have no neighbour "
            f"within CHGNet's {cutoff:g} Å cutoff, which CHGNet cannot embed; "
            "check the cell (too dilute or a unit mix-up?)")


def _weights_path(model: str) -> str | None:
    import chgnet

    root = Path(chgnet.__file__).parent / "pretrained" / model
    files = sorted(root.glob("*.pth.tar")) if root.is_dir() else []
    return str(files[0]) if files else None


def _register() -> None:
    from platoscope.backends import BackendFamily, register_backend

    register_backend(BackendFamily(
        name="chgnet", package="chgnet", extra="chgnet",
        factory=lambda rest, layer, device: CHGNetBackend(rest or "0.3.0", layer=layer,
                                                          device=device),
        spec_help="chgnet | chgnet:0.3.0 | chgnet:0.2.0 | chgnet:r2scan          "
                  "(weights ship with chgnet)",
        recognises=lambda calc: type(calc).__module__.startswith("chgnet"),
        from_calculator=lambda calc, layer: CHGNetBackend(layer=layer, calc=calc)))


_register()
