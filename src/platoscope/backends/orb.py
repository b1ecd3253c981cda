"""Orb backend (orb-models), from a local checkpoint only. UNTESTED here.

Orb weights are downloaded at run time, which this project's machines cannot do, so no test
exercises this file; it is kept small and fails loudly. Spec: ``orb:<architecture>@<path>``,
e.g. ``orb:orb_v3_conservative_inf_omat@/data/orb-v3-conservative-inf-omat.ckpt``, where the
architecture names a loader function of ``orb_models.forcefield.pretrained`` that accepts
``weights_path``. Features (layer ``node_features``, the paper's choice) are the node
features leaving the message-passing stack (``model.model``), read by a forward hook.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from platoscope.backends.base import Backend, LayerSpec
from platoscope.errors import UnknownBackendError


def _node_features(_inputs: Any, output: Any) -> torch.Tensor:
    feats = getattr(output, "node_features", None)
    if feats is None and isinstance(output, dict):
        feats = output.get("node_features", output.get("feat"))
    if isinstance(feats, dict):
        feats = feats.get("feat")
    if not isinstance(feats, torch.Tensor):
        raise RuntimeError(f"cannot find node features in Orb's output ({type(output).__name__})")
    return feats


class OrbBackend(Backend):
    family = "orb"
    default_layer = "node_features"

    def __init__(self, spec: str, *, layer: str | None = None, device: str = "cpu"):
        from orb_models.forcefield import pretrained
        from orb_models.forcefield.calculator import ORBCalculator

        arch, _, path = spec.partition("@")
        if not path or not os.path.isfile(path):
            raise UnknownBackendError(
                f"orb needs a local checkpoint: orb:<architecture>@<path> (got {spec!r}); Orb "
                "weights download at run time, which needs internet")
        loader = getattr(pretrained, arch, None)
        if loader is None:
            raise UnknownBackendError(f"orb_models.forcefield.pretrained has no {arch!r}")
        model = loader(weights_path=path, device=device)
        super().__init__(ORBCalculator(model, device=device), model=arch,
                         weights_path=os.path.abspath(path), layer=layer)

    @property
    def torch_model(self) -> torch.nn.Module:
        return self.calc.model

    def available_layers(self) -> list[str]:
        return ["node_features"]

    def layer_spec(self, layer: str) -> LayerSpec:
        return LayerSpec(module="model", extract=_node_features,
                         description="node features after message passing")

    @property
    def supported_numbers(self) -> None:
        return None


def _register() -> None:
    from platoscope.backends import BackendFamily, register_backend

    register_backend(BackendFamily(
        name="orb", package="orb_models", extra="orb",
        factory=lambda rest, layer, device: OrbBackend(rest, layer=layer, device=device),
        spec_help="orb:<arch>@/path/to/checkpoint.ckpt            "
                  "(needs orb-models; untested offline)"))


_register()
