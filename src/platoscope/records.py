"""What a run folder records about the run as a whole: counts taken from its files (one
source of truth across restarts), the one readable end-of-run line, and the check that a
restart continues the recorded run with the recorded settings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from platoscope.errors import ConfigError
from platoscope.writers.jsonio import to_jsonable
from platoscope.writers.runfiles import EVENTS, FRAMES, SUMMARY

__all__ = ["RESTART_PROVENANCE", "check_restart", "count_events", "count_frames", "same_setting",
           "status_line"]


def count_frames(out: str | Path) -> int:
    """Frames in a run folder's frames.extxyz (every segment of a restarted run), counted
    from the file itself: the one source of the ``frames_written`` figure."""
    path = Path(out) / FRAMES
    if not path.is_file():
        return 0
    n = 0
    with path.open() as fh:
        for line in fh:
            head = line.strip()
            if not head:
                continue
            n_atoms = int(head)
            for _ in range(n_atoms + 1):
                next(fh, None)
            n += 1
    return n


def count_events(out: str | Path) -> int:
    """Events in a run folder's events.jsonl (every segment), counted from the file."""
    out = Path(out)
    path = out / EVENTS
    if not path.is_file():
        return 0
    with path.open() as fh:
        return sum(1 for line in fh if line.strip())


def status_line(result: dict[str, Any]) -> str:
    """One readable line for a run's end: completed, "not converged after N steps, fmax X
    eV/Å", or "stopped by <monitor> at step S (score > threshold on atoms ...)"."""
    status = result.get("status", "unknown")
    if status == "completed" and result.get("converged") is False:
        return (f"not converged after {result.get('optimizer_steps')} steps, fmax "
                f"{result.get('fmax_final', float('nan')):.4g} eV/Å "
                f"(asked {result.get('fmax_target')} eV/Å)")
    stop = result.get("stopped_by")
    if status == "stopped" and stop:
        atoms = ", ".join(str(a) for a in stop.get("atoms", [])[:8])
        return (f"stopped by monitor {stop.get('monitor')} at step {stop.get('step')}: score "
                f"{stop.get('score', float('nan')):.4g} > threshold "
                f"{stop.get('threshold', float('nan')):.4g} on atoms {atoms}")
    if status == "failed" and result.get("error"):
        return f"failed: {result['error']}"
    return str(status)


def same_setting(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Whether two JSON values are the same setting: numbers within ``rel`` (a threshold
    recalibrated from the same bank on another CPU may differ in its last bits), the rest
    equal, lists and dicts item by item."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (math.isfinite(a) and math.isfinite(b)
                          and abs(a - b) <= rel * max(abs(a), abs(b)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_setting(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_setting(a[k], b[k], rel) for k in a)
    return a == b


RESTART_PROVENANCE = ("model", "spec", "weights_sha256", "layer", "anchor_set_hash",
                      "n_anchors", "n_columns", "projection")
"""Provenance keys a restart must share with the recorded run (the model and coordinates)."""


OPTIONAL_CONFIG = ("temperature_end_K",)
"""Run settings that a run's config holds only when given (a restart compares their presence)."""


def check_restart(out: str | Path, config: dict[str, Any], provenance: dict[str, Any],
                  monitors: Sequence[Any]) -> None:
    """Refuse a restart whose settings differ from those recorded in ``out``/summary.json.

    A run is one record: a restart continues it with the same ensemble, temperature,
    timestep, friction, pressure, interval, seed, model, anchors, projection and monitors
    (names, actions, and every setting of :meth:`~platoscope.monitors.base.Monitor.settings`:
    thresholds, intervals, spaces, reference banks, calibrations) and what the run files hold
    (embeddings, coordinates); only ``steps`` (the total) may grow. Raises
    :class:`~platoscope.errors.ConfigError` naming every differing setting, recorded and
    given value. To change a setting, start a new run from the last frame instead.
    """
    import json

    path = Path(out) / SUMMARY
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot restart: {path} is missing or unreadable ({err})") from None
    diffs = []
    old_config = recorded.get("config", {})
    for key, value in config.items():
        if key != "steps" and key in old_config and old_config[key] != value:
            diffs.append(f"{key} (recorded {old_config[key]!r}, given {value!r})")
    for key in OPTIONAL_CONFIG:  # recorded only when set: added or dropped is a change too
        if (key in old_config) != (key in config):
            diffs.append(f"{key} (recorded {old_config.get(key)!r}, given {config.get(key)!r})")
    if old_config.get("temperature_end_K") is not None and "steps" in old_config and \
            config.get("steps") != old_config["steps"]:
        diffs.append(f"steps (recorded {old_config['steps']!r}, given {config.get('steps')!r}: "
                     "a temperature ramp's schedule is spread over the steps, so they stay)")
    old_prov = dict(recorded.get("provenance", {}))
    if "n_columns" not in old_prov and "n_anchors" in old_prov:  # recorded before the width
        old_prov["n_columns"] = old_prov["n_anchors"]            # could differ from K
    for key in RESTART_PROVENANCE:
        if key in old_prov and old_prov[key] != provenance.get(key):
            diffs.append(f"{key} (recorded {old_prov[key]!r}, given {provenance.get(key)!r})")
    recorded_mons = recorded.get("monitoring", {}).get("monitors", [])
    old_mons = [(m.get("name"), m.get("action")) for m in recorded_mons]
    new_mons = [(m.name, m.action) for m in monitors]
    if "monitoring" in recorded and old_mons != new_mons:
        diffs.append(f"monitors (recorded {old_mons}, given {new_mons})")
    elif "monitoring" in recorded:
        for rec, mon in zip(recorded_mons, monitors, strict=True):
            old_set = rec.get("settings")  # absent in runs recorded before settings were
            if old_set is None:
                continue
            new_set = to_jsonable(mon.settings())
            for key in sorted(set(old_set) | set(new_set)):
                if not same_setting(old_set.get(key), new_set.get(key)):
                    diffs.append(f"{mon.name} monitor {key} (recorded {old_set.get(key)!r}, "
                                 f"given {new_set.get(key)!r})")
    if diffs:
        raise ConfigError(f"cannot restart the run in {out} with other settings: "
                          + "; ".join(diffs) + ". Restart with the recorded settings, or "
                          "start a new run (another --out) from its last frame")
