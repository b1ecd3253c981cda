"""Fit the projectors of the shipped reference banks anew, keeping their embeddings.

    OMP_NUM_THREADS=1 PYTHONPATH=src python builders/refit_bank_projectors.py

For each ``src/platoscope/data/reference_*.npz``: the shipped anchor set it was built on
(checked by hash), the projection its file is named for (the preset's parameters today: an
``element`` bank gains the global block) and the same anchor matrix, fitted with
``anchor_groups=AnchorSet.groups`` so that its coverage thresholds hold out whole anchor
structures (``coverage_holdout: structure``). The embeddings, the data hash and every
anchor-column coordinate stay as they were, up to the global block's scale sqrt(1 - w^2)
(checked on the bank's first atoms within ``projection.TOLERANCE``). This is what
``builders/build_default_bank.py`` and ``build_default_data.py`` now write too, without
re-embedding the 23k reference atoms. A bank whose projector was fitted without
``anchor_numbers`` (the ``shared`` bank: one pooled threshold) gets them, as a build now gives.
``provenance["projector_refit"]`` records the run. A bank whose model's anchor matrix ships
names that file instead of holding a copy (``ReferenceBank.save(anchors_from=...)``).
"""

from __future__ import annotations

import numpy as np

from platoscope.anchors import NAMED_ANCHORS, AnchorSet
from platoscope.coords import dense_rows
from platoscope.paths import default_data_path
from platoscope.projection import TOLERANCE, Projector
from platoscope.provenance import invocation
from platoscope.reference import ReferenceBank


def main() -> None:
    sets = {s.hash: s for s in (AnchorSet.named(n) for n in NAMED_ANCHORS)}
    for path in sorted(default_data_path(".").glob("reference_*.npz")):
        bank = ReferenceBank.load(path)
        anchors = sets.get(bank.anchor_set_hash)
        if anchors is None:
            raise SystemExit(f"{path.name}: built on anchor set {bank.anchor_set_hash[:12]}, "
                             "which is not shipped")
        old = bank.projector
        if old.anchor_numbers_ is not None and not np.array_equal(old.anchor_numbers_,
                                                                  anchors.numbers):
            raise SystemExit(f"{path.name}: its anchor numbers differ from the anchor set's")
        preset = path.stem.rsplit("_", 1)[-1]
        refit = bank.refit(Projector(preset), old.anchors_, anchors, provenance={
            "projector_refit": {"why": f"the {preset!r} preset's parameters "
                                f"{Projector(preset).get_params()}; coverage thresholds held "
                                "out by anchor structure", **invocation()}})
        new = refit.projector
        e, z = bank.embeddings[:2000].astype(np.float64), bank.numbers[:2000]
        k = old.anchors_.shape[0]
        scale = np.sqrt(1.0 - new.global_weight) / np.sqrt(1.0 - old.global_weight)
        diff = np.abs(dense_rows(new.transform(e, z))[:, :k] / scale
                      - dense_rows(old.transform(e, z))[:, :k]).max()
        if diff > TOLERANCE:
            raise SystemExit(f"{path.name}: coordinates moved by {diff:.2e}")
        matrix = default_data_path("anchors") / (f"{anchors.hash[:16]}-"
                                                  f"{str(bank.fingerprint)[:16]}.npz")
        refit.save(path, anchors_from=matrix if matrix.is_file() else None)
        print(f"{path.name}: refitted ({new.coverage_holdout} hold-out), coordinates within "
              f"{diff:.1e}")


if __name__ == "__main__":
    main()
