"""Rebuild the data shipped inside the package (src/platoscope/data/).

    python scripts/build_default_data.py [--k 100] [--method direct] [--projection paper]

1. ``reference_structures.extxyz.gz``: the MP-20 train subset in data/mp20_partial/train.csv
   (CC-BY-4.0, see data/PROVENANCE.md), the reference set of every default bank.
2. ``anchors_default.npz``: K anchors chosen by DIRECT on CHGNet 0.3.0's per-atom embeddings of
   those structures, at least one anchor per element present.
3. ``reference_chgnet-0.3.0_<anchors>_<projection>.npz``: CHGNet 0.3.0's reference bank (the
   default model's), so the main job needs no build step. Banks of other models are built once
   on first use and cached (``platoscope.reference.default_bank``).

Deterministic: the same inputs give the same anchor-set hash.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ase.io import write

from platoscope.anchors import DEFAULT_ANCHORS, default_data_path, select_anchor_set
from platoscope.backends import load_backend
from platoscope.projection import DEFAULT_PROJECTION, Projector
from platoscope.readers import read_structures, structures_hash
from platoscope.reference import REFERENCE_STRUCTURES, ReferenceBank, _bank_name

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "data" / "mp20_partial" / "train.csv"))
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--method", default="direct")
    p.add_argument("--model", default="chgnet")
    p.add_argument("--projection", default=DEFAULT_PROJECTION)
    args = p.parse_args()

    out = default_data_path("x").parent
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("reference_chgnet*.npz"):
        old.unlink()
    structures = read_structures(args.data)
    for a in structures:
        a.info = {k: v for k, v in a.info.items() if k in ("material_id", "source_index")}
    data_hash = structures_hash(structures)
    write(out / REFERENCE_STRUCTURES, structures, format="extxyz")
    print(f"{len(structures)} reference structures, {sum(map(len, structures))} atoms")

    backend = load_backend(args.model)
    anchors = select_anchor_set(backend, structures, k=args.k, method=args.method,
                                per_element=True, data_hash=data_hash, progress=True)
    anchors.meta["source"] = "data/mp20_partial/train.csv (MP-20, CC-BY-4.0)"
    anchors.save(out / DEFAULT_ANCHORS)
    print(f"anchors: K={len(anchors)}, {len(set(anchors.symbols))} elements, {anchors.hash[:12]}")

    norm = Projector(args.projection).normalize
    bank = ReferenceBank.build(backend, structures, anchors, normalize=norm,
                               data_hash=data_hash, progress=True)
    path = bank.save(out / _bank_name(backend.spec, anchors.hash, norm))
    print(f"bank: {bank!r} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
