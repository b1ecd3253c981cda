"""Extension points from outside the package: a toy backend (ASE's EMT calculator with a
radial-density feature function) and a toy monitor, registered here, run by ``platoscope md``
through the CLI's one assembly path."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list
from click.testing import CliRunner

from platoscope.backends import (
    Backend,
    BackendFamily,
    LayerSpec,
    available_backends,
    load_backend,
    register_backend,
    spec_help,
    unregister_backend,
)
from platoscope.cli import main
from platoscope.monitors import (
    Monitor,
    build_monitors,
    monitor_classes,
    register_monitor,
    unregister_monitor,
)

CENTRES = np.linspace(1.5, 5.0, 16)  # Å
EMT_NUMBERS = frozenset({1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79})


class EMTBackend(Backend):
    """ASE's EMT; per-atom features: Gaussian radial neighbour density (16 centres, Å)."""

    family = "toyemt"
    default_layer = "radial"

    def __init__(self, *, layer: str | None = None, calc: Any = None):
        super().__init__(calc or EMT(), model="emt", weights_path=None, layer=layer)

    @property
    def torch_model(self) -> torch.nn.Module:
        return torch.nn.Identity()

    def available_layers(self) -> list[str]:
        return ["radial"]

    def layer_spec(self, layer: str) -> LayerSpec:
        return LayerSpec(module="", extract=lambda _i, o: o, description="radial density")

    @property
    def supported_numbers(self) -> frozenset[int]:
        return EMT_NUMBERS

    def compute(self, atoms: Atoms, properties: Sequence[str] = ("energy", "forces"),
                system_changes: Sequence[str] = tuple(all_changes)
                ) -> tuple[dict[str, Any], np.ndarray]:
        self.check_atoms(atoms)
        self.calc.calculate(atoms, list(properties), list(system_changes))
        i, d = neighbor_list("id", atoms, 5.5)
        g = np.exp(-((d[:, None] - CENTRES[None, :]) / 0.3) ** 2)
        feats = np.zeros((len(atoms), len(CENTRES)))
        np.add.at(feats, i, g)
        return dict(self.calc.results), feats + 1e-3 * atoms.numbers[:, None]


TOY_BACKEND = BackendFamily(
    name="toyemt", package="ase", extra="dev",
    factory=lambda rest, layer, device: EMTBackend(layer=layer),
    spec_help="toyemt                (ASE's EMT, test only)",
    recognises=lambda calc: isinstance(calc, EMT),
    from_calculator=lambda calc, layer: EMTBackend(layer=layer, calc=calc))


class ForceMonitor(Monitor):
    """Per-atom |F| (eV/Å) above ``limit``."""

    name = "toyforce"
    units = "eV/Å"
    from platoscope.monitors import MonitorOption

    options = (MonitorOption("limit", float, 10.0, "|F| threshold, eV/Å"),)
    del MonitorOption

    def __init__(self, *, limit: float = 10.0, **kwargs: Any):
        super().__init__(threshold=limit, **kwargs)

    def score(self, frame):
        return np.linalg.norm(frame.forces, axis=1)


@pytest.fixture(autouse=True)
def registered():
    """Both toys registered for this module's tests only (other tests expect EMT unknown)."""
    register_backend(TOY_BACKEND)
    register_monitor(ForceMonitor)
    yield
    unregister_backend("toyemt")
    unregister_monitor("toyforce")


def test_registered_from_outside():
    assert available_backends()["toyemt"] is True
    assert "toyemt" in spec_help()
    assert isinstance(load_backend("toyemt"), EMTBackend)
    assert isinstance(load_backend(EMT()), EMTBackend)  # recognised as a built calculator
    assert monitor_classes()["toyforce"] is ForceMonitor
    with pytest.raises(ValueError, match="already registered"):
        register_monitor(type("Other", (ForceMonitor,), {}))
    unregister_backend("toyemt")
    with pytest.raises(Exception, match="cannot wrap"):
        load_backend(EMT())
    register_backend(TOY_BACKEND)


def test_md_with_toy_backend_and_monitor(tmp_path):
    from platoscope.anchors import select_anchor_set
    from platoscope.reference import ReferenceBank

    backend = load_backend("toyemt")
    structures = [bulk("Cu", "fcc", a=a, cubic=True).repeat(2) for a in (3.5, 3.6, 3.7)]
    structures += [bulk("Al", "fcc", a=a, cubic=True).repeat(2) for a in (4.0, 4.05)]
    for k, s in enumerate(structures):
        s.rattle(0.05, seed=k)
    anchors = select_anchor_set(backend, structures, k=12, method="fps")
    anchors.save(tmp_path / "anchors.npz")
    bank = ReferenceBank.build(backend, structures, anchors, projection="paper")
    bank.save(tmp_path / "bank.npz")
    start = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    start.rattle(0.1, seed=7)
    start.write(tmp_path / "start.xyz")

    out = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "md", str(tmp_path / "start.xyz"), "--model", "toyemt", "--anchors",
        str(tmp_path / "anchors.npz"), "--reference", str(tmp_path / "bank.npz"),
        "--monitor", "atypical,toyforce", "--monitor-option", "toyforce_limit=0.05",
        "--steps", "4", "--temperature", "300", "--out", str(out), "--no-report"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    mons = {m["name"]: m for m in summary["monitoring"]["monitors"]}
    assert mons["toyforce"]["threshold"] == 0.05  # the option reached the monitor
    assert summary["last_step"] == 4
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert any(e["monitor"] == "toyforce" for e in events)  # rattled Cu: |F| > 0.05 eV/Å

    # the same options through the Python API's build_monitors
    (mon,) = build_monitors("toyforce", calc=None, toyforce_limit=0.2)
    assert mon.threshold == 0.2


def test_unknown_monitor_and_bad_option_are_one_line(tmp_path):
    start = bulk("Cu", "fcc", a=3.6)
    start.write(tmp_path / "s.xyz")
    res = CliRunner().invoke(main, ["md", str(tmp_path / "s.xyz"), "--model", "toyemt",
                                    "--monitor", "nosuch", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "unknown monitor 'nosuch'" in res.output
