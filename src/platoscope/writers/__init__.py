"""Run outputs that survive an interrupted run (Ctrl-C, SIGKILL, OOM killer).

Three writers, each safe to kill at any instant:

* :class:`FrameSidecar` / :func:`read_sidecar`: one HDF5 file with one frame per MD step
  (positions, cell, Platonic coordinates, embeddings, scores, energy, forces; frames may differ
  in atom count). Coordinates may instead be derived on reading from the embeddings and the
  projector stored once in the file (``store_platonic=False``): they are K/D times the size of
  the embeddings.
* :class:`EventLog` / :func:`read_events`: ``events.jsonl``, one JSON object per monitor event,
  fsynced line by line.
* :func:`write_json_atomic`: whole-file JSON (``summary.json``) through a temp file and
  ``os.replace``.

SIGKILL safety of the sidecar
-----------------------------
A killed process loses only what it had not yet handed to the kernel; what it did write stays in
the page cache. An HDF5 file is only unsafe because a kill can land between two of the library's
metadata writes. The sidecar closes that gap three ways:

1. The live file is only ever written in HDF5 *SWMR* mode (``libver="latest"``, opened with
   ``H5F_ACC_SWMR_WRITE`` directly, never plain read-write). SWMR orders every metadata write
   (child before parent, checksummed) so that the file on disk is consistent at every instant
   for a concurrent reader; the file at the instant of a kill is exactly such a snapshot.
   Structural changes SWMR forbids (creating datasets) are made on a copy that replaces the file
   atomically with ``os.replace``.
2. Each :meth:`FrameSidecar.append` writes the frame (:meth:`FrameSidecar.append_many`: several
   frames), flushes, and only then writes the scalar ``/n_frames_committed`` and flushes
   again. Readers trust only committed frames, so a frame that was half written when the
   process died is ignored, never returned half-filled.
3. A file left by a killed writer still carries HDF5's "open for SWMR write" flag, which a plain
   ``h5py.File(path)`` refuses; :func:`read_sidecar` then opens it in SWMR-read mode, and
   ``FrameSidecar(path, mode="a")`` first rewrites the committed frames into a clean file.

Layout (``F`` committed frames, ``A`` atoms over all frames, ``A_f`` atoms of frames holding
optional field ``f``)::

    /                      attrs: format, format_version, attrs_json, n_anchors, embedding_dim
    /n_frames_committed    ()          int64   written last, after the frame's data is flushed
    /frames/step           (F,)        int64
    /frames/offsets        (F+1,)      int64   atoms of frame i are rows offsets[i]:offsets[i+1]
    /frames/cell           (F, 3, 3)   float64 Å
    /frames/pbc            (F, 3)      bool
    /frames/energy         (F,)        float64 eV, NaN when not given
    /atoms/numbers         (A,)        int32
    /atoms/positions       (A, 3)      float64 Å
    /fields/<f>/data       (A_f, ...)  float64 f in platonic (K), embeddings (D), forces (3, eV/Å)
    /fields/<f>/start      (F,)        int64   first row of frame i in data, -1 if absent
    /scores/<name>/data    (A_s,)      float64
    /scores/<name>/start   (F,)        int64
    /projector/<key>       any         the fitted projector's ``get_state()``, one dataset per
                                       key (text as UTF-8 strings); optional, written once

A frame's coordinates are its stored ``platonic`` rows if it has them, else (format version 2)
``Projector.from_state(/projector).transform(embeddings)`` of its float64 embeddings: what the
calculator computed from the same features within ``projection.TOLERANCE`` (1e-12 absolute) on
any machine (the same fixed row blocks in both paths; bitwise on the writing machine in
practice, not promised). Version 1 files (no ``/projector``) read as before.
"""


from __future__ import annotations

from platoscope.writers.events import EventLog, EventLogData, read_events
from platoscope.writers.jsonio import to_jsonable, write_json_atomic
from platoscope.writers.runfiles import repair_run
from platoscope.writers.sidecar import (
    SIDECAR_FORMAT,
    SIDECAR_FORMAT_VERSION,
    FrameSidecar,
    SidecarLockedError,
    SidecarMismatchError,
    SidecarReader,
    read_sidecar,
    repair_sidecar,
)

__all__ = [
    "SIDECAR_FORMAT",
    "SIDECAR_FORMAT_VERSION",
    "EventLog",
    "EventLogData",
    "FrameSidecar",
    "SidecarLockedError",
    "SidecarMismatchError",
    "SidecarReader",
    "read_events",
    "read_sidecar",
    "repair_run",
    "repair_sidecar",
    "to_jsonable",
    "write_json_atomic",
]

