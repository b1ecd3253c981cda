"""MACE backend (mace-torch 0.3.x): any local ``.model`` file; foundation models only if cached.

Features are the model's own ``node_feats`` output, read by a forward hook on the model, so
there is no second pass (MACE's ``get_descriptors`` runs one). ``node_feats`` concatenates the
outputs of the interaction blocks; each block's invariant (0e) channels are located from the
irreps its product basis declares, never hard-coded.

Layers: ``interaction<i>_invariant`` (default ``interaction0_invariant``, the paper's choice:
``get_descriptors(num_layers=1)``), ``invariant`` (all blocks' invariants, MACE's default
descriptor) and ``interaction<i>`` (block ``i`` including equivariant channels).
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import torch

from platoscope.backends.base import Backend, LayerSpec, invariant_columns
from platoscope.errors import BackendUnavailableError, UnknownBackendError

FOUNDATION_ALIASES = {
    "mace-mp:small": "small",
    "mace-mp:medium": "medium",
    "mace-mp:large": "large",
    "mace-omat": "medium-omat-0",
    "mace-omat:small": "small-omat-0",
    "mace-omat:medium": "medium-omat-0",
}


def _node_feats(_inputs: Any, output: Any) -> torch.Tensor:
    return output["node_feats"]


class MACEBackend(Backend):
    family = "mace"
    default_layer = "interaction0_invariant"

    def __init__(self, model: str, *, layer: str | None = None, device: str = "cpu",
                 calc: Any = None, default_dtype: str = "float64"):
        from mace.calculators import MACECalculator

        if calc is None:
            if not os.path.isfile(model):
                raise FileNotFoundError(f"MACE model file not found: {model!r}")
            try:
                calc = MACECalculator(model_paths=model, device=device,
                                      default_dtype=default_dtype)
            except (pickle.UnpicklingError, EOFError, RuntimeError, AttributeError,
                    ValueError) as err:
                raise BackendUnavailableError(
                    f"{model!r} is not a MACE model file that torch can load "
                    f"({type(err).__name__}: {err}); give a .model file saved by MACE") from err
            weights = os.path.abspath(model)
        else:
            weights = None
        name = os.path.basename(model) if weights else model
        super().__init__(calc, model=name, weights_path=weights, layer=layer)

    @property
    def torch_model(self) -> torch.nn.Module:
        return self.calc.models[0]

    @property
    def block_irreps(self) -> list[Any]:
        from e3nn import o3

        return [o3.Irreps(str(p.linear.irreps_out)) for p in self.torch_model.products]

    def available_layers(self) -> list[str]:
        n = len(self.block_irreps)
        return [*(f"interaction{i}_invariant" for i in range(n)), "invariant",
                *(f"interaction{i}" for i in range(n))]

    def layer_spec(self, layer: str) -> LayerSpec:
        irreps = self.block_irreps
        offsets = np.cumsum([0] + [ir.dim for ir in irreps])
        if layer == "invariant":
            cols = np.concatenate([offsets[i] + invariant_columns(ir)
                                   for i, ir in enumerate(irreps)])
            desc = "0e channels of every interaction block"
        else:
            i = int(layer.removeprefix("interaction").removesuffix("_invariant"))
            if layer.endswith("_invariant"):
                cols = offsets[i] + invariant_columns(irreps[i])
                desc = f"0e channels of interaction block {i} ({irreps[i]})"
            else:
                cols = np.arange(offsets[i], offsets[i + 1])
                desc = f"all channels of interaction block {i} ({irreps[i]})"
        return LayerSpec(module="", extract=_node_feats, columns=cols, description=desc)

    @property
    def supported_numbers(self) -> frozenset[int]:
        return frozenset(int(z) for z in self.torch_model.atomic_numbers)


def resolve_foundation(spec: str) -> str:
    """Local file of a MACE foundation model (``mace-mp:small``, ``mace-omat`` ...), or raise."""
    key = FOUNDATION_ALIASES.get(spec)
    if key is None and spec.startswith("mace-mp:"):
        key = spec.split(":", 1)[1]
    try:
        from mace.calculators.foundations_models import get_cache_dir, mace_mp_urls
    except ImportError as err:
        raise BackendUnavailableError(
            "mace-torch is not installed in this environment: pip install 'platoscope[mace]' "
            "(in an environment without sevenn; see README, 'Two environments')") from err
    if key not in mace_mp_urls:
        raise UnknownBackendError(
            f"unknown MACE foundation model {spec!r}; known: "
            + ", ".join(sorted(FOUNDATION_ALIASES)) + ", or mace:/path/to/file.model")
    url = mace_mp_urls[key]
    fname = "".join(c for c in os.path.basename(url) if c.isalnum() or c == "_")
    cached = os.path.join(get_cache_dir(), fname)
    if os.path.isfile(cached):
        return cached
    raise BackendUnavailableError(
        f"{spec} is downloaded from the internet at run time and is not cached here "
        f"({cached}). Download {url} on a machine with internet and pass the local file: "
        "'mace:/path/to/file.model'.")


def _mace_factory(rest: str, layer: str | None, device: str) -> MACEBackend:
    if rest.startswith(("mace-mp", "mace-omat")):  # an alias: rest is the whole spec
        path = resolve_foundation(rest)
    elif not rest:
        raise UnknownBackendError("'mace' needs a model file: mace:/path/to/file.model")
    else:
        path = rest
    return MACEBackend(path, layer=layer, device=device)


def _register() -> None:
    from platoscope.backends import BackendFamily, register_backend

    register_backend(BackendFamily(
        name="mace", package="mace", extra="mace", factory=_mace_factory,
        spec_help="mace:/path/to/file.model\n"
                  "mace-mp:small|medium|large | mace-omat                         "
                  "(need internet, or a cached file)",
        aliases=("mace-mp", "mace-omat"),
        recognises=lambda calc: type(calc).__module__.startswith("mace"),
        from_calculator=lambda calc, layer: MACEBackend("calculator", layer=layer, calc=calc),
        install_hint=(" mace-torch and sevenn need different e3nn versions, so use an "
                      "environment without sevenn.")))


_register()
