"""Run outputs: HDF5 frame sidecar, event log, atomic JSON; including real SIGKILL tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from platoscope.errors import CorruptFileError
from platoscope.writers import (
    EventLog,
    FrameSidecar,
    SidecarLockedError,
    SidecarMismatchError,
    read_events,
    read_sidecar,
    repair_sidecar,
    write_json_atomic,
)

K, D = 100, 128

# Deterministic frame content, shared by the parent and the killed child processes.
GEN_SRC = textwrap.dedent("""
    import numpy as np

    def gen(i, K=100, D=128):
        rng = np.random.default_rng(1000 + i)
        n = 480 + 16 * (i % 5)  # 480..544 atoms: ragged frames of realistic size
        return dict(
            numbers=rng.integers(1, 90, n),
            positions=rng.random((n, 3)) * 20.0,
            cell=np.diag(rng.random(3) + 20.0),
            platonic=rng.random((n, K)),
            embeddings=rng.standard_normal((n, D)),
            scores={"knn": rng.random(n), "sym": rng.random(n)},
            energy=float(-3.5 * n + rng.random()),
            forces=rng.standard_normal((n, 3)),
        )
""")
_ns: dict = {}
exec(GEN_SRC, _ns)
gen = _ns["gen"]

CHILD_SIDECAR = GEN_SRC + textwrap.dedent("""
    import sys
    from platoscope.writers import FrameSidecar

    path, mode = sys.argv[1], sys.argv[2]
    sc = FrameSidecar(path, mode=mode, attrs={"model": "fake", "n_anchors": 100,
                                              "feature_dim": 128}, score_names=["knn", "sym"])
    i = sc.n_frames
    ready = {j: gen(j) for j in range(i, i + 40)}  # so that the loop is mostly HDF5 writing
    print("start", i, flush=True)
    while i < 5000:
        sc.append(7 * i, **(ready.pop(i) if i in ready else gen(i)))
        print("committed", i, flush=True)
        i += 1
""")

CHILD_EVENTS = textwrap.dedent("""
    import sys
    from platoscope.writers import EventLog

    log = EventLog(sys.argv[1])
    for i in range(100000):
        log.log(i, "knn", [i, i + 1], score=0.5 * i, threshold=3.0, action="flag",
                note="x" * (i % 300))
        print(i, flush=True)
""")


def assert_frame_equal(got: dict, want: dict) -> None:
    np.testing.assert_array_equal(got["numbers"], want["numbers"])
    for key in ("positions", "cell", "platonic", "embeddings", "forces"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert got["scores"].keys() == want["scores"].keys()
    for name, val in want["scores"].items():
        np.testing.assert_array_equal(got["scores"][name], val)
    assert got["energy"] == want["energy"]


def _kill_child(script: Path, args: list[str], n_min: int, delay: float, tmp: Path,
                peek: Path | None = None) -> tuple[int, int]:
    """Run the child until it reports ``n_min`` commits, wait ``delay`` s, SIGKILL it.

    Returns (first index this child wrote, last index it reported committed; -1 if none).
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp)
    try:
        first = last = -1
        seen = 0
        for line in proc.stdout:
            word, num = line.split()
            if word == "start":
                first = int(num)
                continue
            last = int(num)
            seen += 1
            if seen == n_min:
                if peek is not None:  # read the file while the writer is alive (SWMR)
                    with read_sidecar(peek) as live:
                        assert not live.closed_cleanly
                        assert live.n_frames >= last + 1
                        assert_frame_equal(live.frame(last), gen(last))
                        with pytest.raises(SidecarLockedError):  # one writer at a time
                            FrameSidecar(peek, mode="a")
                        time.sleep(0.05)
                        n = live.refresh()  # see frames committed since opening
                        assert n > last + 1
                        assert_frame_equal(live.frame(n - 1), gen(n - 1))
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
        else:
            pytest.fail(f"child exited early: {proc.stderr.read()}")
        rest, _ = proc.communicate(timeout=30)
        for line in rest.split():
            if line.isdigit():
                last = int(line)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return first, last


# --------------------------------------------------------------------------------------------
# sidecar
# --------------------------------------------------------------------------------------------

def _small(i: int, n: int, k: int = 4, d: int = 3) -> dict:
    rng = np.random.default_rng(i)
    return dict(numbers=rng.integers(1, 10, n), positions=rng.random((n, 3)),
                cell=np.eye(3) * (5 + i), platonic=rng.random((n, k)),
                embeddings=rng.random((n, d)), forces=rng.random((n, 3)),
                scores={"a": rng.random(n)}, energy=float(i))


def test_ragged_round_trip(tmp_path):
    path = tmp_path / "frames.h5"
    sizes = [3, 7, 1, 5]
    want = [_small(i, n) for i, n in enumerate(sizes)]
    want[1]["embeddings"] = None  # optional fields may be missing in some frames
    want[2]["energy"] = None
    want[3]["scores"] = {"a": np.arange(5.0), "late": -np.arange(5.0)}  # a score appears late
    with FrameSidecar(path, attrs={"model": "m", "weights_sha256": "ab", "n_anchors": 4},
                      score_names=["a"]) as sc:
        for i, w in enumerate(want):
            assert sc.append(10 * i, **w, pbc=[True, True, i % 2 == 0]) == i
        assert sc.n_frames == 4
    with read_sidecar(path) as r:
        assert r.closed_cleanly
        assert len(r) == 4 and r.n_anchors == 4 and r.embedding_dim == 3
        assert r.attrs == {"model": "m", "weights_sha256": "ab", "n_anchors": 4}
        np.testing.assert_array_equal(r.steps, [0, 10, 20, 30])
        np.testing.assert_array_equal(r.n_atoms, sizes)
        assert r.score_names == ["a", "late"]
        for i, w in enumerate(want):
            got = r.frame(i)
            assert got["step"] == 10 * i
            assert got["pbc"].tolist() == [True, True, i % 2 == 0]
            np.testing.assert_array_equal(got["numbers"], w["numbers"])
            np.testing.assert_array_equal(got["positions"], w["positions"])
            np.testing.assert_array_equal(got["cell"], w["cell"])
            np.testing.assert_array_equal(got["platonic"], w["platonic"])
            np.testing.assert_array_equal(got["forces"], w["forces"])
            if w["embeddings"] is None:
                assert got["embeddings"] is None
            else:
                np.testing.assert_array_equal(got["embeddings"], w["embeddings"])
            assert got["energy"] == w["energy"]
            assert got["scores"].keys() == w["scores"].keys()
        np.testing.assert_array_equal(r.frame(-1)["scores"]["late"], -np.arange(5.0))
        atoms = r.to_atoms(3)
        assert len(atoms) == 5 and atoms.arrays["platonic"].shape == (5, 4)
        assert atoms.info["step"] == 30 and "score_late" in atoms.arrays
        with pytest.raises(IndexError):
            r.frame(4)


def test_append_mode_continues(tmp_path):
    path = tmp_path / "frames.h5"
    with FrameSidecar(path, attrs={"model": "m", "n_anchors": 4}) as sc:
        for i in range(3):
            sc.append(i, **_small(i, 2 + i))
    with FrameSidecar(path, mode="a", attrs={"model": "m", "n_anchors": 4}) as sc:
        assert sc.n_frames == 3
        assert sc.append(100, **_small(3, 6)) == 3
        assert sc.append(101, **_small(4, 1)) == 4
    with read_sidecar(path) as r:
        assert len(r) == 5
        np.testing.assert_array_equal(r.steps, [0, 1, 2, 100, 101])
        np.testing.assert_array_equal(r.frame(3)["platonic"], _small(3, 6)["platonic"])
        np.testing.assert_array_equal(r.frame(1)["positions"], _small(1, 3)["positions"])
    # a temp file left by a writer killed during a rewrite is cleaned up by the next open
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".frames.h5.{dead}.deadbeef.tmp"
    stale.write_bytes(b"partial")
    FrameSidecar(path, mode="a").close()
    assert not stale.exists()
    # one writer at a time, also within a process; the lock goes with close()
    with FrameSidecar(path, mode="a") as sc, pytest.raises(SidecarLockedError):
        FrameSidecar(path, mode="a")
    with FrameSidecar(path, mode="w"):
        pass
    assert not (tmp_path / ".frames.h5.lock").exists()
    # "a" on a missing file creates it
    with FrameSidecar(tmp_path / "new.h5", mode="a") as sc:
        assert sc.n_frames == 0


def test_mismatch_on_append_raises(tmp_path):
    path = tmp_path / "frames.h5"
    with FrameSidecar(path, attrs={"model": "m", "anchor_set_hash": "h1"}) as sc:
        sc.append(0, **_small(0, 3))
    with FrameSidecar(path, mode="a") as sc:  # K taken from the file
        with pytest.raises(SidecarMismatchError, match="has 5 columns, the sidecar holds 4"):
            sc.append(1, **_small(1, 3, k=5))
        with pytest.raises(SidecarMismatchError, match="D=7"):
            sc.append(1, **_small(1, 3, d=7))
        bad = _small(1, 3)
        bad["forces"] = bad["forces"][:2]
        with pytest.raises(ValueError, match="forces"):
            sc.append(1, **bad)
        assert sc.n_frames == 1  # nothing half written
        sc.append(1, **_small(1, 2))
    with pytest.raises(SidecarMismatchError, match="file holds 4 coordinate columns"):
        FrameSidecar(path, mode="a", n_anchors=100)
    with pytest.raises(SidecarMismatchError, match="anchor_set_hash"):
        FrameSidecar(path, mode="a", attrs={"anchor_set_hash": "h2"})
    with pytest.raises(SidecarMismatchError, match="model"):  # nested provenance counts too
        FrameSidecar(path, mode="a", attrs={"provenance": {"model": "other"}, "config": {}})
    with read_sidecar(path) as r:
        assert len(r) == 2 and r.closed_cleanly


def test_not_a_sidecar(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(CorruptFileError, match=r"junk\.h5"):
        read_sidecar(junk)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(CorruptFileError, match=r"other\.h5.*not a platoscope"):
        read_sidecar(other)
    with pytest.raises(CorruptFileError, match=r"other\.h5"):
        FrameSidecar(other, mode="a")
    with pytest.raises(FileNotFoundError):
        read_sidecar(tmp_path / "missing.h5")


def test_sigkill_sidecar(tmp_path):
    """Kill a writer of ~1 MB frames (N~512, K=100, D=128) at random moments, restart, repeat."""
    script = tmp_path / "child.py"
    script.write_text(CHILD_SIDECAR)
    path = tmp_path / "run.h5"
    rng = np.random.default_rng(0)
    expected_next = 0
    for round_ in range(5):
        mode = "w" if round_ == 0 else "a"
        first, last = _kill_child(script, [str(path), mode], n_min=int(rng.integers(2, 15)),
                                  delay=float(rng.uniform(0.0, 0.01)), tmp=tmp_path,
                                  peek=path if round_ == 1 else None)
        assert first == expected_next  # a restart continues after the last committed frame
        with read_sidecar(path) as r:
            assert not r.closed_cleanly  # killed: HDF5's write flag is still set
            # every append that returned is there; at most one more got committed unreported
            assert last + 1 <= len(r) <= last + 2
            for i in range(len(r)):
                assert_frame_equal(r.frame(i), gen(i))
            np.testing.assert_array_equal(r.steps, 7 * np.arange(len(r)))
            assert r.attrs["model"] == "fake"
            expected_next = len(r)
    with FrameSidecar(path, mode="a") as sc:  # recover once more and close cleanly
        assert sc.n_frames == expected_next
    with read_sidecar(path) as r:
        assert r.closed_cleanly and len(r) == expected_next
        assert_frame_equal(r.frame(-1), gen(expected_next - 1))
    assert not list(tmp_path.glob(".run.h5.*"))  # no temp files left behind


# --------------------------------------------------------------------------------------------
# event log, JSON
# --------------------------------------------------------------------------------------------

def test_event_log_round_trip(tmp_path):
    with EventLog(tmp_path) as log:  # a directory: events.jsonl inside
        rec = log.log(np.int64(5), "knn", np.array([3, 4]), np.float32(2.5), 2.0, "flag",
                      element="Si", dist=np.float64(0.25))
    assert rec["atoms"] == [3, 4] and rec["score"] == 2.5
    data = read_events(tmp_path / "events.jsonl")
    assert not data.truncated and len(data) == 1
    ev = data.events[0]
    assert ev == {"step": 5, "monitor": "knn", "atoms": [3, 4], "score": 2.5,
                  "threshold": 2.0, "action": "flag", "element": "Si", "dist": 0.25}
    with EventLog(tmp_path / "events.jsonl") as log:
        with pytest.raises(ValueError, match="clash"):
            log.log(1, "m", [1], 1.0, 1.0, "flag", step=3)
        log.append({**ev, "step": 6, "extra": [1, 2]})  # a whole dict, e.g. Event.to_dict()
        with pytest.raises(ValueError, match="threshold"):
            log.append({"step": 7, "monitor": "m", "atoms": [], "score": 1.0, "action": "x"})
    assert read_events(tmp_path).events[1] == {**ev, "step": 6, "extra": [1, 2]}


def test_event_log_truncated_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventLog(path) as log:
        for i in range(3):
            log.log(i, "knn", [i], 1.0, 0.5, "flag")
    with open(path, "ab") as fh:
        fh.write(b'{"step": 3, "monitor": "kn')  # what a kill mid-write leaves
    with pytest.warns(RuntimeWarning, match="incomplete"):
        data = read_events(path)
    assert data.truncated and len(data) == 3 and data.truncated_text.startswith('{"step": 3')
    with pytest.warns(RuntimeWarning, match="dropped"):
        log = EventLog(path)  # restart: cut the broken tail, then append
    log.log(3, "knn", [3], 1.0, 0.5, "flag")
    log.close()
    data = read_events(path, warn=False)
    assert not data.truncated and [e["step"] for e in data] == [0, 1, 2, 3]
    with EventLog(path, mode="w") as log:  # a fresh log
        log.log(9, "knn", [], 0.0, 1.0, "none")
    assert [e["step"] for e in read_events(path)] == [9]
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(CorruptFileError, match="line 2"):
        read_events(path)


def test_sigkill_event_log(tmp_path):
    script = tmp_path / "child_events.py"
    script.write_text(CHILD_EVENTS)
    path = tmp_path / "events.jsonl"
    rng = np.random.default_rng(1)
    for _ in range(3):
        _kill_child_events(script, path, tmp_path, int(rng.integers(5, 50)),
                           float(rng.uniform(0, 0.005)))
        data = read_events(path, warn=False)
        # a killed child wrote 0..last (maybe one more), every line complete or the tail cut
        n = len(data)
        assert [e["step"] for e in data] == list(range(n))
        assert all(e["atoms"] == [e["step"], e["step"] + 1] for e in data)
        path.unlink()


def _kill_child_events(script: Path, path: Path, tmp: Path, n_min: int, delay: float) -> None:
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                            text=True, cwd=tmp)
    last = -1
    try:
        for line in proc.stdout:
            last = int(line)
            if last + 1 >= n_min:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
        rest, _ = proc.communicate(timeout=30)
        last = max([last, *(int(x) for x in rest.split())])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(read_events(path, warn=False)) >= last + 1  # fsynced events are all there


def test_write_json_atomic(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"a": np.float32(1.5), "b": np.arange(3), "c": {1: np.bool_(True)},
                             "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": {"1": True},
                                            "p": str(tmp_path)}
    write_json_atomic(path, [1, 2])
    assert json.loads(path.read_text()) == [1, 2]
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == [1, 2]  # old content kept on failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# --------------------------------------------------------------------------------------------
# coordinates derived from embeddings (store_platonic=False)
# --------------------------------------------------------------------------------------------

def _projector(k: int, d: int, seed: int = 7, preset: str = "shared"):
    """A fitted projector on random anchors, all of element 11 (Na) like the test frames."""
    from platoscope.projection import Projector

    anchors = np.random.default_rng(seed).standard_normal((k, d))
    return Projector(preset).fit(anchors, anchor_numbers=np.full(k, 11))


def _within_contract(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal within the projection's reproducibility contract (projection.TOLERANCE)."""
    from platoscope.coords import as_coords, max_abs_diff
    from platoscope.projection import TOLERANCE

    if not (a.dtype == b.dtype == np.float64):  # dense or sparse (element projection: CSR)
        return False
    a, b = as_coords(a), as_coords(b)
    return a.shape == b.shape and max_abs_diff(a, b) <= TOLERANCE


@pytest.mark.parametrize("preset", ["element", "shared", "paper"])
def test_derived_platonic_round_trip(tmp_path, preset):
    """K = 3000: coordinates are not stored, read back within the contract, file ~10x smaller."""
    k, d, n = 3000, 64, 64
    proj = _projector(k, d, preset=preset)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(8):
        e = rng.standard_normal((n - (i % 3), d)).astype(np.float32)  # a backend's float32
        frames.append(dict(numbers=np.full(len(e), 11), positions=rng.random((len(e), 3)),
                           cell=np.eye(3) * 9, embeddings=e,
                           platonic=proj.transform(e, np.full(len(e), 11)),
                           forces=rng.random((len(e), 3)), scores={"a": rng.random(len(e))}))
    sizes, growth = {}, {}
    for store in (True, False):
        path = tmp_path / f"store_{store}.h5"
        with FrameSidecar(path, attrs={"n_anchors": k, "n_columns": proj.n_columns},
                          projector_state=proj.get_state(),
                          store_platonic=store, score_names=["a"]) as sc:
            for i, fr in enumerate(frames):
                sc.append(i, **fr)
                if i == 0:
                    first = path.stat().st_size
            assert ("platonic" in sc.fields) == store
        sizes[store] = path.stat().st_size
        growth[store] = sizes[store] - first
        with read_sidecar(path) as r:
            # the sidecar's width: K, plus the element projection's global block
            assert ("platonic" in r.fields) == store and r.n_anchors == proj.n_columns
            assert proj.n_columns == k + (128 if preset == "element" else 0)
            state = proj.get_state()
            assert r.projector_state.keys() == state.keys()
            for key, val in state.items():
                np.testing.assert_array_equal(r.projector_state[key], val, err_msg=key)
            for i, fr in enumerate(frames):
                got = r.frame(i)
                assert _within_contract(got["platonic"], fr["platonic"]), i
                np.testing.assert_array_equal(got["embeddings"], fr["embeddings"])
                assert r.frame(i, platonic=False)["platonic"] is None
            assert _within_contract(r.to_atoms(2).arrays["platonic"], frames[2]["platonic"])
    # the anchors (K x D, stored once) and the first chunks are a fixed cost; per frame the
    # embeddings (N x D) replace the coordinates (N x K)
    assert sizes[False] < 0.25 * sizes[True], sizes
    assert growth[False] < 0.05 * growth[True], growth


def test_derived_platonic_refusals_and_restart(tmp_path):
    path = tmp_path / "frames.h5"
    proj = _projector(5, 3)
    with pytest.raises(ValueError, match=r"frames\.h5.*projector_state"):
        FrameSidecar(path, store_platonic=False)
    assert not path.exists()
    e = np.random.default_rng(1).random((4, 3))
    frame = dict(numbers=[1, 1, 8, 8], positions=np.zeros((4, 3)), cell=np.eye(3) * 4,
                 platonic=proj.transform(e))
    with FrameSidecar(path, projector_state=proj.get_state(), store_platonic=False) as sc:
        with pytest.raises(ValueError, match=r"frames\.h5.*no embeddings"):
            sc.append(0, **frame)
        assert sc.n_frames == 0  # nothing written
        sc.append(0, **frame, embeddings=e)
    other = _projector(5, 3, seed=8)
    with pytest.raises(SidecarMismatchError, match="projector"):
        FrameSidecar(path, mode="a", projector_state=other.get_state(), store_platonic=False)
    # a restart needs no state of its own: the file has it
    with FrameSidecar(path, mode="a", store_platonic=False) as sc:
        sc.append(1, **frame, embeddings=e)
        # coordinates the stored projector does not give (another model) are kept, not lost
        with pytest.warns(RuntimeWarning, match="differ"):
            sc.append(2, **{**frame, "platonic": other.transform(e)}, embeddings=e)
        assert "platonic" in sc.fields
    with read_sidecar(path) as r:
        assert len(r) == 3
        for i, want in enumerate([proj.transform(e)] * 2 + [other.transform(e)]):
            assert _within_contract(r.frame(i)["platonic"], want), i


def test_old_layout_still_readable_and_continued(tmp_path):
    """A version-1 file (coordinates in every frame, no /projector) reads as before; continuing
    it with derived coordinates mixes both layouts frame by frame."""
    path = tmp_path / "frames.h5"
    want = [_small(i, 3 + i, k=5) for i in range(3)]
    with FrameSidecar(path, attrs={"model": "m", "n_anchors": 5}) as sc:
        for i, w in enumerate(want):
            sc.append(i, **w)
    with h5py.File(path, "a") as f:
        assert "projector" not in f
        f.attrs["format_version"] = 1
    with read_sidecar(path) as r:
        assert r.projector_state is None
        for i, w in enumerate(want):
            np.testing.assert_array_equal(r.frame(i)["platonic"], w["platonic"])
    proj = _projector(5, 3)
    new = _small(3, 4, k=5)
    new["platonic"] = proj.transform(new["embeddings"])
    with FrameSidecar(path, mode="a", projector_state=proj.get_state(),
                      store_platonic=False) as sc:
        sc.append(3, **new)
    with read_sidecar(path) as r:
        assert len(r) == 4 and r.projector_state is not None
        for i, w in enumerate([*want, new]):
            assert _within_contract(r.frame(i)["platonic"], w["platonic"]), i
        assert r.frame(3)["embeddings"].dtype == np.float64


CHILD_DERIVED = GEN_SRC + textwrap.dedent("""
    import sys
    from platoscope.projection import Projector
    from platoscope.writers import FrameSidecar

    path, mode = sys.argv[1], sys.argv[2]
    proj = Projector("shared").fit(np.random.default_rng(7).standard_normal((100, 128)))
    sc = FrameSidecar(path, mode=mode, attrs={"n_anchors": 100, "feature_dim": 128},
                      score_names=["knn", "sym"], projector_state=proj.get_state(),
                      store_platonic=False)
    i = sc.n_frames
    print("start", i, flush=True)
    while i < 5000:
        fr = gen(i)
        fr["platonic"] = proj.transform(fr["embeddings"])
        sc.append(7 * i, **fr)
        print("committed", i, flush=True)
        i += 1
""")


def test_sigkill_sidecar_derived(tmp_path):
    """A writer of derived-coordinate frames killed twice: every committed frame reads back with
    the coordinates its embeddings give, bit for bit."""
    script = tmp_path / "child.py"
    script.write_text(CHILD_DERIVED)
    path = tmp_path / "run.h5"
    proj = _projector(100, 128)
    expected_next = 0
    for round_, (n_min, delay) in enumerate([(3, 0.0), (5, 0.004)]):
        first, last = _kill_child(script, [str(path), "w" if round_ == 0 else "a"],
                                  n_min=n_min, delay=delay, tmp=tmp_path)
        assert first == expected_next
        with read_sidecar(path) as r:
            assert not r.closed_cleanly and "platonic" not in r.fields
            assert last + 1 <= len(r) <= last + 2
            for i in range(len(r)):
                fr, want = r.frame(i), gen(i)
                np.testing.assert_array_equal(fr["embeddings"], want["embeddings"])
                assert _within_contract(fr["platonic"], proj.transform(want["embeddings"])), i
            expected_next = len(r)
    # repair: the killed file opens with plain h5py; frames and derived coordinates unchanged
    with pytest.raises(OSError):
        h5py.File(path, "r")
    res = repair_sidecar(path)
    assert res == {"path": str(path), "repaired": True, "frames": expected_next}
    with h5py.File(path, "r") as f:
        assert int(f["n_frames_committed"][()]) == expected_next and "projector" in f
    with read_sidecar(path) as r:
        assert r.closed_cleanly and len(r) == expected_next and "platonic" not in r.fields
        for i in range(len(r)):
            want = gen(i)
            np.testing.assert_array_equal(r.frame(i)["embeddings"], want["embeddings"])
            assert _within_contract(r.frame(i)["platonic"], proj.transform(want["embeddings"]))
    assert repair_sidecar(path)["repaired"] is False  # clean now: untouched
    assert not list(tmp_path.glob(".run.h5.*"))


def test_sidecar_is_self_describing(tmp_path):
    """Datasets carry units and shape meaning, the root says how to get coordinates, and the
    provenance keys are plain attributes (what `h5dump -A` shows)."""
    path = tmp_path / "frames.h5"
    proj = _projector(3000, 8)
    e = np.random.default_rng(2).random((4, 8))
    attrs = {"provenance": {"model": "chgnet:0.3.0", "layer": "atom_fea",
                            "anchor_set_hash": "abc", "n_anchors": 3000},
             "score_units": {"atypical_force": "eV/Å"}}
    with FrameSidecar(path, attrs=attrs, projector_state=proj.get_state(), store_platonic=False,
                      score_names=["atypical_force", "custom"]) as sc:
        sc.append(0, numbers=[1, 1, 8, 8], positions=np.zeros((4, 3)), cell=np.eye(3) * 4,
                  platonic=proj.transform(e), embeddings=e, forces=np.zeros((4, 3)),
                  scores={"atypical_force": np.zeros(4), "custom": np.ones(4)}, energy=-1.0)
    with h5py.File(path, "r") as f:
        assert f["atoms/positions"].attrs["units"] == "Å"
        assert f["frames/energy"].attrs["units"] == "eV"
        assert f["fields/forces/data"].attrs["units"] == "eV/Å"
        assert "(A_f, D)" in f["fields/embeddings/data"].attrs["description"]
        assert f["scores/atypical_force/data"].attrs["units"] == "eV/Å"
        assert "summary.json" in f["scores/custom/data"].attrs["units"]
        assert "-1 if the frame lacks" in f["fields/forces/start"].attrs["description"]
        assert "read_sidecar" in f.attrs["how_to_read"] and "/projector" in f.attrs["how_to_read"]
        assert f.attrs["model"] == "chgnet:0.3.0" and f.attrs["anchor_set_hash"] == "abc"
        assert int(f.attrs["n_anchors"]) == 3000


def test_append_many_is_appends_in_one_commit(tmp_path):
    """append_many writes what one append per frame writes (ragged frames, optional fields
    missing in some, a score appearing late), committed together; bad frames are refused
    before anything is written."""
    sizes = [3, 7, 1, 5]
    want = [_small(i, n) for i, n in enumerate(sizes)]
    want[1]["embeddings"] = None
    want[2]["energy"] = None
    want[3]["scores"] = {"a": np.arange(5.0), "late": -np.arange(5.0)}
    attrs = {"model": "m", "weights_sha256": "ab", "n_anchors": 4}
    with FrameSidecar(tmp_path / "one.h5", attrs=attrs, score_names=["a"]) as sc:
        for i, w in enumerate(want):
            sc.append(10 * i, **w, pbc=[True, True, i % 2 == 0])
    with FrameSidecar(tmp_path / "many.h5", attrs=attrs, score_names=["a"]) as sc:
        assert sc.append_many([sc.frame_data(10 * i, **w, pbc=[True, True, i % 2 == 0])
                               for i, w in enumerate(want[:1])]) == [0]
        assert sc.append_many([]) == []
        assert sc.append_many([sc.frame_data(10 * i, **w, pbc=[True, True, i % 2 == 0])
                               for i, w in enumerate(want) if i]) == [1, 2, 3]
        assert sc.n_frames == 4
        with pytest.raises(TypeError, match="frame_data"):
            sc.append_many([want[0]])
        bad = {**_small(9, 2), "platonic": np.zeros((2, 5))}
        with pytest.raises(SidecarMismatchError, match="has 5 columns, the sidecar holds 4"):
            sc.frame_data(90, **bad)
        assert sc.n_frames == 4
    with read_sidecar(tmp_path / "one.h5") as one, read_sidecar(tmp_path / "many.h5") as many:
        assert len(many) == 4 and many.score_names == one.score_names
        np.testing.assert_array_equal(many.steps, one.steps)
        for i in range(4):
            a, b = one.frame(i), many.frame(i)
            assert a.keys() == b.keys()
            for key in a:
                if key == "scores":
                    assert a[key].keys() == b[key].keys()
                    for name in a[key]:
                        np.testing.assert_array_equal(a[key][name], b[key][name])
                elif a[key] is None or isinstance(a[key], (int, float, str)):
                    assert (a[key] == b[key]) or (a[key] != a[key] and b[key] != b[key]), key
                else:
                    np.testing.assert_array_equal(a[key], b[key])
