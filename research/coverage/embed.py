#!/usr/bin/env python
"""Embed the coverage corpus and the evaluation sets with each model; cache per-atom features.

Sets: ``corpus`` (``_cache/corpus.extxyz.gz`` from build_corpus.py), ``mp20_val`` (all of MP-20
val.csv), ``perov5_eval`` / ``carbon24_eval`` (odd rows of Perov-5 / Carbon-24 val.csv, a seeded
random subset of ``--n-perov5`` / ``--n-carbon24`` structures). Output:
``_cache/emb/<set>/<model-slug>.npz`` with ``embeddings`` float32 (M, D), ``numbers``,
``structure_index``, ``atom_index``, ``valid`` (False for atoms of structures the model refused),
``model``, ``layer``, ``fingerprint``, ``data_hash``; ``_cache/sets/<set>.extxyz.gz`` holds the
evaluation structures (``info['source_id']`` = row in val.csv).

    PYTHONPATH=src python research/coverage/embed.py --models chgnet:0.3.0 sevenn:7net-0
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "research"))  # embed_corpus.py
CACHE = HERE / "_cache"
LAYERS = {"chgnet:0.3.0": "atom_fea", "chgnet:0.2.0": "atom_fea",
          "sevenn:7net-0": "1_equivariant_gate"}
EVAL_SEED = 0


def slug(spec: str) -> str:
    return spec.replace(":", "_").replace("@", "_").replace("/", "_")


def eval_sets(data: Path, n_perov: int, n_carbon: int) -> dict[str, list]:
    """The evaluation structures, written once to _cache/sets/ and read from there after."""
    import ase.io

    from platoscope.readers import read_structures
    out = {}
    spec = {"mp20_val": ("mp20_partial/val.csv", None, False),
            "perov5_eval": ("perov5/val.csv", n_perov, True),
            "carbon24_eval": ("carbon24/val.csv", n_carbon, True)}
    for name, (rel, n, odd) in spec.items():
        path = CACHE / "sets" / f"{name}.extxyz.gz"
        if path.exists():
            out[name] = ase.io.read(path, ":")
            continue
        s = list(read_structures(str(data / rel)))
        rows = np.arange(1, len(s), 2) if odd else np.arange(len(s))
        if n is not None and n < rows.size:
            rows = np.sort(np.random.default_rng(EVAL_SEED).choice(rows, n, replace=False))
        chosen = []
        for r in rows:
            a = s[int(r)]
            a.info = {"source": name, "source_id": f"row{int(r)}:{a.info.get('material_id', '')}"}
            chosen.append(a)
        path.parent.mkdir(parents=True, exist_ok=True)
        ase.io.write(path, chosen, format="extxyz")
        out[name] = chosen
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path("/work/shared/data")
    p.add_argument("--data", type=Path, default=shared if shared.exists() else ROOT / "data")
    p.add_argument("--models", nargs="+", default=list(LAYERS))
    p.add_argument("--sets", nargs="+", default=["mp20_val", "perov5_eval", "carbon24_eval",
                                                 "corpus"])
    p.add_argument("--n-perov5", type=int, default=600)
    p.add_argument("--n-carbon24", type=int, default=300)
    a = p.parse_args(argv)
    import ase.io
    import torch
    from embed_corpus import embed_all_layers, layer_fingerprint, save_npz
    from tqdm.auto import tqdm

    from platoscope.backends import load_backend
    from platoscope.readers import structures_hash

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    sets = eval_sets(a.data, a.n_perov5, a.n_carbon24)
    if "corpus" in a.sets:
        sets["corpus"] = ase.io.read(CACHE / "corpus.extxyz.gz", ":")
    for spec in a.models:
        backend = load_backend(spec, layer=LAYERS[spec])
        fp = layer_fingerprint(backend, LAYERS[spec])
        for name in a.sets:
            structures = sets[name]
            dhash = structures_hash(structures)
            path = CACHE / "emb" / name / f"{slug(spec)}.npz"
            if path.exists():
                with np.load(path) as z:
                    if str(z["data_hash"]) == dhash and str(z["fingerprint"]) == fp:
                        print(f"{spec} / {name}: cached")
                        continue
            t0 = time.perf_counter()
            with tqdm(total=len(structures), desc=f"{spec} / {name}", mininterval=30) as bar:
                feats, failed = embed_all_layers(
                    backend, structures, [LAYERS[spec]], batch_size=16,
                    chunk=64 if backend.family == "chgnet" else 16, bar=bar)
            rows = feats[LAYERS[spec]]
            dim = next(f.shape[1] for f in rows if f is not None)
            emb = np.concatenate([f if f is not None else
                                  np.full((len(structures[i]), dim), np.nan, np.float32)
                                  for i, f in enumerate(rows)]).astype(np.float32)
            save_npz(path, embeddings=emb,
                     numbers=np.concatenate([s.numbers for s in structures]).astype(np.int16),
                     structure_index=np.concatenate(
                         [np.full(len(s), i, np.int32) for i, s in enumerate(structures)]),
                     atom_index=np.concatenate([np.arange(len(s), dtype=np.int32)
                                                for s in structures]),
                     valid=np.isfinite(emb).all(axis=1), failed=np.asarray(failed, np.int64),
                     model=np.array(spec), layer=np.array(LAYERS[spec]),
                     fingerprint=np.array(fp), data_hash=np.array(dhash),
                     seconds=np.array(time.perf_counter() - t0))
            print(f"{spec} / {name}: {len(emb)} atoms in {time.perf_counter() - t0:.0f} s, "
                  f"refused structures {failed}", flush=True)
        del backend
    return 0


if __name__ == "__main__":
    sys.exit(main())
