"""Per-step cost of PlatonicCalculator against the bare backend, in one run, alternating.

For each backend installed here and each size (default 64 and 512 atoms) it times, in rotating
order on freshly rattled positions: the bare ASE calculator (energy + forces + stress), the
PlatonicCalculator (the same plus embeddings and K=3000 coordinates in the default
``shared`` projection: the shipped configuration), and the two-pass approach
(the bare call followed by the model's own feature call: MACE ``get_descriptors``, CHGNet
``predict_structure(return_atom_feas=True)``, SevenNet a second evaluation). It reports the
median of per-round ratios to the bare time, so machine load drifts cancel.

    python benchmarks/overhead.py                       # every backend installed here
    python benchmarks/overhead.py --backends chgnet --sizes 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np
from _timing import alternate, median_ratios
from ase import Atoms
from ase.build import bulk

from platoscope import AnchorSet, PlatonicCalculator, available_backends, load_backend
from platoscope.provenance import invocation

REPO = Path(__file__).resolve().parents[1]
MACE_MODEL = REPO / "tests" / "data" / "mace_emt_tiny.model"


def structure(spec: str, n: int) -> Atoms:
    if spec.startswith("mace:"):
        base = bulk("Cu", "fcc", a=3.65, cubic=True)  # 4 atoms
        reps = {64: (4, 2, 2), 512: (8, 4, 4)}.get(n) or (round((n / 4) ** (1 / 3)),) * 3
        a = base.repeat(reps)
        a.numbers[::3] = 79
    else:
        base = bulk("NaCl", "rocksalt", a=5.64, cubic=True)  # 8 atoms
        reps = {64: (2, 2, 2), 512: (4, 4, 4)}.get(n) or (round((n / 8) ** (1 / 3)),) * 3
        a = base.repeat(reps)
    return a


def anchor_set(spec: str, k: int = 3000) -> AnchorSet:
    """The shipped default set (K = 3000); for the tiny Cu/Au MACE model, which knows no other
    elements, K anchors from rattled and strained Cu/Au cells."""
    if not spec.startswith("mace:"):
        return AnchorSet.default()
    rng = np.random.default_rng(0)
    pairs = []
    for s in range(-(-k // 64)):
        a = structure(spec, 64)
        a.rattle(0.1, seed=s)
        a.set_cell(a.cell * (0.97 + 0.001 * s), scale_atoms=True)
        pairs += [(a, i) for i in range(64)]
    return AnchorSet.from_atoms([pairs[i] for i in rng.choice(len(pairs), k, replace=False)])


def second_pass(backend, atoms: Atoms):
    """The model's own way to get per-atom features after a force call."""
    fam = backend.family
    if fam == "mace":
        return backend.calc.get_descriptors(atoms, invariants_only=True, num_layers=1)
    if fam == "chgnet":
        from pymatgen.io.ase import AseAtomsAdaptor

        return backend.calc.model.predict_structure(
            AseAtomsAdaptor.get_structure(atoms), task="e", return_atom_feas=True)["atom_fea"]
    return backend.compute(atoms, ["energy", "forces"])[1]


def bench(spec: str, n: int, rounds: int) -> dict:
    backend = load_backend(spec)
    calc = PlatonicCalculator(backend, anchors=anchor_set(spec))
    atoms = structure(spec, n)
    props = ["energy", "forces", "stress"]

    def bare(a):
        backend.calc.calculate(a, props)

    def wrapped(a):
        calc.calculate(a, props)

    def twopass(a):
        backend.calc.calculate(a, props)
        second_pass(backend, a)

    fns = {"bare": bare, "platonic": wrapped, "two_pass": twopass}

    def rattled(r: int):
        a = atoms.copy()
        a.rattle(0.02, seed=100 + r)
        return a

    times = alternate(fns, rattled, rounds)
    ratio = median_ratios(times, "bare")
    return {
        "backend": backend.spec, "layer": backend.layer, "n_atoms": len(atoms),
        "K": len(calc.anchors),
        "rounds": rounds, "median_s": {k: statistics.median(v) for k, v in times.items()},
        "ratio_platonic": ratio["platonic"], "ratio_two_pass": ratio["two_pass"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default=None,
                   help="comma-separated specs (default: chgnet, sevenn:7net-0, tiny MACE)")
    p.add_argument("--sizes", default="64,512")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--out", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    have = available_backends()
    if args.backends:
        specs = args.backends.split(",")
    else:
        specs = [s for s, ok in (("chgnet", have["chgnet"]), ("sevenn:7net-0", have["sevenn"]),
                                 (f"mace:{MACE_MODEL}", have["mace"])) if ok]
    rows = []
    print(f"{'backend':24s} {'N':>5s} {'bare s':>8s} {'platonic/bare':>14s} {'two-pass/bare':>14s}")
    for spec in specs:
        for n in (int(x) for x in args.sizes.split(",")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = bench(spec, n, args.rounds)
            rows.append(row)
            name = row["backend"] if not spec.startswith("mace:") else "mace:emt-tiny"
            print(f"{name:24s} {row['n_atoms']:5d} {row['median_s']['bare']:8.3f} "
                  f"{row['ratio_platonic']:14.3f} {row['ratio_two_pass']:14.3f}", flush=True)
    out = {"results": rows, "provenance": invocation()}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
