"""Where platoscope keeps files: data shipped in the package, the per-user cache, and safe
file names made from model specs."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "default_data_path", "safe_file_name"]


def default_data_path(name: str) -> Path:
    """Path of a data file shipped inside the package (``platoscope/data/<name>``)."""
    return Path(__file__).parent / "data" / name


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where platoscope caches per-model data: ``path``, ``$PLATOSCOPE_CACHE`` or ~/.cache."""
    if path is not None:
        return Path(path)
    env = os.environ.get("PLATOSCOPE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "platoscope"


def safe_file_name(name: str) -> str:
    """``name`` (e.g. a model spec ``sevenn:/a/b.pth``) with every character other than
    letters, digits, ``-`` and ``.`` written ``_``, usable as one file-name component."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)
