"""Build the shipped force-error calibrations (issue 11):
``src/platoscope/data/uncertainty_<model>.npz`` for CHGNet 0.3.0 and SevenNet-0.

Fitted on mlearn Li/Si TRAINING only (never the test splits) with the form chosen on training
for CHGNet 0.3.0 (research/uncertainty/variants.py -> results/uncertainty_variants_chgnet_0.3.0
.json; the same form as ``platoscope.uncertainty.DEFAULT_FORM``, whose rule for elements absent
from the calibration comes from research/uncertainty/prior.py), from the model outputs cached
by research/uncertainty/compute_outputs.py (run that first; one forward pass per structure).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-sevenn/bin/python builders/build_uncertainty.py \
        [chgnet:0.3.0 sevenn:7net-0]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "research" / "uncertainty"))

SPECS = ("chgnet:0.3.0", "sevenn:7net-0")


def main(*specs: str) -> None:
    from evidence import chosen_form, split_data

    from platoscope import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.reference import default_bank
    from platoscope.uncertainty import (
        DEFAULT_FORM,
        ForceErrorModel,
        backend_provenance,
        default_file,
    )

    warnings.simplefilter("ignore")
    name, kw = chosen_form("chgnet:0.3.0")
    shape = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items() if k != "unseen"}
    if shape != {k: v for k, v in DEFAULT_FORM.items() if k != "unseen"}:
        raise SystemExit(f"chosen form {kw} differs from platoscope.uncertainty.DEFAULT_FORM "
                         f"{DEFAULT_FORM}: update DEFAULT_FORM first")
    kw["unseen"] = DEFAULT_FORM["unseen"]  # the unseen-element rule: research/uncertainty/prior.py
    for spec in specs or SPECS:
        be = load_backend(spec)
        bank = default_bank(be, AnchorSet.default())
        tr = split_data(spec, "training")
        m = ForceErrorModel(bank, **kw).fit(
            tr["X"], tr["F"], tr["G"], tr["Z"], tr["S"], force_scale=tr["L"],
            provenance={**backend_provenance(be), "data": "mlearn Li+Si training",
                        "variant": name})
        out = m.save(default_file(spec))
        print(f"wrote {out}: {name}, params {m.params_}, c {m.c_}, offsets {m.offsets_}")


if __name__ == "__main__":
    main(*sys.argv[1:])
