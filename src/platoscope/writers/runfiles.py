"""The files of a run folder (names used everywhere instead of literals) and the repair of
what a killed run left there."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

FRAMES = "frames.extxyz"
"""Extended XYZ trajectory, one frame per recorded step (positions, forces, coordinates)."""
SIDECAR = "frames.h5"
"""HDF5 sidecar (:mod:`platoscope.writers.sidecar`)."""
EVENTS = "events.jsonl"
"""Monitor events (:mod:`platoscope.writers.events`)."""
SUMMARY = "summary.json"
"""Provenance, configuration, status and monitor summaries."""
REPORT = "report.txt"
"""Text report (:func:`platoscope.report.make_report`)."""
DUMPS = "dumps"
"""Folder of structures dumped by ``--action dump``."""


def repair_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Repair what a killed run left in ``run_dir`` so that standard tools read it.

    ``frames.h5`` is rewritten by :func:`repair_sidecar` if its writer was killed, and an
    incomplete last line of ``events.jsonl`` is cut off; completed frames and events are kept.
    Returns ``{"frames.h5": {...} or None, "events_tail_dropped": bool}``.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"no run folder {run}")
    from platoscope.writers.events import EventLog
    from platoscope.writers.sidecar import repair_sidecar

    side = run / SIDECAR
    out: dict[str, Any] = {SIDECAR: repair_sidecar(side) if side.is_file() else None,
                           "events_tail_dropped": False}
    events = run / EVENTS
    if events.is_file():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            EventLog(events, mode="a").close()
        out["events_tail_dropped"] = any("incomplete last line" in str(w.message)
                                         for w in caught)
    return out
