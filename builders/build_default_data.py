"""Rebuild the data shipped inside the package (src/platoscope/data/).

    python builders/build_default_data.py [--k 3000] [--method direct] [--projection shared]

(then builders/build_anchors_element.py and builders/build_default_bank.py for the default
``element`` anchors and CHGNet's bank on them)

1. ``reference_structures.extxyz.gz``: the reference set of every default bank:
   a. the MP-20 train subset in data/mp20_partial/train.csv (CC-BY-4.0, see
      data/PROVENANCE.md), less structures with an atom that has no neighbour within 5 Å
      (CHGNet 0.2.0 cannot embed them, SevenNet warns);
   b. the elemental solids of ASE's ``dcdft`` collection (Delta-test set; 68 of 71: not Po
      and Rn, which SevenNet has no parameters for, so every bundled model embeds the whole
      reference set and the banks of two models hold the same atoms, and not bcc Cs, whose
      atoms have no neighbour within 5 Å), each as a
      supercell of at least 27 atoms, perfect and rattled with Gaussian sigma = 0.05, 0.1,
      0.2, 0.3 Å: every element's pool then holds its own bulk and its thermal noise, not only
      its compounds (docs/detection.md: this is what makes the atypical score track errors).
2. ``anchors_mp20.npz`` (the ``mp20`` set of the ``shared`` projection, the default before the
   per-element ``element`` projection): K anchors chosen by DIRECT on CHGNet 0.3.0's per-atom
   embeddings of
   the MP-20 structures only (as measured in docs/shared_space.md), at least one anchor per
   element present.
3. ``anchors/<set>-<model>.npz``: CHGNet 0.3.0's anchor matrix, and
   ``reference_chgnet_0.3.0_<anchors>_<projection>.npz``: its reference bank, so the main job
   needs no build step. Banks of other models are built once on first use and cached
   (``platoscope.reference.default_bank``).

Deterministic: the same inputs give the same anchor-set hash.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write
from ase.neighborlist import neighbor_list

from platoscope.anchors import NAMED_ANCHORS, select_anchor_set
from platoscope.backends import load_backend
from platoscope.paths import cache_dir, default_data_path
from platoscope.projection import Projector
from platoscope.readers import read_structures, structures_hash
from platoscope.reference import REFERENCE_STRUCTURES, ReferenceBank, bank_file_name

REPO = Path(__file__).resolve().parents[1]
CUTOFF = 5.0
SIGMAS = (0.05, 0.1, 0.2, 0.3)
MIN_ATOMS = 27
UNCOVERED = ("Po", "Rn")  # dcdft elements without SevenNet parameters (7net-0, l3i5, mf-0)


def isolated(atoms: Atoms, cutoff: float = CUTOFF) -> bool:
    """True if some atom has no neighbour within ``cutoff`` Å."""
    i = neighbor_list("i", atoms, cutoff)
    return len(np.unique(i)) < len(atoms)


def supercell(atoms: Atoms, min_atoms: int = MIN_ATOMS) -> Atoms:
    """The most nearly cubic repetition of ``atoms`` with at least ``min_atoms`` atoms."""
    lengths = atoms.cell.lengths()
    side = lengths.min()
    while True:
        reps = [max(1, round(side / x)) for x in lengths]
        if len(atoms) * math.prod(reps) >= min_atoms:
            return atoms.repeat(reps)
        side += 0.25


def elemental_crystals() -> list[Atoms]:
    """dcdft elemental solids: perfect and rattled supercells (seeded, deterministic)."""
    from ase.collections import dcdft

    out = []
    for z, name in enumerate(dcdft.names):
        if name in UNCOVERED:
            continue
        base = supercell(dcdft[name])
        for k, sigma in enumerate((0.0, *SIGMAS)):
            a = base.copy()
            if sigma:
                a.rattle(sigma, seed=1000 * z + k)
            a.info = {"source": f"ase.collections.dcdft:{name}", "rattle_sigma": sigma}
            if not isolated(a):  # bcc Cs: nearest neighbour 5.3 Å, beyond 5 Å model cutoffs
                out.append(a)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "data" / "mp20_partial" / "train.csv"))
    p.add_argument("--k", type=int, default=3000)
    p.add_argument("--method", default="direct")
    p.add_argument("--model", default="chgnet")
    p.add_argument("--projection", default="shared")
    args = p.parse_args()

    out = default_data_path("x").parent
    out.mkdir(parents=True, exist_ok=True)
    mp20_file = out / NAMED_ANCHORS["mp20"]
    if mp20_file.is_file():  # only this set's own bank and anchor matrix are replaced
        from platoscope.anchors import AnchorSet

        old = AnchorSet.load(mp20_file).hash
        for f in [*out.glob(f"reference_*_{old[:12]}_*.npz"),
                  *(out / "anchors").glob(f"{old[:16]}-*.npz")]:
            f.unlink()
    mp20 = read_structures(args.data)
    kept = []
    for a in mp20:
        if isolated(a):
            print(f"dropped {a.info.get('material_id')} ({a.get_chemical_formula()}): an atom "
                  f"has no neighbour within {CUTOFF} Å")
            continue
        a.info = {k: v for k, v in a.info.items() if k in ("material_id", "source_index")}
        kept.append(a)
    elemental = elemental_crystals()
    write(out / REFERENCE_STRUCTURES, kept + elemental, format="extxyz")
    # every bank of the reference set carries the hash of the structures as read back from the
    # shipped file (what default_bank computes for any other model; writing rounds positions)
    from platoscope.reference import reference_structures

    structures = reference_structures()
    data_hash = structures_hash(structures)
    print(f"{len(structures)} reference structures ({len(kept)} MP-20, {len(elemental)} "
          f"elemental), {sum(map(len, structures))} atoms")

    backend = load_backend(args.model)
    anchors = select_anchor_set(backend, kept, k=args.k, method=args.method,
                                per_element=True, data_hash=structures_hash(kept), progress=True)
    anchors.meta["source"] = "data/mp20_partial/train.csv (MP-20, CC-BY-4.0)"
    anchors.save(mp20_file)
    print(f"anchors: K={len(anchors)}, {len(set(anchors.symbols))} elements, {anchors.hash[:12]}")

    proj = Projector(args.projection)
    bank = ReferenceBank.build(backend, structures, anchors, projection=proj,
                               data_hash=data_hash, progress=True)
    path = bank.save(out / bank_file_name(backend.spec, anchors.hash, proj.name))
    print(f"bank: {bank!r} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")
    name = f"{anchors.hash[:16]}-{backend.fingerprint[:16]}.npz"
    (out / "anchors").mkdir(exist_ok=True)
    shutil.copy(cache_dir() / "anchors" / name, out / "anchors" / name)
    print(f"anchor matrix of {backend.spec} -> data/anchors/{name}")


if __name__ == "__main__":
    main()
