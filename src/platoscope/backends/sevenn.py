"""SevenNet backend (sevenn 0.13): 7net-0 (two releases), 7net-l3i5 and 7net-mf-0 ship offline.

Layers: ``<i>_equivariant_gate``, the invariant (0e) part of interaction block ``i``'s output,
sliced by the irreps the block declares, and ``pre_readout`` (the paper's choice: node features
entering ``reduce_input_to_hidden``). The default, ``1_equivariant_gate`` (second block), is the
layer whose coordinates agree best with CHGNet's in the shared space (docs/shared_space.md).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import all_changes

from platoscope.backends.base import Backend, LayerSpec, StopForward, invariant_columns
from platoscope.errors import BackendUnavailableError, UnknownBackendError

OFFLINE_MODELS = ("7net-0", "7net-0_22May2024", "7net-0_11Jul2024", "7net-l3i5", "7net-mf-0")
DOWNLOAD_MODELS = ("7net-omat", "7net-mf-ompa", "7net-omni", "7net-omni-i8", "7net-omni-i12")


class IsolatedAtomWarning(UserWarning):
    """SevenNet embedded atoms that have no neighbour within its cutoff."""


class SevenNetBackend(Backend):
    family = "sevenn"
    prefetch = 1  # the forward pass overlaps the main thread's projection and writes
    default_layer = "1_equivariant_gate"

    def __init__(self, model: str = "7net-0", *, layer: str | None = None, device: str = "cpu",
                 calc: Any = None, modal: str | None = None):
        from sevenn.calculator import SevenNetCalculator

        weights = None
        if calc is None:
            weights = resolve_checkpoint(model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    calc = SevenNetCalculator(weights, device=device, modal=modal)
                except ValueError as err:  # a multi-fidelity model without (or a wrong) modal
                    if "modal" not in str(err):
                        raise
                    raise UnknownBackendError(
                        f"sevenn:{model}{'@' + modal if modal else ''}: {err}; give the modal "
                        f"after @, e.g. sevenn:{model}@PBE") from None
            if modal and not calc.modal:  # was dropped without a word
                raise UnknownBackendError(f"sevenn:{model} has no modalities: leave out "
                                          f"@{modal}")
        self.modal = calc.modal
        name = model if not self.modal else f"{model}@{self.modal}"
        self._isolated: list[int] = []
        super().__init__(calc, model=name, weights_path=weights, layer=layer)

    @property
    def torch_model(self) -> torch.nn.Module:
        return self.calc.model

    def available_layers(self) -> list[str]:
        gates = [k for k in self.calc.model._modules if k.endswith("_equivariant_gate")]
        return ["pre_readout", *gates]

    def layer_spec(self, layer: str) -> LayerSpec:
        if layer == "pre_readout":
            return LayerSpec(module="reduce_input_to_hidden", pre=True,
                             extract=self._from_inputs,
                             description="node features entering reduce_input_to_hidden")
        gate = self.calc.model.get_submodule(layer)
        cols = invariant_columns(gate.gate.irreps_out)
        return LayerSpec(module=layer, extract=self._from_output, columns=cols,
                         description=f"0e channels of {layer} output ({gate.gate.irreps_out})")

    def _note_isolated(self, data: Any) -> None:
        n = int(data["num_atoms"]) if "num_atoms" in data else data["x"].shape[0]
        seen = torch.zeros(n, dtype=torch.bool)
        seen[data["edge_index"][0].cpu()] = True
        self._isolated = torch.nonzero(~seen).flatten().tolist()

    def _from_inputs(self, inputs: Any, _output: Any) -> torch.Tensor:
        data = inputs[0]
        self._note_isolated(data)
        return data["x"]

    def _from_output(self, _inputs: Any, output: Any) -> torch.Tensor:
        self._note_isolated(output)
        return output["x"]

    @property
    def supported_numbers(self) -> frozenset[int]:
        return frozenset(int(z) for z in self.calc.type_map)

    def compute(self, atoms: Atoms, properties: Sequence[str] = ("energy", "forces"),
                system_changes: Sequence[str] = tuple(all_changes)
                ) -> tuple[dict[str, Any], np.ndarray]:
        with self.forward_lock:  # _isolated is set by the hook: read it before another pass
            results, feats = super().compute(atoms, properties, system_changes)
            self._warn_isolated()
        return results, feats

    def features(self, atoms: Atoms) -> np.ndarray:
        """(N, D) float64 features of ``atoms`` at the chosen layer, without energy or forces:
        the model runs only up to that layer, without autograd (the same numbers as
        :meth:`compute` gives; for building reference banks)."""
        from sevenn import _keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        self.check_atoms(atoms)
        data = AtomGraphData.from_numpy_dict(
            unlabeled_atoms_to_graph(atoms, self.calc.cutoff, with_shift=False))
        if self.calc.modal:
            data[KEY.DATA_MODALITY] = self.calc.modal
        data.to(self.calc.device)
        with self.forward_lock:  # _isolated is set by the hook: read it before another pass
            with self.tap(stop=True) as t, torch.no_grad():
                try:
                    self.calc.model(data)
                except StopForward:
                    pass
            feats = t.features()[: len(atoms)]
            self._check_rows(feats, len(atoms))
            self._warn_isolated()
        return feats

    def embed(self, structures: Sequence[Atoms], *, batch_size: int = 16,
              progress: bool = False) -> list[np.ndarray]:
        """Per-atom features (N_i, D) of each structure via :meth:`features` (no energy,
        no force backward pass, no layer after the chosen one). Errors name the structure."""
        from tqdm.auto import tqdm

        out = []
        for i, atoms in enumerate(tqdm(structures, disable=not progress,
                                       desc=f"embed {self.spec}", unit="struct")):
            try:
                out.append(self.features(atoms))
            except Exception as err:
                raise type(err)(f"structure {i}: {err}") from err
        return out

    def _warn_isolated(self) -> None:
        if self._isolated:
            warnings.warn(
                f"{self.spec}: atom(s) {self._isolated[:10]} have no neighbour within "
                f"{self.calc.cutoff:g} Å; SevenNet embeds them as bare elements, so their "
                "coordinates say nothing about an environment",
                IsolatedAtomWarning, stacklevel=3)

    def provenance_extra(self) -> dict[str, Any]:
        return {"modal": self.modal} if self.modal else {}


def resolve_checkpoint(model: str) -> str:
    """Local checkpoint path of a SevenNet model name or file, never downloading."""
    if os.path.isfile(model):
        return model
    from sevenn.util import pretrained_name_to_path

    low = model.lower()
    if low in {m.lower() for m in DOWNLOAD_MODELS}:
        from sevenn import _const

        # pretrained_name_to_path downloads when the file is absent; look first.
        key = {"7net-omat": "SEVENNET_omat", "7net-mf-ompa": "SEVENNET_MF_ompa",
               "7net-omni": "SEVENNET_omni", "7net-omni-i8": "SEVENNET_omni_i8",
               "7net-omni-i12": "SEVENNET_omni_i12"}[low]
        path = getattr(_const, key, None)
        cached = [path, path.replace(_const._prefix, os.path.expanduser("~/.cache/sevennet"))
                  ] if path else []
        for p in cached:
            if p and os.path.exists(p):
                return p
        raise BackendUnavailableError(
            f"SevenNet model {model!r} is not shipped with sevenn and is downloaded at run time, "
            "which needs internet. Download the checkpoint elsewhere and pass its path: "
            "'sevenn:/path/to/checkpoint.pth'.")
    try:
        return pretrained_name_to_path(model)
    except ValueError:
        raise UnknownBackendError(
            f"unknown SevenNet model {model!r}; offline: "
            + ", ".join(f"sevenn:{m}" for m in OFFLINE_MODELS)
            + " (7net-mf-0 needs a modal: sevenn:7net-mf-0@PBE or @R2SCAN); "
            + "or sevenn:/path/to/checkpoint.pth") from None


def _sevenn_factory(rest: str, layer: str | None, device: str) -> SevenNetBackend:
    name, _, modal = (rest or "7net-0").partition("@")
    return SevenNetBackend(name, layer=layer, device=device, modal=modal or None)


def _sevenn_from_calculator(calc: Any, layer: str | None) -> SevenNetBackend:
    model = getattr(calc, "sevennet_config", None) or {}
    return SevenNetBackend(str(model.get("model_name", "calculator")), layer=layer, calc=calc)


def _register() -> None:
    from platoscope.backends import BackendFamily, register_backend

    register_backend(BackendFamily(
        name="sevenn", package="sevenn", extra="sevenn", factory=_sevenn_factory,
        spec_help="sevenn:7net-0 | sevenn:7net-0_22May2024 | sevenn:7net-l3i5     "
                  "(weights ship with sevenn)\n"
                  "sevenn:7net-mf-0@PBE | sevenn:7net-mf-0@R2SCAN                 "
                  "(modal after @)\nsevenn:/path/to/checkpoint.pth",
        recognises=lambda calc: (type(calc).__module__.startswith("sevenn")
                                 and type(calc).__name__ == "SevenNetCalculator"),
        from_calculator=_sevenn_from_calculator,
        install_hint=(" mace-torch and sevenn need different e3nn versions, so use an "
                      "environment without mace-torch.")))


_register()
