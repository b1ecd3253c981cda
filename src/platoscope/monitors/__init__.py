"""On-the-fly monitors: one module per monitor, one protocol (:mod:`.base`), one registry
(:mod:`.registry`: a monitor class registers itself by name with ``@register_monitor``)."""

from __future__ import annotations

from typing import Any

from platoscope.monitors.base import (
    ACTIONS,
    Event,
    Frame,
    Monitor,
    MonitorWarning,
    RunStopped,
    Watcher,
)
from platoscope.monitors.registry import (
    DEFAULT_INTERVAL,
    ModelLoader,
    MonitorContext,
    MonitorOption,
    build_monitors,
    monitor_classes,
    monitor_options,
    register_monitor,
    unregister_monitor,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_INTERVAL",
    "MONITORS",
    "Event",
    "Frame",
    "ModelLoader",
    "Monitor",
    "MonitorContext",
    "MonitorOption",
    "MonitorWarning",
    "RunStopped",
    "Watcher",
    "build_monitors",
    "monitor_classes",
    "monitor_options",
    "register_monitor",
    "unregister_monitor",
]


def __getattr__(name: str) -> Any:
    if name == "MONITORS":  # names of the registered monitors, computed on access
        return tuple(monitor_classes())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
