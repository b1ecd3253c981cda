"""Representational bias: where one model's coordinates leave the other models' consensus.

All models must give coordinates of the *same atoms* (rows) on the *same anchor axes* (columns),
``coords: {model name: (N, K)}``. A model's deviation for atom i is the distance of its row to
the consensus of the models. Leave-one-out (default): the consensus for model m excludes m.
Otherwise m's own row is part of the mean, which shrinks its deviation by (M - 1) / M and lets one
strongly biased model drag the consensus and smear its bias onto the others; with only two
models the leave-one-out deviation is simply the distance between them (symmetric, so it cannot
say which of the two is biased: use three or more).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from platoscope.analysis.inputs import as_labels, as_matrix, check_metric
from platoscope.analysis.neighbors import unit_rows
from platoscope.errors import InputError

STATISTICS = ("mean", "median")


def _checked(coords: Mapping[str, Any], min_models: int = 1
             ) -> tuple[list[str], list[np.ndarray]]:
    """(names, arrays (N, K) each), after checking every model has the same shape."""
    names = list(coords)
    if len(names) < min_models:
        raise InputError(f"coords has {len(names)} model(s); at least {min_models} needed")
    arrays = [as_matrix(coords[k], f"coords[{k!r}]") for k in names]
    shape = arrays[0].shape
    for k, arr in zip(names, arrays, strict=True):
        if arr.shape != shape:
            raise InputError(f"coords[{k!r}] has shape {arr.shape} but coords[{names[0]!r}] has "
                             f"{shape}: all models need the same atoms and anchor axes")
    return names, arrays


def consensus(coords: Mapping[str, Any], exclude: str | None = None,
              statistic: str = "mean") -> np.ndarray:
    """Consensus coordinates (N, K) of several models: the per-entry mean (or median).

    coords: {model: (N, K)}; exclude: a model left out (leave-one-out consensus for it).
    """
    check_metric(statistic, STATISTICS, "statistic")
    names, arrays = _checked(coords)
    if exclude is not None:
        if exclude not in names:
            raise InputError(f"exclude={exclude!r} is not a model in coords ({names})")
        if len(names) < 2:
            raise InputError("a leave-one-out consensus needs at least 2 models")
        arrays = [a for k, a in zip(names, arrays, strict=True) if k != exclude]
    if statistic == "median":
        return np.median(np.stack(arrays), axis=0)
    out = arrays[0].copy()  # the mean, summed in place: no (n_models, N, K) stack
    for a in arrays[1:]:
        out += a
    out /= len(arrays)
    return out


def _distance(x: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        return 1.0 - np.einsum("ij,ij->i", unit_rows(x), unit_rows(y))
    out = np.empty(x.shape[0])
    for s in range(0, x.shape[0], 1024):  # row blocks: no (N, K) difference array
        out[s:s + 1024] = np.linalg.norm(x[s:s + 1024] - y[s:s + 1024], axis=1)
    return out


def deviations(coords: Mapping[str, Any], leave_one_out: bool = True, metric: str = "euclidean",
               statistic: str = "mean") -> dict[str, np.ndarray]:
    """Per-model, per-atom distance from the consensus: {model: (N,)}.

    leave_one_out: compare each model with the consensus of the *others* (default; see module
    docstring). metric: ``euclidean`` (in coordinate units) or ``cosine`` (1 - cos).
    """
    check_metric(metric, ("euclidean", "cosine"))
    names, _ = _checked(coords, min_models=2)
    full = None if leave_one_out else consensus(coords, statistic=statistic)
    out = {}
    for k in names:
        ref = consensus(coords, exclude=k, statistic=statistic) if leave_one_out else full
        out[k] = _distance(as_matrix(coords[k], f"coords[{k!r}]"), ref, metric)
    return out


@dataclass
class BiasTable:
    """Mean deviation from the consensus per model and element.

    models: model names (n_models); elements: (E,) atomic numbers; counts: (E,) atoms per element;
    deviation: (n_models, E) mean per-atom deviation of each model on each element; excess:
    (n_models, E) deviation divided by that model's median per-atom deviation over all atoms
    (> 1: the model is further off on this element than it usually is; compares models whose
    overall scale differs).
    """

    models: list[str]
    elements: np.ndarray
    counts: np.ndarray
    deviation: np.ndarray
    excess: np.ndarray

    def as_dict(self, field: str = "deviation") -> dict[str, dict[int, float]]:
        """{model: {Z: value}} of ``deviation`` or ``excess``."""
        check_metric(field, ("deviation", "excess"), "field")
        table = getattr(self, field)
        return {m: {int(z): float(v) for z, v in zip(self.elements, row, strict=True)}
                for m, row in zip(self.models, table, strict=True)}


def bias_table(coords: Mapping[str, Any], Z: Any, leave_one_out: bool = True,
               metric: str = "euclidean", statistic: str = "mean") -> BiasTable:
    """Per model, per element mean deviation from the (leave-one-out) consensus.

    coords: {model: (N, K)} of the same atoms on the same anchor axes; Z: (N,) atomic numbers.
    """
    dev = deviations(coords, leave_one_out=leave_one_out, metric=metric, statistic=statistic)
    models = list(dev)
    n = dev[models[0]].shape[0]
    z = as_labels(Z, "Z", n)
    elements, inverse = np.unique(z, return_inverse=True)
    counts = np.bincount(inverse)
    table = np.stack([np.bincount(inverse, weights=dev[m]) / counts for m in models])
    typical = np.array([np.median(dev[m]) for m in models])
    excess = table / np.where(typical > 0, typical, np.finfo(float).tiny)[:, None]
    return BiasTable(models=models, elements=elements, counts=counts, deviation=table,
                     excess=excess)


def most_deviant_model(table: BiasTable, by: str = "deviation") -> dict[int, str]:
    """Per element, the model that deviates most: {Z: model name}.

    by: ``deviation`` (largest mean deviation) or ``excess`` (largest relative to the model's
    own typical deviation).
    """
    check_metric(by, ("deviation", "excess"), "by")
    values = getattr(table, by)
    worst = np.argmax(values, axis=0)
    return {int(z): table.models[i] for z, i in zip(table.elements, worst, strict=True)}
