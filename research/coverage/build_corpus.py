#!/usr/bin/env python
"""Build the broad anchor corpus for the coverage study (issue 10), deterministically.

Writes ``research/coverage/_cache/corpus.extxyz.gz`` (every structure carries ``info['source']``
and ``info['source_id']``) and ``corpus_manifest.json`` (counts per source, data hashes, the
command line and commit). Parts:

* ``mp20_train``: all of MP-20 ``train.csv``;
* ``perov5_anchor`` / ``carbon24_anchor``: the even-indexed rows of Perov-5 / Carbon-24 ``val.csv``
  (the odd rows are the evaluation half, never in the corpus);
* ``mlearn_{Li,Si}_train``: every 4th structure of the mlearn *training* files (test files are
  never read here);
* ``dcdft`` / ``dcdft_rattled``: ASE's 71 elemental solids, perfect and as rattled 2x2x2 supercells;
* ``proto_*``: generated bulk prototypes (fcc, bcc, hcp, diamond, sc for every element in
  1..83 except noble gases/H as solids; rocksalt, zincblende, CsCl for common binaries), each
  perfect (primitive) and as a strained (+-4 %) + rattled (0.05 A) supercell;
* ``surface``: a few slabs; ``vacancy`` / ``interstitial``: point defects in supercells;
* ``molecule``: small molecules in a 12 A periodic box;
* ``md``: short 1500 K Langevin runs with CHGNet 0.3.0 (``--md-steps``), snapshots every 10 steps.

    PYTHONPATH=src python research/coverage/build_corpus.py [--data /work/shared/data]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bcc110, bulk, diamond100, fcc111, hcp0001, molecule
from ase.data import atomic_numbers, chemical_symbols, covalent_radii

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEED = 20261203
NOBLE = {2, 10, 18, 36, 54, 86}
# elements treated as solids for generated prototypes (H, noble gases and Z > 83 excluded)
PROTO_Z = [z for z in range(3, 84) if z not in NOBLE]
CATIONS = ["Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Sr", "Ba", "Zn", "Cd", "Al", "Ga", "In",
           "Ti", "Mn", "Fe", "Co", "Ni", "Cu", "Ag", "Pb", "Sn", "Sc", "Y", "Zr"]
ANIONS = ["O", "S", "Se", "Te", "F", "Cl", "Br", "I", "N", "P", "As", "Sb", "C", "H"]
MOLECULES = ["H2O", "CH4", "NH3", "CO2", "C6H6", "CH3OH", "C2H4", "HCN", "SH2", "SiH4", "PH3",
             "HCl", "CO", "N2", "O2", "C2H6", "CH3CH2OH", "CH3COOH", "HCOOH", "C4H4O",
             "SO2", "SiF4", "CH3SH", "CS2"]
MD_SYSTEMS = ["Si_diamond", "Cu_fcc", "Li_bcc", "NaCl_rocksalt", "Fe_bcc", "C_diamond",
              "Al_fcc", "MgO_rocksalt", "GaAs_zincblende", "TiO2_proxy_rocksalt"]


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                       text=True).strip()
    except Exception:
        return "unknown"


def tag(atoms: Atoms, source: str, sid: str) -> Atoms:
    a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    a.info["source"] = source
    a.info["source_id"] = str(sid)
    return a


def nn_distance(symbols: list[str]) -> float:
    """Rough nearest-neighbour distance (A): sum of covalent radii, floored for tiny atoms."""
    return max(float(sum(covalent_radii[atomic_numbers[s]] for s in symbols)), 1.6)


def elemental(sym: str, kind: str) -> Atoms:
    d = nn_distance([sym, sym])
    if kind == "fcc":
        return bulk(sym, "fcc", a=d * np.sqrt(2))
    if kind == "bcc":
        return bulk(sym, "bcc", a=2 * d / np.sqrt(3))
    if kind == "hcp":
        return bulk(sym, "hcp", a=d, c=d * np.sqrt(8 / 3))
    if kind == "diamond":
        return bulk(sym, "diamond", a=4 * d / np.sqrt(3))
    if kind == "sc":
        return bulk(sym, "sc", a=d)
    raise ValueError(kind)


def binary(a_sym: str, b_sym: str, kind: str) -> Atoms:
    d = nn_distance([a_sym, b_sym])
    if kind == "rocksalt":
        return bulk(a_sym + b_sym, "rocksalt", a=2 * d)
    if kind == "zincblende":
        return bulk(a_sym + b_sym, "zincblende", a=4 * d / np.sqrt(3))
    if kind == "cesiumchloride":
        return bulk(a_sym + b_sym, "cesiumchloride", a=2 * d / np.sqrt(3))
    raise ValueError(kind)


def distorted(atoms: Atoms, rng: np.random.Generator, reps=(2, 2, 2), strain=0.04,
              rattle=0.05) -> Atoms:
    """Supercell with a random symmetric strain (each component in +-strain) and rattled atoms."""
    a = atoms.repeat(reps)
    e = rng.uniform(-strain, strain, (3, 3))
    e = (e + e.T) / 2
    a.set_cell(a.cell.array @ (np.eye(3) + e), scale_atoms=True)
    a.positions += rng.normal(0, rattle, a.positions.shape)
    return a


def read(path: Path):
    from platoscope.readers import read_structures
    return list(read_structures(str(path)))


def build(data: Path, md_steps: int) -> tuple[list[Atoms], dict]:
    rng = np.random.default_rng(SEED)
    out: list[Atoms] = []
    hashes: dict[str, str] = {}
    from platoscope.readers import structures_hash

    s = read(data / "mp20_partial" / "train.csv")
    hashes["mp20_train"] = structures_hash(s)
    out += [tag(a, "mp20_train", a.info.get("material_id", i)) for i, a in enumerate(s)]
    for name, fname in (("perov5", "perov5/val.csv"), ("carbon24", "carbon24/val.csv")):
        s = read(data / fname)
        hashes[name] = structures_hash(s)
        out += [tag(s[i], f"{name}_anchor", f"row{i}:{s[i].info.get('material_id', '')}")
                for i in range(0, len(s), 2)]
    for el in ("Li", "Si"):
        p = data / "mlearn" / f"{el}_training.json"
        if not p.exists():
            p = p.with_suffix(".json.gz")
        s = read(p)
        hashes[f"mlearn_{el}_train"] = structures_hash(s)
        out += [tag(s[i], f"mlearn_{el}_train", f"{p.name}:{i}") for i in range(0, len(s), 4)]

    from ase.collections import dcdft
    for name in sorted(dcdft.names):
        a = dcdft[name]
        out.append(tag(a, "dcdft", name))
        reps = tuple(int(max(1, np.ceil(8 / len(a)) ** (1 / 3) + 0.5)) for _ in range(3))
        out.append(tag(distorted(a, rng, reps, strain=0.03), "dcdft_rattled", name))

    for z in PROTO_Z:
        sym = chemical_symbols[z]
        for kind in ("fcc", "bcc", "hcp", "diamond", "sc"):
            a = elemental(sym, kind)
            out.append(tag(a, f"proto_{kind}", sym))
            reps = (2, 2, 2) if len(a) <= 2 else (1, 1, 1)
            out.append(tag(distorted(a, rng, reps), f"proto_{kind}_distorted", sym))
    for c in CATIONS:
        for an in ANIONS:
            for kind in ("rocksalt", "zincblende", "cesiumchloride"):
                if kind != "rocksalt" and (c + an) in ("KH", "CsH", "RbH"):
                    continue
                a = binary(c, an, kind)
                out.append(tag(a, f"proto_{kind}", c + an))
                if (CATIONS.index(c) + ANIONS.index(an)) % 2 == 0:
                    out.append(tag(distorted(a, rng, (2, 2, 2)), f"proto_{kind}_distorted",
                                   c + an))

    for sym in ("Cu", "Al", "Pt", "Ni", "Au", "Ag", "Pd"):
        d = nn_distance([sym, sym])
        out.append(tag(fcc111(sym, (2, 2, 4), a=d * np.sqrt(2), vacuum=6.0, periodic=True),
                       "surface", f"{sym}(111)"))
    for sym in ("Fe", "W", "Mo", "Cr"):
        d = nn_distance([sym, sym])
        out.append(tag(bcc110(sym, (2, 2, 4), a=2 * d / np.sqrt(3), vacuum=6.0, periodic=True),
                       "surface", f"{sym}(110)"))
    for sym in ("Si", "Ge", "C"):
        d = nn_distance([sym, sym])
        out.append(tag(diamond100(sym, (2, 2, 4), a=4 * d / np.sqrt(3), vacuum=6.0,
                                  periodic=True), "surface", f"{sym}(100)"))
    for sym in ("Mg", "Ti", "Zn", "Co"):
        d = nn_distance([sym, sym])
        out.append(tag(hcp0001(sym, (2, 2, 4), a=d, c=d * np.sqrt(8 / 3), vacuum=6.0,
                               periodic=True), "surface", f"{sym}(0001)"))

    defect_hosts = [("Cu", "fcc"), ("Al", "fcc"), ("Ni", "fcc"), ("Fe", "bcc"), ("W", "bcc"),
                    ("Si", "diamond"), ("Ge", "diamond"), ("C", "diamond"), ("Ti", "hcp"),
                    ("Mg", "hcp")]
    for sym, kind in defect_hosts:
        host = elemental(sym, kind)
        host = host.repeat((3, 3, 3) if len(host) == 1 else (2, 2, 2))
        v = host.copy()
        del v[0]
        v.positions += rng.normal(0, 0.02, v.positions.shape)
        out.append(tag(v, "vacancy", f"{sym}_{kind}"))
        it = host.copy()
        # interstitial at the largest empty point among a few candidates
        cands = rng.uniform(0, 1, (64, 3)) @ it.cell.array
        from ase.geometry import get_distances
        dmin = get_distances(cands, it.positions, cell=it.cell, pbc=True)[1].min(axis=1)
        it.append(sym)
        it.positions[-1] = cands[int(np.argmax(dmin))]
        out.append(tag(it, "interstitial", f"{sym}_{kind}"))
    for c, an in (("Mg", "O"), ("Na", "Cl"), ("Ga", "As"), ("Zn", "S")):
        kind = "zincblende" if c in ("Ga", "Zn") else "rocksalt"
        host = binary(c, an, kind).repeat((2, 2, 2))
        v = host.copy()
        del v[1]
        out.append(tag(v, "vacancy", f"{c}{an}_{kind}_anion"))
        v = host.copy()
        del v[0]
        out.append(tag(v, "vacancy", f"{c}{an}_{kind}_cation"))

    for m in MOLECULES:
        a = molecule(m)
        a.set_cell([12.0, 12.0, 12.0])
        a.center()
        a.pbc = True
        out.append(tag(a, "molecule", m))

    if md_steps > 0:
        out += md_snapshots(rng, md_steps)

    manifest = {"data_hashes": hashes}
    return out, manifest


def md_host(name: str) -> Atoms:
    sym, kind = name.split("_", 1)
    if kind in ("fcc", "bcc", "diamond", "hcp", "sc"):
        a = elemental(sym, kind)
    else:
        kind = kind.replace("_proxy", "").replace("proxy_", "")
        pair = {"NaCl": ("Na", "Cl"), "MgO": ("Mg", "O"), "GaAs": ("Ga", "As"),
                "TiO2": ("Ti", "O")}[sym]
        a = binary(*pair, kind)
    reps = 1
    while len(a) * reps ** 3 < 24:
        reps += 1
    return a.repeat((reps, reps, reps))


def md_snapshots(rng: np.random.Generator, steps: int) -> list[Atoms]:
    import torch
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    torch.set_num_threads(1)
    model = CHGNet.load(model_name="0.3.0", verbose=False)
    calc = CHGNetCalculator(model=model, use_device="cpu")
    out = []
    for name in MD_SYSTEMS:
        a = md_host(name)
        a.calc = calc
        MaxwellBoltzmannDistribution(a, temperature_K=1500,
                                     rng=np.random.default_rng(rng.integers(1 << 31)))
        dyn = Langevin(a, 2 * units.fs, temperature_K=1500, friction=0.02, fixcm=False,
                       rng=np.random.default_rng(rng.integers(1 << 31)))
        for step in range(10, steps + 1, 10):
            dyn.run(10)
            out.append(tag(a, "md", f"{name}:step{step}"))
        print(f"md {name}: {len(a)} atoms, {steps} steps", file=sys.stderr)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path("/work/shared/data")
    p.add_argument("--data", type=Path, default=shared if shared.exists() else ROOT / "data",
                   help="data root with mp20_partial/, perov5/, carbon24/, mlearn/")
    p.add_argument("--out", type=Path, default=HERE / "_cache" / "corpus.extxyz.gz")
    p.add_argument("--md-steps", type=int, default=40)
    a = p.parse_args(argv)
    import ase.io

    structures, manifest = build(a.data, a.md_steps)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(a.out, structures, format="extxyz")
    counts: dict[str, list[int]] = {}
    for s in structures:
        c = counts.setdefault(s.info["source"], [0, 0])
        c[0] += 1
        c[1] += len(s)
    from platoscope.readers import structures_hash
    manifest.update({
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "commit": git_commit(), "data_root": str(a.data), "seed": SEED,
        "n_structures": len(structures), "n_atoms": int(sum(len(s) for s in structures)),
        "corpus_hash": structures_hash(structures),
        "per_source": {k: {"structures": v[0], "atoms": v[1]} for k, v in sorted(counts.items())},
    })
    (a.out.parent / "corpus_manifest.json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(manifest["per_source"], indent=0))
    print(f"{manifest['n_structures']} structures, {manifest['n_atoms']} atoms -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
