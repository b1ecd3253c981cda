"""The shipped anchor set of the ``element`` projection (builders/build_anchors_element.py)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from platoscope.anchors import AnchorSet
from platoscope.projection import PRESETS


@pytest.fixture(scope="module")
def aset() -> AnchorSet:
    return AnchorSet.default()


def test_budget_and_configuration(aset):
    # limits set by the lead after the first sweep: K <= ~45k, at most the whole corpus
    # (53,470 atoms) embedded on first use
    atoms = sum(len(a) for a in aset.structures)
    assert len(aset) <= 45000
    assert atoms <= 53470
    cfg = aset.meta["config"]
    assert aset.meta["projection"] == "element"
    assert aset.meta["tau"] == PRESETS["element"]["tau"]
    for key in ("method", "cap_per_element", "seed", "chosen_on"):
        assert key in cfg
    assert cfg["n_anchors"] == len(aset)


def test_every_anchor_has_provenance(aset):
    src = aset.sources
    assert len(src) == len(aset) and all(s[0] is not None for s in src)
    assert [int(aset.pairs[k, 1]) for k in range(len(aset))] == [s[2] for s in src]


def test_no_evaluation_or_test_data(aset):
    for src, sid, _ in aset.sources:
        assert "test" not in src and "test" not in sid, (src, sid)
        assert src != "mp20_val"
        if src in ("perov5_anchor", "carbon24_anchor"):  # only the even rows are anchors
            assert int(re.match(r"row(\d+):", sid).group(1)) % 2 == 0, sid
        if src.startswith("mlearn_"):
            assert sid.split(":")[0].endswith("_training.json"), sid


def test_elements_covered_with_small_elements_kept(aset):
    counts = Counter(aset.symbols)
    # the corpus holds 89 elements valid in CHGNet 0.3.0, 0.2.0 and SevenNet-0
    assert len(counts) == 89
    for el in ("H", "C", "O", "Si", "Li", "Pu", "U"):
        assert counts[el] >= 1, el
    # every element has at least min(8, its candidates) anchors: the lightest are the actinides
    assert min(counts.values()) >= 2
    z = aset.numbers
    assert np.all(z > 0)
