"""Read reference structures into ``ase.Atoms`` with a documented, deterministic atom order.

Formats, chosen by file name (a trailing ``.gz`` is allowed):

* ``*.csv``: CDVAE CSV (MP-20, Perov-5, Carbon-24), one structure per row in a ``cif`` column,
  parsed with ``ase.io.read(io.StringIO(cif), format="cif")``.
* ``*.json``: pymatgen JSON, as in the mlearn benchmark: a list of ``{"structure": <pymatgen
  Structure dict>, "outputs": {"energy", "forces", "virial_stress"}, "group", ...}`` records, a
  list of bare Structure dicts, or one Structure dict. Parsed here without pymatgen. Any other
  JSON (an ASE database file) goes to ``ase.io``.
* anything else ``ase.io.read`` reads (extxyz, .traj, .db, cif, POSCAR, ...), all frames.

Atom order is the order in the file: CSV/CIF atoms in the order ASE's CIF reader makes them (for
a P1 CIF, as in CDVAE's files, the ``_atom_site`` loop order; for a CIF with symmetry, ASE expands
each listed site in turn, deterministically; fractional coordinates are wrapped into [0, 1));
pymatgen JSON atoms in ``sites`` order, positions = ``abc @ lattice.matrix`` (Å); ASE formats as
ASE reads them. Structures come in file order.

Every structure gets ``info["source"]`` (``"<parent folder>/<file name>"``, e.g.
``"mp20_partial/train.csv"``, so that the ``val.csv`` of different data sets stay apart) and
``info["source_index"]`` (0-based data row, list entry or frame index in the file). A frame that
already carried these keys keeps the old values as ``origin_source``/``origin_source_index``.
Labels, where the source has them:

* CSV: ``material_id`` (str); ``label`` (``pretty_formula`` or ``formula`` column, else the
  material id); the other columns as given (numbers parsed), the unnamed index column as
  ``csv_index``; the ``elements`` list column is dropped (it is the atoms' own element set).
  ASE's CIF bookkeeping (info ``spacegroup``, ``unit_cell``, ``occupancy``; the per-atom
  ``spacegroup_kinds`` array) is removed, also for frames of ``.cif`` files.
* mlearn JSON: DFT labels kept apart from any model's results (no calculator is attached):
  ``info["dft_energy"]`` (eV per cell), ``arrays["dft_forces"]`` (eV/Å, (N, 3)),
  ``info["dft_stress"]`` ((6,), kBar, as given: VASP order xx, yy, zz, xy, yz, zx and VASP sign,
  positive = compressive), ``info["dft_stress_ase"]`` ((6,), eV/Å³, ASE Voigt order xx, yy, zz,
  yz, xz, xy and ASE sign, i.e. what ``atoms.get_stress()`` would give), ``config_type`` (the
  record's ``group``: ``AIMD-NVT``, ``Elastic``, ``Surface``, ``Vacancy``), ``label`` (its
  ``description``), ``split`` (its ``tag``: ``train``/``test``).

Errors name the file and the row or frame: :class:`FileNotFoundError` (no such file),
:class:`~platoscope.errors.CorruptFileError` (empty file, unknown format, CSV without a ``cif``
column, a row/entry/frame that does not parse), :class:`~platoscope.errors.InvalidStructureError`
(parsed but unusable: no atoms, NaN/inf, degenerate periodic cell, partially occupied or mixed
sites), :class:`~platoscope.errors.PlatoscopeError` (an int ``index`` out of range).
``on_error="skip"`` skips bad rows with a logged warning and lists them in
``StructureList.skipped``; file-level errors always raise.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import ase.io
import numpy as np
from ase import Atoms
from ase.io.formats import UnknownFileTypeError, filetype, ioformats, string2index
from ase.units import GPa

from platoscope.checks import is_int
from platoscope.errors import (
    CorruptFileError,
    InputError,
    InvalidStructureError,
    PlatoscopeError,
)

__all__ = ["StructureList", "frame_error", "frame_name", "read_frames", "read_structures",
           "structures_hash"]

logger = logging.getLogger(__name__)

Index = int | slice | str
_CIF_INFO_KEYS = ("spacegroup", "unit_cell", "occupancy")
_CSV_DROP = ("cif", "elements")
# VASP (xx, yy, zz, xy, yz, zx) -> ASE Voigt (xx, yy, zz, yz, xz, xy)
_VASP_TO_ASE_VOIGT = [0, 1, 2, 4, 5, 3]
_KBAR_TO_EV_A3 = 0.1 * GPa


class StructureList(list):
    """A ``list[ase.Atoms]`` that also lists what was skipped: ``skipped`` holds
    ``(source_index, message)`` pairs, in file order (empty unless ``on_error="skip"``)."""

    def __init__(self, items: Iterable[Atoms] = ()) -> None:
        super().__init__(items)
        self.skipped: list[tuple[int, str]] = []


def read_structures(path: str | Path, *, index: Index = ":", limit: int | None = None,
                    on_error: Literal["raise", "skip"] = "raise") -> StructureList:
    """Read the structures of ``path`` (see the module docstring for formats, order and labels).

    ``index`` selects rows/frames with ASE's syntax (``":"``, ``"-1"``, ``"10:20"``, an int or a
    slice), applied before parsing; ``limit`` then keeps at most that many of the selected ones.
    ``on_error="skip"`` skips a row/frame that fails (logged, listed in ``.skipped``); a stream
    format (extxyz, ...) broken at frame k yields the frames before k.
    """
    if on_error not in ("raise", "skip"):
        raise InputError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    return _read(path, index, limit, on_error)


def read_frames(path: str | Path, *, index: Index = ":",
                on_error: str = "skip") -> tuple[list[Atoms], list[str]]:
    """The selected frames of a trajectory, and a message per frame left out.

    on_error: ``"skip"`` (default) leaves out a frame that cannot be read or is invalid (NaN
    positions, degenerate cell) and reads on; ``"stop"`` stops at the first such frame (a
    truncated trajectory of a crashed run); ``"raise"`` raises it. Each kept frame carries its
    position in the file as ``info["source_index"]``. Returns ``(frames, messages)``, each
    message naming the file and frame and saying why. An unreadable file (missing, empty,
    unknown format, broken at frame 0) still raises.
    """
    if on_error not in ("raise", "skip", "stop"):
        raise InputError(f"on_error must be 'raise', 'skip' or 'stop', not {on_error!r}")
    frames = _read(path, index, None, on_error)
    return list(frames), [msg for _, msg in frames.skipped]


def structures_hash(atoms_list: Iterable[Atoms]) -> str:
    """sha256 (hex) of the structures in order: atom count, atomic numbers, positions and cell
    (float64 rounded to 1e-6 Å, -0.0 folded into 0.0) and pbc of each.

    Records which data a result came from. Identical input gives an identical hash on any
    machine; info/arrays (labels, DFT data) are not included. Rounding absorbs most float noise,
    but a coordinate lying within the noise of a rounding boundary can still flip the hash, so
    compare hashes of data read the same way (e.g. not a CSV against its extxyz export).
    """
    h = hashlib.sha256(b"platoscope.structures_hash.v1")
    for atoms in atoms_list:
        numbers = np.asarray(atoms.numbers, dtype="<i8")
        h.update(np.asarray(len(numbers), dtype="<i8").tobytes())
        h.update(numbers.tobytes())
        h.update(_rounded(atoms.positions))
        h.update(_rounded(atoms.cell.array))
        h.update(np.asarray(atoms.pbc, dtype=np.uint8).tobytes())
    return h.hexdigest()


def frame_name(atoms: Atoms, position: int) -> str:
    """``"frame N of <file>"`` for a frame these readers made (``info["source_index"]`` and
    ``info["source"]``), else ``"frame <position>"`` (its place in the input)."""
    if "source" in atoms.info:
        return f"frame {atoms.info.get('source_index', position)} of {atoms.info['source']}"
    return f"frame {position}"


def frame_error(err: Exception, atoms: Atoms, position: int) -> Exception:
    """``err`` as the same type with its message prefixed ``"<frame_name>: "`` (an exception
    type that takes no single message: :class:`~platoscope.errors.InputError`); raise it
    ``from err``."""
    msg = f"{frame_name(atoms, position)}: {err}"
    try:
        return type(err)(msg)
    except Exception:
        return InputError(msg)


# ----------------------------------------------------------------------------------- internals

# an entry is (source_index, make): make() returns the Atoms or raises a PlatoscopeError
Entry = tuple[int, Callable[[], Atoms]]


def _rounded(x: np.ndarray) -> bytes:
    return (np.round(np.asarray(x, dtype=np.float64), 6) + 0.0).astype("<f8").tobytes()


def _read(path: str | Path, index: Index, limit: int | None, on_error: str) -> StructureList:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if not p.is_file():
        raise CorruptFileError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise CorruptFileError(f"{p}: file is empty")
    if limit is not None:
        if not is_int(limit) or limit < 0:
            raise InputError(f"limit must be None or an int >= 0, not {limit!r}")
        limit = int(limit)
    idx = _parse_index(index)
    parent = p.resolve().parent.name
    source = f"{parent}/{p.name}" if parent else p.name
    out = StructureList()
    entries = _entries(p, idx, limit)
    for i, make in entries:
        try:
            atoms = make()
            _validate(atoms, f"{p}: {_unit(p)} {i}")
        except (CorruptFileError, InvalidStructureError) as err:
            if on_error == "raise":
                raise
            out.skipped.append((i, str(err)))
            if on_error == "stop":
                entries.close()  # release the file of a stream format now
                break
            logger.warning("skipped: %s", err)
            continue
        for key in ("source", "source_index"):
            if key in atoms.info and f"origin_{key}" not in atoms.info:
                atoms.info[f"origin_{key}"] = atoms.info[key]
        atoms.info["source"] = source
        atoms.info["source_index"] = i
        out.append(atoms)
    if out.skipped and on_error == "skip":
        logger.warning("%s: skipped %d of %d selected %ss", p, len(out.skipped),
                       len(out) + len(out.skipped), _unit(p))
    return out


def _parse_index(index: Index) -> int | slice:
    if isinstance(index, str):
        index = string2index(index)
    elif isinstance(index, np.integer):
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, int | slice):
        raise TypeError(f"index must be an int, a slice or an ASE index string, not {index!r}")
    if isinstance(index, slice) and index.step == 0:
        raise InputError("index slice step must not be zero")
    return index


def _select(n: int, idx: int | slice, limit: int | None, p: Path) -> list[int]:
    """The 0-based positions out of ``n`` that ``idx`` and ``limit`` select, in order."""
    if isinstance(idx, int):
        if not -n <= idx < n:
            raise PlatoscopeError(f"{p}: index {idx} out of range, the file holds {n} "
                                  f"{_unit(p)}s")
        chosen = [idx % n]
    else:
        chosen = list(range(n)[idx])
    return chosen if limit is None else chosen[:limit]


def _unit(p: Path) -> str:
    kind = _kind(p)
    return {"csv": "row", "json": "entry"}.get(kind, "frame")


def _kind(p: Path) -> str:
    name = p.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".json"):
        return "json"
    return "ase"


def _open_text(p: Path) -> io.TextIOBase:
    if p.name.lower().endswith(".gz"):
        return gzip.open(p, "rt", encoding="utf-8", newline="")
    return p.open("r", encoding="utf-8", newline="")


def _entries(p: Path, idx: int | slice, limit: int | None) -> Iterator[Entry]:
    kind = _kind(p)
    if kind == "csv":
        return _csv_entries(p, idx, limit)
    if kind == "json":
        try:
            with _open_text(p) as fh:
                data = json.load(fh)
        except (UnicodeDecodeError, OSError, json.JSONDecodeError) as err:
            raise CorruptFileError(f"{p}: not valid JSON: {err}") from err
        if isinstance(data, list) or (isinstance(data, dict) and "sites" in data):
            return _json_entries(p, data if isinstance(data, list) else [data], idx, limit)
    return _ase_entries(p, idx, limit)


def _validate(atoms: Atoms, where: str) -> None:
    if len(atoms) == 0:
        raise InvalidStructureError(f"{where}: structure has no atoms")
    if not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.cell.array).all()):
        raise InvalidStructureError(f"{where}: NaN or inf in positions or cell")
    if atoms.pbc.all() and abs(np.linalg.det(atoms.cell.array)) < 1e-6:
        raise InvalidStructureError(f"{where}: periodic structure with a degenerate cell")


# ------------------------------------------------------------------------------------- CSV


def _csv_entries(p: Path, idx: int | slice, limit: int | None) -> Iterator[Entry]:
    field_limit = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # CIF fields of large cells exceed the 128 kB default
    try:
        with _open_text(p) as fh:
            reader = csv.DictReader(fh)
            try:
                header = reader.fieldnames
                if not header:
                    raise CorruptFileError(f"{p}: CSV has no header line")
                if "cif" not in header:
                    raise CorruptFileError(f"{p}: CSV has no 'cif' column (columns: "
                                           f"{', '.join(map(repr, header))})")
                rows = list(reader)
            except (csv.Error, UnicodeDecodeError) as err:
                raise CorruptFileError(f"{p}: unreadable CSV near line {reader.line_num}: "
                                       f"{err}") from err
    finally:
        csv.field_size_limit(field_limit)
    if not rows:
        raise CorruptFileError(f"{p}: CSV holds no structures (header only)")
    for i in _select(len(rows), idx, limit, p):
        yield i, partial(_csv_atoms, p, i, rows[i])


def _csv_atoms(p: Path, i: int, row: dict[str | None, Any]) -> Atoms:
    mid = row.get("material_id")
    where = f"{p}: row {i}" + (f" (material_id {mid})" if mid else "")
    cif = row.get("cif")
    if not cif:
        raise CorruptFileError(f"{where}: empty 'cif' field")
    try:
        blocks = ase.io.read(io.StringIO(cif), format="cif", index=":")
    except Exception as err:  # ASE raises many types on bad CIF text
        raise CorruptFileError(f"{where}: CIF does not parse: {_reason(err)}") \
            from err
    if len(blocks) != 1:
        raise CorruptFileError(f"{where}: CIF holds {len(blocks)} data blocks, expected 1")
    atoms = blocks[0]
    _clean_cif_info(atoms, where)
    for key, value in row.items():
        if key is None or value is None or key in _CSV_DROP:
            continue  # None: extra or missing fields of a ragged row
        if key == "":
            atoms.info["csv_index"] = _number(value)
        elif key == "material_id":
            atoms.info["material_id"] = value
        else:
            atoms.info[key] = _number(value)
    label = row.get("pretty_formula") or row.get("formula") or mid
    if label:
        atoms.info["label"] = label
    return atoms


def _clean_cif_info(atoms: Atoms, where: str) -> None:
    """Drop ASE's CIF bookkeeping from info; refuse partially occupied or mixed sites."""
    occupancy = atoms.info.get("occupancy") or {}
    for site, species in occupancy.items():
        if len(species) != 1 or abs(sum(float(v) for v in species.values()) - 1.0) > 1e-4:
            raise InvalidStructureError(f"{where}: site {site} is disordered ({species}); "
                                        "platoscope needs ordered structures")
    for key in _CIF_INFO_KEYS:
        atoms.info.pop(key, None)
    atoms.arrays.pop("spacegroup_kinds", None)


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# ------------------------------------------------------------------------------------ JSON


def _json_entries(p: Path, docs: list[Any], idx: int | slice,
                  limit: int | None) -> Iterator[Entry]:
    if not docs:
        raise CorruptFileError(f"{p}: JSON list holds no structures")
    for i in _select(len(docs), idx, limit, p):
        yield i, partial(_json_atoms, f"{p}: entry {i}", docs[i])


def _json_atoms(where: str, doc: Any) -> Atoms:
    if isinstance(doc, dict) and isinstance(doc.get("structure"), dict):
        record, struct = doc, doc["structure"]
    elif isinstance(doc, dict) and "sites" in doc:
        record, struct = {}, doc
    else:
        raise CorruptFileError(f"{where}: neither a pymatgen Structure dict nor a "
                               "{'structure': ..., 'outputs': ...} record")
    try:
        atoms = _structure_atoms(struct, where)
        n = len(atoms)
        if "num_atoms" in record and int(record["num_atoms"]) != n:
            raise CorruptFileError(f"{where}: num_atoms {record['num_atoms']} but {n} sites")
        outputs = record.get("outputs") or {}
        if outputs.get("energy") is not None:
            atoms.info["dft_energy"] = float(outputs["energy"])
        if outputs.get("forces") is not None:
            forces = np.asarray(outputs["forces"], dtype=np.float64)
            if forces.shape != (n, 3):
                raise CorruptFileError(f"{where}: forces have shape {forces.shape}, "
                                       f"expected ({n}, 3)")
            atoms.arrays["dft_forces"] = forces
        if outputs.get("virial_stress") is not None:
            stress = np.asarray(outputs["virial_stress"], dtype=np.float64)
            if stress.shape != (6,):
                raise CorruptFileError(f"{where}: virial_stress has shape {stress.shape}, "
                                       "expected (6,)")
            atoms.info["dft_stress"] = stress
            atoms.info["dft_stress_ase"] = -_KBAR_TO_EV_A3 * stress[_VASP_TO_ASE_VOIGT]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        if isinstance(err, PlatoscopeError):
            raise
        raise CorruptFileError(f"{where}: malformed record: {type(err).__name__}: {err}") \
            from err
    for key, info_key in (("group", "config_type"), ("description", "label"), ("tag", "split")):
        if isinstance(record.get(key), str):
            atoms.info[info_key] = record[key]
    return atoms


def _structure_atoms(struct: dict[str, Any], where: str) -> Atoms:
    """Atoms from a pymatgen Structure (or Molecule) dict, sites in order, without pymatgen."""
    sites = struct["sites"]
    symbols = []
    for j, site in enumerate(sites):
        species = site["species"]
        occu = sum(float(s.get("occu", 1.0)) for s in species)
        if len(species) != 1 or abs(occu - 1.0) > 1e-4:
            raise InvalidStructureError(f"{where}: site {j} is disordered ({species}); "
                                        "platoscope needs ordered structures")
        symbols.append(species[0]["element"])
    lattice = struct.get("lattice")
    if lattice is None:  # a Molecule: Cartesian coordinates, no cell
        positions = np.array([s["xyz"] for s in sites], dtype=np.float64).reshape(-1, 3)
        return Atoms(symbols=symbols, positions=positions, pbc=False)
    cell = np.asarray(lattice["matrix"], dtype=np.float64)  # rows are the lattice vectors, Å
    frac = np.array([s["abc"] for s in sites], dtype=np.float64).reshape(-1, 3)
    pbc = lattice.get("pbc", (True, True, True))
    return Atoms(symbols=symbols, positions=frac @ cell, cell=cell, pbc=pbc)


# ------------------------------------------------------------------------------- ase.io formats


def _reason(err: BaseException) -> str:
    """``Type: message`` of a reader's exception; for one without a message (ASE's parsers
    stop on bare ``assert`` statements) the failed check itself, from the innermost frame of
    its traceback, e.g. ``AssertionError in ase/io/cif.py line 508:
    assert line.lower().startswith('data_')``."""
    import traceback

    text = str(err).strip()
    if text:
        return f"{type(err).__name__}: {text}"
    tb = traceback.extract_tb(err.__traceback__)
    if not tb:
        return f"{type(err).__name__} (no detail given)"
    last = tb[-1]
    where = "/".join(Path(last.filename).parts[-3:])
    return f"{type(err).__name__} in {where} line {last.lineno}: {(last.line or '').strip()}"


def _ase_entries(p: Path, idx: int | slice, limit: int | None) -> Iterator[Entry]:
    try:
        fmt = filetype(str(p), read=True)
        if fmt not in ioformats or not ioformats[fmt].can_read:
            raise UnknownFileTypeError(f"no reader for {fmt!r}")
    except UnknownFileTypeError as err:
        raise CorruptFileError(f"{p}: unknown file format ({err}); platoscope reads CDVAE CSV, "
                               "pymatgen/mlearn JSON and the formats of ase.io.read") from err
    fwd = _forward(idx)  # None: the selection needs the frame count, so read all frames first
    stream = ase.io.iread(str(p), index=":", format=fmt)
    frames: list[Atoms] = []
    n_read = n_yielded = 0
    ended, broken = False, None
    while fwd is None or ((fwd.stop is None or n_read < fwd.stop)
                          and (limit is None or n_yielded < limit)):
        try:
            atoms = next(stream)
        except StopIteration:
            ended = True
            break
        except Exception as err:  # ASE raises many types on bad or truncated files
            broken = err
            break
        k, n_read = n_read, n_read + 1
        if fwd is None:
            frames.append(atoms)
        elif k >= fwd.start and (k - fwd.start) % fwd.step == 0:
            n_yielded += 1
            yield k, partial(_ase_frame, atoms, f"{p}: frame {k}", fmt)
    if broken is not None and n_read == 0:
        raise CorruptFileError(f"{p}: cannot be read as {fmt}: {_reason(broken)}") from broken
    if ended and n_read == 0:
        raise CorruptFileError(f"{p}: holds no structures")
    if fwd is None:
        for i in _select(len(frames), idx, limit, p):
            yield i, partial(_ase_frame, frames[i], f"{p}: frame {i}", fmt)
    elif isinstance(idx, int) and ended and n_yielded == 0:
        raise PlatoscopeError(f"{p}: index {idx} out of range, the file holds {n_read} frames")
    if broken is not None:
        message = (f"{p}: frame {n_read} and any after it cannot be read: "
                   f"{_reason(broken)}")
        yield n_read, partial(_raise, CorruptFileError(message), broken)


def _forward(idx: int | slice) -> slice | None:
    """``idx`` as a slice with start >= 0, stop >= 0 or None and step > 0, else None."""
    if isinstance(idx, int):
        return slice(idx, idx + 1, 1) if idx >= 0 else None
    start, stop, step = idx.start or 0, idx.stop, idx.step or 1
    if start < 0 or (stop is not None and stop < 0) or step < 0:
        return None
    return slice(start, stop, step)


def _ase_frame(atoms: Atoms, where: str, fmt: str) -> Atoms:
    if fmt == "cif":
        _clean_cif_info(atoms, where)
    return atoms


def _raise(err: Exception, cause: BaseException) -> Atoms:
    raise err from cause
