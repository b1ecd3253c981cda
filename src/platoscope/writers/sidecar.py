"""``frames.h5``: the HDF5 frame sidecar (writer, reader, repair); see the package docstring
for its SIGKILL safety.

Longer than 500 lines on purpose: the writer, the reader and the repair share one file
format and its private layout helpers (committed lengths, growable datasets, attribute
schema); splitting them would expose those internals across modules.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import scipy.sparse as sp

from platoscope.coords import as_coords, dense_rows, max_abs_diff
from platoscope.errors import CorruptFileError, InputError, PlatoscopeError
from platoscope.writers.jsonio import fsync_dir, new_sibling, remove_stale_temps, to_jsonable

SIDECAR_FORMAT = "platoscope-frame-sidecar"
SIDECAR_FORMAT_VERSION = 2  # 2: optional /projector, coordinates derived from embeddings

# Provenance keys that must agree when a run is continued into an existing sidecar.
IDENTITY_KEYS = ("backend", "model", "weights_sha256", "layer", "feature_dim",
                 "anchor_set_hash", "n_anchors", "n_columns", "projection")

_FIELDS = ("platonic", "embeddings", "forces")
_PROJECTOR = "projector"


def _identity(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`IDENTITY_KEYS` of attrs, top level or inside a nested ``"provenance"`` dict."""
    nested = attrs.get("provenance")
    out = {k: nested[k] for k in IDENTITY_KEYS if isinstance(nested, Mapping) and k in nested}
    out.update({k: attrs[k] for k in IDENTITY_KEYS if k in attrs})
    return out
_FRAME_CHUNK = 1024


class SidecarMismatchError(PlatoscopeError, ValueError):
    """Frames or provenance that do not fit an existing sidecar (K, D or model differ)."""


class SidecarLockedError(PlatoscopeError, RuntimeError):
    """Another live process is writing the sidecar (two writers would lose frames)."""




# --------------------------------------------------------------------------------------------
# HDF5 frame sidecar
# --------------------------------------------------------------------------------------------

class _WriterLock:
    """Exclusive advisory ``flock`` on a hidden ``.<name>.lock`` sibling while a writer lives.

    The kernel drops the lock when the process dies (even by SIGKILL), so a stale lock file
    never blocks a restart. No-op where ``fcntl`` is missing (Windows).
    """

    def __init__(self, path: Path):
        self.path = path.parent / f".{path.name}.lock"
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                raise SidecarLockedError(f"{path}: another process is writing this sidecar "
                                         f"(lock {self.path} is held)") from exc
            try:  # the holder before us may have unlinked the file we locked: retry
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self._fd = fd
                    return
            except FileNotFoundError:
                pass
            os.close(fd)
        raise SidecarLockedError(f"{path}: could not take the writer lock {self.path}")

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def _swmr_write_open(path: Path) -> h5py.File:
    """Open an existing, cleanly closed sidecar straight in SWMR-write mode."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE,
                        fapl=fapl)
    return h5py.File(fid)


def _open_read(path: Path) -> tuple[h5py.File, bool]:
    """Open read-only; fall back to SWMR-read for a file a writer has open or left killed.

    Returns (file, closed_cleanly).
    """
    if not path.exists():
        raise FileNotFoundError(f"no such sidecar file: {path}")
    try:
        return h5py.File(path, "r"), True
    except OSError as first:
        try:
            return h5py.File(path, "r", swmr=True, libver="latest"), False
        except OSError as exc:
            raise CorruptFileError(
                f"{path}: not a readable HDF5 file ({first}; SWMR read: {exc})") from exc


def _check_format(f: h5py.File, path: Path) -> None:
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != SIDECAR_FORMAT:
        raise CorruptFileError(f"{path}: not a platoscope frame sidecar (format={fmt!r})")
    version = int(f.attrs.get("format_version", -1))
    if version > SIDECAR_FORMAT_VERSION:
        raise CorruptFileError(f"{path}: sidecar format version {version} is newer than this "
                               f"platoscope reads ({SIDECAR_FORMAT_VERSION})")
    for name in ("n_frames_committed", "frames/step", "frames/offsets", "atoms/numbers"):
        if name not in f:
            raise CorruptFileError(f"{path}: sidecar lacks /{name}")


def _load_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    try:
        return json.loads(f.attrs.get("attrs_json", "{}"))
    except ValueError as exc:
        raise CorruptFileError(f"{path}: root attribute attrs_json is not JSON ({exc})") from exc


def _optional_groups(f: h5py.File) -> dict[str, h5py.Group]:
    """{"platonic": grp, ..., "scores/<name>": grp} for every optional field present."""
    out = {name: f["fields"][name] for name in _FIELDS if "fields" in f and name in f["fields"]}
    if "scores" in f:
        out.update({f"scores/{k}": g for k, g in f["scores"].items()})
    return out


def _committed_lengths(f: h5py.File, path: Path, n: int | None = None
                       ) -> tuple[int, int, dict[str, int]]:
    """(n_frames, n_atoms over them, {field: rows of its data over them}), checked for sense.

    n: the committed count to use (read before the extents were); default: read it now.
    """
    n = int(f["n_frames_committed"][()]) if n is None else n
    fr = f["frames"]
    if n < 0 or any(fr[k].shape[0] < n for k in ("step", "cell", "pbc", "energy")) \
            or fr["offsets"].shape[0] < n + 1:
        raise CorruptFileError(f"{path}: {n} frames committed but frame datasets are shorter")
    offsets = fr["offsets"][: n + 1]
    counts = np.diff(offsets)
    if offsets[0] != 0 or np.any(counts < 0):
        raise CorruptFileError(f"{path}: frame offsets are not increasing from 0")
    n_atoms = int(offsets[-1])
    if f["atoms/numbers"].shape[0] < n_atoms or f["atoms/positions"].shape[0] < n_atoms:
        raise CorruptFileError(f"{path}: atom datasets are shorter than the committed frames")
    lengths: dict[str, int] = {}
    for name, g in _optional_groups(f).items():
        if g["start"].shape[0] < n:
            raise CorruptFileError(f"{path}: /{g.name} has fewer frames than committed")
        start = g["start"][:n]
        have = start >= 0
        end = int(np.max(start[have] + counts[have])) if have.any() else 0
        if end > g["data"].shape[0]:
            raise CorruptFileError(f"{path}: {g.name}/data is shorter than its frames need")
        lengths[name] = end
    return n, n_atoms, lengths


def _rows_per_chunk(row_bytes: int, chunk_bytes: int) -> int:
    return int(min(65536, max(64, chunk_bytes // max(row_bytes, 1))))


def _make_growable(g: h5py.Group, name: str, row_shape: tuple[int, ...], dtype: Any,
                   chunk_bytes: int, length: int = 0, fill: Any = None) -> h5py.Dataset:
    rows = _rows_per_chunk(int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize,
                           chunk_bytes)
    kw = {} if fill is None else {"fillvalue": fill}
    ds = g.create_dataset(name, shape=(length, *row_shape), maxshape=(None, *row_shape),
                          chunks=(rows, *row_shape), dtype=dtype, **kw)
    if length and fill is not None:
        ds[...] = fill
    return ds


def _make_frame_ds(g: h5py.Group, name: str, row_shape: tuple[int, ...], dtype: Any,
                   length: int = 0) -> h5py.Dataset:
    return g.create_dataset(name, shape=(length, *row_shape), maxshape=(None, *row_shape),
                            chunks=(_FRAME_CHUNK, *row_shape), dtype=dtype)


def _field_row_shape(name: str, n_anchors: int | None, embedding_dim: int | None
                     ) -> tuple[int, ...]:
    if name == "platonic":
        assert n_anchors is not None
        return (n_anchors,)
    if name == "embeddings":
        assert embedding_dim is not None
        return (embedding_dim,)
    if name == "forces":
        return (3,)
    return ()  # scores


def _add_field(f: h5py.File, name: str, n_frames: int, n_anchors: int | None,
               embedding_dim: int | None, chunk_bytes: int) -> None:
    parent = f.require_group("scores" if name.startswith("scores/") else "fields")
    g = parent.create_group(name.split("/", 1)[1] if name.startswith("scores/") else name)
    _make_growable(g, "data", _field_row_shape(name, n_anchors, embedding_dim), "f8",
                   chunk_bytes)
    start = _make_frame_ds(g, "start", (), "i8", n_frames)
    if n_frames:
        start[...] = -1


def _build_file(tmp: Path, *, src: h5py.File | None, path: Path, attrs_json: str,
                n_anchors: int | None, embedding_dim: int | None, new_fields: list[str],
                chunk_bytes: int, projector_state: Mapping[str, Any] | None = None) -> None:
    """Write a clean sidecar to ``tmp``: the committed frames of ``src`` (if any) + new fields,
    and ``/projector`` (copied from ``src``, else written from ``projector_state`` if given)."""
    with h5py.File(tmp, "w", libver="latest") as f:
        f.attrs["format"] = SIDECAR_FORMAT
        f.attrs["format_version"] = SIDECAR_FORMAT_VERSION
        f.attrs["attrs_json"] = attrs_json
        f.attrs["n_anchors"] = -1 if n_anchors is None else int(n_anchors)
        f.attrs["embedding_dim"] = -1 if embedding_dim is None else int(embedding_dim)
        if src is None:
            n = 0
            fr = f.create_group("frames")
            _make_frame_ds(fr, "step", (), "i8")
            off = _make_frame_ds(fr, "offsets", (), "i8", 1)
            off[0] = 0
            _make_frame_ds(fr, "cell", (3, 3), "f8")
            _make_frame_ds(fr, "pbc", (3,), "bool")
            _make_frame_ds(fr, "energy", (), "f8")
            at = f.create_group("atoms")
            _make_growable(at, "numbers", (), "i4", chunk_bytes)
            _make_growable(at, "positions", (3,), "f8", chunk_bytes)
        else:
            n, n_atoms, lengths = _committed_lengths(src, path)
            for grp in ("frames", "atoms", "fields", "scores", _PROJECTOR):
                if grp in src:
                    src.copy(src[grp], f, name=grp)
            for k, ds in f["frames"].items():
                ds.resize(n + 1 if k == "offsets" else n, axis=0)
            for ds in f["atoms"].values():
                ds.resize(n_atoms, axis=0)
            for name, g in _optional_groups(f).items():
                g["start"].resize(n, axis=0)
                g["data"].resize(lengths[name], axis=0)
        if projector_state is not None and _PROJECTOR not in f:
            _write_state(f, projector_state)
        f.create_dataset("n_frames_committed", data=np.int64(n))
        for name in new_fields:
            _add_field(f, name, n, n_anchors, embedding_dim, chunk_bytes)
        _describe(f, attrs_json)


# (units, meaning) of each dataset, written as attributes so that `h5dump -A` explains the file
_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "n_frames_committed": ("1", "frames fully written; readers ignore rows beyond them"),
    "frames/step": ("1", "(F,) MD/optimiser step (or source frame index) of each frame"),
    "frames/offsets": ("1", "(F+1,) atoms of frame i are rows offsets[i]:offsets[i+1] of every "
                            "per-atom dataset under /atoms"),
    "frames/cell": ("Å", "(F, 3, 3) cell vectors (rows)"),
    "frames/pbc": ("1", "(F, 3) periodic boundary conditions"),
    "frames/energy": ("eV", "(F,) potential energy; NaN when not computed"),
    "atoms/numbers": ("1", "(A,) atomic numbers, all frames concatenated"),
    "atoms/positions": ("Å", "(A, 3) Cartesian positions, all frames concatenated"),
    "fields/platonic": ("1", "(A_f, K) Platonic coordinates (anchor-projected) in [-1, 1]"),
    "fields/embeddings": ("model units", "(A_f, D) the model's per-atom features of the hooked "
                                         "layer, float64"),
    "fields/forces": ("eV/Å", "(A_f, 3) forces"),
    "projector": ("", "the fitted projector (anchors' embeddings, mean ...): with /fields/"
                      "embeddings it gives the coordinates"),
}


def _describe(f: h5py.File, attrs_json: str) -> None:
    """Units, shapes and how to read the file, as HDF5 attributes (written with the file, since
    SWMR writers cannot add attributes)."""
    for path, (units, text) in _DESCRIPTIONS.items():
        obj = f.get(path)
        if obj is None:
            continue
        target = obj["data"] if isinstance(obj, h5py.Group) and "data" in obj else obj
        target.attrs["units"] = units
        target.attrs["description"] = text
        if isinstance(obj, h5py.Group) and "start" in obj:
            obj["start"].attrs["description"] = ("(F,) first row of frame i in data "
                                                 "(frame i has offsets[i+1]-offsets[i] rows), "
                                                 "-1 if the frame lacks this field")
    try:
        attrs = json.loads(attrs_json)
    except ValueError:
        attrs = {}
    units = attrs.get("score_units") if isinstance(attrs.get("score_units"), dict) else {}
    for name, g in f.get("scores", {}).items():
        g["data"].attrs["units"] = str(units.get(name, "see summary.json monitors"))
        g["data"].attrs["description"] = (f"(A_s,) per-atom score '{name}' "
                                          "(start: first row of each frame, -1 if absent)")
    for key, val in _identity(attrs).items():
        if key not in f.attrs and val is not None:
            f.attrs[key] = val if isinstance(val, int | float) else str(val)
    derived = "fields/platonic" not in f and "projector" in f
    f.attrs["description"] = (
        "platoscope run frames: per-frame data under /frames, per-atom data under /atoms, "
        "/fields and /scores (rows of frame i: /frames/offsets); provenance in attrs_json")
    f.attrs["how_to_read"] = (
        ("Platonic coordinates are not stored per frame: "
         "platoscope.writers.read_sidecar(path).frame(i)['platonic'] rebuilds them from "
         "/fields/embeddings and /projector. " if derived else "")
        + "platoscope.writers.read_sidecar(path) returns frames as dicts and ASE Atoms.")


def _as_coords(z: Any, n_at: int) -> Any:
    """Sparse (N, K) coordinates, checked, kept sparse (densified only if they are stored)."""
    z = as_coords(z, "platonic")
    if z.shape[0] != n_at:
        raise InputError(f"platonic must have shape ({n_at}, ?), got {z.shape}")
    return z


def _as_array(x: Any, name: str, shape: tuple[int | None, ...], dtype: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape,
                                                                              strict=True)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise InputError(f"{name} must have shape {want}, got {arr.shape}")
    if np.issubdtype(np.dtype(dtype), np.integer) and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be integers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _text_array(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "USO"


def _write_state(f: h5py.File, state: Mapping[str, Any]) -> None:
    """``/projector``: one dataset per key of ``state`` (arrays as they are, text as UTF-8)."""
    g = f.create_group(_PROJECTOR)
    for key, val in state.items():
        if not isinstance(key, str) or not key or "/" in key or key in (".", ".."):
            raise InputError(f"projector state key {key!r} must be a non-empty name without '/'")
        arr = np.asarray(val)
        if _text_array(arr):
            g.create_dataset(key, data=arr.astype(str).astype(object), dtype=h5py.string_dtype())
        else:
            g.create_dataset(key, data=arr)


def _read_state(g: h5py.Group) -> dict[str, np.ndarray]:
    """The dict :func:`_write_state` stored: numpy arrays, 0-d for scalars and strings."""
    return {key: np.array(ds.asstr()[()], dtype=str) if h5py.check_string_dtype(ds.dtype)
            else np.asarray(ds[()]) for key, ds in g.items()}


def _states_equal(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        if _text_array(x) != _text_array(y) or x.shape != y.shape:
            return False
        if _text_array(x):
            x, y = x.astype(str), y.astype(str)
        if not np.array_equal(x, y):
            return False
    return True


@dataclass(frozen=True)
class _FrameData:
    """One validated frame waiting to be written (:meth:`FrameSidecar.frame_data`)."""

    step: int
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    opt: dict[str, np.ndarray]
    energy: float


class FrameSidecar:
    """Append-only HDF5 file of MD frames, readable up to the last completed frame after a kill.

    Parameters
    ----------
    path: the ``.h5`` file.
    mode: ``"w"`` creates (replacing any file there); ``"a"`` continues an existing sidecar (a
        restart; created if missing), after rewriting it cleanly if its writer was killed.
    attrs: provenance (model, weight hash, layer, anchor-set hash, versions, ...) stored as JSON
        in the root attribute ``attrs_json``. In ``"a"`` mode the stored attrs are kept; the
        given ones must agree on :data:`IDENTITY_KEYS` they share (top level, or inside a nested
        ``attrs["provenance"]`` dict), else :class:`SidecarMismatchError`.
    n_anchors, embedding_dim: expected K and D (default: ``n_anchors`` and ``feature_dim`` of
        the attrs when given, else the first frame's). Checked against the file
        in ``"a"`` mode and against every frame.
    score_names: score arrays to expect; declaring them avoids a one-off rewrite of the file
        when a score name first appears (new datasets cannot be created in SWMR mode).
    fsync: also ``fsync`` after each frame (survives power loss, not only a killed process).
    chunk_bytes: target HDF5 chunk size of per-atom datasets.
    projector_state: ``Projector.get_state()`` of the projector that made the coordinates (a
        dict of arrays, kept opaque), stored once as ``/projector``. In ``"a"`` mode it must
        equal the stored one, if any (else :class:`SidecarMismatchError`).
    store_platonic: False keeps per-frame coordinates out of the file; readers derive them from
        the frame's embeddings with the stored projector. Needs a projector state (given or in
        the file) and embeddings in every frame that passes ``platonic``.
    verify: with ``store_platonic=False``, check per frame that the derived coordinates equal
        the given ones within ``projection.TOLERANCE`` (one extra projection); a frame where
        they do not (e.g. a model switch changed the projector) keeps its coordinates stored,
        with a warning.

    Frame ``i`` of a run is what the ``i``-th successful :meth:`append` wrote; the MD step is
    stored alongside and need not be contiguous.
    """

    def __init__(self, path: str | os.PathLike, *, mode: Literal["w", "a"] = "w",
                 attrs: Mapping[str, Any] | None = None, n_anchors: int | None = None,
                 embedding_dim: int | None = None, score_names: tuple[str, ...] | list[str] = (),
                 fsync: bool = False, chunk_bytes: int = 1 << 18,
                 projector_state: Mapping[str, Any] | None = None, store_platonic: bool = True,
                 verify: bool = True):
        if mode not in ("w", "a"):
            raise InputError(f"mode must be 'w' or 'a', not {mode!r}")
        self.path = Path(path)
        self.fsync = fsync
        self.chunk_bytes = int(chunk_bytes)
        self.store_platonic = bool(store_platonic)
        self.verify = verify
        self._new_state = None if projector_state is None else dict(projector_state)
        self._state: dict[str, np.ndarray] | None = None  # as stored in the file
        self._projector: Any = None
        self._warned = False
        attrs = dict(to_jsonable(dict(attrs or {})))
        ident = _identity(attrs)
        if n_anchors is None and (ident.get("n_columns") or ident.get("n_anchors")):
            n_anchors = int(ident.get("n_columns") or ident["n_anchors"])
        if embedding_dim is None and ident.get("feature_dim"):
            embedding_dim = int(ident["feature_dim"])
        for name in score_names:
            self._check_score_name(name)
        self._file: h5py.File | None = None
        self._ds: dict[str, h5py.Dataset] = {}
        self._lock = _WriterLock(self.path)
        try:
            remove_stale_temps(self.path)
            self._setup(mode, attrs, n_anchors, embedding_dim, score_names)
        except BaseException:
            self._lock.release()
            raise

    def _setup(self, mode: str, attrs: dict[str, Any], n_anchors: int | None,
               embedding_dim: int | None, score_names: Any) -> None:
        if mode == "a" and self.path.exists():
            src, clean = _open_read(self.path)
            try:
                _check_format(src, self.path)
                stored = _load_attrs(src, self.path)
                file_k = int(src.attrs.get("n_anchors", -1))
                file_d = int(src.attrs.get("embedding_dim", -1))
                n, n_atoms, lengths = _committed_lengths(src, self.path)
                groups = _optional_groups(src)
                fields = set(groups)
                stored_state = _read_state(src[_PROJECTOR]) if _PROJECTOR in src else None
                fr = src["frames"]
                extents_ok = (all(fr[k].shape[0] == n for k in fr if k != "offsets")
                              and fr["offsets"].shape[0] == n + 1
                              and all(ds.shape[0] == n_atoms for ds in src["atoms"].values())
                              and all(g["start"].shape[0] == n
                                      and g["data"].shape[0] == lengths[k]
                                      for k, g in groups.items()))
            finally:
                src.close()
            self._check_identity(stored, attrs, file_k, file_d, n_anchors, embedding_dim)
            if stored_state is not None and self._new_state is not None \
                    and not _states_equal(stored_state, self._new_state):
                raise SidecarMismatchError(f"{self.path}: the run's projector differs from the "
                                           "one stored in the file (/projector)")
            self._check_derivable(stored_state)
            self.attrs = stored
            self.n_anchors = file_k if file_k > 0 else n_anchors
            self.embedding_dim = file_d if file_d > 0 else embedding_dim
            wanted = self._declared_fields(score_names) - fields
            add_state = stored_state is None and self._new_state is not None
            if not clean or not extents_ok or wanted or add_state:
                self._rebuild(sorted(wanted))  # drops uncommitted tails, clears SWMR flags
            else:
                self._open()
        else:
            self._check_derivable(None)
            self.attrs = attrs
            self.n_anchors, self.embedding_dim = n_anchors, embedding_dim
            self._rebuild(sorted(self._declared_fields(score_names)), fresh=True)

    def _check_derivable(self, stored_state: dict[str, Any] | None) -> None:
        if not self.store_platonic and stored_state is None and self._new_state is None:
            raise InputError(f"{self.path}: store_platonic=False derives coordinates from the "
                             "embeddings and needs the projector: pass projector_state="
                             "projector.get_state() (or store_platonic=True)")

    # ---------------------------------------------------------------- internals
    def _declared_fields(self, score_names: Any) -> set[str]:
        out = {f"scores/{s}" for s in score_names}
        if self.n_anchors and self.store_platonic:
            out.add("platonic")
        if self.embedding_dim:
            out.add("embeddings")
        return out

    @staticmethod
    def _check_score_name(name: str) -> None:
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise InputError(f"score name {name!r} must be a non-empty string without '/'")

    def _check_identity(self, stored: dict[str, Any], given: dict[str, Any], file_k: int,
                        file_d: int, k: int | None, d: int | None) -> None:
        stored, given = _identity(stored), _identity(given)
        bad = [key for key in IDENTITY_KEYS
               if key in stored and key in given and stored[key] != given[key]]
        if bad:
            detail = "; ".join(f"{key}: file {stored[key]!r} vs run {given[key]!r}" for key in bad)
            raise SidecarMismatchError(f"{self.path}: cannot continue a sidecar made by another "
                                       f"model/anchor set ({detail})")
        if file_k > 0 and k is not None and k != file_k:
            raise SidecarMismatchError(f"{self.path}: file holds {file_k} coordinate columns, "
                                       f"the run's projection gives {k}")
        if file_d > 0 and d is not None and d != file_d:
            raise SidecarMismatchError(f"{self.path}: file holds embedding dim D={file_d}, "
                                       f"run has {d}")

    def _rebuild(self, new_fields: list[str], fresh: bool = False) -> None:
        """Rewrite the file (committed frames + new fields) via a temp file and os.replace."""
        if self._file is not None:
            self._file.close()
            self._file = None
        fd, tmp = new_sibling(self.path)
        os.close(fd)
        try:
            src = None if fresh else _open_read(self.path)[0]
            try:
                _build_file(tmp, src=src, path=self.path,
                            attrs_json=json.dumps(self.attrs, sort_keys=True),
                            n_anchors=self.n_anchors, embedding_dim=self.embedding_dim,
                            new_fields=new_fields, chunk_bytes=self.chunk_bytes,
                            projector_state=self._new_state)
            finally:
                if src is not None:
                    src.close()
            if self.fsync:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if self.fsync:
            fsync_dir(self.path.parent)
        self._open()

    def _open(self) -> None:
        f = _swmr_write_open(self.path)
        self._file = f
        ds = {f"frames/{k}": v for k, v in f["frames"].items()}
        ds.update({f"atoms/{k}": v for k, v in f["atoms"].items()})
        for name, g in _optional_groups(f).items():
            ds[f"{name}/data"], ds[f"{name}/start"] = g["data"], g["start"]
        ds["n_frames_committed"] = f["n_frames_committed"]
        self._ds = ds
        self._n = int(ds["n_frames_committed"][()])
        self._n_atoms = int(ds["frames/offsets"][self._n])
        self._lengths = {name: ds[f"{name}/data"].shape[0] for name in _optional_groups(f)}
        self._state = _read_state(f[_PROJECTOR]) if _PROJECTOR in f else None
        self._projector = None

    @property
    def projector(self) -> Any:
        """The :class:`~platoscope.projection.Projector` rebuilt from the file's ``/projector``
        (exactly what readers use), or None."""
        if self._projector is None and self._state is not None:
            from platoscope.projection import Projector

            self._projector = Projector.from_state(self._state)
        return self._projector

    def _derives(self, z: np.ndarray, e: np.ndarray | None, numbers: np.ndarray) -> bool:
        """Whether readers will derive coordinates ``z`` (N, K) from embeddings ``e`` (N, D)
        exactly, so that they need not be stored."""
        if e is None:
            raise InputError(f"{self.path}: store_platonic=False derives coordinates from the "
                             "embeddings, but this frame has platonic and no embeddings: pass "
                             "embeddings= (or store_platonic=True)")
        if not self.verify:
            return True
        from platoscope.projection import TOLERANCE

        derived = self.projector.transform(e, numbers)
        if derived.shape == z.shape and max_abs_diff(derived, z) <= TOLERANCE:
            return True
        if not self._warned:
            self._warned = True
            warnings.warn(f"{self.path}: frame {self._n}'s coordinates differ from those its "
                          "embeddings give with the stored projector (another model or "
                          "projector?); such frames keep their coordinates stored",
                          RuntimeWarning, stacklevel=3)
        return False

    def _sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.id.get_vfd_handle())

    # ---------------------------------------------------------------- public API
    @property
    def n_frames(self) -> int:
        """Frames committed so far (including those of earlier runs in ``"a"`` mode)."""
        return self._n

    @property
    def fields(self) -> list[str]:
        """Optional per-atom fields the file has datasets for (``scores/<name>`` for scores)."""
        return sorted(self._lengths)

    def append(self, step: int, *, numbers: Any, positions: Any, cell: Any, pbc: Any = None,
               platonic: Any = None, embeddings: Any = None,
               scores: Mapping[str, Any] | None = None, energy: float | None = None,
               forces: Any = None) -> int:
        """Write one frame and commit it; returns its frame index (:meth:`append_many` commits
        several at once).

        numbers (N,) int; positions (N, 3) Å; cell (3, 3) Å; pbc (3,) bool (default all True);
        platonic (N, K); embeddings (N, D); scores {name: (N,)}; energy eV; forces (N, 3) eV/Å.
        With ``store_platonic=False`` the coordinates are not written (readers derive them from
        the embeddings, which are stored as float64). Everything is validated before anything
        is written. When this returns the frame is committed: a kill from then on cannot lose
        it.
        """
        return self.append_many([self._checked(step, numbers=numbers, positions=positions,
                                               cell=cell, pbc=pbc, platonic=platonic,
                                               embeddings=embeddings, scores=scores,
                                               energy=energy, forces=forces)])[0]

    def frame_data(self, step: int, *, numbers: Any, positions: Any, cell: Any, pbc: Any = None,
                   platonic: Any = None, embeddings: Any = None,
                   scores: Mapping[str, Any] | None = None, energy: float | None = None,
                   forces: Any = None) -> Any:
        """One frame (the arguments of :meth:`append`) validated and converted for
        :meth:`append_many`; raises what :meth:`append` would, writing nothing."""
        return self._checked(step, numbers=numbers, positions=positions, cell=cell, pbc=pbc,
                             platonic=platonic, embeddings=embeddings, scores=scores,
                             energy=energy, forces=forces)

    def _checked(self, step: int, *, numbers: Any, positions: Any, cell: Any, pbc: Any,
                 platonic: Any, embeddings: Any, scores: Mapping[str, Any] | None,
                 energy: float | None, forces: Any) -> _FrameData:
        if self._file is None:
            raise InputError(f"{self.path}: sidecar is closed")
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        numbers = _as_array(numbers, "numbers", (None,), np.int32)
        n_at = numbers.shape[0]
        positions = _as_array(positions, "positions", (n_at, 3), np.float64)
        cell = _as_array(cell, "cell", (3, 3), np.float64)
        pbc = np.asarray(True if pbc is None else pbc, dtype=bool)
        if pbc.shape not in ((), (3,)):
            raise InputError(f"pbc must be a bool or have shape (3,), got {pbc.shape}")
        pbc = np.broadcast_to(pbc, (3,))
        opt: dict[str, np.ndarray] = {}
        if embeddings is not None:
            arr = _as_array(embeddings, "embeddings", (n_at, None), np.float64)
            if self.embedding_dim is not None and arr.shape[1] != self.embedding_dim:
                raise SidecarMismatchError(f"{self.path}: embeddings have D={arr.shape[1]}, "
                                           f"the sidecar holds D={self.embedding_dim}")
            opt["embeddings"] = arr
        if platonic is not None:
            arr = (_as_coords(platonic, n_at) if sp.issparse(platonic)
                   else _as_array(platonic, "platonic", (n_at, None), np.float64))
            if self.n_anchors is not None and arr.shape[1] != self.n_anchors:
                raise SidecarMismatchError(f"{self.path}: platonic has {arr.shape[1]} columns, "
                                           f"the sidecar holds {self.n_anchors}")
            if self.store_platonic or not self._derives(arr, opt.get("embeddings"), numbers):
                opt["platonic"] = dense_rows(arr)  # the file stores (A_f, K) rows dense
        if forces is not None:
            opt["forces"] = _as_array(forces, "forces", (n_at, 3), np.float64)
        for name, val in (scores or {}).items():
            self._check_score_name(name)
            opt[f"scores/{name}"] = _as_array(val, f"scores[{name!r}]", (n_at,), np.float64)
        e = math.nan if energy is None else float(energy)

        return _FrameData(int(step), numbers, positions, cell, pbc, opt, e)

    def append_many(self, frames: Sequence[Any]) -> list[int]:
        """Write frames made by :meth:`frame_data` and commit them together (one flush and one
        commit for all: a kill before the commit loses all of them, never part of one);
        returns their frame indices."""
        if self._file is None:
            raise InputError(f"{self.path}: sidecar is closed")
        frames = list(frames)
        if not frames:
            return []
        for fr in frames:
            if not isinstance(fr, _FrameData):
                raise TypeError(f"append_many takes frames made by frame_data, not "
                                f"{type(fr).__name__}")
            if "platonic" in fr.opt and self.n_anchors is not None \
                    and fr.opt["platonic"].shape[1] != self.n_anchors:
                raise SidecarMismatchError(f"{self.path}: platonic has "
                                           f"{fr.opt['platonic'].shape[1]} columns, the sidecar "
                                           f"holds {self.n_anchors}")
            if "embeddings" in fr.opt and self.embedding_dim is not None \
                    and fr.opt["embeddings"].shape[1] != self.embedding_dim:
                raise SidecarMismatchError(f"{self.path}: embeddings have D="
                                           f"{fr.opt['embeddings'].shape[1]}, the sidecar holds "
                                           f"D={self.embedding_dim}")
        for key, what in (("platonic", "K"), ("embeddings", "D")):
            widths = sorted({fr.opt[key].shape[1] for fr in frames if key in fr.opt})
            if len(widths) > 1:
                raise SidecarMismatchError(f"{self.path}: frames of one append_many have "
                                           f"{key} of {what} = {widths}; one file holds one")
        opt_all = {k: v for fr in frames for k, v in fr.opt.items()}
        missing = sorted(set(opt_all) - set(self._lengths))
        if missing:
            if "platonic" in opt_all:
                self.n_anchors = opt_all["platonic"].shape[1]
            if "embeddings" in opt_all:
                self.embedding_dim = opt_all["embeddings"].shape[1]
            self._rebuild(missing)

        ds, i0, a0 = self._ds, self._n, self._n_atoms
        n_fr = len(frames)
        sizes = np.array([fr.numbers.shape[0] for fr in frames], dtype=np.int64)
        a1 = a0 + int(sizes.sum())
        # 1. per-atom data, then per-frame data; nothing here is visible to readers yet
        for name, key in (("atoms/numbers", "numbers"), ("atoms/positions", "positions")):
            ds[name].resize(a1, axis=0)
            ds[name][a0:a1] = np.concatenate([getattr(fr, key) for fr in frames])
        new_lengths = {}
        for name in self._lengths:
            start = ds[f"{name}/start"]
            start.resize(i0 + n_fr, axis=0)
            s0 = self._lengths[name]
            starts = np.full(n_fr, -1, dtype=np.int64)
            rows = []
            for j, fr in enumerate(frames):
                if name in fr.opt:
                    starts[j] = s0 + sum(len(r) for r in rows)
                    rows.append(fr.opt[name])
            if rows:
                block = np.concatenate(rows)
                data = ds[f"{name}/data"]
                data.resize(s0 + len(block), axis=0)
                data[s0:] = block
                new_lengths[name] = s0 + len(block)
            start[i0:] = starts
        for name in ("step", "cell", "pbc", "energy"):
            vals = [getattr(fr, name) for fr in frames]
            ds[f"frames/{name}"].resize(i0 + n_fr, axis=0)
            ds[f"frames/{name}"][i0:] = np.asarray(vals)
        ds["frames/offsets"].resize(i0 + n_fr + 1, axis=0)
        ds["frames/offsets"][i0 + 1:] = a0 + np.cumsum(sizes)
        self._sync()
        # 2. commit: one 8-byte write, flushed only after the frames' data is in the file
        ds["n_frames_committed"][()] = i0 + n_fr
        self._sync()
        self._n, self._n_atoms = i0 + n_fr, a1
        self._lengths.update(new_lengths)
        return list(range(i0, i0 + n_fr))

    def append_atoms(self, step: int, atoms: Any, **kw: Any) -> int:
        """:meth:`append` taking numbers, positions, cell and pbc from an ASE ``Atoms``."""
        return self.append(step, numbers=atoms.numbers, positions=atoms.positions,
                           cell=np.asarray(atoms.cell), pbc=atoms.pbc, **kw)

    def close(self) -> None:
        """Close the file (clears HDF5's open-for-write flag) and drop the lock. Idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lock.release()

    def __enter__(self) -> FrameSidecar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._file is not None else "closed"
        coords = "" if self.store_platonic else ", platonic derived"
        return (f"FrameSidecar({str(self.path)!r}, frames={self._n}, K={self.n_anchors}, "
                f"D={self.embedding_dim}{coords}, {state})")


@dataclass
class SidecarReader:
    """Read access to a sidecar's committed frames. Use :func:`read_sidecar` to make one.

    ``closed_cleanly`` is False while a writer still has the file open, or after its writer
    was killed; only frames the writer committed are ever returned either way.
    ``projector_state`` is the file's ``/projector`` (None if absent); frames without stored
    coordinates get them derived from their embeddings with it.
    """

    path: Path
    _file: h5py.File = field(repr=False)
    closed_cleanly: bool
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        g = self._file.get(_PROJECTOR)
        self.projector_state: dict[str, np.ndarray] | None = None if g is None else _read_state(g)
        self._projector: Any = None
        self._load()

    @property
    def projector(self) -> Any:
        """The :class:`~platoscope.projection.Projector` stored in the file, or None."""
        if self._projector is None and self.projector_state is not None:
            from platoscope.projection import Projector

            try:
                self._projector = Projector.from_state(self.projector_state)
            except (KeyError, TypeError, ValueError) as exc:
                raise CorruptFileError(f"{self.path}: /projector does not rebuild a Projector "
                                       f"({exc!r})") from exc
        return self._projector

    def _platonic(self, i: int, numbers: np.ndarray, embeddings: np.ndarray | None
                  ) -> np.ndarray | None:
        """Frame ``i``'s stored coordinates, else those derived from its embeddings, else None."""
        z = self._field("platonic", i, len(numbers))
        if z is not None or embeddings is None or self.projector_state is None:
            return z
        dtype = self._groups["embeddings"]["data"].dtype
        if dtype != np.float64:
            raise CorruptFileError(f"{self.path}: embeddings are stored as {dtype}, not float64: "
                                   "the coordinates cannot be derived exactly")
        return self.projector.transform(embeddings, numbers)

    def _load(self, n: int | None = None) -> None:
        f = self._file
        self._n, _, _ = _committed_lengths(f, self.path, n)
        self._offsets = f["frames/offsets"][: self._n + 1]
        self._groups = _optional_groups(f)
        self._starts = {k: g["start"][: self._n] for k, g in self._groups.items()}
        k, d = int(f.attrs.get("n_anchors", -1)), int(f.attrs.get("embedding_dim", -1))
        self.n_anchors: int | None = k if k > 0 else None
        self.embedding_dim: int | None = d if d > 0 else None

    def refresh(self) -> int:
        """Pick up frames a live (SWMR) writer committed since opening; returns n_frames."""
        n = None
        if not self.closed_cleanly:
            # read the commit count before refreshing the extents: the writer flushes a frame's
            # data before its count, so extents refreshed afterwards cover the frames counted
            count = self._file["n_frames_committed"]
            count.refresh()
            n = int(count[()])
            for obj in self._iter_datasets():
                obj.refresh()
        self._load(n)
        return self._n

    def _iter_datasets(self) -> Iterator[h5py.Dataset]:
        found: list[h5py.Dataset] = []
        self._file.visititems(lambda _, o: found.append(o) if isinstance(o, h5py.Dataset)
                              else None)
        return iter(found)

    @property
    def n_frames(self) -> int:
        return self._n

    def __len__(self) -> int:
        return self._n

    @property
    def steps(self) -> np.ndarray:
        """(F,) int64 MD step of each committed frame."""
        return self._file["frames/step"][: self._n]

    @property
    def n_atoms(self) -> np.ndarray:
        """(F,) int64 atom count of each committed frame."""
        return np.diff(self._offsets)

    @property
    def score_names(self) -> list[str]:
        return sorted(k.split("/", 1)[1] for k in self._groups if k.startswith("scores/"))

    @property
    def fields(self) -> list[str]:
        return sorted(self._groups)

    def _field(self, name: str, i: int, n_at: int) -> np.ndarray | None:
        s = int(self._starts[name][i]) if name in self._starts else -1
        return None if s < 0 else self._groups[name]["data"][s: s + n_at]

    def frame(self, i: int, *, platonic: bool = True) -> dict[str, Any]:
        """Frame ``i`` (negative counts from the end) as a dict of arrays.

        Keys: index, step, numbers (N,), positions (N,3), cell (3,3), pbc (3,), energy (float or
        None), forces (N,3) | None, platonic (N,K) | None, embeddings (N,D) | None,
        scores {name: (N,)} (only the scores this frame has). ``platonic`` is stored (a dense
        ndarray) or derived from the embeddings (see the module docstring) in the projector's
        own form: a ``scipy.sparse.csr_array`` for the element projection, exact, as the
        calculator gave it during the run; ``platonic=False`` skips it (None).
        """
        if not -self._n <= i < self._n:
            raise IndexError(f"{self.path}: frame {i} out of range ({self._n} frames)")
        i %= self._n
        a0, a1 = int(self._offsets[i]), int(self._offsets[i + 1])
        f = self._file
        energy = float(f["frames/energy"][i])
        scores = {}
        for name in self.score_names:
            val = self._field(f"scores/{name}", i, a1 - a0)
            if val is not None:
                scores[name] = val
        embeddings = self._field("embeddings", i, a1 - a0)
        numbers = f["atoms/numbers"][a0:a1].astype(np.int64)
        return {
            "index": i,
            "step": int(f["frames/step"][i]),
            "numbers": numbers,
            "positions": f["atoms/positions"][a0:a1],
            "cell": f["frames/cell"][i],
            "pbc": f["frames/pbc"][i],
            "energy": None if math.isnan(energy) else energy,
            "forces": self._field("forces", i, a1 - a0),
            "platonic": self._platonic(i, numbers, embeddings) if platonic else None,
            "embeddings": embeddings,
            "scores": scores,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self._n):
            yield self.frame(i)

    def to_atoms(self, i: int) -> Any:
        """Frame ``i`` as ``ase.Atoms``; per-atom fields in ``atoms.arrays`` (``score_<name>``)."""
        from ase import Atoms

        fr = self.frame(i)
        atoms = Atoms(numbers=fr["numbers"], positions=fr["positions"], cell=fr["cell"],
                      pbc=fr["pbc"])
        for key in ("platonic", "embeddings", "forces"):
            if fr[key] is not None:
                atoms.arrays[key] = dense_rows(fr[key])  # ASE keeps dense per-atom arrays
        for name, val in fr["scores"].items():
            atoms.arrays[f"score_{name}"] = val
        atoms.info["step"] = fr["step"]
        if fr["energy"] is not None:
            atoms.info["energy"] = fr["energy"]
        return atoms

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SidecarReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_sidecar(path: str | os.PathLike) -> SidecarReader:
    """Open a frame sidecar for reading (also one still being written, or left by a kill).

    Raises ``FileNotFoundError`` if absent and :class:`CorruptFileError` (naming the file) if it
    is not HDF5, not a platoscope sidecar, or its committed frames are inconsistent.
    """
    p = Path(path)
    f, clean = _open_read(p)
    try:
        _check_format(f, p)
        attrs = _load_attrs(f, p)
        return SidecarReader(p, f, clean, attrs)
    except CorruptFileError:
        f.close()
        raise
    except (OSError, KeyError, ValueError) as exc:
        f.close()
        raise CorruptFileError(f"{p}: unreadable sidecar ({exc})") from exc


def repair_sidecar(path: str | os.PathLike, *, fsync: bool = True) -> dict[str, Any]:
    """Make a sidecar left by a killed writer open with plain ``h5py.File(path, "r")``/h5dump.

    A writer killed mid-run leaves HDF5's "open for SWMR write" flag set, which only SWMR
    readers accept. The committed frames are copied into a clean file that replaces the old one
    atomically (``os.replace``): every committed frame is kept; a frame half written at the
    kill, never committed, is dropped, as readers already ignore it. A cleanly closed file is
    left untouched. Refuses (:class:`SidecarLockedError`) while a live writer holds the file.

    Returns ``{"path", "repaired" (bool), "frames" (committed frames)}``.
    """
    p = Path(path)
    lock = _WriterLock(p)
    try:
        remove_stale_temps(p)
        src, clean = _open_read(p)
        try:
            _check_format(src, p)
            n = _committed_lengths(src, p)[0]
            if clean:
                return {"path": str(p), "repaired": False, "frames": n}
            fd, tmp = new_sibling(p)
            os.close(fd)
            try:
                _build_file(tmp, src=src, path=p, attrs_json=str(src.attrs.get("attrs_json", "{}")),
                            n_anchors=int(src.attrs.get("n_anchors", -1)),
                            embedding_dim=int(src.attrs.get("embedding_dim", -1)),
                            new_fields=[], chunk_bytes=1 << 18)
                if fsync:
                    with open(tmp, "rb") as fh:
                        os.fsync(fh.fileno())
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
        finally:
            src.close()
        os.replace(tmp, p)
        if fsync:
            fsync_dir(p.parent)
        return {"path": str(p), "repaired": True, "frames": n}
    finally:
        lock.release()


