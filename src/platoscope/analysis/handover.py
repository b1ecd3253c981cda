"""The model hand-over check: optimal transport between two models' projected clouds of the
same atoms, and how many atoms land on themselves, an equivalent atom or their element."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from platoscope.analysis.optimal_transport import transport
from platoscope.coords import as_coords, compact_columns
from platoscope.errors import InputError

__all__ = ["HandOver", "hand_over"]


@dataclass
class HandOver:
    """Optimal transport between A's and B's coordinates of the same N atoms.

    cost: mean squared distance per atom under the optimal matching; identity_cost: the same
    with every atom kept on itself (>= cost); offset: squared distance between the two clouds'
    means (part of both costs, no influence on the matching: ``cost - offset`` is the cost of
    the centred clouds); matched_*: fractions of atoms (see module doc); matching: (N,) the B
    atom each A atom is sent to.
    """

    cost: float
    identity_cost: float
    offset: float
    matched_self: float
    matched_equivalent: float
    same_element: float
    chance_equivalent: float
    matching: np.ndarray = field(repr=False)
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"cost": self.cost, "identity_cost": self.identity_cost, "offset": self.offset,
                "matched_self": self.matched_self, "matched_equivalent": self.matched_equivalent,
                "same_element": self.same_element, "chance_equivalent": self.chance_equivalent,
                "transport_method": self.method}


def hand_over(z_a: Any, z_b: Any, numbers: np.ndarray,
              classes: np.ndarray | None = None, **kwargs: Any) -> HandOver:
    """Match A's coordinates (N, K) to B's (N, K) of the same atoms by optimal transport.

    z_a, z_b: dense or scipy-sparse (the element projection's CSR frames): sparse ones are
    compacted to the columns either uses (:func:`platoscope.coords.compact_columns`), which
    leaves every cost, distance and mean of the result unchanged. numbers: (N,) atomic
    numbers; classes: (N,) symmetry classes (None: every atom its own); kwargs go to
    :func:`~platoscope.analysis.optimal_transport.transport`.
    """
    z_a, z_b = as_coords(z_a, "z_a"), as_coords(z_b, "z_b")
    if z_a.shape != z_b.shape:
        raise InputError(f"A's coordinates {z_a.shape} and B's {z_b.shape} differ in shape")
    (z_a, z_b), _ = compact_columns(z_a, z_b)
    numbers = np.asarray(numbers)
    classes = np.arange(len(numbers)) if classes is None else np.asarray(classes)
    res = transport(z_a, z_b, elements=numbers, **kwargs)
    m = res.matching
    n = len(numbers)
    _, cls_n = np.unique(classes, return_counts=True)
    el_of_class = {c: numbers[classes == c][0] for c in np.unique(classes)}
    n_el = {z: int((numbers == z).sum()) for z in np.unique(numbers)}
    chance = sum(k * k / n_el[el_of_class[c]] for c, k in zip(np.unique(classes), cls_n,
                                                                strict=True)) / n
    return HandOver(
        cost=float(res.cost),
        identity_cost=float(np.mean(np.sum((z_a - z_b) ** 2, axis=1))),
        offset=float(np.sum((z_a.mean(axis=0) - z_b.mean(axis=0)) ** 2)),
        matched_self=float(np.mean(m == np.arange(n))),
        matched_equivalent=float(np.mean(classes[m] == classes)),
        same_element=float(np.mean(numbers[m] == numbers)),
        chance_equivalent=float(chance), matching=m, method=res.method)
