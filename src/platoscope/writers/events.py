"""``events.jsonl``: one JSON object per monitor event, fsynced line by line, and its
reader (a half-written last line from a killed run is skipped with a warning)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from platoscope.errors import CorruptFileError, InputError
from platoscope.writers.jsonio import to_jsonable
from platoscope.writers.runfiles import EVENTS

# --------------------------------------------------------------------------------------------
# Event log
# --------------------------------------------------------------------------------------------

_EVENT_CORE = ("step", "monitor", "atoms", "score", "threshold", "action")


class EventLog:
    """Append-only ``events.jsonl``: one JSON object per line, flushed and fsynced per event.

    ``path`` is the file, or a directory (then ``<dir>/events.jsonl``). ``mode="a"`` (default)
    continues an existing log, so a restarted run appends to it; an incomplete last line left by
    a killed writer is cut off (with a warning) before the first new event, so every line stays
    valid JSON. ``mode="w"`` starts an empty log.
    """

    def __init__(self, path: str | os.PathLike, mode: Literal["a", "w"] = "a"):
        if mode not in ("a", "w"):
            raise InputError(f"mode must be 'a' or 'w', not {mode!r}")
        p = Path(path)
        self.path = p / EVENTS if p.is_dir() else p
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        if mode == "w":
            flags |= os.O_TRUNC
        else:
            self._repair_tail()
        self._fd: int | None = os.open(self.path, flags, 0o666)
        self.n_written = 0

    def _repair_tail(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return
            data = fh.seek(0) or fh.read()
            keep = data.rfind(b"\n") + 1
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
        warnings.warn(f"{self.path}: dropped an incomplete last line ({len(data) - keep} bytes) "
                      "left by an interrupted writer", RuntimeWarning, stacklevel=3)

    def log(self, step: int, monitor: str, atoms: Any, score: float, threshold: float,
            action: str, /, **extra: Any) -> dict[str, Any]:
        """Append one event and fsync it. ``atoms``: iterable of atom indices.

        ``extra`` keys (any JSON-able values, numpy converted) must not reuse the core names.
        Returns the record as written.
        """
        if self._fd is None:
            raise InputError(f"{self.path}: event log is closed")
        clash = set(extra) & set(_EVENT_CORE)
        if clash:
            raise InputError(f"extra event fields {sorted(clash)} clash with core fields")
        record = {
            "step": int(step),
            "monitor": str(monitor),
            "atoms": [int(a) for a in np.atleast_1d(np.asarray(atoms, dtype=np.int64))],
            "score": float(score),
            "threshold": float(threshold),
            "action": str(action),
            **to_jsonable(extra),
        }
        line = (json.dumps(record) + "\n").encode("utf-8")
        os.write(self._fd, line)  # O_APPEND: one write per record
        os.fsync(self._fd)
        self.n_written += 1
        return record

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`log` taking one dict (e.g. ``Event.to_dict()``): the core fields plus extras."""
        missing = [k for k in _EVENT_CORE if k not in event]
        if missing:
            raise InputError(f"event lacks the fields {missing}")
        extra = {k: v for k, v in event.items() if k not in _EVENT_CORE}
        return self.log(*(event[k] for k in _EVENT_CORE), **extra)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventLog({str(self.path)!r}, written={self.n_written})"


@dataclass
class EventLogData:
    """What :func:`read_events` found: the events, and whether the last line was cut short."""

    path: Path
    events: list[dict[str, Any]]
    truncated: bool = False
    truncated_text: str = ""

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.events)


def read_events(path: str | os.PathLike, *, warn: bool = True) -> EventLogData:
    """Read ``events.jsonl`` (file or its directory).

    An incomplete or unparsable *last* line (a writer killed mid-write) is left out, reported in
    ``truncated``/``truncated_text`` and, with ``warn``, by a ``RuntimeWarning``. A bad line
    anywhere else raises :class:`CorruptFileError` naming the file and line.
    """
    p = Path(path)
    p = p / EVENTS if p.is_dir() else p
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail is b"" when the file ends with a newline
    events: list[dict[str, Any]] = []
    truncated_text = ""
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise InputError("not a JSON object")
        except ValueError as exc:
            if i == len(complete) - 1 and not tail:
                truncated_text = line.decode("utf-8", errors="replace")
                break
            raise CorruptFileError(f"{p}: line {i + 1} is not a JSON event ({exc})") from exc
        events.append(rec)
    if tail.strip():
        truncated_text = tail.decode("utf-8", errors="replace")
    truncated = bool(truncated_text)
    if truncated and warn:
        warnings.warn(f"{p}: last line is incomplete (writer interrupted); "
                      f"{len(events)} complete events kept", RuntimeWarning, stacklevel=2)
    return EventLogData(p, events, truncated, truncated_text)


def drop_events_after(path: str | os.PathLike, step: int) -> int:
    """Remove from ``events.jsonl`` (file or its directory) the events of steps after
    ``step``, the last frame a restart continues from: a run stopped between a step's events
    and its frame (Ctrl-C; with ``interval`` > 1, any step after the last written frame) left
    events of a trajectory the restart does not follow, and they were counted. Rewrites the file
    atomically; returns how many were dropped (0: the file is left untouched)."""
    p = Path(path)
    p = p / EVENTS if p.is_dir() else p
    if not p.is_file():
        return 0
    data = read_events(p, warn=False)
    keep = [e for e in data.events if int(e.get("step", -1)) <= step]
    dropped = len(data.events) - len(keep)
    if dropped or data.truncated:
        tmp = p.with_name(p.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in keep)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    return dropped

