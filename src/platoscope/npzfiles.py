"""``.npz`` files of platoscope (anchor sets, anchor-matrix caches, reference banks): written
atomically, read back with a format check that names the file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from platoscope.errors import CorruptFileError

__all__ = ["load_npz", "savez_atomic"]


def savez_atomic(path: Path, *, compressed: bool = False, **arrays: Any) -> None:
    """Write ``arrays`` to ``path`` through a temp file and ``os.replace`` (never half-written);
    ``compressed`` uses ``np.savez_compressed``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        (np.savez_compressed if compressed else np.savez)(tmp, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def require_zip(path: Path, what: str, hint: str = "") -> None:
    """CorruptFileError naming ``path`` and what it is instead when it is no .npz (zip)
    archive (np.load would call any such file "pickled (object) data")."""
    import zipfile

    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as fh:
        head = fh.read(8)
    kind = ("an HDF5 file (such as platoscope embed's coordinates or a run's frames.h5)"
            if head == b"\x89HDF\r\n\x1a\n" else "empty" if not head else
            "not an .npz (zip) archive")
    raise CorruptFileError(f"{path}: not a readable {what}: the file is {kind}{hint}")


def load_npz(path: Path, fmt: str, what: str, hint: str = "") -> dict[str, np.ndarray]:
    """Every array of a platoscope ``.npz`` file (no pickle); CorruptFileError naming the file
    when it cannot be read or holds another format than ``fmt``; FileNotFoundError if absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    require_zip(path, what, hint)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as err:
        raise CorruptFileError(f"{path}: not a readable {what} ({err}){hint}") from err
    if str(data.get("format", "")) != fmt:
        raise CorruptFileError(f"{path}: not a platoscope {what} (format "
                               f"{str(data.get('format', 'missing'))!r}){hint}")
    return data
