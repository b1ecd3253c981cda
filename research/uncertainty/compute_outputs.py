"""Model outputs on mlearn Li/Si (train + test) for the uncertainty study (issue 11).

For each model: per structure one ``backend.compute`` (energy, forces and the default layer's
per-atom features from one forward pass, as a monitored MD step), plus the model's default
reference bank (built and cached by :func:`platoscope.reference.default_bank` when not
shipped). Cached under ``$PLATOSCOPE_UNC_CACHE`` (default ``~/.cache/platoscope/uncertainty``).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-sevenn/bin/python \
        research/uncertainty/compute_outputs.py chgnet:0.3.0 chgnet:0.2.0 sevenn:7net-0
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "mlearn"
CACHE = Path(os.environ.get("PLATOSCOPE_UNC_CACHE",
                            Path.home() / ".cache" / "platoscope" / "uncertainty"))
FILES = ("Li_training.json.gz", "Li_test.json", "Si_training.json.gz", "Si_test.json")


def cache_path(spec: str, fname: str) -> Path:
    return CACHE / f"{spec.replace(':', '-')}__{fname.split('.')[0]}.npz"


def load_split(fname: str) -> list:
    from platoscope.readers import read_structures

    return list(read_structures(DATA / fname))


def compute(spec: str) -> None:
    import torch

    from platoscope.backends import load_backend

    torch.set_num_threads(1)
    be = load_backend(spec)
    CACHE.mkdir(parents=True, exist_ok=True)
    for fname in FILES:
        path = cache_path(spec, fname)
        if path.is_file():
            continue
        structs = load_split(fname)
        E, F, X, T = [], [], [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for atoms in structs:
                t0 = time.perf_counter()
                res, feats = be.compute(atoms.copy(), ["energy", "forces"])
                T.append(time.perf_counter() - t0)
                E.append(float(res["energy"]))
                F.append(np.asarray(res["forces"], dtype=np.float64))
                X.append(feats.astype(np.float32))
        np.savez(path, E=np.array(E), F=np.concatenate(F), X=np.concatenate(X), T=np.array(T),
                 fingerprint=np.array(be.fingerprint), layer=np.array(be.layer))
        print(f"[{time.strftime('%H:%M:%S')}] {spec} {fname}: {len(structs)} structures",
              flush=True)
    from platoscope import AnchorSet
    from platoscope.reference import default_bank

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bank = default_bank(be, AnchorSet.default())
    print(f"[{time.strftime('%H:%M:%S')}] {spec} bank {len(bank)} atoms", flush=True)


if __name__ == "__main__":
    for s in sys.argv[1:]:
        compute(s)
