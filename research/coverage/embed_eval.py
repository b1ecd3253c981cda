#!/usr/bin/env python
"""Embed the three evaluation sets of the coverage study with CHGNet 0.3.0 and SevenNet-0.

The sets are those of ``embed.py`` (``mp20_val``: all of MP-20 val.csv; ``perov5_eval`` /
``carbon24_eval``: 600 / 300 seeded structures from the odd rows of Perov-5 / Carbon-24
val.csv, :func:`embed.eval_sets`), written to ``_cache/sets/``; the features (each backend's
default layer: CHGNet ``atom_fea``, SevenNet-0 ``1_equivariant_gate``) go to
``_cache/emb/<set>/<model>.npz`` in ``embed.py``'s layout (``embeddings``, ``numbers``,
``structure_index``, ``atom_index``, ``valid``, ``model``, ``layer``, ``fingerprint``,
``data_hash``). ``embed.py`` embeds every layer (through ``research/embed_corpus.py``) and the
corpus as well; this script embeds only the default layers of the three sets.

    OMP_NUM_THREADS=1 PYTHONPATH=src python research/coverage/embed_eval.py
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import CACHE, EVAL_SETS, slug  # noqa: E402
from embed import eval_sets  # noqa: E402

MODELS = ("chgnet:0.3.0", "sevenn:7net-0")


def main(argv: list[str] | None = None) -> int:
    import torch

    from platoscope.backends import load_backend
    from platoscope.readers import structures_hash

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = Path("/work/shared/data")
    p.add_argument("--data", type=Path,
                   default=shared if shared.exists() else HERE.parent.parent / "data")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    sets = eval_sets(a.data, 600, 300)
    for spec in a.models:
        backend = load_backend(spec)
        for name in EVAL_SETS:
            structures = sets[name]
            dhash = structures_hash(structures)
            path = CACHE / "emb" / name / f"{slug(spec)}.npz"
            if path.exists():
                with np.load(path) as z:
                    if (str(z["data_hash"]) == dhash
                            and str(z["fingerprint"]) == backend.fingerprint):
                        print(f"{spec} / {name}: cached", flush=True)
                        continue
            t0 = time.perf_counter()
            feats = backend.embed(structures, batch_size=16)
            emb = np.concatenate(feats).astype(np.float32)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, embeddings=emb,
                     numbers=np.concatenate([s.numbers for s in structures]).astype(np.int16),
                     structure_index=np.concatenate(
                         [np.full(len(s), i, np.int32) for i, s in enumerate(structures)]),
                     atom_index=np.concatenate([np.arange(len(s), dtype=np.int32)
                                                for s in structures]),
                     valid=np.isfinite(emb).all(axis=1), model=np.array(spec),
                     layer=np.array(backend.layer), fingerprint=np.array(backend.fingerprint),
                     data_hash=np.array(dhash), seconds=np.array(time.perf_counter() - t0))
            print(f"{spec} / {name}: {len(emb)} atoms in {time.perf_counter() - t0:.0f} s",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
