"""Train a tiny, real MACE model on ASE EMT data, for the test suite.

No MACE weights ship offline, so the tests use a model trained here from scratch. It is a genuine
MACE architecture (``ScaleShiftMACE``, two ``RealAgnosticResidualInteractionBlock`` layers, hidden
irreps ``16x0e + 16x1o``), so that code deriving the invariant slice of ``node_feats`` from the
irreps of each layer is exercised on a model with non-scalar channels. Its accuracy does not
matter; its shapes and behaviour do.

Steps (deterministic: fixed seeds for the data and for ``mace_run_train``):

1. build ~240 small cells (4-32 atoms) of Cu, Al, Ni, Ag, Au, Pd, Pt and of binary alloys: strained
   and rattled bulk (fcc primitive and conventional, supercells), vacancies, random substitutional
   alloys and ordered L1_2 / L1_0 cells; label them with ASE's EMT calculator (energy, forces,
   stress) and write train/valid extxyz files to a temporary directory;
2. run ``mace_run_train`` (``python -m mace.cli.run_train``) on CPU in float64 for a few epochs;
3. copy ``<name>.model`` to the target path (default ``tests/data/mace_emt_tiny.model``) and write
   ``<target stem>.json`` beside it: how it was made, package versions, the file's sha256 and the
   validation errors of the saved model, evaluated here with ``MACECalculator``.

Run with the MACE environment's interpreter (mace-torch and ase installed), e.g.::

    .venv-mace/bin/python builders/train_tiny_mace.py [tests/data/mace_emt_tiny.model]

It takes about two minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TARGET = REPO / "tests" / "data" / "mace_emt_tiny.model"
ELEMENTS = ["Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"]
ALLOY_PAIRS = [("Cu", "Au"), ("Cu", "Ni"), ("Ag", "Au"), ("Pd", "Pt"), ("Al", "Ni"), ("Cu", "Pd"),
               ("Ag", "Pd"), ("Ni", "Pt")]
DATA_SEED = 20240611
TRAIN_SEED = 7
N_VALID = 40

HYPERPARAMETERS = {
    "model": "ScaleShiftMACE",
    "interaction": "RealAgnosticResidualInteractionBlock",
    "num_channels": 16,
    "max_L": 1,  # hidden irreps 16x0e + 16x1o
    "max_ell": 2,
    "correlation": 2,
    "num_interactions": 2,
    "r_max": 4.0,
    "num_radial_basis": 6,
    "MLP_irreps": "8x0e",
    "radial_MLP": "[16, 16]",
    "E0s": "average",
    "loss": "stress",
    "energy_weight": 1.0,
    "forces_weight": 10.0,
    "stress_weight": 10.0,
    "batch_size": 8,
    "valid_batch_size": 20,
    "lr": 0.01,
    "max_num_epochs": 12,
    "default_dtype": "float64",
    "device": "cpu",
    "seed": TRAIN_SEED,
}


def _strain(atoms: Atoms, rng: np.random.Generator, amount: float) -> Atoms:
    eps = rng.uniform(-amount, amount, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return atoms


def _rattle(atoms: Atoms, rng: np.random.Generator, stdev: float) -> Atoms:
    atoms.positions += rng.normal(0.0, stdev, size=atoms.positions.shape)
    return atoms


def _vegard(atoms: Atoms) -> Atoms:
    """Rescale a mixed cell to the composition-weighted mean fcc lattice constant."""
    a_ref = {s: bulk(s, "fcc").cell.lengths()[0] for s in set(atoms.get_chemical_symbols())}
    a_mix = np.mean([a_ref[s] for s in atoms.get_chemical_symbols()])
    a_now = np.cbrt(4.0 * atoms.get_volume() / len(atoms)) / np.sqrt(2)  # fcc: V = a^3 / 4
    atoms.set_cell(atoms.cell.array * (a_mix / a_now), scale_atoms=True)
    return atoms


def _base_cells(symbol: str, rng: np.random.Generator) -> list[Atoms]:
    """fcc cells of 4-32 atoms with a lattice constant scaled by up to +-4 %."""
    a = bulk(symbol, "fcc").cell.lengths()[0] * np.sqrt(2) * rng.uniform(0.96, 1.04)
    prim = bulk(symbol, "fcc", a=a)
    cub = bulk(symbol, "fcc", a=a, cubic=True)
    return [prim.repeat((2, 2, 1)), prim.repeat(2), cub, cub.repeat((2, 1, 1)),
            cub.repeat((2, 2, 1)), cub.repeat(2)]


def build_structures(seed: int = DATA_SEED) -> list[Atoms]:
    """Strained, rattled, defective and mixed fcc cells (unlabelled)."""
    rng = np.random.default_rng(seed)
    out: list[Atoms] = []
    for symbol in ELEMENTS:
        for _ in range(3):  # bulk: every cell size, three random draws
            for atoms in _base_cells(symbol, rng):
                _strain(atoms, rng, 0.03)
                out.append(_rattle(atoms, rng, rng.uniform(0.02, 0.10)))
        for _ in range(3):  # vacancies
            atoms = _base_cells(symbol, rng)[rng.integers(3, 6)]
            del atoms[int(rng.integers(len(atoms)))]
            out.append(_rattle(_strain(atoms, rng, 0.02), rng, 0.05))
        # a compressed and an expanded cell, for the repulsive and attractive range
        for scale in (0.92, 1.08):
            atoms = bulk(symbol, "fcc", cubic=True).repeat((2, 1, 1))
            atoms.set_cell(atoms.cell.array * scale, scale_atoms=True)
            out.append(_rattle(atoms, rng, 0.05))
    for a_sym, b_sym in ALLOY_PAIRS:
        for _ in range(5):  # random substitutional alloys
            atoms = _base_cells(a_sym, rng)[rng.integers(1, 6)]
            frac = rng.uniform(0.2, 0.8)
            symbols = np.where(rng.random(len(atoms)) < frac, b_sym, a_sym)
            atoms.set_chemical_symbols(symbols.tolist())
            atoms = _vegard(atoms)
            out.append(_rattle(_strain(atoms, rng, 0.03), rng, 0.08))
        for kind in ("L12", "L10"):  # ordered cells
            a = 0.5 * (bulk(a_sym, "fcc").cell.lengths()[0]
                       + bulk(b_sym, "fcc").cell.lengths()[0]) * np.sqrt(2)
            atoms = bulk(a_sym, "fcc", a=a, cubic=True)
            if kind == "L12":
                atoms.symbols[0] = b_sym
            else:
                atoms.symbols[[0, 1]] = b_sym
            atoms = atoms.repeat((2, 1, 1))
            out.append(_rattle(_strain(atoms, rng, 0.02), rng, 0.05))
    for _ in range(8):  # ternary / quaternary mixtures
        atoms = _base_cells("Cu", rng)[rng.integers(1, 6)]
        atoms.set_chemical_symbols(rng.choice(ELEMENTS, size=len(atoms)).tolist())
        atoms = _strain(_vegard(atoms), rng, 0.02)
        out.append(_rattle(atoms, rng, 0.05))
    return out


def label(structures: list[Atoms]) -> list[Atoms]:
    """Attach EMT energy, forces and stress as REF_* keys (no calculator in the written file)."""
    labelled = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = EMT()
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        stress = atoms.get_stress(voigt=True)
        atoms.calc = None
        atoms.info["REF_energy"] = float(energy)
        atoms.info["REF_stress"] = stress
        atoms.arrays["REF_forces"] = forces
        labelled.append(atoms)
    return labelled


def validation_errors(model_path: Path, valid: list[Atoms]) -> dict[str, float]:
    """RMSEs of the saved model on the validation frames, evaluated with ``MACECalculator``."""
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float64")
    de, df, ds = [], [], []
    for ref in valid:
        atoms = ref.copy()
        atoms.calc = calc
        de.append((atoms.get_potential_energy() - ref.info["REF_energy"]) / len(atoms))
        df.append((atoms.get_forces() - ref.arrays["REF_forces"]).ravel())
        ds.append(atoms.get_stress(voigt=True) - ref.info["REF_stress"])

    def rmse(x):
        return float(np.sqrt(np.mean(np.square(np.concatenate([np.ravel(v) for v in x])))))

    return {"energy_rmse_meV_per_atom": 1e3 * rmse(de), "forces_rmse_meV_per_A": 1e3 * rmse(df),
            "stress_rmse_meV_per_A3": 1e3 * rmse(ds)}


def train(workdir: Path, train_file: Path, valid_file: Path) -> Path:
    hp = HYPERPARAMETERS
    cmd = [sys.executable, "-m", "mace.cli.run_train", "--name", "mace_emt_tiny",
           "--work_dir", str(workdir), "--train_file", str(train_file),
           "--valid_file", str(valid_file), "--energy_key", "REF_energy",
           "--forces_key", "REF_forces", "--stress_key", "REF_stress",
           "--compute_stress", "True", "--error_table", "PerAtomRMSEstressvirials",
           "--num_workers", "0", "--save_cpu", "--plot", "False", "--eval_interval", "1"]
    for key, value in hp.items():
        cmd += [f"--{key}", str(value)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    log = workdir / "train.out"
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=fh, stderr=subprocess.STDOUT,
                              check=False)
    if proc.returncode != 0:
        sys.stderr.write(log.read_text()[-5000:])
        raise SystemExit(f"mace_run_train failed with exit code {proc.returncode}")
    return workdir / "mace_emt_tiny.model"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", type=Path, default=DEFAULT_TARGET,
                        help="where to write the .model file (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = parser.parse_args(argv)

    structures = label(build_structures())
    rng = np.random.default_rng(DATA_SEED + 1)
    order = rng.permutation(len(structures))
    valid = [structures[i] for i in order[:N_VALID]]
    train_set = [structures[i] for i in order[N_VALID:]]

    workdir = Path(tempfile.mkdtemp(prefix="mace_emt_tiny_"))
    try:
        train_file, valid_file = workdir / "train.xyz", workdir / "valid.xyz"
        write(train_file, train_set, format="extxyz")
        write(valid_file, valid, format="extxyz")
        start = time.perf_counter()
        model_file = train(workdir, train_file, valid_file)
        seconds = time.perf_counter() - start

        target: Path = args.target
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_file, target)
        errors = validation_errors(target, read(valid_file, index=":"))
        n_atoms = [len(a) for a in structures]
        info = {
            "description": "Tiny MACE model trained from scratch on ASE EMT data, for tests "
                           "only (not a physical potential). Built by builders/train_tiny_mace.py.",
            "file": target.name,
            "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
            "size_bytes": target.stat().st_size,
            "elements": ELEMENTS,
            "alloy_pairs": ["".join(p) for p in ALLOY_PAIRS],
            "n_structures": len(structures),
            "n_train": len(train_set),
            "n_valid": len(valid),
            "atoms_per_structure": [min(n_atoms), max(n_atoms)],
            "labels": "ase.calculators.emt.EMT energy, forces, stress",
            "data_seed": DATA_SEED,
            "hyperparameters": HYPERPARAMETERS,
            "hidden_irreps": "16x0e + 16x1o",
            "validation": errors,
            "train_seconds": round(seconds, 1),
            "versions": {p: version(p) for p in ("mace-torch", "e3nn", "torch", "ase", "numpy")},
            "python": sys.version.split()[0],
        }
        info_path = target.with_suffix(".json")
        info_path.write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps(info, indent=2))
        print(f"wrote {target} and {info_path}")
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
