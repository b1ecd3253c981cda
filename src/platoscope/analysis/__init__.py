"""Cross-model analysis of per-atom coordinates: plain arrays in, arrays and dataclasses out.

* :mod:`~platoscope.analysis.alignment`: agreement of two coordinate arrays of the same atoms
  (mutual k-NN, linear CKA, Procrustes, per-atom cosine, retrieval with symmetry classes).
* :mod:`~platoscope.analysis.optimal_transport`: optimal transport between atom clouds (POT) and an
  out-of-sample transport map.
* :mod:`~platoscope.analysis.periodicity`: element mean vectors and periodic-table structure.
* :mod:`~platoscope.analysis.arithmetic`: element substitution vectors and their retrieval.
* :mod:`~platoscope.analysis.bias`: per-model, per-element deviation from the model consensus.

* :mod:`~platoscope.analysis.handover`: the model hand-over check (transport of two models'
  clouds of the same atoms).
* :mod:`~platoscope.analysis.neighbors` and :mod:`~platoscope.analysis.inputs`: the shared
  distance / k-NN helpers and argument checks.

``platoscope.analysis.transport`` is the function :func:`transport` (its module is
``optimal_transport``, so nothing is shadowed).
"""

from __future__ import annotations

from platoscope.analysis.alignment import (
    alignment_matrix,
    bootstrap_interval,
    cosine_agreement,
    element_structure_baseline,
    linear_cka,
    mutual_knn,
    mutual_knn_interval,
    mutual_knn_rows,
    procrustes,
    retrieval_accuracy,
    retrieval_chance,
    site_resolved_retrieval,
)
from platoscope.analysis.arithmetic import (
    ArithmeticResult,
    arithmetic_retrieval,
    substitution_vector,
)
from platoscope.analysis.bias import (
    BiasTable,
    bias_table,
    consensus,
    deviations,
    most_deviant_model,
)
from platoscope.analysis.optimal_transport import TransportMap, TransportResult, transport
from platoscope.analysis.periodicity import (
    element_means,
    group_period,
    nearest_element_table,
    periodicity_score,
    plot_periodicity_heatmap,
)

__all__ = [
    "ArithmeticResult",
    "BiasTable",
    "TransportMap",
    "TransportResult",
    "alignment_matrix",
    "arithmetic_retrieval",
    "bias_table",
    "bootstrap_interval",
    "consensus",
    "cosine_agreement",
    "deviations",
    "element_means",
    "element_structure_baseline",
    "group_period",
    "linear_cka",
    "most_deviant_model",
    "mutual_knn",
    "mutual_knn_interval",
    "mutual_knn_rows",
    "nearest_element_table",
    "periodicity_score",
    "plot_periodicity_heatmap",
    "procrustes",
    "retrieval_accuracy",
    "retrieval_chance",
    "site_resolved_retrieval",
    "substitution_vector",
    "transport",
]
