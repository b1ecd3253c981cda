"""Build the element difficulty prior of the force-error model (issue 11):
``results/element_prior.json`` (input of research/uncertainty/prior.py and prior_joint.py) and
the same file shipped as ``src/platoscope/data/element_prior.json`` (read by
``platoscope.uncertainty.element_prior`` for the ``unseen="prior"`` rule).

Per element Z of ``ase.collections.dcdft`` (71 elemental solids; no mlearn data), a fixed,
deterministic set of generated structures: the dcdft cell as a supercell of >= 32 atoms
(repeated along the shortest lengths first), then

  ``rattle05``  every atom displaced by a Gaussian of 0.05 Å per coordinate (seed 1)
  ``rattle10``  the same with 0.10 Å (seed 2)
  ``vacancy``   atom 0 removed, rattled 0.02 Å (seed 3)
  ``slab``      the supercell cleaved along its third cell vector (8 Å of vacuum on each
                side, periodic cell kept), rattled 0.02 Å (seed 4)

Each structure goes through CHGNet 0.3.0, CHGNet 0.2.0 and SevenNet-0 (one forward pass each,
``platoscope.backends.load_backend(spec).compute``, torch threads 1). Per atom: the mean over the
three model pairs of |F_a - F_b| (eV/Å), the committee disagreement. Per element:

  ``D``       median over the element's atoms (all four structures) of that disagreement
  ``F``       median over the same atoms of |mean_m F_m| (the committee-mean force norm)
  ``D_rel``   D / F

An element where a model raises (e.g. an isolated atom) is left out of the table and named under
``skipped`` with the error. Forces are cached per model and element under
``~/.cache/platoscope/prior`` (keyed by the recipe version).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-sevenn/bin/python builders/build_element_prior.py
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = ("chgnet:0.3.0", "chgnet:0.2.0", "sevenn:7net-0")
MIN_ATOMS = 32
RECIPE_VERSION = 1
RECIPE = {
    "source": "ase.collections.dcdft (71 elemental solids)",
    "supercell": f"dcdft cell repeated along its shortest lengths until >= {MIN_ATOMS} atoms",
    "structures": {
        "rattle05": "Gaussian displacement sigma 0.05 Å per coordinate, numpy seed 1",
        "rattle10": "Gaussian displacement sigma 0.10 Å per coordinate, numpy seed 2",
        "vacancy": "atom 0 removed, then rattled 0.02 Å, seed 3",
        "slab": "cleaved along cell vector 3 (ase Atoms.center(vacuum=8, axis=2), periodic "
                "cell kept), rattled 0.02 Å, seed 4",
    },
    "per_atom": "mean over the 3 model pairs of |F_a - F_b| (eV/Å)",
    "D": "median over the element's atoms of the per-atom disagreement (eV/Å)",
    "F": "median over the element's atoms of |mean over models of F_m| (eV/Å)",
    "D_rel": "D / F",
    "version": RECIPE_VERSION,
}
OUT = REPO / "results" / "element_prior.json"
SHIPPED = REPO / "src" / "platoscope" / "data" / "element_prior.json"  # the same table, shipped


def supercell(atoms):
    """Repeat ``atoms`` along its shortest cell lengths until it has >= MIN_ATOMS atoms."""
    rep = [1, 1, 1]
    lengths = atoms.cell.lengths()
    while len(atoms) * int(np.prod(rep)) < MIN_ATOMS:
        i = int(np.argmin([lengths[k] * rep[k] for k in range(3)]))
        rep[i] += 1
    return atoms.repeat(rep)


def structures(symbol: str) -> dict:
    """The four generated structures of one dcdft element (deterministic)."""
    from ase.collections import dcdft

    base = supercell(dcdft[symbol])
    base.calc = None
    base.info = {}

    def rattled(a, std, seed):
        a = a.copy()
        a.positions += np.random.default_rng(seed).normal(0.0, std, a.positions.shape)
        return a

    vac = base.copy()
    del vac[0]
    slab = base.copy()
    slab.center(vacuum=8.0, axis=2)
    return {"rattle05": rattled(base, 0.05, 1), "rattle10": rattled(base, 0.10, 2),
            "vacancy": rattled(vac, 0.02, 3), "slab": rattled(slab, 0.02, 4)}


def cache_file(spec: str, symbol: str) -> Path:
    from platoscope.paths import cache_dir

    d = cache_dir() / "prior" / f"v{RECIPE_VERSION}" / spec.replace(":", "-")
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{symbol}.npz"


def model_forces(be, symbol: str, structs: dict) -> dict:
    """{name: (N, 3) forces} of one model on one element's structures (cached)."""
    path = cache_file(be.spec, symbol)
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    out = {}
    for name, atoms in structs.items():
        res, _ = be.compute(atoms.copy(), ["energy", "forces"])
        out[name] = np.asarray(res["forces"], dtype=np.float64)
    np.savez(path, **out)
    return out


def main() -> None:
    import torch
    from ase.collections import dcdft

    from platoscope.backends import load_backend
    from platoscope.provenance import invocation, package_versions

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    backends = {s: load_backend(s) for s in MODELS}
    table, skipped = {}, {}
    t0 = time.time()
    for symbol in dcdft.names:
        structs = structures(symbol)
        forces = {}
        try:
            for spec, be in backends.items():
                forces[spec] = model_forces(be, symbol, structs)
        except Exception as err:  # a model that cannot run this element: left out, named
            skipped[symbol] = f"{spec}: {type(err).__name__}: {str(err)[:200]}"
            print(f"{symbol}: skipped ({skipped[symbol]})", flush=True)
            continue
        dis, fmean = [], []
        for name in structs:
            fs = [forces[s][name] for s in MODELS]
            pair = [np.linalg.norm(a - b, axis=1) for a, b in itertools.combinations(fs, 2)]
            dis.append(np.mean(pair, axis=0))
            fmean.append(np.linalg.norm(np.mean(fs, axis=0), axis=1))
        dis, fmean = np.concatenate(dis), np.concatenate(fmean)
        D, F = float(np.median(dis)), float(np.median(fmean))
        table[symbol] = {"Z": int(structs["rattle05"].numbers[0]), "D": round(D, 6),
                         "F": round(F, 6), "D_rel": round(D / F, 6), "n_atoms": len(dis)}
        print(f"{symbol}: D {D:.4f} F {F:.4f} D/F {D / F:.3f} ({time.time() - t0:.0f} s)",
              flush=True)
    out = {"format": "platoscope.element_prior/1",
           "description": "per-element committee disagreement on generated elemental "
                          "structures (builders/build_element_prior.py)",
           "recipe": RECIPE,
           "models": {s: {"weights_sha256": be.weights_sha256(), "layer": be.layer}
                      for s, be in backends.items()},
           "versions": package_versions(), "invocation": invocation(),
           "skipped": skipped, "elements": table}
    for path in (OUT, SHIPPED):
        path.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUT} and {SHIPPED}: {len(table)} elements, {len(skipped)} skipped", file=sys.stderr)


if __name__ == "__main__":
    main()
