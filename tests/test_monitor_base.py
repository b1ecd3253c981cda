"""Watcher: every monitor is started on its own first due frame."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from platoscope.monitors import Frame, Monitor, Watcher


class Counting(Monitor):
    """Scores 0 everywhere and records the steps ``start`` was called on."""

    def __init__(self, name: str, *, fail_starts: int = 0, **kwargs):
        super().__init__(threshold=1.0, **kwargs)
        self.name = name
        self.starts: list[int] = []
        self.scored: list[int] = []
        self.fail_starts = fail_starts

    def start(self, frame: Frame) -> None:
        self.starts.append(frame.step)
        if len(self.starts) <= self.fail_starts:
            raise RuntimeError("not ready")

    def score(self, frame: Frame) -> np.ndarray:
        self.scored.append(frame.step)
        return np.zeros(len(frame.atoms))


def frames(steps):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    return [Frame(step=k, atoms=atoms, platonic=np.zeros((8, 3))) for k in steps]


def test_each_monitor_starts_on_its_own_first_frame():
    """A restarted run (first step 7): every-step monitor starts at 7, interval 5 at 10, one
    added at step 9 at 9; each exactly once."""
    every, fifth, late = Counting("every"), Counting("fifth", interval=5), Counting("late")
    w = Watcher([every, fifth], start_step=7)
    for f in frames(range(7, 13)):
        if f.step == 9:
            w.add(late)
        w.process(f)
    assert every.starts == [7] and every.scored == list(range(7, 13))
    assert fifth.starts == [10] and fifth.scored == [10]
    assert late.starts == [9] and late.scored == [9, 10, 11, 12]
    with pytest.raises(ValueError, match="'late' is already watching"):
        w.add(Counting("late"))


def test_a_failed_start_is_retried_on_the_next_due_frame():
    mon = Counting("flaky", fail_starts=2, interval=2)
    w = Watcher([mon])
    for f in frames(range(7)):
        w.process(f)
    assert mon.starts == [0, 2, 4] and mon.scored == [4, 6]
    assert [e["step"] for e in w.errors] == [0, 2] and "not ready" in w.errors[0]["error"]
