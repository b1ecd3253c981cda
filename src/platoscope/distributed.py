"""Scale-out of the expensive stage, the model's forward pass, on a Dask cluster.

Only the forward pass (structures -> per-atom features) is distributed. Workers turn chunks of
structures into features with the backend's batched path (:meth:`Backend.embed`), or, when
the running model's energies and forces are wanted (``platoscope monitor --forces model``,
``properties=MODEL_PROPERTIES``), with one :meth:`Backend.compute` per structure; the driver
(this process) projects, runs monitors and writes, **in input order**, so a distributed run
writes what a serial run writes (features equal up to float32 model noise between thread
counts; coordinates then follow within the projection's float64 arithmetic).

    with open_executor(ModelSpec("chgnet:0.3.0"), workers=2) as ex:   # LocalCluster 2 x 1
        for atoms_chunk, result in ex.map(structures, store=ChunkStore(...)):
            ...  # result.features[j]: (N_j, D) float64, or None when structure j failed

- No cluster (``workers=None, scheduler=None``): the same chunks run in-process with the
  driver's backend, which is today's serial behaviour and speed.
- ``workers=N``: a ``LocalCluster(n_workers=N, threads_per_worker=1, processes=True)`` started
  and closed here. ``scheduler=ADDRESS``: an existing cluster (e.g. from dask-jobqueue).
- Each worker process builds the model once (a per-process cache keyed by spec, layer and
  device) and sets torch's threads to its Dask thread count.
- Bounded memory: at most ``window`` chunks are in flight or waiting in the reorder buffer.
- In-process, the forward pass of the next ``prefetch`` chunk(s) runs in one background
  thread while the caller projects, monitors and writes the current one (torch releases the
  GIL in its kernels); chunks still come out in input order, at most ``prefetch`` + 1 of them
  held at once. ``prefetch=0`` is the serial path; the default (:func:`default_prefetch`) is
  the backend's ``Backend.prefetch`` when torch leaves a CPU core free, else 0.
- Faults: a worker that dies has its tasks rerun elsewhere by Dask; results are taken once per
  chunk index, in order, so nothing is written twice or lost. A structure that fails (unsupported
  element, NaN positions, a model error) comes back as a :class:`StructureFailure` naming its
  file and frame; ``strict=True`` raises instead.
- Resume: a :class:`ChunkStore` keeps every completed chunk as an atomic file in a ``.parts``
  folder; a rerun with the same settings reuses them (checking each chunk's input hash) and
  refuses when inputs or settings differ.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from platoscope.checks import nonfinite_rows
from platoscope.errors import ConfigError, InputError, PlatoscopeError

INSTALL_HINT = "pip install 'platoscope[dask]'"
PARTS_SUFFIX = ".parts"


class StructureFailedError(PlatoscopeError, RuntimeError):
    """A structure could not be embedded and the run is strict."""


class ResumeMismatchError(PlatoscopeError, ValueError):
    """A ``.parts`` folder from an earlier run was made with other inputs or settings."""


def require_distributed() -> Any:
    """Import ``dask.distributed`` or raise an ImportError naming the extra to install."""
    try:
        import distributed
    except ImportError as err:
        raise PlatoscopeError(
            f"--workers/--scheduler need dask.distributed, which is not installed here: "
            f"{INSTALL_HINT}") from err
    return distributed


# ------------------------------------------------------------------------------ worker side
@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to build the backend: spec string, layer, torch device, threads."""

    spec: str
    layer: str | None = None
    device: str = "cpu"
    threads: int | None = None  # torch threads per worker; None: leave torch's default

    @classmethod
    def of(cls, backend: Any, device: str = "cpu", threads: int | None = None) -> ModelSpec:
        return cls(spec=backend.spec, layer=backend.layer, device=device, threads=threads)


_BACKENDS: dict[tuple[str, str | None, str], Any] = {}


def worker_backend(model: ModelSpec) -> Any:
    """The backend of ``model`` in this process, built once and cached (one model per worker)."""
    key = (model.spec, model.layer, model.device)
    if key not in _BACKENDS:
        import torch

        from platoscope.backends import load_backend

        if model.threads:
            torch.set_num_threads(int(model.threads))
        _BACKENDS[key] = load_backend(model.spec, layer=model.layer, device=model.device)
    return _BACKENDS[key]


@dataclass
class StructureFailure:
    """One structure that could not be embedded: where it is in the input and why."""

    position: int  # 0-based position in the whole input sequence
    source: str | None  # file (``info["source"]``)
    source_index: int | None  # row/frame in that file
    error: str  # exception type
    message: str

    def describe(self) -> str:
        where = (f"{self.source} frame {self.source_index}" if self.source is not None
                 else f"structure {self.position}")
        return f"{where} (input position {self.position}): {self.error}: {self.message}"


@dataclass
class ChunkResult:
    """Features of one chunk: ``features[j]`` is (N_j, D) float64, None where j failed.

    energies, forces: when the chunk was computed with ``properties`` (energy and forces
    from the forward pass that gave the features), ``energies[j]`` (eV) and ``forces[j]``
    ((N_j, 3) eV/Å) of each structure, None where j failed; None (the lists) when only
    features were computed.
    """

    index: int
    start: int
    features: list[np.ndarray | None]
    failures: list[StructureFailure] = field(default_factory=list)
    seconds: float = 0.0
    worker: str = "in-process"
    resumed: bool = False
    energies: list[float | None] | None = None
    forces: list[np.ndarray | None] | None = None

    @property
    def n_atoms(self) -> int:
        return int(sum(len(f) for f in self.features if f is not None))


def _light(atoms: Atoms) -> Atoms:
    """What a worker needs of a structure (numbers, positions, cell, pbc, source labels)."""
    out = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                pbc=atoms.pbc)
    for key in ("source", "source_index"):
        if key in atoms.info:
            out.info[key] = atoms.info[key]
    return out


def _failure(position: int, atoms: Atoms, err: BaseException) -> StructureFailure:
    idx = atoms.info.get("source_index")
    return StructureFailure(position=position, source=atoms.info.get("source"),
                            source_index=None if idx is None else int(idx),
                            error=type(err).__name__, message=str(err))


MODEL_PROPERTIES = ("energy", "forces")
"""What a chunk computes beside the features when the running model's forces are wanted
(``platoscope monitor --forces model``)."""


def compute_chunk(backend: Any, structures: list[Atoms], *, index: int = 0, start: int = 0,
                  properties: tuple[str, ...] | None = None) -> ChunkResult:
    """Features of one chunk with the backend's batched path; failures become records.

    Structures are checked first (empty, NaN, unsupported element); the valid ones run as one
    batch of ``len(structures)``. If the batch raises, each structure runs alone so that only
    the failing one is reported.

    properties: e.g. :data:`MODEL_PROPERTIES`: each structure runs alone through
    :meth:`Backend.compute` (one forward and backward pass gives the calculator's energy and
    forces and the features), and the result carries ``energies`` and ``forces``; a structure
    whose pass raises or gives non-finite energy or forces is a failure.
    """
    t0 = time.perf_counter()
    feats: list[np.ndarray | None] = [None] * len(structures)
    failures: list[StructureFailure] = []
    ok: list[int] = []
    for j, atoms in enumerate(structures):
        try:
            backend.check_atoms(atoms)
            ok.append(j)
        except Exception as err:
            failures.append(_failure(start + j, atoms, err))
    if properties is not None:
        energies: list[float | None] = [None] * len(structures)
        forces: list[np.ndarray | None] = [None] * len(structures)
        for j in ok:
            try:
                results, f = backend.compute(structures[j], tuple(properties))
                e, frc = _energy_forces(results, len(structures[j]))
            except Exception as err:
                failures.append(_failure(start + j, structures[j], err))
                continue
            feats[j], energies[j], forces[j] = f, e, frc
        failures.sort(key=lambda f: f.position)
        return ChunkResult(index=index, start=start, features=feats, failures=failures,
                           seconds=time.perf_counter() - t0, energies=energies, forces=forces)
    if ok:
        try:
            out = backend.embed([structures[j] for j in ok], batch_size=len(ok))
            for j, f in zip(ok, out, strict=True):
                feats[j] = f
        except Exception:
            for j in ok:
                try:
                    feats[j] = backend.embed([structures[j]], batch_size=1)[0]
                except Exception as err:
                    failures.append(_failure(start + j, structures[j], err))
    failures.sort(key=lambda f: f.position)
    return ChunkResult(index=index, start=start, features=feats, failures=failures,
                       seconds=time.perf_counter() - t0)


def _energy_forces(results: dict[str, Any], n: int) -> tuple[float, np.ndarray]:
    """The energy (eV) and (n, 3) forces (eV/Å) of a calculator's results, float64; a
    ValueError when either is missing or not finite (a model that diverged)."""
    for key in ("energy", "forces"):
        if results.get(key) is None:
            raise ValueError(f"the model returned no {key}")
    e = float(np.asarray(results["energy"]).reshape(-1)[0])
    f = np.array(results["forces"], dtype=np.float64).reshape(n, 3)
    bad = nonfinite_rows(f)
    if not np.isfinite(e) or bad.size:
        raise ValueError("the model gave non-finite "
                         + (f"forces on atoms {bad[:10].tolist()}" if bad.size else "energy"))
    return e, f


def _remote_chunk(model: ModelSpec, index: int, start: int, structures: list[Atoms],
                  properties: tuple[str, ...] | None = None) -> ChunkResult:
    """The task a Dask worker runs: build (once) the backend, embed one chunk (with the
    energies and forces of ``properties``, when given)."""
    try:
        from distributed import get_worker

        worker = get_worker()
        name = worker.address
        if model.threads is None:  # an existing cluster: torch threads = the worker's threads
            model = ModelSpec(model.spec, model.layer, model.device,
                              getattr(worker, "nthreads", None))
    except (ImportError, ValueError):
        name = f"pid {os.getpid()}"
    res = compute_chunk(worker_backend(model), structures, index=index, start=start,
                        properties=properties)
    res.worker = name
    return res


# ----------------------------------------------------------------------------- resumable parts
class ChunkStore:
    """Completed chunks on disk (``<folder>/chunk_<index>.npz``, written atomically).

    settings: whatever determines the features (model fingerprint, layer, device, chunk size;
    for ``monitor``, where the forces come from: chunks computed with the model's energies and
    forces store them too); a folder holding chunks made with other settings raises
    :class:`ResumeMismatchError`, as does a chunk whose input hash differs from the stored one;
    a folder holding no chunk yet (a run stopped before its first) takes the new settings.
    """

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any]):
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings, default=str, sort_keys=True))
        manifest = self.folder / "manifest.json"
        if manifest.is_file() and not any(self.folder.glob("chunk_*.npz")):
            manifest.unlink()  # no chunk completed (stopped before the first): nothing to resume
        if manifest.is_file():
            old = json.loads(manifest.read_text())
            if old.get("settings") != self.settings:
                diff = sorted(k for k in set(old.get("settings", {})) | set(self.settings)
                              if old.get("settings", {}).get(k) != self.settings.get(k))
                raise ResumeMismatchError(
                    f"{self.folder} holds chunks of an earlier run with other settings "
                    f"({', '.join(diff)} differ): rerun with the same arguments to resume, or "
                    f"delete {self.folder} to start again")
        else:
            from platoscope.writers import write_json_atomic

            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(manifest, {"format": "platoscope.parts/1",
                                         "settings": self.settings})
        self.n_resumed = 0

    def _path(self, index: int) -> Path:
        return self.folder / f"chunk_{index:07d}.npz"

    def load(self, index: int, start: int, input_hash: str) -> ChunkResult | None:
        path = self._path(index)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                stored = str(z["input_hash"])
                sizes, ok = z["sizes"], z["ok"]
                flat = z["features"]
                failures = [StructureFailure(**d) for d in json.loads(str(z["failures"]))]
                meta = json.loads(str(z["meta"]))
                has_forces = "forces" in z.files
                flat_f = z["forces"] if has_forces else None
                energies = z["energies"] if has_forces else None
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # a damaged part (CRC, truncation) is recomputed
            return None
        if stored != input_hash:
            raise ResumeMismatchError(
                f"{path}: chunk {index} was computed from other structures than the input "
                f"now holds at positions {start}..{start + len(sizes) - 1}: the inputs differ "
                f"from the interrupted run's; delete {self.folder} to start again")
        feats = _unflatten(flat, sizes, ok)
        forces = energies_out = None
        if flat_f is not None:
            forces = _unflatten(flat_f, sizes, ok)
            it = iter(energies.tolist())
            energies_out = [next(it) if k else None for k in ok]
        self.n_resumed += 1
        return ChunkResult(index=index, start=start, features=feats, failures=failures,
                           seconds=float(meta.get("seconds", 0.0)),
                           worker=str(meta.get("worker", "")), resumed=True,
                           energies=energies_out, forces=forces)

    def save(self, res: ChunkResult, sizes: list[int], input_hash: str) -> None:
        ok = np.array([f is not None for f in res.features], dtype=bool)
        good = [f for f in res.features if f is not None]
        flat = np.concatenate(good) if good else np.zeros((0, 0))
        extra: dict[str, np.ndarray] = {}
        if res.forces is not None:  # the model's energies and forces of the same passes
            f_ok = [f for f, k in zip(res.forces, ok, strict=True) if k]
            extra["forces"] = np.concatenate(f_ok) if f_ok else np.zeros((0, 3))
            extra["energies"] = np.array([e for e, k in zip(res.energies or [], ok, strict=True)
                                          if k], dtype=np.float64)
        path = self._path(res.index)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        # Renamed into place whole, not fsynced: a killed or interrupted process leaves it
        # complete (the page cache outlives the process), and one torn by a system crash fails
        # its zip CRC in load() and is recomputed. An fsync here also waits for every other
        # file's dirty pages on ext4 (data=ordered), 5-10 % of an SevenNet embed's time.
        with open(tmp, "wb") as fh:
            np.savez(fh, input_hash=np.array(input_hash), sizes=np.asarray(sizes, np.int64),
                     ok=ok, features=flat,
                     failures=np.array(json.dumps([asdict(f) for f in res.failures])),
                     meta=np.array(json.dumps({"seconds": res.seconds, "worker": res.worker})),
                     **extra)
        os.replace(tmp, path)

    def remove(self) -> None:
        """Delete the folder (after the assembled output is safely written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _unflatten(flat: np.ndarray, sizes: np.ndarray, ok: np.ndarray
               ) -> list[np.ndarray | None]:
    """Per structure its rows of ``flat`` (the stacked rows of the structures that did not
    fail), None where ``ok`` is False."""
    parts = np.split(flat, np.cumsum(sizes[ok])[:-1]) if ok.any() else []
    it = iter(parts)
    return [next(it) if k else None for k in ok]


def parts_folder(out: str | os.PathLike) -> Path:
    """Where the completed chunks of a run writing ``out`` are kept: ``<out>.parts``."""
    return Path(str(Path(out)) + PARTS_SUFFIX)


# ------------------------------------------------------------------------------- the executor
class Executor:
    """Maps chunks of structures to features, in-process or on a Dask client, in input order.

    model: how workers rebuild the backend; backend: the driver's own (used when ``client`` is
    None); chunk_size: structures per task (and per model batch); window: chunks in flight or
    buffered at once (default: 2 per worker thread + 1); prefetch: in-process only, chunks
    whose forward pass (and chunk file) a background thread may complete ahead of the caller
    (None: :func:`default_prefetch`; 0: everything in the caller's thread, one chunk after
    the other).
    """

    def __init__(self, model: ModelSpec, *, backend: Any = None, client: Any = None,
                 chunk_size: int = 16, window: int | None = None, cluster: str = "in-process",
                 prefetch: int | None = None):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, not {chunk_size}")
        if prefetch is not None and int(prefetch) < 0:
            raise ValueError(f"prefetch must be >= 0 (0: no background thread), not {prefetch}")
        if client is None and backend is None:
            backend = worker_backend(model)
        self.prefetch = int(prefetch) if prefetch is not None else default_prefetch(backend)
        self.model = model
        self.backend = backend
        self.client = client
        self.chunk_size = int(chunk_size)
        self.cluster = cluster
        threads = self.total_threads()
        self.window = int(window) if window else 2 * threads + 1

    def total_threads(self) -> int:
        if self.client is None:
            return 1
        info = self.client.scheduler_info()
        return max(1, sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values()))

    def info(self) -> dict[str, Any]:
        """Provenance of the engine: mode, scheduler address, workers, threads, versions."""
        out: dict[str, Any] = {"mode": self.cluster, "chunk_size": self.chunk_size,
                               "window": self.window, "device": self.model.device}
        if self.client is None:
            import torch

            out.update(workers=1, threads_per_worker=torch.get_num_threads(),
                       prefetch=self.prefetch)
            return out
        import dask
        import distributed

        workers = self.client.scheduler_info().get("workers", {})
        threads = sorted({int(w.get("nthreads", 1)) for w in workers.values()})
        out.update(scheduler=self.client.scheduler.address, workers=len(workers),
                   threads_per_worker=threads[0] if len(threads) == 1 else threads,
                   torch_threads_per_worker=self.model.threads,
                   dask=dask.__version__, distributed=distributed.__version__)
        return out

    def map(self, structures: Iterable[Atoms], *, store: ChunkStore | None = None,
            strict: bool = False, on_chunk: Any = None,
            properties: tuple[str, ...] | None = None
            ) -> Iterator[tuple[list[Atoms], ChunkResult]]:
        """Yield ``(chunk structures, ChunkResult)`` in input order.

        store: completed chunks are saved there as they arrive and reused on a rerun (the
        store's settings must say whether chunks carry forces: ``properties`` is not checked
        against them here);
        strict: raise :class:`StructureFailedError` at the first failed structure;
        on_chunk: called with each ChunkResult as it is yielded (progress, tests);
        properties: e.g. :data:`MODEL_PROPERTIES`: each structure's energy and forces from
        the pass that gives its features (:func:`compute_chunk`), None: features only
        (the batched path).
        """
        from platoscope.readers import structures_hash

        props = tuple(properties) if properties is not None else None
        chunks = _chunked(structures, self.chunk_size)
        if self.client is not None:
            yield from self._map_cluster(chunks, store, strict, on_chunk, props)
            return

        def produce(index: int, start: int, atoms: list[Atoms]) -> ChunkResult:
            key = structures_hash(atoms) if store is not None else ""
            res = store.load(index, start, key) if store is not None else None
            if res is None:
                res = compute_chunk(self.backend, atoms, index=index, start=start,
                                    properties=props)
                if store is not None:
                    store.save(res, [len(a) for a in atoms], key)
            return res

        if self.prefetch == 0:
            for index, (start, atoms) in enumerate(chunks):
                yield from self._emit(atoms, produce(index, start, atoms), strict, on_chunk)
            return
        with _Prefetcher(chunks, produce, self.prefetch) as ahead:
            for atoms, res in ahead:
                yield from self._emit(atoms, res, strict, on_chunk)

    def _emit(self, atoms: list[Atoms], res: ChunkResult, strict: bool, on_chunk: Any
              ) -> Iterator[tuple[list[Atoms], ChunkResult]]:
        if strict and res.failures:
            raise StructureFailedError(res.failures[0].describe())
        if on_chunk is not None:
            on_chunk(res)
        yield atoms, res

    def _map_cluster(self, chunks: Iterator[tuple[int, list[Atoms]]], store: ChunkStore | None,
                     strict: bool, on_chunk: Any, properties: tuple[str, ...] | None = None
                     ) -> Iterator[tuple[list[Atoms], ChunkResult]]:
        from distributed import wait

        from platoscope.readers import structures_hash

        client = self.client
        pending: dict[int, tuple[list[Atoms], str, Any]] = {}  # index -> (atoms, hash, future)
        ready: dict[int, tuple[list[Atoms], ChunkResult]] = {}  # the reorder buffer
        nxt = 0  # next chunk index to yield
        index = 0
        exhausted = False
        try:
            while True:
                while not exhausted and index - nxt < self.window:
                    item = next(chunks, None)
                    if item is None:
                        exhausted = True
                        break
                    start, atoms = item
                    key = structures_hash(atoms)
                    res = store.load(index, start, key) if store is not None else None
                    if res is not None:
                        ready[index] = (atoms, res)
                    else:
                        fut = client.submit(_remote_chunk, self.model, index, start,
                                            [_light(a) for a in atoms], properties,
                                            pure=False,
                                            key=f"platoscope-chunk-{index}-{os.urandom(4).hex()}")
                        pending[index] = (atoms, key, fut)
                    index += 1
                while nxt in ready:
                    atoms, res = ready.pop(nxt)
                    nxt += 1
                    yield from self._emit(atoms, res, strict, on_chunk)
                if not pending:
                    if exhausted and not ready:
                        return
                    continue
                wait([f for _, _, f in pending.values()], return_when="FIRST_COMPLETED")
                for i in [i for i, (_, _, f) in pending.items() if f.done()]:
                    atoms, key, fut = pending.pop(i)
                    res = fut.result()  # a task that failed on every retry raises here
                    fut.release()
                    if store is not None:
                        store.save(res, [len(a) for a in atoms], key)
                    ready[i] = (atoms, res)
        finally:
            for _, _, fut in pending.values():
                fut.cancel()


class _Prefetcher:
    """Runs ``produce(index, start, atoms)`` for each chunk in one background thread, at most
    ``depth`` results ahead of the consumer, and hands them over in input order.

    An exception in the thread (reading the input, a chunk file, the model) is re-raised in
    the consumer's thread, unchanged in type, with a note naming the chunk, its input positions
    and its first and last structure's file and frame. Leaving the ``with`` block early (an
    exception in the consumer, Ctrl-C, a generator closed) stops the thread after the chunk it
    is on, which is saved whole (chunk files are written atomically), and waits for it.
    """

    def __init__(self, chunks: Iterator[tuple[int, list[Atoms]]], produce: Any, depth: int):
        self._chunks = chunks
        self._produce = produce
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="platoscope-forward",
                                        daemon=True)

    def __enter__(self) -> _Prefetcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):  # unblock a put() waiting for room
            while True:
                self._queue.get_nowait()
        self._thread.join()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        index, start, atoms = 0, 0, None  # atoms None: reading the input for chunk ``index``
        try:
            while not self._stop.is_set():
                item = next(self._chunks, None)
                if item is None:
                    self._put(("done", None))
                    return
                start, atoms = item
                res = self._produce(index, start, atoms)
                if not self._put(("chunk", (atoms, res))):
                    return
                index, start, atoms = index + 1, start + len(atoms), None
        except BaseException as err:  # handed to the consumer, which re-raises it
            err.add_note(_chunk_note(index, start, atoms))
            self._put(("error", err))

    def __iter__(self) -> Iterator[tuple[list[Atoms], ChunkResult]]:
        while True:
            try:
                kind, payload = self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the forward-pass thread ended without a result or "
                                       "an error") from None
                continue
            if kind == "done":
                return
            if kind == "error":
                raise payload
            yield payload


def _chunk_note(index: int, start: int, atoms: list[Atoms] | None) -> str:
    """Where a chunk's error happened, for the note on an exception from the background."""
    if not atoms:
        return (f"in platoscope's forward-pass thread, reading the input for chunk {index} "
                f"(from input position {start} on)")
    where = f"chunk {index} (input positions {start}..{start + len(atoms) - 1}"
    ends = [(a.info.get("source"), a.info.get("source_index")) for a in (atoms[0], atoms[-1])]
    if ends[0][0] is not None:
        where += f": {ends[0][0]} frame {ends[0][1]} .. {ends[1][0]} frame {ends[1][1]}"
    return f"in platoscope's forward-pass thread, {where})"


def default_prefetch(backend: Any) -> int:
    """Chunks to embed ahead in a background thread, in-process: the backend's
    ``Backend.prefetch`` if torch's threads leave a CPU core of this process free for the
    main thread's projection and writes, else 0 (with 2 torch threads on 2 cores the thread
    gained nothing; docs/distributed.md, "Throughput").
    """
    import torch

    want = int(getattr(backend, "prefetch", 0) or 0)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return want if want > 0 and torch.get_num_threads() < cores else 0


def _chunked(structures: Iterable[Atoms], size: int) -> Iterator[tuple[int, list[Atoms]]]:
    it = iter(structures)
    start = 0
    while True:
        chunk = list(islice(it, size))
        if not chunk:
            return
        yield start, chunk
        start += len(chunk)


TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


def _worker_environment() -> Any:
    """Dask config for the worker processes of a LocalCluster started here.

    Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker by default, which
    turns off glibc's adaptive mmap threshold: each large temporary array of the model's
    forward pass is then mmapped and unmapped, and a CHGNet 0.3.0 worker ran ~35 % slower
    than the same forward pass in the driver (1.2 vs 0.85 s per 16 x 64-atom chunk). It is
    unset here unless the user chose it (environment variable or a non-default config value).
    """
    import dask

    if "MALLOC_TRIM_THRESHOLD_" in os.environ or str(dask.config.get(TRIM_KEY, None)) != "65536":
        return contextlib.nullcontext()
    return dask.config.set({TRIM_KEY: None})


@contextlib.contextmanager
def open_executor(model: ModelSpec, *, workers: int | None = None, scheduler: str | None = None,
                  backend: Any = None, chunk_size: int = 16, window: int | None = None,
                  threads_per_worker: int = 1, prefetch: int | None = None
                  ) -> Iterator[Executor]:
    """An :class:`Executor`: in-process (neither ``workers`` nor ``scheduler``; ``prefetch``
    chunks' forward passes run ahead in a background thread, 0 for none, None for the
    backend's default), on a
    ``LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True)``
    started and closed here, or on the existing cluster at ``scheduler``."""
    if workers is not None and scheduler is not None:
        raise ConfigError("give --workers (start a local cluster) or --scheduler (use an "
                          "existing one), not both")
    if workers is None and scheduler is None:
        yield Executor(model, backend=backend, chunk_size=chunk_size, window=window,
                       prefetch=prefetch)
        return
    distributed = require_distributed()
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, not {workers}")
        model = ModelSpec(model.spec, model.layer, model.device, threads_per_worker)
        with _worker_environment(), \
                distributed.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                         processes=True, dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            yield Executor(model, backend=backend, client=client, chunk_size=chunk_size,
                           window=window, cluster="local")
        return
    try:
        client = distributed.Client(scheduler)
    except (OSError, ValueError, TypeError) as err:  # unreachable, timed out, malformed
        raise ConfigError(f"--scheduler {scheduler!r}: no Dask scheduler reached there "
                          f"({type(err).__name__}: {err}); pass the address the cluster "
                          "prints (e.g. tcp://10.1.2.3:8786), or --workers N for a local "
                          "cluster") from err
    with client:
        yield Executor(model, backend=backend, client=client, chunk_size=chunk_size,
                       window=window, cluster="scheduler")


# ------------------------------------------------------------------------------- drivers
class Progress:
    """Whole-job progress: frames done, atoms/s and ETA (tqdm), and failures to the console."""

    def __init__(self, total: int | None, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="frame", disable=not enabled,
                        dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.atoms = 0
        self.failed = 0
        self.resumed = 0

    def __call__(self, res: ChunkResult) -> None:
        self.atoms += res.n_atoms
        self.failed += len(res.failures)
        self.resumed += int(res.resumed)
        for f in res.failures:
            self.bar.write(f"failed: {f.describe()}")
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{self.atoms / dt:.0f} atoms/s, failed {self.failed}",
                                 refresh=False)
        self.bar.update(len(res.features))

    def close(self) -> None:
        self.bar.close()


def check_anchor_elements(calc: Any, structures: list[Atoms]) -> None:
    """Refuse, before any forward pass, a structure holding an element that ``calc``'s anchor
    set has no anchor of (element projection), naming file, frame and element: it failed
    after every structure had been embedded. A structure the model itself cannot handle is
    left to the forward pass, which reports it and goes on (unless strict)."""
    supported = getattr(calc.backend, "supported_numbers", None)
    for i, atoms in enumerate(structures):
        if supported is not None and not set(atoms.numbers.tolist()) <= supported:
            continue
        try:
            calc.projector.check_numbers(atoms.numbers)
        except InputError as err:
            from platoscope.readers import frame_error

            raise frame_error(err, atoms, int(atoms.info.get("source_index", i))) from err


def embed_to_file(structures: list[Atoms], calc: Any, out: str | os.PathLike,
                  executor: Executor, *, data_hash: str, embeddings: bool = True,
                  strict: bool = False, progress: bool = True, resume: bool = True,
                  on_chunk: Any = None, top_k: int | None = None,
                  unread: Sequence[str] = ()) -> dict[str, Any]:
    """``platoscope embed`` on an executor: coordinates of every atom -> one .h5 file.

    The file has the layout of :class:`~platoscope.coords.AtomCoordinates` (read it with
    ``AtomCoordinates.load``), written chunk by chunk so that the (M, K) coordinates are never
    held whole. Structures that fail are left out (``structure_index`` keeps the input
    numbering) and listed in the provenance as ``failed_structures``; ``unread`` (one message
    per input frame the reader left out, naming its file and frame) goes there too, as
    ``unreadable_structures``. Completed chunks wait in
    ``<out>.parts`` until the file is complete; a rerun resumes from them. Softmax-kernel
    coordinates are stored as their ``top_k`` largest entries per atom (default
    :data:`platoscope.coords.TOP_K`), others dense.
    Returns a summary (atoms, failures, resumed chunks, cluster).
    """
    import h5py

    from platoscope.coords import FORMAT, TOP_K, CoordinateWriter, layout_for
    from platoscope.readers import frame_error

    if calc.projector is None:
        raise ValueError("the calculator has no anchors: nothing to project on")
    check_anchor_elements(calc, structures)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"kind": "embed", "fingerprint": calc.backend.fingerprint,
                "layer": calc.backend.layer, "device": executor.model.device,
                "chunk_size": executor.chunk_size, "anchor_set_hash": calc.anchors.hash,
                "n_structures": len(structures), "data_hash": data_hash}
    store = ChunkStore(parts_folder(out), settings) if resume else None
    top_k = TOP_K if top_k is None else int(top_k)
    prov = calc.provenance()
    bar = Progress(len(structures), f"embed {calc.backend.spec}", progress)
    failures: list[StructureFailure] = []
    tmp = out.with_name(out.name + ".tmp")
    n = 0

    def _callback(res: ChunkResult) -> None:
        bar(res)
        if on_chunk is not None:
            on_chunk(res)

    try:
        with h5py.File(tmp, "w") as h:
            d = calc.backend.feature_dim
            plat = CoordinateWriter(h, len(calc.anchors), layout_for(calc.projector), top_k,
                                    n_global=calc.projector.n_global)
            cols = {name: h.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt,
                                           chunks=(4096,))
                    for name, dt in (("numbers", np.int16), ("structure_index", np.int32),
                                     ("atom_index", np.int32))}
            # float32 features, not compressed: gzip saves a quarter of their bytes for
            # about a third of the file's write time (docs/distributed.md, "Throughput")
            emb = (h.create_dataset("embeddings", shape=(0, d), maxshape=(None, d),
                                    dtype=np.float32, chunks=(1024, d))
                   if embeddings else None)
            with contextlib.closing(executor.map(  # closed: the prefetch thread ends
                    structures, store=store, strict=strict, on_chunk=_callback)) as chunks:
                for atoms, res in chunks:
                    failures.extend(res.failures)
                    good = [(j, f) for j, f in enumerate(res.features) if f is not None]
                    if not good:
                        continue
                    feats = np.concatenate([f for _, f in good])
                    numbers = np.concatenate([atoms[j].numbers for j, _ in good])
                    try:
                        z, cov = calc.projector.transform_with_coverage(feats, numbers)
                    except Exception:  # name the structure that cannot be projected
                        for j, f in good:
                            try:
                                calc.projector.transform_with_coverage(f, atoms[j].numbers)
                            except Exception as err:
                                raise frame_error(err, atoms[j], res.start + j) from err
                        raise
                    plat.append(z, cov)
                    m = len(feats)
                    sizes = [len(f) for _, f in good]
                    sidx = np.repeat([res.start + j for j, _ in good], sizes)
                    aidx = np.concatenate([np.arange(k) for k in sizes])
                    for ds, val in ((cols["numbers"], numbers), (cols["structure_index"], sidx),
                                    (cols["atom_index"], aidx),
                                    *(((emb, feats),) if emb is not None else ())):
                        ds.resize(n + m, axis=0)
                        ds[n:n + m] = val
                    n += m
            if n == 0:
                raise ValueError("no structure could be embedded: "
                                 + "; ".join(f.describe() for f in failures[:3]))
            prov = {**prov, "cluster": executor.info(),
                    "failed_structures": [asdict(f) for f in failures],
                    "unreadable_structures": list(unread)}
            h.attrs["format"] = FORMAT
            h.attrs["provenance"] = json.dumps(prov, default=str)
            h.attrs["anchor_set_hash"] = calc.anchors.hash
            h.attrs["data_hash"] = data_hash
        os.replace(tmp, out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    if store is not None:
        store.remove()
    return {"atoms": n, "structures": len(structures), "failed": [f.describe() for f in failures],
            "resumed_chunks": bar.resumed, "cluster": prov["cluster"]}


def embed_list(executor: Executor, structures: list[Atoms], *, store: ChunkStore | None = None,
               progress: bool = False, strict: bool = True) -> list[np.ndarray]:
    """Features (N_i, D) of every structure, in order, like :meth:`Backend.embed` (strict:
    the first failure raises, naming its file and frame)."""
    bar = Progress(len(structures), f"embed {executor.model.spec}", progress)
    out: list[np.ndarray] = []
    try:
        for _, res in executor.map(structures, store=store, strict=strict, on_chunk=bar):
            out.extend(f for f in res.features if f is not None)
    finally:
        bar.close()
    return out

