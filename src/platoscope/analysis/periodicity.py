"""Does a coordinate space keep chemical periodicity? Element mean vectors and their neighbours.

Each element is summarised by the mean of its atoms' coordinates; an element "looks periodic"
when its nearest other element (cosine by default) shares its periodic-table group (or period).

Group and period table, Z = 1..94 (IUPAC 1-18 numbering). f-block choice (``f_block``):
``"group3"`` (default) puts the lanthanoids La-Lu (57-71) and actinoids Ac-Pu (89-94) in group 3,
as pymatgen's ``Element.group`` does, so e.g. Ce and Y count as one group; ``"separate"`` gives
the lanthanoids their own group :data:`LANTHANOID_GROUP` (19) and the actinoids
:data:`ACTINOID_GROUP` (20), leaving group 3 to Sc and Y. Periods are unaffected (6 and 7).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from platoscope.analysis.inputs import as_labels, as_matrix, check_metric
from platoscope.analysis.neighbors import unit_rows
from platoscope.errors import InputError

LANTHANOID_GROUP = 19
ACTINOID_GROUP = 20
MAX_Z = 94
F_BLOCK = ("group3", "separate")


def _build_table() -> tuple[np.ndarray, np.ndarray]:
    group = np.zeros(MAX_Z + 1, dtype=np.int64)
    period = np.zeros(MAX_Z + 1, dtype=np.int64)
    p_blocks = list(range(13, 19))
    d_block = list(range(3, 13))
    rows = [
        (1, [1, 18]),
        (2, [1, 2, *p_blocks]),
        (3, [1, 2, *p_blocks]),
        (4, [1, 2, *d_block, *p_blocks]),
        (5, [1, 2, *d_block, *p_blocks]),
        (6, [1, 2, *[3] * 15, *d_block[1:], *p_blocks]),  # La-Lu (15) then Hf-Hg, Tl-Rn
        (7, [1, 2, *[3] * 6]),  # Fr, Ra, Ac-Pu
    ]
    z = 1
    for per, groups in rows:
        for g in groups:
            group[z], period[z] = g, per
            z += 1
    assert z == MAX_Z + 1
    return group, period


GROUP, PERIOD = _build_table()


def group_period(Z: Any, f_block: str = "group3") -> tuple[np.ndarray, np.ndarray]:
    """Periodic-table group and period of atomic numbers Z (n,), each (n,) int.

    f_block: ``group3`` (La-Lu and Ac-Pu in group 3) or ``separate`` (groups 19 and 20).
    """
    check_metric(f_block, F_BLOCK, "f_block")
    z = as_labels(Z, "Z")
    if z.min() < 1 or z.max() > MAX_Z:
        raise InputError(f"Z (shape {z.shape}) must lie in 1..{MAX_Z}, got {z.min()}..{z.max()}")
    g, p = GROUP[z].copy(), PERIOD[z].copy()
    if f_block == "separate":
        g[(z >= 57) & (z <= 71)] = LANTHANOID_GROUP
        g[(z >= 89) & (z <= 103)] = ACTINOID_GROUP
    return g, p


def element_means(Z: Any, coords: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean coordinate vector per element.

    Z: (N,) atomic numbers; coords: (N, D). Returns ``(elements (E,) sorted, means (E, D))``.
    """
    x = as_matrix(coords, "coords")
    z = as_labels(Z, "Z", x.shape[0])
    elements, inverse = np.unique(z, return_inverse=True)
    sums = np.zeros((elements.size, x.shape[1]))
    np.add.at(sums, inverse, x)
    return elements, sums / np.bincount(inverse)[:, None]


def _check_means(elements: Any, means: Any) -> tuple[np.ndarray, np.ndarray]:
    m = as_matrix(means, "means", min_rows=2)
    e = as_labels(elements, "elements")
    if e.shape[0] != m.shape[0]:
        raise InputError(f"elements has shape {e.shape} and means has shape {m.shape}: one mean "
                         "row per element is needed")
    if np.unique(e).size != e.size:
        raise InputError(f"elements (shape {e.shape}) has repeated atomic numbers")
    return e, m


def _similarity(m: np.ndarray, metric: str) -> np.ndarray:
    """(E, E) similarity, larger = closer: cosine, or minus the Euclidean distance."""
    check_metric(metric, ("cosine", "euclidean"))
    if metric == "cosine":
        u = unit_rows(m)
        return u @ u.T
    d2 = (m * m).sum(1)[:, None] + (m * m).sum(1)[None, :] - 2.0 * m @ m.T
    return -np.sqrt(np.maximum(d2, 0.0))


def nearest_element_table(elements: Any, means: Any, metric: str = "cosine") -> np.ndarray:
    """Atomic number of each element's nearest *other* element, shape (E,).

    elements: (E,) distinct atomic numbers; means: (E, D) their mean vectors (from
    :func:`element_means`); metric: ``cosine`` (highest cosine) or ``euclidean``.
    """
    e, m = _check_means(elements, means)
    s = _similarity(m, metric)
    np.fill_diagonal(s, -np.inf)
    return e[np.argmax(s, axis=1)]


def periodicity_score(elements: Any, means: Any, metric: str = "cosine",
                      f_block: str = "group3") -> dict[str, Any]:
    """How often an element's nearest other element shares its group, or its period.

    elements: (E,) distinct atomic numbers in 1..94; means: (E, D). Returns a dict:
    ``group`` and ``period`` (fractions of the E elements whose nearest other element is in the
    same group / period), ``group_chance`` and ``period_chance`` (the expected fractions if the
    nearest element were drawn uniformly from the E - 1 others, counted exactly from the table:
    mean over elements of (same-group others) / (E - 1)), ``nearest`` (E,) and ``n_elements``.
    """
    e, m = _check_means(elements, means)
    nearest = nearest_element_table(e, m, metric)
    g, p = group_period(e, f_block)
    gn, pn = group_period(nearest, f_block)
    same_g = g[:, None] == g[None, :]
    same_p = p[:, None] == p[None, :]
    n = e.size
    return {
        "group": float(np.mean(g == gn)),
        "period": float(np.mean(p == pn)),
        "group_chance": float(np.mean((same_g.sum(1) - 1) / (n - 1))),
        "period_chance": float(np.mean((same_p.sum(1) - 1) / (n - 1))),
        "nearest": nearest,
        "n_elements": n,
    }


def plot_periodicity_heatmap(elements: Any, means: Any, path: str | Path,
                             title: str | None = None) -> Path:
    """Write a PNG heat map of the element-element cosine similarity, ordered by atomic number.

    elements: (E,); means: (E, D). Uses matplotlib's Agg canvas directly (no pyplot, no global
    backend change). Returns the path written.
    """
    from ase.data import chemical_symbols
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    e, m = _check_means(elements, means)
    order = np.argsort(e)
    e, m = e[order], m[order]
    s = _similarity(m, "cosine")
    size = min(max(4.0, 0.14 * e.size + 2.0), 16.0)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(s, cmap="viridis", interpolation="nearest")
    labels = [chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in e]
    ax.set_xticks(range(e.size), labels, rotation=90, fontsize=max(4, 9 - e.size // 20))
    ax.set_yticks(range(e.size), labels, fontsize=max(4, 9 - e.size // 20))
    ax.set_title(title or "element mean vectors: cosine similarity")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
