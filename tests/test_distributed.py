"""Scale-out on Dask: same outputs as a serial run, faults, failed structures, resume.

Real CHGNet 0.3.0 and real LocalClusters (2 worker processes x 1 torch thread). Tolerance:
a worker runs torch with 1 thread, the serial run with torch's default, so features may differ
by float32 noise; we allow rtol 1e-5 on features. Coordinates are checked twice: each file's
stored coordinates are the projection of its own stored embeddings (within the file's float32
bound, ``SPARSE_FLOAT32_ERROR``), and two runs' coordinates agree within ``COORD_NOISE_ATOL``
(1e-4): the softmax kernel (tau = 0.015) on centred features turns relative feature noise d
into coordinate differences of up to ~5 d (docs/distributed.md, "Guarantees"), so 1e-6 on
coordinates would fail on a machine whose features differ by more than ~2e-7. Entries at a
row's top-k cut may swap (``assert_topk_close``). Order, numbers and indices are identical.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from ase import Atoms
from ase.io import read, write
from click.testing import CliRunner

pytestmark = pytest.mark.backend("chgnet")
distributed = pytest.importorskip("distributed")

from platoscope.cli import main  # noqa: E402
from platoscope.coords import SPARSE_FLOAT32_ERROR, AtomCoordinates, dense_rows  # noqa: E402
from platoscope.distributed import (  # noqa: E402
    ChunkResult,
    ChunkStore,
    ModelSpec,
    ResumeMismatchError,
    StructureFailedError,
    embed_to_file,
    open_executor,
    parts_folder,
)
from platoscope.readers import read_structures, structures_hash  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL = os.path.join(REPO, "data", "mp20_partial", "val.csv")
FEAT_RTOL, FEAT_ATOL = 1e-5, 1e-6
COORD_NOISE_ATOL = 1e-4
"""Coordinates of two runs whose features may differ by FEAT_RTOL (see the module docstring)."""
GLOBAL_RTOL = 2.0**-11
"""float16 storage of the global block: relative rounding of each stored value."""


def assert_topk_close(a, b, atol, n_anchors=None):
    """Coordinates of two ``topk``-layout files (sparse, each row its k largest entries) agree
    within ``atol``, allowing the entries at the k-th place to differ.

    Not bit patterns: when two runs' coordinates differ by float noise (another thread count,
    BLAS blocking), two entries close to the k-th largest of a row can swap in and out of the
    kept set. Exactly what that allows: an entry kept in one row and not in the other must be
    within ``atol`` of the other row's smallest kept value (there it was below the cut); every
    other entry within ``atol``. A real difference (another value, an entry kept far above the
    cut, another row) still fails."""
    import scipy.sparse as sp

    if n_anchors is not None and a.shape[1] > n_anchors:  # a global block: stored whole
        from platoscope.coords import split_global

        (a, ga), (b, gb) = split_global(a, n_anchors), split_global(b, n_anchors)
        np.testing.assert_allclose(ga, gb, rtol=GLOBAL_RTOL, atol=atol)
    x, y = sp.csr_matrix(a), sp.csr_matrix(b)
    assert x.shape == y.shape
    da, db = dense_rows(x), dense_rows(y)
    na, nb = np.diff(x.indptr), np.diff(y.indptr)
    k = max(int(na.max(initial=0)), int(nb.max(initial=0)))

    def cut(z, n):  # each row's smallest kept value; 0 where the row kept fewer than k
        lo = np.array([z.data[z.indptr[i]:z.indptr[i + 1]].min(initial=np.inf)
                       for i in range(z.shape[0])])
        return np.where(n == k, lo, 0.0)

    ca, cb = cut(x, na), cut(y, nb)
    kept_a, kept_b = np.zeros(x.shape, dtype=bool), np.zeros(y.shape, dtype=bool)
    kept_a[np.repeat(np.arange(x.shape[0]), na), x.indices] = True
    kept_b[np.repeat(np.arange(y.shape[0]), nb), y.indices] = True
    close = np.abs(da - db) <= atol
    only_a = kept_a & ~kept_b & (da <= cb[:, None] + atol)  # b cut it: below b's k-th value
    only_b = kept_b & ~kept_a & (db <= ca[:, None] + atol)
    bad = ~(close | only_a | only_b)
    assert not bad.any(), (f"{int(bad.sum())} entries differ by more than {atol} (rows "
                           f"{np.flatnonzero(bad.any(axis=1))[:10].tolist()}), not at the top-k "
                           f"cut; largest difference {np.abs(da - db)[bad].max():.3g}")
    np.testing.assert_array_equal(na, nb)  # the same number of kept entries per row


def test_topk_comparison_allows_only_swaps_at_the_cut():
    """The check above: two entries tied at the k-th place may swap; nothing else may."""
    from platoscope.coords import top_k_rows, topk_to_csr

    def stored(row):
        z = np.array([row, row[::-1]])
        return topk_to_csr(*top_k_rows(z, 5)[:2], z.shape[1])

    base = [0.5, 0.4, 0.3, 0.2, 0.1 + 1e-9, 0.1, 0.05, 0.01]
    swapped = [0.5, 0.4, 0.3, 0.2, 0.1, 0.1 + 1e-9, 0.05, 0.01]
    assert_topk_close(stored(base), stored(swapped), 1e-6)
    assert stored(base)[[0]].indices.tolist() != stored(swapped)[[0]].indices.tolist()
    moved = [0.5 + 1e-3, *base[1:]]  # a kept value changed
    far = [0.5, 0.0, 0.3, 0.2, 0.1 + 1e-9, 0.1, 0.05, 0.4]  # a swap far above the cut
    for other in (moved, far):
        with pytest.raises(AssertionError, match="not at the top-k cut"):
            assert_topk_close(stored(base), stored(other), 1e-6)


def assert_files_agree(a, b, projector, feat_tol=(FEAT_RTOL, FEAT_ATOL),
                       coord_atol=COORD_NOISE_ATOL):
    """Two coordinate files of the same inputs (AtomCoordinates, ``topk`` layout): the same
    rows; embeddings within float32 noise; each file's coordinates and coverage the projection
    of its own embeddings (any difference between the files then comes from the features);
    coordinates of the two within ``coord_atol``."""
    from platoscope.coords import TOP_K, stored_rows
    from platoscope.projection import TOLERANCE

    for name in ("numbers", "structure_index", "atom_index"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=feat_tol[0], atol=feat_tol[1])
    k = a.n_anchors
    for c in (a, b):
        z, cov = projector.transform_with_coverage(c.embeddings, c.numbers)
        want, _ = stored_rows(z, k, TOP_K)  # what the file gives back for these coordinates
        assert_topk_close(c.platonic, want, SPARSE_FLOAT32_ERROR, n_anchors=k)
        np.testing.assert_allclose(c.coverage, cov, rtol=0, atol=TOLERANCE)
    assert_topk_close(a.platonic, b.platonic, coord_atol, n_anchors=k)
    np.testing.assert_allclose(a.coverage, b.coverage, rtol=0, atol=coord_atol)


@pytest.fixture(scope="module")
def structures():
    return list(read_structures(VAL, limit=12))


@pytest.fixture(scope="module")
def backend():
    from platoscope.backends import load_backend

    return load_backend("chgnet:0.3.0")


@pytest.fixture(scope="module")
def serial_feats(backend, structures):
    return backend.embed(structures, batch_size=3)


def _forward_threads():
    import threading

    return [t for t in threading.enumerate() if t.name == "platoscope-forward"]


def _traj(path, n=8):
    from ase.build import bulk

    rng = np.random.default_rng(0)
    base = bulk("Si", "diamond", a=5.43).repeat(2)
    frames = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        frames.append(a)
    write(path, frames)
    return path


def test_embed_cli_workers_equals_serial(tmp_path, backend):
    from platoscope.anchors import AnchorSet
    from platoscope.calculator import PlatonicCalculator

    runner = CliRunner()
    a, b = tmp_path / "serial.h5", tmp_path / "dask.h5"
    args = ["embed", VAL, "--limit", "10", "--batch-size", "3"]
    r1 = runner.invoke(main, [*args, "--out", str(a)])
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(main, [*args, "--workers", "2", "--out", str(b)])
    assert r2.exit_code == 0, r2.output
    ca, cb = AtomCoordinates.load(a), AtomCoordinates.load(b)
    assert ca.data_hash == cb.data_hash and ca.anchor_set_hash == cb.anchor_set_hash
    # serial: torch's default threads; workers: one (features within float32 noise)
    assert_files_agree(ca, cb, PlatonicCalculator(backend, anchors=AnchorSet.default()).projector)
    cluster = cb.provenance["cluster"]
    assert cluster["mode"] == "local" and cluster["workers"] == 2
    assert cluster["threads_per_worker"] == 1 and cluster["distributed"]
    assert ca.provenance["cluster"]["mode"] == "in-process"
    assert not parts_folder(a).exists() and not parts_folder(b).exists()


def test_monitor_cli_scheduler_equals_serial_and_many_inputs(tmp_path):
    runner = CliRunner()
    (tmp_path / "run1").mkdir()
    (tmp_path / "run2").mkdir()
    t1 = _traj(tmp_path / "run1" / "md.extxyz")
    t2 = _traj(tmp_path / "run2" / "md.extxyz", n=5)
    base = ["monitor", "--batch-size", "3", "--no-report", "--store-coords", "always"]
    r1 = runner.invoke(main, [*base, str(t1), "--out", str(tmp_path / "serial")])
    assert r1.exit_code == 0, r1.output
    # an existing cluster, by address (the --workers path is tested by the embed test)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        r2 = runner.invoke(main, [*base, str(t1), str(t2), "--scheduler",
                                  cluster.scheduler_address, "--out", str(tmp_path / "dask")])
    assert r2.exit_code == 0, r2.output
    s = read(tmp_path / "serial" / "frames.extxyz", index=":")
    d = read(tmp_path / "dask" / "run1_md" / "frames.extxyz", index=":")
    assert len(d) == len(s) == 8
    assert len(read(tmp_path / "dask" / "run2_md" / "frames.extxyz", index=":")) == 5
    for fs, fd in zip(s, d, strict=True):
        assert fs.info["step"] == fd.info["step"]
        np.testing.assert_allclose(fd.arrays["platonic"], fs.arrays["platonic"], rtol=0,
                                   atol=COORD_NOISE_ATOL)  # features may differ: see the top
        # raw-space k-NN distances: relative feature noise
        np.testing.assert_allclose(fd.arrays["score_atypical"], fs.arrays["score_atypical"],
                                   rtol=FEAT_RTOL, atol=FEAT_ATOL)
    from platoscope.writers import read_sidecar

    with read_sidecar(tmp_path / "serial" / "frames.h5") as rs, \
            read_sidecar(tmp_path / "dask" / "run1_md" / "frames.h5") as rd:
        assert rs.steps.tolist() == rd.steps.tolist()
        for i in range(len(rs)):
            np.testing.assert_allclose(rd.frame(i)["embeddings"], rs.frame(i)["embeddings"],
                                       rtol=FEAT_RTOL, atol=FEAT_ATOL)
    import json

    summary = json.loads((tmp_path / "dask" / "run1_md" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["cluster"]["workers"] == 2
    assert summary["cluster"]["mode"] == "scheduler"
    assert summary["failed_frames"] == []


def test_killed_worker_loses_nothing_and_duplicates_nothing(backend, structures, serial_feats):
    seen: list[int] = []
    killed: list[int] = []
    with open_executor(ModelSpec.of(backend), workers=2, chunk_size=1, window=6) as ex:
        pids = ex.client.run(os.getpid)

        def kill_one(res):
            seen.append(res.index)
            if not killed:  # first result: both workers busy with the next chunks
                pid = next(iter(pids.values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        out = [r for _, r in ex.map(structures, on_chunk=kill_one)]
        after = ex.client.run(os.getpid)
    assert killed and killed[0] not in after.values()  # the worker really died
    assert seen == list(range(len(structures)))  # every chunk once, in order
    for r, ref in zip(out, serial_feats, strict=True):
        assert r.failures == []
        np.testing.assert_allclose(r.features[0], ref, rtol=FEAT_RTOL, atol=FEAT_ATOL)


def test_failed_structure_reported_others_go_on(tmp_path, backend, structures):
    bad_el = structures[1].copy()
    bad_el.numbers[0] = 95  # Am: CHGNet has no parameters for it
    bad_nan = structures[2].copy()
    bad_nan.positions[1] = np.nan
    data = [structures[0], bad_el, bad_nan, structures[3]]
    for i, a in enumerate(data):
        a.info.update(source="set/x.extxyz", source_index=i)
    with open_executor(ModelSpec.of(backend), backend=backend, chunk_size=4) as ex:
        [(_, res)] = list(ex.map(data))
        assert [f.position for f in res.failures] == [1, 2]
        assert res.features[0] is not None and res.features[3] is not None
        assert res.features[1] is None and res.features[2] is None
        assert "Am" in res.failures[0].message and "frame 1" in res.failures[0].describe()
        assert "NaN" in res.failures[1].message
        with pytest.raises(StructureFailedError, match="set/x.extxyz frame 1"):
            list(ex.map(data, strict=True))
    # through the CLI: the file is reported, the rest written
    path = tmp_path / "mixed.extxyz"
    write(path, [structures[0], bad_el, structures[3]])
    out = tmp_path / "c.h5"
    r = CliRunner().invoke(main, ["embed", str(path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "mixed.extxyz frame 1" in r.output
    c = AtomCoordinates.load(out)
    assert sorted(set(c.structure_index.tolist())) == [0, 2]
    assert c.provenance["failed_structures"][0]["source_index"] == 1
    r = CliRunner().invoke(main, ["embed", str(path), "--strict", "--out",
                                  str(tmp_path / "s.h5")])
    assert r.exit_code != 0 and "frame 1" in r.output
    # a frame the reader refuses (NaN positions) is reported and left out too; it stopped
    # the whole command before, with or without --strict
    nan_path = tmp_path / "nan.extxyz"
    write(nan_path, [structures[0], structures[0], structures[3]])
    lines = nan_path.read_text().splitlines()
    cols = lines[2].split()
    cols[1] = "nan"  # frame 0, atom 0, x
    lines[2] = " ".join(cols)
    nan_path.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(main, ["embed", str(nan_path), "--out", str(tmp_path / "n.h5")])
    assert r.exit_code == 0, r.output
    assert "failed:" in r.output and "nan.extxyz" in r.output and "frame 0" in r.output
    assert "1 of 3 structures failed" in r.output, r.output
    c = AtomCoordinates.load(tmp_path / "n.h5")
    assert len(c.provenance["unreadable_structures"]) == 1
    assert len(set(c.structure_index.tolist())) == 2
    r = CliRunner().invoke(main, ["embed", str(nan_path), "--strict", "--out",
                                  str(tmp_path / "ns.h5")])
    assert r.exit_code == 1 and "frame 0" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "ns.h5").exists()


@pytest.mark.parametrize("prefetch", [0, 1])
def test_resume_skips_completed_chunks(tmp_path, backend, structures, prefetch):
    from platoscope.anchors import AnchorSet
    from platoscope.calculator import PlatonicCalculator

    calc = PlatonicCalculator(backend, anchors=AnchorSet.default())
    data_hash = structures_hash(structures)
    out = tmp_path / "c.h5"
    with open_executor(ModelSpec.of(backend), backend=backend, chunk_size=3,
                       prefetch=prefetch) as ex:
        computed: list[int] = []

        def stop_after_two(res):
            computed.append(res.index)
            if len(computed) == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            embed_to_file(structures, calc, out, ex, data_hash=data_hash, progress=False,
                          on_chunk=stop_after_two)
        assert not out.exists()
        assert not _forward_threads()  # Ctrl-C ended the background thread
        parts = sorted(p.name for p in parts_folder(out).glob("chunk_*.npz"))
        # serial: the two chunks handed over; prefetch: those and the chunk(s) computed ahead,
        # always whole chunks from the first on
        n = len(parts)
        assert parts == [f"chunk_{i:07d}.npz" for i in range(n)]
        assert n == 2 if prefetch == 0 else 2 <= n <= 2 + prefetch + 1
        resumed: list[bool] = []
        res = embed_to_file(structures, calc, out, ex, data_hash=data_hash, progress=False,
                            on_chunk=lambda r: resumed.append(r.resumed))
        assert resumed == [True] * n + [False] * (4 - n) and res["resumed_chunks"] == n
        assert not parts_folder(out).exists()
        ref = tmp_path / "ref.h5"
        embed_to_file(structures, calc, ref, ex, data_hash=data_hash, progress=False)
    a, b = AtomCoordinates.load(out), AtomCoordinates.load(ref)
    # resumed chunks vs a fresh run: not bit for bit (prefetch computes in another thread)
    assert_files_agree(a, b, calc.projector)
    # other settings or other inputs: refused
    store = ChunkStore(tmp_path / "p.parts", {"chunk_size": 3})
    with open_executor(ModelSpec.of(backend), backend=backend, chunk_size=3) as ex:
        list(ex.map(structures[:3], store=store))
        with pytest.raises(ResumeMismatchError, match="chunk_size"):
            ChunkStore(tmp_path / "p.parts", {"chunk_size": 4})
        with pytest.raises(ResumeMismatchError, match="inputs differ"):
            list(ex.map(structures[3:6], store=store))


def test_parts_folder_without_chunks_takes_the_new_settings(tmp_path):
    """A run stopped before its first chunk (Ctrl-C, a bad option) leaves only the manifest:
    the next run with other settings was refused with 'holds chunks of an earlier run' for a
    folder holding none (and the Ctrl-C message had said 'nothing kept'). Nothing to resume,
    so the folder takes the new settings; with a chunk in it, other settings are refused."""
    folder = tmp_path / "o.h5.parts"
    ChunkStore(folder, {"chunk_size": 3})
    store = ChunkStore(folder, {"chunk_size": 4})
    assert json.loads((folder / "manifest.json").read_text())["settings"] == {"chunk_size": 4}
    store.save(ChunkResult(index=0, start=0, features=[np.zeros((2, 3))]), [2], "h")
    with pytest.raises(ResumeMismatchError, match="chunk_size"):
        ChunkStore(folder, {"chunk_size": 5})



@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "zeros", "empty"])
def test_chunk_torn_by_a_system_crash_is_recomputed(tmp_path, backend, structures,
                                                    serial_feats, damage):
    """Chunk files are renamed into place but not fsynced: after a system crash one may be
    cut short, zero-filled or hold a bad block. Its zip CRC or structure fails in ``load``,
    so it is deleted and recomputed; the other chunks are resumed; nothing wrong is read."""
    folder = tmp_path / "o.h5.parts"
    with open_executor(ModelSpec.of(backend), backend=backend, chunk_size=3) as ex:
        list(ex.map(structures[:9], store=ChunkStore(folder, {"chunk_size": 3})))
        chunk = folder / "chunk_0000001.npz"
        raw = bytearray(chunk.read_bytes())
        if damage == "truncated":
            raw = raw[: len(raw) // 2]
        elif damage == "flipped byte":  # inside the stored features, not the zip headers
            raw[len(raw) // 2] ^= 0xFF
        elif damage == "zeros":
            raw = bytearray(len(raw))
        else:
            raw = bytearray()
        chunk.write_bytes(bytes(raw))
        store = ChunkStore(folder, {"chunk_size": 3})
        out = list(ex.map(structures[:9], store=store))
    assert [res.resumed for _, res in out] == [True, False, True]
    assert store.n_resumed == 2
    feats = [f for _, res in out for f in res.features]
    for got, ref in zip(feats, serial_feats[:9], strict=True):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


CUDA = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
GPU_FEAT_TOL = (1e-4, 1e-4)
"""Features on a GPU vs the CPU (rtol, atol): float32 kernels of another summation order."""
GPU_COORD_ATOL = 1e-3
"""Coordinates of GPU vs CPU features: the softmax kernel amplifies feature noise 4-5 times."""
MODELS = [pytest.param("chgnet:0.3.0", marks=pytest.mark.backend("chgnet"), id="chgnet"),
          pytest.param("sevenn:7net-0", marks=pytest.mark.backend("sevenn"), id="sevenn")]


@CUDA
def test_cuda_matches_cpu(structures, serial_feats):
    from platoscope.backends import load_backend

    gpu = load_backend("chgnet:0.3.0", device="cuda")
    with open_executor(ModelSpec.of(gpu, device="cuda"), backend=gpu, chunk_size=3) as ex:
        feats = [f for _, r in ex.map(structures) for f in r.features]
    for f, ref in zip(feats, serial_feats, strict=True):
        np.testing.assert_allclose(f, ref, rtol=1e-4, atol=1e-4)


@CUDA
@pytest.mark.parametrize("model", MODELS)
def test_embed_cli_cuda_matches_cpu(tmp_path, model):
    """``embed --device cuda`` writes what the CPU writes, within GPU_FEAT_TOL / GPU_COORD_ATOL,
    and records the device."""
    from platoscope.anchors import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.calculator import PlatonicCalculator

    runner = CliRunner()
    files = {}
    for device in ("cpu", "cuda"):
        files[device] = tmp_path / f"{device}.h5"
        r = runner.invoke(main, ["embed", VAL, "--limit", "8", "--batch-size", "4", "--model",
                                 model, "--device", device, "--out", str(files[device])])
        assert r.exit_code == 0, r.output
    cpu, gpu = (AtomCoordinates.load(files[d]) for d in ("cpu", "cuda"))
    assert cpu.provenance["device"] == "cpu" and gpu.provenance["device"].startswith("cuda")
    proj = PlatonicCalculator(load_backend(model), anchors=AnchorSet.default()).projector
    assert_files_agree(cpu, gpu, proj, feat_tol=GPU_FEAT_TOL, coord_atol=GPU_COORD_ATOL)


@CUDA
def test_monitor_cli_cuda_workers_match_cpu(tmp_path):
    """``monitor --device cuda --workers 2`` (two Dask workers sharing the GPU) gives the CPU
    run's coordinates and atypical scores within the GPU tolerances."""
    runner = CliRunner()
    t = _traj(tmp_path / "md.extxyz")
    base = ["monitor", str(t), "--batch-size", "3", "--no-report", "--store-coords", "always"]
    r1 = runner.invoke(main, [*base, "--out", str(tmp_path / "cpu")])
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(main, [*base, "--device", "cuda", "--workers", "2",
                              "--out", str(tmp_path / "gpu")])
    assert r2.exit_code == 0, r2.output
    c = read(tmp_path / "cpu" / "frames.extxyz", index=":")
    g = read(tmp_path / "gpu" / "frames.extxyz", index=":")
    assert len(c) == len(g) == 8
    for fc, fg in zip(c, g, strict=True):
        np.testing.assert_allclose(fg.arrays["platonic"], fc.arrays["platonic"], rtol=0,
                                   atol=GPU_COORD_ATOL)
        np.testing.assert_allclose(fg.arrays["score_atypical"], fc.arrays["score_atypical"],
                                   rtol=GPU_FEAT_TOL[0], atol=GPU_FEAT_TOL[1])
    summary = json.loads((tmp_path / "gpu" / "summary.json").read_text())
    assert summary["provenance"]["device"].startswith("cuda")


@CUDA
@pytest.mark.backend("sevenn")
def test_md_on_cuda_runs_both_models_there(tmp_path):
    """``md --device cuda`` with a second model (bias): both models on the GPU, the run
    completes and records the device."""
    out = tmp_path / "md"
    r = CliRunner().invoke(main, ["md", os.path.join(REPO, "examples", "structures", "Si.cif"),
                                  "--steps", "4", "--device", "cuda", "--monitor",
                                  "uncertainty,bias:sevenn:7net-0", "--bias-interval", "2",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["frames_written"] == 5
    assert summary["provenance"]["device"].startswith("cuda")
    assert len(read(out / "frames.extxyz", index=":")) == 5


def test_bad_cluster_arguments(backend):
    with pytest.raises(ValueError, match="not both"), open_executor(
            ModelSpec.of(backend), workers=2, scheduler="tcp://x:1"):
        pass
    with pytest.raises(ValueError, match=">= 1"), open_executor(ModelSpec.of(backend),
                                                                  workers=0):
        pass


def test_atoms_roundtrip_no_info_leak():
    from platoscope.distributed import _light

    a = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[5, 5, 5], pbc=True)
    a.info.update(source="f", source_index=3, big="x" * 100)
    b = _light(a)
    assert b.info == {"source": "f", "source_index": 3}
    np.testing.assert_array_equal(a.positions, b.positions)


def test_missing_dask_names_the_extra(backend, monkeypatch):
    import sys

    from platoscope.errors import PlatoscopeError

    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(PlatoscopeError, match=r"platoscope\[dask\]"), open_executor(
            ModelSpec.of(backend), workers=2):
        pass


def test_prefetch_writes_what_serial_writes(tmp_path, backend, structures):
    """The background forward pass (prefetch=1) writes the file the serial path
    writes: same rows, numbers and indices, the same failures; coordinates within the file's
    float32 bound and embeddings within float32 noise (the same thread count: in practice
    equal). Also monitor_frames: the same frames.h5 and frames.extxyz rows."""
    from ase.io import read as ase_read

    from platoscope.anchors import AnchorSet
    from platoscope.calculator import PlatonicCalculator
    from platoscope.runner import monitor_frames
    from platoscope.writers import read_sidecar

    data = [a.copy() for a in structures]
    data[4].numbers[0] = 95  # Am: fails, reported in both
    for i, a in enumerate(data):
        a.info.update(source="set/x.extxyz", source_index=i)
    calc = PlatonicCalculator(backend, anchors=AnchorSet.default())
    h = structures_hash(data)
    files = {}
    for prefetch in (0, 1):
        with open_executor(ModelSpec.of(backend), backend=backend, chunk_size=3,
                           prefetch=prefetch) as ex:
            assert ex.info()["prefetch"] == prefetch
            files[prefetch] = tmp_path / f"c{prefetch}.h5"
            embed_to_file(data, calc, files[prefetch], ex, data_hash=h, progress=False)
            monitor_frames([a for j, a in enumerate(data) if j != 4], calc, [],
                           tmp_path / f"m{prefetch}", executor=ex, progress=False)
    a, b = AtomCoordinates.load(files[0]), AtomCoordinates.load(files[1])
    assert_files_agree(a, b, calc.projector)  # the forward pass in another thread: not bits
    assert 4 not in set(a.structure_index.tolist())
    fa, fb = a.provenance["failed_structures"], b.provenance["failed_structures"]
    assert fa == fb and [f["source_index"] for f in fa] == [4]
    with read_sidecar(tmp_path / "m0" / "frames.h5") as s0, \
            read_sidecar(tmp_path / "m1" / "frames.h5") as s1:
        assert s0.steps.tolist() == s1.steps.tolist() == [j for j in range(12) if j != 4]
        for i in range(len(s0)):
            f0, f1 = s0.frame(i), s1.frame(i)
            np.testing.assert_allclose(dense_rows(f0["platonic"]), dense_rows(f1["platonic"]),
                                       rtol=0, atol=COORD_NOISE_ATOL)
            np.testing.assert_allclose(f0["embeddings"], f1["embeddings"], rtol=FEAT_RTOL,
                                       atol=FEAT_ATOL)
    x0 = ase_read(tmp_path / "m0" / "frames.extxyz", ":")
    x1 = ase_read(tmp_path / "m1" / "frames.extxyz", ":")
    assert [f.info["step"] for f in x0] == [f.info["step"] for f in x1]
    assert not _forward_threads()


def test_prefetch_error_surfaces_in_caller(tmp_path, backend, structures):
    """An exception in the background thread (here: the input iterator failing at structure 7,
    in the third chunk of 3) is raised in the caller, same type, with a note naming the chunk
    and its input positions; the chunks before it came through, and the thread is gone."""
    def frames():
        for i, a in enumerate(structures):
            if i == 7:
                raise OSError("cannot read frame 7 of set/x.extxyz")
            yield a

    seen: list[int] = []
    import torch

    from platoscope.distributed import default_prefetch

    threads = torch.get_num_threads()
    try:  # the default: CHGNet's 1 when torch leaves a core free, else 0
        torch.set_num_threads(1)
        assert default_prefetch(backend) == (1 if len(os.sched_getaffinity(0)) > 1 else 0)
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        assert default_prefetch(backend) == 0
    finally:
        torch.set_num_threads(threads)
    with open_executor(ModelSpec.of(backend), backend=backend, chunk_size=3, prefetch=1) as ex:
        with pytest.raises(OSError, match="frame 7") as info:
            for _, res in ex.map(frames()):
                seen.append(res.index)
    assert seen == [0, 1]
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "forward-pass thread" in notes and "chunk 2" in notes, notes
    assert not _forward_threads()
    # an error while the thread works on a chunk (its chunk file holds other structures):
    # the note names the chunk's files and frames
    store = ChunkStore(tmp_path / "p.parts", {"chunk_size": 3})
    with open_executor(ModelSpec.of(backend), backend=backend, chunk_size=3, prefetch=1) as ex:
        list(ex.map(structures[:6], store=store))
        with pytest.raises(ResumeMismatchError, match="inputs differ") as info:
            list(ex.map(structures[:3] + structures[6:9], store=store))
    notes = " ".join(getattr(info.value, "__notes__", []))
    src = structures[6].info["source"]
    assert f"chunk 1 (input positions 3..5: {src} frame 6 .. {src} frame 8)" in notes, notes
    assert not _forward_threads()
    with pytest.raises(ValueError, match="prefetch"), open_executor(
            ModelSpec.of(backend), backend=backend, prefetch=-1):
        pass


def test_model_in_caller_thread_while_prefetching(backend, structures, serial_feats):
    """A monitor may run the same model in the caller's thread (symmetry's reference) while the
    background thread embeds: Backend.forward_lock makes them take turns, so neither's
    features are mixed with the other's."""
    got, side = [], []
    alone = backend.compute(structures[0], ("energy",))[1]

    def in_caller(res):
        side.append(backend.compute(structures[0], ("energy",))[1])

    with open_executor(ModelSpec.of(backend), backend=backend, chunk_size=3, prefetch=1) as ex:
        for _, res in ex.map(structures, on_chunk=in_caller):
            got.extend(res.features)
    for f, ref in zip(got, serial_feats, strict=True):
        np.testing.assert_allclose(f, ref, rtol=FEAT_RTOL, atol=FEAT_ATOL)
    assert len(side) == 4
    for f in side:
        np.testing.assert_allclose(f, alone, rtol=FEAT_RTOL, atol=FEAT_ATOL)


def test_bad_cluster_options_are_one_line_errors(tmp_path):
    """--scheduler at an address that is no Dask scheduler, --workers 0, and both options at
    once end with an error naming the option (no traceback, no output file)."""
    structure = os.path.join(os.path.dirname(__file__), "..", "examples", "structures", "Si.cif")
    r = CliRunner()
    for extra, words, code in (
            (["--scheduler", "garbage"], "--scheduler 'garbage': no Dask scheduler", 1),
            (["--workers", "0"], "Invalid value for '--workers': 0 is not in the range x>=1", 2),
            (["--workers", "2", "--scheduler", "tcp://x:1"], "not both", 1)):
        out = tmp_path / "e.h5"
        res = r.invoke(main, ["embed", structure, "--out", str(out), *extra])
        assert res.exit_code == code, (extra, res.output, res.exception)
        assert words in res.output, res.output
        assert not out.exists()


def test_monitor_cli_several_inputs_resumes_after_ctrl_c(tmp_path, monkeypatch):
    """Ctrl-C during the second of two inputs: 'rerun the same command to resume' works (was
    refused: the first input's completed folder is not empty); the rerun skips the completed
    input, resumes the second from its chunks and ends with both folders complete."""
    import json

    from platoscope import runner as runner_module

    t1 = _traj(tmp_path / "a.extxyz", n=3)
    t2 = _traj(tmp_path / "b.extxyz", n=6)
    original = runner_module.monitor_frames
    calls: list[str] = []

    def interrupt_b_after_one_chunk(frames, *args, **kwargs):
        calls.append(kwargs["source"])
        if kwargs["source"].endswith("b.extxyz") and calls.count(kwargs["source"]) == 1:
            def ctrl_c(_):
                raise KeyboardInterrupt  # as the terminal delivers it, after chunk 1
            kwargs["on_chunk"] = ctrl_c
        return original(frames, *args, **kwargs)

    monkeypatch.setattr(runner_module, "monitor_frames", interrupt_b_after_one_chunk)
    cmd = ["monitor", str(t1), str(t2), "--batch-size", "2", "--no-report",
           "--out", str(tmp_path / "mon")]
    r = CliRunner()
    first = r.invoke(main, cmd)
    assert first.exit_code == 130, first.output
    assert "rerun the same command to resume (it skips the 1 input(s) already completed)" \
        in first.output
    assert json.loads((tmp_path / "mon" / "a" / "summary.json").read_text())["status"] == \
        "completed"
    second = r.invoke(main, cmd)
    assert second.exit_code == 0, second.output
    assert "skipped" in second.output and "completed in" in second.output
    assert calls.count(str(t1)) == 1 and calls.count(str(t2)) == 2
    for name, n in (("a", 3), ("b", 6)):
        summary = json.loads((tmp_path / "mon" / name / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["frames_written"] == n
    assert json.loads((tmp_path / "mon" / "b" / "summary.json").read_text())[
        "resumed_chunks"] >= 1
    assert not (tmp_path / "mon" / ".interrupted_monitor.json").exists()
    # a different command (here another --batch-size) does not skip: the folder is refused
    third = r.invoke(main, [*cmd[:-2], "--batch-size", "3", "--out", str(tmp_path / "mon")])
    assert third.exit_code == 1 and "is not empty" in third.output


def test_embed_ctrl_c_before_any_chunk_says_nothing_was_kept(tmp_path, monkeypatch):
    """Ctrl-C before the first chunk completes: the message does not name a .parts folder of
    completed chunks that does not exist."""
    import platoscope.distributed as dist

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dist, "embed_to_file", interrupted)
    t = _traj(tmp_path / "a.extxyz", n=2)
    res = CliRunner().invoke(main, ["embed", str(t), "--out", str(tmp_path / "e.h5")])
    assert res.exit_code == 130, res.output
    assert "interrupted: no chunk had completed (nothing kept); rerun the same command" \
        in res.output, res.output
    assert not parts_folder(tmp_path / "e.h5").exists()


FORCE_TOL = (FEAT_RTOL, 1e-5)
"""Forces (rtol, atol in eV/Å) of a worker (1 torch thread) vs the serial run: float32 noise,
as for the features."""


def test_monitor_model_forces_on_workers_equal_serial(tmp_path):
    """``monitor --monitor uncertainty`` (``--forces auto``: the model's forces) over a
    positions-only trajectory on ``--workers 2`` writes what the serial run writes: forces,
    energies, sigma and embeddings within the float32 noise of another thread count."""
    from platoscope.writers import read_sidecar

    t = _traj(tmp_path / "t.extxyz", n=5)
    base = ["monitor", str(t), "--monitor", "uncertainty", "--batch-size", "2", "--no-report",
            "--store-coords", "always"]
    runner = CliRunner()
    r1 = runner.invoke(main, [*base, "--out", str(tmp_path / "serial")])
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(main, [*base, "--workers", "2", "--out", str(tmp_path / "w")])
    assert r2.exit_code == 0, r2.output
    for name in ("serial", "w"):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["config"]["forces_mode"]["used"] == "model"
        assert summary["monitoring"]["monitor_errors"] == [] and summary["failed_frames"] == []
    assert summary["cluster"]["mode"] == "local" and summary["cluster"]["workers"] == 2
    s = read(tmp_path / "serial" / "frames.extxyz", index=":")
    w = read(tmp_path / "w" / "frames.extxyz", index=":")
    assert [f.info["step"] for f in s] == [f.info["step"] for f in w] == list(range(5))
    for fs, fw in zip(s, w, strict=True):
        assert np.abs(fs.get_forces()).max() > 0.1
        np.testing.assert_allclose(fw.get_forces(), fs.get_forces(), rtol=FORCE_TOL[0],
                                   atol=FORCE_TOL[1])
        np.testing.assert_allclose(fw.get_potential_energy(), fs.get_potential_energy(),
                                   rtol=FEAT_RTOL)
        # sigma: k-NN feature distances and |F|, both within relative float32 noise
        np.testing.assert_allclose(fw.arrays["score_uncertainty"], fs.arrays["score_uncertainty"],
                                   rtol=FEAT_RTOL, atol=FEAT_ATOL)
    with read_sidecar(tmp_path / "serial" / "frames.h5") as rs, \
            read_sidecar(tmp_path / "w" / "frames.h5") as rw:
        for i in range(len(rs)):
            np.testing.assert_allclose(rw.frame(i)["embeddings"], rs.frame(i)["embeddings"],
                                       rtol=FEAT_RTOL, atol=FEAT_ATOL)
            np.testing.assert_allclose(rw.frame(i)["forces"], rs.frame(i)["forces"],
                                       rtol=FORCE_TOL[0], atol=FORCE_TOL[1])


def test_monitor_resume_keeps_model_forces_and_refuses_another_forces_setting(tmp_path,
                                                                             backend):
    """A ``forces="model"`` run interrupted after its first chunk keeps chunk files holding the
    model's energies and forces; a rerun with ``forces="file"`` is refused (the chunks were made
    with other settings), the same setting resumes them, and the resumed frames' forces are
    the model's (equal to a fresh calculation of each frame, within 1e-5 eV/Å: float noise)."""
    from ase.io import read as ase_read

    from platoscope.anchors import AnchorSet
    from platoscope.calculator import PlatonicCalculator
    from platoscope.readers import read_frames
    from platoscope.runner import monitor_frames
    from platoscope.writers import read_sidecar

    frames, _ = read_frames(_traj(tmp_path / "t.extxyz", n=5))
    calc = PlatonicCalculator(backend, anchors=AnchorSet.default())
    out = tmp_path / "m"

    def ctrl_c(_):
        raise KeyboardInterrupt

    with open_executor(ModelSpec.of(backend), backend=backend, chunk_size=2,
                       prefetch=0) as ex:
        with pytest.raises(KeyboardInterrupt):
            monitor_frames(frames, calc, [], out, executor=ex, progress=False, forces="model",
                           on_chunk=ctrl_c)
        parts = sorted(parts_folder(out).glob("chunk_*.npz"))
        assert [p.name for p in parts] == ["chunk_0000000.npz"]
        with np.load(parts[0]) as z:
            assert z["forces"].shape == (2 * len(frames[0]), 3) and z["energies"].shape == (2,)
        with pytest.raises(ResumeMismatchError, match="forces"):
            monitor_frames(frames, calc, [], out, executor=ex, progress=False, forces="file")
        # refused before anything was written: the interrupted run's folder is as it was
        assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
        resumed: list[bool] = []
        res = monitor_frames(frames, calc, [], out, executor=ex, progress=False,
                             forces="model", on_chunk=lambda r: resumed.append(r.resumed))
    assert resumed == [True, False, False] and res["resumed_chunks"] == 1
    assert not parts_folder(out).exists()
    written = ase_read(out / "frames.extxyz", ":")
    with read_sidecar(out / "frames.h5") as side:
        for i, (a, w) in enumerate(zip(frames, written, strict=True)):
            results, _ = backend.compute(a, ("energy", "forces"))
            np.testing.assert_allclose(w.get_forces(), results["forces"], rtol=0, atol=1e-5)
            np.testing.assert_allclose(side.frame(i)["forces"], results["forces"], rtol=0,
                                       atol=1e-5)
            assert w.get_potential_energy() == pytest.approx(results["energy"], abs=1e-5)


def test_compute_chunk_with_forces_reports_failures_per_structure(backend, structures):
    """With the model's energies and forces (``properties``), a structure with an unsupported
    element or NaN positions is a failure naming its file and frame, as on the batched path;
    the others carry energy, (N, 3) forces and features of one pass."""
    from platoscope.distributed import MODEL_PROPERTIES, compute_chunk

    data = [a.copy() for a in structures[:3]]
    data[1].numbers[0] = 95  # Am
    data[2].positions[0, 0] = np.nan
    for i, a in enumerate(data):
        a.info.update(source="set/x.extxyz", source_index=i)
    res = compute_chunk(backend, data, start=10, properties=MODEL_PROPERTIES)
    assert [f.position for f in res.failures] == [11, 12]
    assert "Am (Z=95)" in res.failures[0].describe() and "frame 1" in res.failures[0].describe()
    assert "non-finite" in res.failures[1].message
    assert res.features[1] is None and res.forces[1] is None and res.energies[2] is None
    ref, feats = backend.compute(data[0], MODEL_PROPERTIES)
    assert res.forces[0].shape == (len(data[0]), 3)
    np.testing.assert_allclose(res.forces[0], ref["forces"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.features[0], feats, rtol=FEAT_RTOL, atol=FEAT_ATOL)
    assert res.energies[0] == pytest.approx(float(ref["energy"]), abs=1e-6)
