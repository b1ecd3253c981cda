"""Quick start: Langevin MD of NaCl with CHGNet 0.3.0, per-atom Platonic coordinates each step.

    python examples/quickstart.py [--out quickstart_out]

Writes md.traj (ASE), md.extxyz (every frame with its `platonic` (N, K) array) and prints how
the coordinates of one atom move during the run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.io import write
from ase.md.langevin import Langevin

from platoscope import AnchorSet, PlatonicCalculator, load_backend


def anchor_pairs():
    """A small hand-made anchor set: (structure, atom index) pairs of simple crystals."""
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    kcl = bulk("KCl", "rocksalt", a=6.29)
    si = bulk("Si", "diamond", a=5.43)
    mgo = bulk("MgO", "rocksalt", a=4.21)
    return [(nacl, 0), (nacl, 1), (kcl, 0), (kcl, 1), (si, 0), (mgo, 0), (mgo, 1),
            (bulk("Cu", "fcc", a=3.61), 0)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="quickstart_out")
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    backend = load_backend("chgnet")  # bundled CHGNet 0.3.0, real weights, offline
    anchors = AnchorSet.from_atoms(anchor_pairs())
    atoms = bulk("NaCl", "rocksalt", a=5.64).repeat(2)
    # Eight hand-made anchors: plain cosines ("paper"). The default "element" projection (each
    # atom on its own element's anchors, a softmax kernel) is meant for many anchors:
    # PlatonicCalculator(backend, AnchorSet.default()), K = 38,076.
    atoms.calc = PlatonicCalculator(backend, anchors=anchors, projection="paper")

    frames = []
    dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=600, friction=0.01,
                   trajectory=str(out / "md.traj"), rng=np.random.default_rng(0))
    dyn.attach(lambda: frames.append(atoms.copy()), interval=5)
    dyn.run(args.steps)
    write(out / "md.extxyz", frames)

    z = atoms.calc.get_platonic()  # (N, K) cosine of each atom's embedding to each anchor's
    e = atoms.calc.get_embeddings()  # (N, D) raw per-atom features of the chosen layer
    print(f"platonic {z.shape}, embeddings {e.shape}, anchors {anchors.symbols}")
    print("atom 0 (Na) now vs first frame:",
          np.round(z[0], 3), np.round(frames[0].arrays["platonic"][0], 3))
    print("provenance:", {k: v for k, v in atoms.calc.provenance().items() if k != "versions"})


if __name__ == "__main__":
    main()
