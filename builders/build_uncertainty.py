"""Build the shipped force-error calibration of CHGNet 0.3.0 (issue 11):
``src/platoscope/data/uncertainty_chgnet_0.3.0.npz``.

Fitted on mlearn Li/Si TRAINING only (never the test splits) with the variant chosen in
results/uncertainty.json (research/uncertainty/evidence.py; default: force + distance terms,
per-element intercept), from the model outputs cached by research/uncertainty/compute_outputs.py
(run that first; one forward pass per structure).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-sevenn/bin/python builders/build_uncertainty.py
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "research" / "uncertainty"))

SPEC = "chgnet:0.3.0"


def main() -> None:
    from evidence import VARIANTS, split_data

    from platoscope import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.reference import default_bank
    from platoscope.uncertainty import ForceErrorModel, backend_provenance, default_file

    warnings.simplefilter("ignore")
    res = REPO / "results" / "uncertainty.json"
    chosen = json.loads(res.read_text())["chosen"] if res.is_file() else "combined"
    terms, per_element = VARIANTS[chosen]
    be = load_backend(SPEC)
    bank = default_bank(be, AnchorSet.default())
    tr = split_data(SPEC, "training")
    m = ForceErrorModel(bank, terms=terms, per_element=per_element).fit(
        tr["X"], tr["F"], tr["G"], tr["Z"], tr["S"],
        provenance={**backend_provenance(be), "data": "mlearn Li+Si training",
                    "variant": chosen})
    out = m.save(default_file(SPEC))
    print(f"wrote {out}: variant {chosen}, coef {m.coef_}, c {m.c_}, offsets {m.offsets_}")


if __name__ == "__main__":
    main()
