"""The alternating timing loop shared by the per-step benchmarks.

Each round calls every function once on the same fresh input, in a rotating order, so that
drifts in machine load hit every variant alike; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def alternate(fns: dict[str, Callable[[Any], Any]], make_input: Callable[[int], Any],
              rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, ``rounds`` rounds, input ``make_input(round)``."""
    for w in range(warmup):
        for f in fns.values():
            f(make_input(-1 - w))
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        x = make_input(r)
        for name in order:
            t0 = time.perf_counter()
            fns[name](x)
            times[name].append(time.perf_counter() - t0)
        order = order[1:] + order[:1]
    return times


def median_ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Median over rounds of time / time of ``base``, for every other variant."""
    return {k: statistics.median(t / b for t, b in zip(v, times[base], strict=True))
            for k, v in times.items() if k != base}
