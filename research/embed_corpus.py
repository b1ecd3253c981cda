#!/usr/bin/env python
"""Embed the evaluation corpora with every offline model and cache the raw per-atom features.

One forward pass per structure per model reads *all* feature layers of the model at once
(a forward hook per layer), so asking for extra layers costs no extra model calls.

Cache layout (``--cache``, default ``~/.cache/platoscope/corpus``)::

    <cache>/<corpus>/<model-slug>/<layer>.npz

each holding ``embeddings`` float32 (M, D), ``numbers`` (M,), ``structure_index`` (M,),
``atom_index`` (M,), ``valid`` (M,) bool (False for atoms of structures the model refused),
``failed`` (structure indices it refused), and the strings ``model``, ``layer``,
``fingerprint`` (the backend's fingerprint for that layer), ``data_hash`` (hash of the
structures as read) and ``source`` (the data file). A file whose fingerprint or data hash no
longer matches is recomputed; one that matches is skipped.

Examples::

    python research/embed_corpus.py                       # MP-20 train + val, 6 models, all layers
    python research/embed_corpus.py --models chgnet --corpora mp20_val --layers default
    python research/embed_corpus.py --corpora perov5 carbon24 --subset 300
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = ["chgnet:0.3.0", "chgnet:0.2.0", "chgnet:r2scan", "sevenn:7net-0",
                  "sevenn:7net-l3i5", "sevenn:7net-mf-0@PBE"]
CORPORA = {
    "mp20_train": "data/mp20_partial/train.csv",
    "mp20_val": "data/mp20_partial/val.csv",
    "perov5": "data/perov5/val.csv",
    "carbon24": "data/carbon24/val.csv",
}
DEFAULT_CORPORA = ["mp20_train", "mp20_val"]
SUBSET_SEED = 0


def default_cache() -> Path:
    env = os.environ.get("PLATOSCOPE_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "platoscope"
    return base / "corpus"


def slug(spec: str) -> str:
    return spec.replace(":", "_").replace("@", "_").replace("/", "_")


# ----------------------------------------------------------------------------- reading

def _content_hash(structures) -> str:
    """Hash of numbers, positions, cell and pbc in reading order (fallback data hash)."""
    h = hashlib.sha256()
    for a in structures:
        h.update(np.asarray(a.numbers, dtype=np.int64).tobytes())
        h.update(np.round(np.asarray(a.positions, dtype=np.float64), 8).tobytes())
        h.update(np.round(np.asarray(a.cell.array, dtype=np.float64), 8).tobytes())
        h.update(np.asarray(a.pbc, dtype=np.int8).tobytes())
    return h.hexdigest()


def read_corpus(name: str, data_root: Path, subset: int | None = None):
    """(structures, data_hash, source path). Uses platoscope.readers when it exists."""
    rel = CORPORA[name] if name in CORPORA else name
    path = Path(rel)
    if not path.is_absolute():
        path = data_root / Path(rel).relative_to("data") if rel.startswith("data/") else ROOT / rel
    if not path.exists():
        raise FileNotFoundError(f"corpus {name!r}: {path} does not exist")
    try:
        from platoscope.readers import read_structures
        structures = list(read_structures(str(path)))
    except ImportError:
        import ase.io
        import pandas as pd
        df = pd.read_csv(path)
        structures = [ase.io.read(io.StringIO(c), format="cif") for c in df["cif"]]
    if subset is not None and subset < len(structures):
        idx = np.sort(np.random.default_rng(SUBSET_SEED).choice(len(structures), subset,
                                                                 replace=False))
        structures = [structures[i] for i in idx]
    return structures, _content_hash(structures), str(path)


# ----------------------------------------------------------------------------- embedding

def embed_all_layers(backend, structures, layers, *, batch_size: int, chunk: int, bar):
    """{layer: list of (N_i, D) arrays or None for refused structures}, failed indices.

    Arms one FeatureTap per layer around ``backend.embed`` on chunks of structures; a chunk
    that fails is redone structure by structure so only the offending structures are lost.
    """
    from platoscope.backends.base import FeatureTap

    out = {layer: [] for layer in layers}
    failed: list[int] = []

    def run(structs):
        with contextlib.ExitStack() as stack:
            taps = {}
            for layer in layers:
                spec = backend.layer_spec(layer)
                module = backend.torch_model.get_submodule(spec.module)
                taps[layer] = stack.enter_context(FeatureTap(module, spec))
            backend.embed(structs, batch_size=batch_size, progress=False)
        sizes = [len(a) for a in structs]
        res = {}
        for layer, t in taps.items():
            f = t.features()
            if f.shape[0] != sum(sizes):
                raise RuntimeError(f"{backend.spec} layer {layer}: {f.shape[0]} rows for "
                                   f"{sum(sizes)} atoms")
            res[layer] = np.split(f.astype(np.float32), np.cumsum(sizes)[:-1])
        return res

    for start in range(0, len(structures), chunk):
        structs = structures[start:start + chunk]
        try:
            res = run(structs)
            for layer in layers:
                out[layer].extend(res[layer])
        except Exception as err:
            for j, a in enumerate(structs):
                try:
                    res = run([a])
                    for layer in layers:
                        out[layer].extend(res[layer])
                except Exception as err1:
                    failed.append(start + j)
                    print(f"\n  {backend.spec}: structure {start + j} "
                          f"({a.get_chemical_formula()}) refused: {str(err1)[:160]}",
                          file=sys.stderr)
                    for layer in layers:
                        out[layer].append(None)
            del err
        bar.update(len(structs))
    return out, failed


def layer_fingerprint(backend, layer: str) -> str:
    old = backend.layer
    try:
        backend.layer = layer
        return backend.fingerprint
    finally:
        backend.layer = old


def save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cached_ok(path: Path, fingerprint: str, data_hash: str) -> bool:
    if not path.exists():
        return False
    try:
        with np.load(path) as z:
            return str(z["fingerprint"]) == fingerprint and str(z["data_hash"]) == data_hash
    except Exception:
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="backend specs")
    p.add_argument("--corpora", nargs="+", default=DEFAULT_CORPORA,
                   help=f"names ({', '.join(CORPORA)}) or paths to structure files")
    p.add_argument("--layers", choices=["default", "all"], default="all",
                   help="the model's default layer only, or every layer it offers (same pass)")
    p.add_argument("--subset", type=int, default=None,
                   help="random subset of N structures per corpus (seed 0), e.g. for perov5")
    p.add_argument("--cache", type=Path, default=default_cache())
    p.add_argument("--data", type=Path, default=ROOT / "data", help="the repo's data folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    a = p.parse_args(argv)

    import torch
    from tqdm.auto import tqdm

    from platoscope.backends import load_backend

    if a.threads:
        torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    corpora = {c: read_corpus(c, a.data, a.subset if c not in DEFAULT_CORPORA else None)
               for c in a.corpora}
    for c, (s, h, src) in corpora.items():
        print(f"{c}: {len(s)} structures, {sum(len(x) for x in s)} atoms from {src} "
              f"(hash {h[:12]})")
    t_all = time.perf_counter()
    for spec in a.models:
        backend = load_backend(spec)
        layers = [backend.layer] if a.layers == "default" else backend.available_layers()
        fps = {layer: layer_fingerprint(backend, layer) for layer in layers}
        for cname, (structures, dhash, src) in corpora.items():
            sub = "" if a.subset is None or cname in DEFAULT_CORPORA else f"_n{a.subset}"
            paths = {layer: a.cache / f"{cname}{sub}" / slug(backend.spec) / f"{layer}.npz"
                     for layer in layers}
            todo = [layer for layer in layers if not cached_ok(paths[layer], fps[layer], dhash)]
            if not todo:
                print(f"{backend.spec} / {cname}: cached ({len(layers)} layers)")
                continue
            t0 = time.perf_counter()
            n_atoms = sum(len(s) for s in structures)
            with tqdm(total=len(structures), desc=f"{backend.spec} / {cname}",
                      unit="struct") as bar:
                feats, failed = embed_all_layers(
                    backend, structures, todo, batch_size=a.batch_size,
                    chunk=64 if backend.family == "chgnet" else 16, bar=bar)
            dt = time.perf_counter() - t0
            numbers = np.concatenate([s.numbers for s in structures]).astype(np.int16)
            sidx = np.concatenate([np.full(len(s), i, np.int32) for i, s in enumerate(structures)])
            aidx = np.concatenate([np.arange(len(s), dtype=np.int32) for s in structures])
            for layer in todo:
                dim = next(f.shape[1] for f in feats[layer] if f is not None)
                rows = [f if f is not None else np.full((len(structures[i]), dim), np.nan,
                                                        np.float32)
                        for i, f in enumerate(feats[layer])]
                emb = np.concatenate(rows).astype(np.float32)
                save_npz(paths[layer], embeddings=emb, numbers=numbers, structure_index=sidx,
                         atom_index=aidx, valid=np.isfinite(emb).all(axis=1),
                         failed=np.asarray(failed, dtype=np.int64),
                         model=np.array(backend.spec), layer=np.array(layer),
                         fingerprint=np.array(fps[layer]), data_hash=np.array(dhash),
                         source=np.array(src), seconds=np.array(dt),
                         ms_per_atom=np.array(1000 * dt / n_atoms))
            print(f"{backend.spec} / {cname}: {n_atoms} atoms, {len(todo)} layers in {dt:.1f} s "
                  f"({1000 * dt / n_atoms:.2f} ms/atom), refused structures: {failed}")
        del backend
    print(f"total {time.perf_counter() - t_all:.1f} s; cache {a.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
