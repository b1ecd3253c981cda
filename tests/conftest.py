"""Shared fixtures. Backend tests are marked ``@pytest.mark.backend("sevenn")`` etc.

A backend whose package is missing is skipped, unless it is listed in the environment variable
``PLATOSCOPE_REQUIRE_BACKENDS`` (comma separated; the test script sets it per environment):
then collection fails, so an environment that should test a backend can never skip it silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from platoscope.backends import available_backends

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
MACE_MODEL = TEST_DATA / "mace_emt_tiny.model"
AVAILABLE = available_backends()
ANCHORS_PER_ELEMENT = 2
REQUIRED = {b for b in os.environ.get("PLATOSCOPE_REQUIRE_BACKENDS", "").split(",") if b}
# Starting a dask LocalCluster (test_distributed) writes OMP/MKL/OPENBLAS_NUM_THREADS=1 into this
# process's environment; subprocesses started by later tests (the main job, README commands)
# would then run their models on one thread. Restored after every test.
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_THREAD_ENV = {k: os.environ.get(k) for k in _THREAD_VARS}


def pytest_report_header(config):
    have = ", ".join(k for k, v in AVAILABLE.items() if v) or "none"
    return [f"platoscope backends importable here: {have}; required: "
            f"{', '.join(sorted(REQUIRED)) or 'none'}"]


def pytest_configure(config):
    missing = [b for b in REQUIRED if not AVAILABLE.get(b)]
    if missing:
        raise pytest.UsageError(
            f"PLATOSCOPE_REQUIRE_BACKENDS names {missing}, which cannot be imported here")


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("backend"):
            name = mark.args[0]
            if not AVAILABLE.get(name):
                item.add_marker(pytest.mark.skip(reason=f"backend {name!r} not installed here"))


@pytest.fixture(autouse=True)
def _thread_environment():
    """The thread settings this test session started with, for every subprocess it starts."""
    yield
    for key, val in _THREAD_ENV.items():
        if val is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = val


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep anchor caches of the test run away from the user's ~/.cache."""
    old = os.environ.get("PLATOSCOPE_CACHE")
    os.environ["PLATOSCOPE_CACHE"] = str(tmp_path_factory.mktemp("platoscope-cache"))
    yield
    if old is None:
        os.environ.pop("PLATOSCOPE_CACHE", None)
    else:
        os.environ["PLATOSCOPE_CACHE"] = old


@pytest.fixture(scope="session")
def chgnet_backend():
    if not AVAILABLE["chgnet"]:
        pytest.skip("chgnet not installed")
    from platoscope.backends import load_backend

    return load_backend("chgnet")


@pytest.fixture(scope="session")
def sevenn_backend():
    if not AVAILABLE["sevenn"]:
        pytest.skip("sevenn not installed")
    from platoscope.backends import load_backend

    return load_backend("sevenn:7net-0")


@pytest.fixture(scope="session")
def mace_backend():
    if not AVAILABLE["mace"]:
        pytest.skip("mace not installed")
    from platoscope.backends import load_backend

    return load_backend(f"mace:{MACE_MODEL}")


def _torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def single_thread():
    """One torch thread: float32 reductions then run in a fixed order, so two evaluations of
    the same model agree bit for bit (with several threads SevenNet's forces vary by ~1e-7)."""
    yield from _torch_threads(1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a whole module (``pytestmark = pytest.mark.usefixtures(...)``):
    much faster than two on a loaded 2-core machine, and deterministic."""
    yield from _torch_threads(1)


@pytest.fixture(scope="session")
def small_anchors():
    """The shipped default anchor set: CHGNet 0.3.0's and SevenNet-0's anchor matrices ship
    with it (no model call), so it is the quickest set for those models' default layers."""
    from platoscope.anchors import AnchorSet

    return AnchorSet.default()


@pytest.fixture(scope="session")
def few_anchors():
    """Each element's first ``ANCHORS_PER_ELEMENT`` anchors of the ``mp20`` set, those in its
    smallest structures (quick to embed for a layer whose matrix does not ship: K = 170 in 125
    structures); use with ``projection="shared"`` (two anchors per element leave the element
    projection one direction per element)."""
    import numpy as np

    from platoscope.anchors import AnchorSet

    full = AnchorSet.named("mp20")
    numbers = full.numbers
    sizes = np.array([len(full[k][0]) for k in range(len(full))])
    per_element: dict[int, list[int]] = {}
    for k in np.argsort(sizes, kind="stable"):
        picked = per_element.setdefault(int(numbers[k]), [])
        if len(picked) < ANCHORS_PER_ELEMENT:
            picked.append(int(k))
    return full.subset(sorted(k for ks in per_element.values() for k in ks))


@pytest.fixture(scope="module")
def small_setup(tmp_path_factory, chgnet_backend):
    """(anchors, bank, anchors_path, bank_path): a small anchor set and reference bank of
    rattled rock-salt crystals (fast to build)."""
    from ase.build import bulk

    from platoscope import AnchorSet
    from platoscope.reference import ReferenceBank

    d = tmp_path_factory.mktemp("setup")
    structs = []
    for s in range(12):
        formula, a0 = [("NaCl", 5.64), ("KCl", 6.29), ("NaBr", 5.97)][s % 3]
        a = bulk(formula, "rocksalt", a=a0 * (0.98 + 0.004 * s), cubic=True)
        a.rattle(0.04, seed=s)
        structs.append(a)
    anchors = AnchorSet.from_atoms([(structs[i], j) for i in range(6) for j in (0, 1, 4)])
    bank = ReferenceBank.build(chgnet_backend, structs, anchors)
    anchors_path = anchors.save(d / "anchors.npz")
    bank_path = bank.save(d / "bank.npz")
    return anchors, bank, anchors_path, bank_path
