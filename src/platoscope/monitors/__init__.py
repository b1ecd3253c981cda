"""On-the-fly monitors: one module per monitor, one protocol (:mod:`.base`)."""

from platoscope.monitors.base import Event, Frame, Monitor, MonitorWarning, RunStopped, Watcher

__all__ = ["Event", "Frame", "Monitor", "MonitorWarning", "RunStopped", "Watcher"]
