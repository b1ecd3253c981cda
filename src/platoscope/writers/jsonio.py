"""Whole-file JSON written atomically (temp file + ``os.replace``), and the helpers
every run-file writer shares: fsync of a folder, a fresh sibling temp file, stale temp removal,
numpy-to-JSON conversion."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------
# JSON helpers
# --------------------------------------------------------------------------------------------

def to_jsonable(obj: Any) -> Any:
    """Recursively turn numpy scalars/arrays, paths, tuples and sets into JSON-native types.

    Non-finite floats stay floats (written as ``NaN``/``Infinity``, which Python's json reads).
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    return obj


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every OS/filesystem
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def new_sibling(path: Path) -> tuple[int, Path]:
    """Create a fresh hidden temp file next to ``path`` (mode 0o666 less the umask)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temp file next to {path}")


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp siblings of ``path`` left by a killed writer (their process no longer runs)."""
    removed = []
    prefix = f".{path.name}."
    with contextlib.suppress(OSError):
        for tmp in path.parent.iterdir():
            rest = tmp.name[len(prefix):] if tmp.name.startswith(prefix) else ""
            pid, _, tail = rest.partition(".")
            if not (pid.isdigit() and len(tail) == 12 and tail.endswith(".tmp")):
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    removed.append(tmp)
            except PermissionError:  # alive, another user's
                continue
    return removed


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON so that ``path`` holds either the old or the new content, never half.

    The JSON goes to a temp file in the same directory, is fsynced, then ``os.replace``-d onto
    ``path``. numpy types are converted (:func:`to_jsonable`). Returns the path.
    """
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=indent, sort_keys=False) + "\n"
    remove_stale_temps(path)
    fd, tmp = new_sibling(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


