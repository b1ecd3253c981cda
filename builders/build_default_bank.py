"""Ship the bundled models' anchor matrices and reference banks for the default anchor set.

    python builders/build_default_bank.py [--matrices chgnet sevenn:7net-0]
        [--bank chgnet sevenn:7net-0]

Reads ``src/platoscope/data/anchors_default.npz`` (builders/build_anchors_element.py) and the
shipped reference structures (builders/build_default_data.py) and writes, per model of
``--matrices``, ``data/anchors/<set>-<model>.npz`` (the anchor matrix, stored as float32: the
models' features are float32, so nothing is lost; 50,038 atoms would otherwise be embedded on
first use), and for each model of ``--bank`` ``data/reference_<model>_<set>_<projection>.npz``
(referring to the shipped matrix, not holding a copy), so that the main job needs no build
step. Earlier files of the default set are replaced; the ``mp20`` set's files are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from platoscope.anchors import CACHE_FORMAT, AnchorSet
from platoscope.backends import load_backend
from platoscope.npzfiles import load_npz, savez_atomic
from platoscope.paths import cache_dir, default_data_path
from platoscope.projection import DEFAULT_PROJECTION, Projector
from platoscope.provenance import sha256_bytes
from platoscope.reference import (
    REFERENCE_STRUCTURES,
    ReferenceBank,
    _reuse_embeddings,
    bank_file_name,
    reference_structures,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--matrices", nargs="*", default=["chgnet", "sevenn:7net-0"])
    p.add_argument("--bank", nargs="*", default=["chgnet", "sevenn:7net-0"],
                   help="models of the shipped banks (none: no bank)")
    p.add_argument("--projection", default=DEFAULT_PROJECTION)
    args = p.parse_args()

    out = default_data_path("x").parent
    anchors = AnchorSet.default()
    for spec in args.matrices:
        ship_matrix(anchors, load_backend(spec), out)
    for spec in args.bank:
        ship_bank(anchors, load_backend(spec), Projector(args.projection), out)


def ship_bank(anchors: AnchorSet, backend: object, proj: Projector, out: Path) -> None:
    """The default bank of ``backend`` into the package, referring to its shipped anchor
    matrix instead of holding a second copy. Raw embeddings of the shipped reference
    structures that a shipped or cached bank of this model already holds are reused (the
    projector is fitted anew); otherwise they are embedded."""
    structures = reference_structures()
    ref_hash = sha256_bytes(default_data_path(REFERENCE_STRUCTURES).read_bytes())
    bank = _reuse_embeddings(backend, anchors, proj, structures, ref_hash, progress=True)
    if bank is None:
        bank = ReferenceBank.build(backend, structures, anchors, projection=proj,
                                   skip_unsupported=True, progress=True)
    matrix = out / "anchors" / f"{anchors.hash[:16]}-{backend.fingerprint[:16]}.npz"
    path = bank.save(out / bank_file_name(backend.spec, anchors.hash, proj.name),
                     anchors_from=matrix)
    print(f"bank: {bank!r} -> {path} ({path.stat().st_size / 1e6:.1f} MB)")


def ship_matrix(anchors: AnchorSet, backend: object, out: Path) -> None:
    """Copy ``backend``'s anchor matrix (computed once, cached) into the package as float32."""
    name = f"{anchors.hash[:16]}-{backend.fingerprint[:16]}.npz"
    shipped = out / "anchors" / name
    shipped.unlink(missing_ok=True)
    matrix = anchors.embed(backend, progress=True)  # cached under cache_dir()
    cached = load_npz(cache_dir() / "anchors" / name, CACHE_FORMAT, "anchor-matrix cache")
    finite = matrix[np.isfinite(matrix).all(axis=1)]
    if not np.array_equal(finite.astype(np.float32).astype(np.float64), finite):
        raise SystemExit("the anchor matrix is not float32-exact: ship it as float64")
    (out / "anchors").mkdir(exist_ok=True)
    savez_atomic(shipped, compressed=True,
                 **{k: (v.astype(np.float32) if k == "matrix" else v) for k, v in cached.items()})
    print(f"anchor matrix of {backend.spec}: K={len(anchors)} -> {shipped} "
          f"({shipped.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
