#!/usr/bin/env python
"""Recreate the repository's ``data/`` folder from the shared data sets, deterministically.

What it writes (see ``data/PROVENANCE.md``, which this script also writes)::

    data/mp20_partial/{train,val}.csv, README.md        byte copies
    data/perov5/val.csv                                 header + first 500 data rows
    data/carbon24/val.csv                               header + first 300 data rows
    data/perov5/README.md, data/carbon24/README.md      byte copies
    data/mlearn/{Li,Si}_test.json, LICENSE              byte copies
    data/mlearn/{Li,Si}_training.json.gz                gzip -9 of the originals (mtime 0)
    data/LICENSE-CDVAE                                  MIT licence of the CDVAE repository

CSV subsets are the first N records as parsed by Python's ``csv`` module (CIF fields span several
lines), written back with ``csv.writer`` (minimal quoting, ``\\n`` line ends); for these files that
reproduces the original bytes, so each subset is a byte prefix of its source (checked here).
Running the script twice gives identical files (checked by the sha256 list it prints).

Usage::

    python builders/copy_data.py [--src ../shared/data] [--dst data]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SRC = ROOT.parent / "shared" / "data"
DEFAULT_DST = ROOT / "data"

COPIES = [
    "mp20_partial/train.csv",
    "mp20_partial/val.csv",
    "mp20_partial/README.md",
    "perov5/README.md",
    "carbon24/README.md",
    "mlearn/Li_test.json",
    "mlearn/Si_test.json",
    "mlearn/LICENSE",
]
GZIPPED = ["mlearn/Li_training.json", "mlearn/Si_training.json"]
CSV_SUBSETS = {"perov5/val.csv": 500, "carbon24/val.csv": 300}
MAX_TOTAL_BYTES = 8 * 1024 * 1024

CDVAE_LICENSE = """\
MIT License

Copyright (c) 2021 Tian Xie, Xiang Fu

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

PROVENANCE = """\
# Provenance of `data/`

Small copies of public data sets, used by the tests and scripts so that the repository works on
its own. `builders/copy_data.py` recreates this folder deterministically from the shared copies
(`python builders/copy_data.py --src <shared>/data`); the sha256 of every file is listed below.

## `mp20_partial/`: MP-20, CC-BY-4.0

- Source: MP-20 (Materials Project structures of ICSD origin, <= 20 atoms per cell) as
  distributed with CDVAE (Xie et al., ICLR 2022); a truncated public copy.
- Licence: **CC-BY-4.0** (Materials Project data). Attribution: Jain et al., "The Materials
  Project", APL Mater. 1, 011002 (2013); Xie, Fu, Ganea, Barzilay, Jaakkola, "Crystal Diffusion
  Variational Autoencoder for Periodic Material Generation", arXiv:2110.06197 (ICLR 2022).
- Taken: `train.csv` (847 rows) and `val.csv` (123 rows), unchanged; `README.md` from CDVAE.

## `perov5/`: Perov-5, MIT

- Source: Perov-5 (Castelli et al., Energy Environ. Sci. 5, 9034 (2012) and 5, 5814 (2012)) as
  distributed with CDVAE, validation split (3,787 rows).
- Licence: **MIT**, CDVAE repository, Copyright (c) 2021 Tian Xie, Xiang Fu (full text in
  `LICENSE-CDVAE`). Attribution: Castelli et al. 2012; Xie et al. 2022.
- Taken: `val.csv`: the header and the first {n_perov} data rows, in file order; `README.md`.

## `carbon24/`: Carbon-24, MIT

- Source: Carbon-24 (C. J. Pickard, AIRSS data for carbon at 10 GPa, Materials Cloud (2020),
  doi:10.24435/MATERIALSCLOUD:2020.0026/V1) as distributed with CDVAE, validation split (2,032
  rows).
- Licence: **MIT**, CDVAE repository (full text in `LICENSE-CDVAE`). Attribution: Pickard 2020;
  Xie et al. 2022.
- Taken: `val.csv`: the header and the first {n_carbon} data rows, in file order; `README.md`.

## `mlearn/`: mlearn Li and Si, BSD-3-Clause

- Source: the mlearn benchmark (Zuo et al., "Performance and Cost Assessment of Machine Learning
  Interatomic Potentials", J. Phys. Chem. A 124, 731 (2020); github.com/materialsvirtuallab/mlearn):
  VASP PBE energies, forces and stresses of Li and Si: AIMD snapshots, strained cells (`Elastic`),
  surfaces and vacancies.
- Licence: **BSD-3-Clause**, Copyright (c) 2019, Materials Virtual Lab (`mlearn/LICENSE`, copied).
- Taken: `Li_test.json` (29 entries) and `Si_test.json` (25), unchanged; `Li_training.json.gz`
  (241) and `Si_training.json.gz` (214): the training files compressed with gzip (level 9, no
  name, mtime 0), content unchanged.
- Units: energy eV per cell; forces eV/Å; `virial_stress` kBar in VASP order (xx, yy, zz, xy, yz,
  zx) and VASP sign (positive = compressive).

## How the subsets were made

CSV subsets are the first N records as parsed by Python's `csv` module and written back with
`csv.writer` (minimal quoting, `\\n` line ends); the script checks that this reproduces the source
bytes, so each subset is a byte prefix of its source file. `platoscope.readers.read_structures`
reads every structure file here, the `.json.gz` files included.

## Files (sha256, bytes)

{files}
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _csv_head(src: Path, dst: Path, n_rows: int) -> None:
    """Write the header and the first ``n_rows`` records of ``src`` to ``dst``; check the prefix."""
    field_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)
    try:
        raw = src.read_text(encoding="utf-8")
        reader = csv.reader(io.StringIO(raw, newline=""))
        rows = [next(reader) for _ in range(n_rows + 1)]
    finally:
        csv.field_size_limit(field_limit)
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(rows)
    text = out.getvalue()
    if not raw.startswith(text):
        raise SystemExit(f"{src}: rewriting the first {n_rows} rows does not reproduce its bytes")
    dst.write_bytes(text.encode("utf-8"))


def _gzip(src: Path, dst: Path) -> None:
    """gzip ``src`` to ``dst`` reproducibly: level 9, no file name, mtime 0."""
    with dst.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                              compresslevel=9, mtime=0) as gz:
        gz.write(src.read_bytes())


def copy_data(src: Path, dst: Path) -> list[Path]:
    """Recreate ``dst`` from ``src``; return the files written, sorted."""
    if not src.is_dir():
        raise SystemExit(f"source folder {src} does not exist")
    written: list[Path] = []
    for rel in COPIES:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)
        written.append(target)
    for rel in GZIPPED:
        target = dst / (rel + ".gz")
        target.parent.mkdir(parents=True, exist_ok=True)
        _gzip(src / rel, target)
        written.append(target)
    for rel, n_rows in CSV_SUBSETS.items():
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _csv_head(src / rel, target, n_rows)
        written.append(target)
    lic = dst / "LICENSE-CDVAE"
    lic.write_text(CDVAE_LICENSE, encoding="utf-8")
    written.append(lic)
    written.sort()
    table = "\n".join(f"- `{p.relative_to(dst).as_posix()}`: `{_sha256(p)}`, {p.stat().st_size:,}"
                      for p in written)
    prov = dst / "PROVENANCE.md"
    prov.write_text(PROVENANCE.format(n_perov=CSV_SUBSETS["perov5/val.csv"],
                                      n_carbon=CSV_SUBSETS["carbon24/val.csv"], files=table),
                    encoding="utf-8")
    written.append(prov)
    total = sum(p.stat().st_size for p in written)
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"data/ would hold {total:,} bytes, over the {MAX_TOTAL_BYTES:,} budget")
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="shared data folder")
    parser.add_argument("--dst", type=Path, default=DEFAULT_DST, help="folder to (re)write")
    args = parser.parse_args(argv)
    files = copy_data(args.src, args.dst)
    for p in files:
        print(f"{_sha256(p)}  {p.stat().st_size:>9,}  {p.relative_to(args.dst).as_posix()}")
    print(f"total {sum(p.stat().st_size for p in files):,} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
