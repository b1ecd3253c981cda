"""Provenance helpers: weight hashes, package versions, content hashes."""

from __future__ import annotations

import hashlib
import os
import platform
from functools import lru_cache
from importlib import metadata
from pathlib import Path

CORE_PACKAGES = ("platoscope", "numpy", "torch", "ase", "e3nn", "chgnet", "sevenn", "mace-torch",
                 "orb-models", "pot", "scikit-learn", "h5py", "spglib")


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (memoised on path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    return _sha256_cached(str(p), st.st_size, st.st_mtime_ns)


def sha256_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little"))
        h.update(c)
    return h.hexdigest()


def package_versions(names: tuple[str, ...] = CORE_PACKAGES) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones are left out). Looked up
    once per process and set of names (each lookup reads package metadata from disk; a run
    writes its summary several times)."""
    return dict(_package_versions(tuple(names)))


@lru_cache(maxsize=16)
def _package_versions(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return tuple(out.items())


def invocation(argv: list[str] | None = None) -> dict[str, str | None]:
    """Which code and command produced a results file: ``{"commit", "dirty", "command",
    "versions"}``. ``commit`` is the git HEAD of the working tree the code ran from (None outside
    a git checkout); ``dirty`` says whether tracked files differed from it."""
    import shlex
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                 timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout.strip()

    argv = sys.argv if argv is None else argv
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"),
            "dirty": None if status is None else str(bool(status)).lower(),
            "command": shlex.join(["python", *argv]) if argv else None,
            "versions": package_versions()}
