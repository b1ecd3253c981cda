"""The ``platoscope`` command line.

    platoscope info
    platoscope anchors select DATA... --model chgnet -k 100 --method direct --out anchors.npz
    platoscope anchors show anchors.npz
    platoscope reference build DATA... --model chgnet --anchors anchors.npz --out bank.npz
    platoscope embed DATA... --model chgnet --anchors anchors.npz --out coords.h5
    platoscope compare A.h5 B.h5 [...] --out compare/

Over ~500 lines on purpose: every command and its options in one place, each command body
thin (assembly.py, runner.py, distributed.py do the work); splitting click commands across
modules would hide the command list.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from platoscope.anchors import NAMED_ANCHORS
from platoscope.coords import TOP_K
from platoscope.errors import PlatoscopeError
from platoscope.projection import DEFAULT_PROJECTION, PRESETS


class _Group(click.Group):
    """Turns user errors (platoscope's own errors, a missing file) into one clear line and
    exit code 1; any other exception keeps its traceback. ``--debug`` keeps every traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (PlatoscopeError, FileNotFoundError) as err:
            if ctx.params.get("debug"):
                raise
            raise click.ClickException(f"{type(err).__name__}: {err}") from err


def _read(paths: tuple[str, ...], limit: int | None = None, *, skip: bool = False
          ) -> tuple[Any, str]:
    """The structures of every path, in order, and their hash. ``skip``: a row/frame that
    cannot be read or is invalid (NaN, degenerate cell) is left out; the returned list's
    ``skipped`` holds one message per such frame, naming its file and frame."""
    from platoscope.readers import StructureList, read_structures, structures_hash

    structures = StructureList()
    for p in paths:
        got = read_structures(p, limit=limit, on_error="skip" if skip else "raise")
        structures.extend(got)
        structures.skipped.extend((i, msg) for i, msg in got.skipped)
    if not structures:
        why = "; ".join(msg for _, msg in structures.skipped[:3])
        raise click.ClickException(f"no structures read from {', '.join(paths)}"
                                   + (f" ({why})" if why else ""))
    return structures, structures_hash(structures)


class _Finite(click.FloatRange):
    """A float option in a range that also refuses NaN and inf (click's FloatRange lets
    them through: ``--temperature nan`` started a run that failed at its first step)."""

    name = "float range"

    def _describe_range(self) -> str:
        """Only the bounds given (click printed ``x<=None`` for an unbounded option)."""
        if self.min is None and self.max is None:
            return "finite"
        return super()._describe_range()

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def _index(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--index: an ASE index (``:``, ``::2``, ``-1``, ``10:20``), checked before models load."""
    from ase.io.formats import string2index

    if value is None:
        return None
    try:
        idx = string2index(value)
    except ValueError:
        idx = None
    if not isinstance(idx, int | slice) or (isinstance(idx, slice) and idx.step == 0):
        raise click.BadParameter(f"{value!r} is not an ASE index such as ':', '::2', '-1', "
                                 "'10:20'", ctx=ctx, param=param)
    return value


def _file_out(out: str, example: str, overwrite: bool) -> None:
    """Refuse, before any work, an --out that is an existing folder (these commands write one
    file; the write at the end failed with IsADirectoryError after everything had run) or an
    existing file without --overwrite (it was replaced silently, e.g. a day's embed)."""
    if Path(out).is_dir():
        raise click.ClickException(f"--out {out} is a folder; this command writes one file: "
                                   f"give a file name, e.g. {Path(out) / example}")
    if Path(out).exists() and not overwrite:
        raise click.ClickException(f"--out {out} exists; pass --overwrite to replace it, or "
                                   "give another file name")


def _npz(out: str) -> str:
    """The file an npz writer makes of --out (``.npz`` appended when missing)."""
    return out if out.endswith(".npz") else out + ".npz"


overwrite_file_option = click.option(
    "--overwrite", is_flag=True, help="Replace an existing --out file (refused without it)")


def _anchors(value: str | None):
    from platoscope.assembly import load_anchors

    return load_anchors(value)


CALIBRATION_BAND = (0.60, 0.75)  # held-out fraction within 1 sigma accepted without a warning
ANCHORS_HELP = (f"Anchor set: a shipped one ({', '.join(NAMED_ANCHORS)}: the K = 3000 MP-20 "
                "set of the shared projection) or an anchors .npz file")
model_option = click.option("--model", "-m", default="chgnet", show_default=True,
                            help="Backend spec, e.g. chgnet, sevenn:7net-0, mace:/path.model")
layer_option = click.option(
    "--layer", default=None,
    help="Feature layer (default per backend: chgnet atom_fea, sevenn 1_equivariant_gate, mace "
         "interaction0_invariant; see the README's backend table)")
device_option = click.option("--device", default="cpu", show_default=True,
                             help="torch device of the model: cpu, cuda, cuda:1 ...")
cluster_options = [
    click.option("--workers", type=click.IntRange(min=1), default=None,
                 help="Run the model on a local Dask cluster of N worker processes x 1 thread "
                      "(needs pip install 'platoscope[dask]')"),
    click.option("--scheduler", default=None,
                 help="Run the model on an existing Dask cluster at this address "
                      "(e.g. tcp://host:8786, as dask-jobqueue prints)"),
]


def _with(options):
    """Apply a list of click decorators in order."""
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco


data_model_options = [
    click.argument("data", nargs=-1, required=True, type=click.Path(exists=True)),
    model_option, layer_option, device_option]


def _stored_forces(forces: str, monitors: str, frames: list, trajectory: str) -> None:
    """--forces file for a monitor that needs forces: refuse, before anything loads, frames
    that hold none (every one of them failed the monitor and the run said "completed")."""
    from platoscope.monitors.registry import parse_monitor_spec

    needing = sorted({cls.name for cls, _ in parse_monitor_spec(monitors) if cls.uses_forces})
    if forces != "file" or not needing:
        return
    bare = [i for i, a in enumerate(frames)
            if a.calc is None or a.calc.results.get("forces") is None]
    if bare:
        raise click.ClickException(
            f"--forces file: {len(bare)} of {len(frames)} frames of {trajectory} hold no forces "
            f"(frame {', '.join(map(str, bare[:5]))}{', ...' if len(bare) > 5 else ''}) and "
            f"the {', '.join(needing)} monitor needs them: leave out --forces file (the model "
            "computes them)")


def _executor(backend: Any, device: str, workers: int | None, scheduler: str | None,
              chunk_size: int):
    """In-process, local-cluster or remote executor of the forward passes (closed on exit)."""
    from platoscope.distributed import ModelSpec, open_executor

    return open_executor(ModelSpec.of(backend, device=device), workers=workers,
                         scheduler=scheduler, backend=backend, chunk_size=chunk_size)


@click.group(cls=_Group)
@click.version_option(package_name="platoscope")
@click.option("--debug", is_flag=True, help="Show the full traceback of every error")
def main(debug: bool) -> None:
    """Anchor-projected ("Platonic") per-atom coordinates for MLIPs, and monitors built on them."""
    if not debug:
        import warnings

        warnings.showwarning = _one_line_warning


def _one_line_warning(message: Any, category: type, filename: str, lineno: int,
                      file: Any = None, line: str | None = None) -> None:
    """Warnings as one line on stderr, above any progress bar (``--debug`` keeps Python's
    file:line format)."""
    from tqdm.auto import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


@main.command()
def info() -> None:
    """Backends importable here and package versions."""
    from platoscope.backends import SPEC_HELP, available_backends
    from platoscope.provenance import package_versions

    for name, ok in available_backends().items():
        click.echo(f"  {name:8s} {'installed' if ok else 'not installed'}")
    click.echo("specs:\n" + SPEC_HELP)
    click.echo(json.dumps(package_versions(), indent=1))


@main.group()
def anchors() -> None:
    """Choose and inspect anchor sets."""


@anchors.command("select")
@_with(data_model_options)
@click.option("-k", "--k", "k", default=100, show_default=True, type=click.IntRange(min=1),
              help="Number of anchors K")
@click.option("--method", type=click.Choice(["direct", "fps", "random"]), default="direct",
              show_default=True)
@click.option("--per-element/--no-per-element", default=False,
              help="At least one anchor per element present")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--limit", type=int, default=None, help="Read at most this many structures per file")
@click.option("--out", "-o", required=True, type=click.Path(), help="Anchor-set file (.npz)")
@overwrite_file_option
def anchors_select(data, model, layer, device, k, method, per_element, seed, limit, out,
                   overwrite):
    """Select K anchor atoms from DATA (CDVAE CSV, extxyz, traj, db, mlearn JSON)."""
    from platoscope.anchors import select_anchor_set
    from platoscope.backends import load_backend

    _file_out(_npz(out), "anchors.npz", overwrite)
    structures, data_hash = _read(data, limit)
    backend = load_backend(model, layer=layer, device=device)
    s = select_anchor_set(backend, structures, k=k, method=method, per_element=per_element,
                          random_state=seed, data_hash=data_hash, progress=True)
    path = s.save(out)
    click.echo(f"wrote {path}: K={len(s)} anchors over {len(set(s.symbols))} elements, "
               f"hash {s.hash[:12]}")


@anchors.command("extend")
@click.argument("anchors_path", metavar="ANCHORS")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--max-per-element", type=click.IntRange(min=1), default=None,
              help="At most this many new anchors per element (default: every "
                   "symmetry-distinct environment)")
@click.option("--index", default=None, callback=_index,
              help="Frames of each file to use, e.g. ':5' for the first five of a trajectory")
@click.option("--symprec", default=1e-3, show_default=True, type=_Finite(min=0.0,
              min_open=True), help="spglib tolerance (Å) for distinct environments")
@click.option("--out", "-o", required=True, type=click.Path())
@overwrite_file_option
def anchors_extend(anchors_path, files, max_per_element, index, symprec, out, overwrite):
    """Add anchors from your own structures or trajectories (FILES) to ANCHORS (a file or
    ``default``): one per symmetry-distinct environment. The new set has its own hash; files
    made with the old and the new set refuse to mix."""
    from platoscope.readers import read_structures

    target = Path(out if out.endswith(".npz") else out + ".npz")
    if Path(anchors_path).is_file() and target.exists() and \
            target.resolve() == Path(anchors_path).resolve():
        raise click.ClickException(f"--out {target} is the anchor set being extended: the "
                                   "files made with it (banks, coordinates) would lose their set; "
                                   "write the extended set to another file")
    _file_out(str(target), "anchors.npz", overwrite)
    base = _anchors(anchors_path)
    structures = []
    for f in files:
        structures.extend(read_structures(f, index=index or ":"))
    if not structures:
        raise click.ClickException(f"no structures read from {', '.join(files)}")
    new = base.extend(structures, max_per_element=max_per_element,
                      source=", ".join(Path(f).name for f in files), symprec=symprec)
    path = new.save(out)
    added = len(new) - len(base)
    click.echo(f"wrote {path}: K={len(new)} ({added} new anchors from {len(structures)} "
               f"structures), hash {new.hash[:16]} (extends {base.hash[:16]})")


@anchors.command("show")
@click.argument("path", default="default")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output")
@click.option("--list", "as_list", is_flag=True,
              help="One line per anchor: element, source, structure and atom it came from")
@click.option("--element", default=None, help="With --list: only this element's anchors")
def anchors_show(path, as_json, as_list, element):
    """Summarise an anchor-set file (or the shipped ``default``): K, elements, how it was
    chosen."""
    from collections import Counter

    if element is not None and not as_list:  # the summary would ignore it
        raise click.BadParameter("only --list filters by element: add --list",
                                 param_hint="'--element'")
    if as_json and as_list:  # --list printed its table and --json was ignored
        raise click.BadParameter("--json is the summary's form; --list prints a table: "
                                 "choose one", param_hint="'--json'")
    if path not in NAMED_ANCHORS and not Path(path).is_file():
        raise click.BadParameter(f"no anchor-set file {path}", param_hint="PATH")
    s = _anchors(path)
    counts = Counter(s.symbols)
    summary = {"path": str(path), "K": len(s), "hash": s.hash,
               "structures": len(s.structures), "elements": dict(sorted(counts.items())),
               "meta": s.meta}
    if element is not None and element not in counts:
        raise click.BadParameter(f"no anchor of element {element!r} in {path}",
                                 param_hint="--element")
    if as_list:
        click.echo("anchor\telement\tsource\tsource_id\tatom")
        for k, (sym, (src, sid, atom)) in enumerate(zip(s.symbols, s.sources, strict=True)):
            if element is None or sym == element:
                click.echo(f"{k}\t{sym}\t{src}\t{sid}\t{atom}")
        return
    if as_json:
        click.echo(json.dumps(summary, indent=1, default=str))
        return
    click.echo(f"{path}: K={len(s)} anchors in {len(s.structures)} structures, hash {s.hash[:16]}")
    click.echo("elements: " + " ".join(f"{el}:{n}" for el, n in sorted(counts.items())))
    for key, val in s.meta.items():
        if key == "anchor_sources":
            n_src = Counter(str(v[0]) for v in val)
            click.echo("  anchor sources (--list for each anchor): " + ", ".join(
                f"{k2}: {n}" for k2, n in n_src.most_common()))
            continue
        if isinstance(val, dict):
            click.echo(f"  {key}:")
            for k2, v2 in val.items():
                click.echo(f"    {k2}: {_brief(v2)}")
        else:
            click.echo(f"  {key}: {_brief(val)}")


def _brief(value: Any, limit: int = 8) -> str:
    """A value for text output: long lists become their length and first items (--json
    prints everything)."""
    if isinstance(value, list | tuple) and len(value) > limit:
        head = ", ".join(_brief(v) for v in value[:3])
        return f"[{head}, ... ({len(value)} values)]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@main.group()
def reference() -> None:
    """Reference banks: a model's coordinates of reference atoms, for monitors."""


@reference.command("build")
@_with(data_model_options)
@click.option("--anchors", "anchors_path", default="default", show_default=True,
              help=ANCHORS_HELP)
@click.option("--projection", type=click.Choice(list(PRESETS)), default=DEFAULT_PROJECTION,
              show_default=True, help="Projection preset")
@click.option("--limit", type=int, default=None)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Structures per task and per model batch")
@_with(cluster_options)
@click.option("--out", "-o", required=True, type=click.Path())
@overwrite_file_option
def reference_build(data, model, layer, device, anchors_path, projection, limit, batch_size,
                    workers, scheduler, out, overwrite):
    """Embed DATA with MODEL and store the bank (embeddings, projector, provenance)."""
    from platoscope.backends import load_backend
    from platoscope.distributed import ChunkStore, parts_folder
    from platoscope.reference import ReferenceBank

    _file_out(out, "bank.npz", overwrite)
    structures, data_hash = _read(data, limit)
    backend = load_backend(model, layer=layer, device=device)
    store = ChunkStore(parts_folder(out), {
        "kind": "reference", "fingerprint": backend.fingerprint, "layer": backend.layer,
        "device": device, "chunk_size": batch_size, "data_hash": data_hash})
    try:
        with _executor(backend, device, workers, scheduler, batch_size) as ex:
            bank = ReferenceBank.build(backend, structures, _anchors(anchors_path),
                                       projection=projection, data_hash=data_hash,
                                       progress=True, executor=ex, store=store)
    except KeyboardInterrupt:
        click.echo(f"interrupted: {_kept(store.folder)}; rerun the same command to resume",
                   err=True)
        sys.exit(130)
    bank.save(out)
    store.remove()
    click.echo(f"wrote {out}: {len(bank)} atoms, {bank!r}")


@reference.command("extend")
@click.argument("bank_path", metavar="BANK")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@_with([model_option, layer_option, device_option])
@click.option("--index", default=":", show_default=True, callback=_index,
              help="Frames of each file to use")
@click.option("--out", "-o", required=True, type=click.Path())
@overwrite_file_option
def reference_extend(bank_path, files, model, layer, device, index, out, overwrite):
    """Add every atom of FILES (your own structures or trajectory frames) to the reference
    bank BANK, embedded by the model that built it (--model/--layer must name it). BANK is a
    bank file or ``default``: the bank that runs of --model use when given no --reference
    (default anchors and projection); pass the result to them as --reference."""
    from platoscope.backends import load_backend
    from platoscope.readers import read_structures
    from platoscope.reference import ReferenceBank, default_bank

    use_default = bank_path == "default" and not Path(bank_path).exists()
    if not use_default and not Path(bank_path).is_file():
        raise click.BadParameter(f"{bank_path!r} is neither a bank file nor 'default'",
                                 param_hint="BANK")
    if not use_default and Path(out).exists() and Path(out).resolve() == Path(bank_path).resolve():
        raise click.ClickException(f"--out {out} is the bank being extended: runs and files made "
                                   "with it would point to other atoms; write the extended bank "
                                   "to another file")
    _file_out(out, "bank.npz", overwrite)
    structures = [a for f in files for a in read_structures(f, index=index)]
    if not structures:
        raise click.ClickException(f"no structures read from {', '.join(files)}")
    backend = load_backend(model, layer=layer, device=device)
    bank = (default_bank(backend, _anchors("default"), progress=True) if use_default
            else ReferenceBank.load(bank_path))
    new = bank.extend(backend, structures, source=", ".join(Path(f).name for f in files),
                      progress=True)
    new.save(out)
    click.echo(f"wrote {out}: {len(new)} atoms ({len(new) - len(bank)} added from "
               f"{len(structures)} structures), {new!r}")


@main.command()
@_with(data_model_options)
@click.option("--anchors", "anchors_path", default="default", show_default=True,
              help=ANCHORS_HELP)
@click.option("--reference", "reference_path", default=None, type=click.Path(exists=True),
              help="Use this bank's projector (needed for standardized/whitened projections)")
@click.option("--projection", type=click.Choice(list(PRESETS)), default=None,
              help=f"Projection preset (default: {DEFAULT_PROJECTION}, or the --reference "
                   "bank's own)")
@click.option("--limit", type=int, default=None)
@click.option("--no-embeddings", is_flag=True, help="Do not store raw embeddings")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Structures per task and per model batch")
@click.option("--strict", is_flag=True,
              help="Stop at the first structure that fails (default: report it, go on)")
@click.option("--top-k", default=TOP_K, show_default=True, type=click.IntRange(min=1),
              help="Softmax-kernel coordinates: anchor entries kept per atom (the file records "
                   "each atom's truncation bound; the element projection's global block, 128 "
                   "columns, is stored whole beside them in float16)")
@_with(cluster_options)
@click.option("--out", "-o", required=True, type=click.Path())
@overwrite_file_option
def embed(data, model, layer, device, anchors_path, reference_path, projection, limit,
          no_embeddings, batch_size, strict, top_k, workers, scheduler, out, overwrite):
    """Per-atom coordinates of DATA (structures or a trajectory) -> a portable .h5 file."""
    from platoscope.backends import load_backend
    from platoscope.calculator import PlatonicCalculator
    from platoscope.distributed import embed_to_file, parts_folder

    _file_out(out, "coords.h5", overwrite)
    top_k_given = click.get_current_context().get_parameter_source(
        "top_k") is not click.core.ParameterSource.DEFAULT
    if top_k_given and not reference_path:
        _top_k_applies(projection or DEFAULT_PROJECTION)
    structures, data_hash = _read(data, limit, skip=not strict)
    unread = [msg for _, msg in structures.skipped]
    backend = load_backend(model, layer=layer, device=device)
    anchors_set = _anchors(anchors_path)
    proj: Any = projection or DEFAULT_PROJECTION
    if reference_path:
        from platoscope.assembly import load_reference

        bank = load_reference(reference_path, backend, anchors_set, projection=projection,
                              anchors_label=anchors_path)
        proj = bank.projector
        if top_k_given:
            _top_k_applies(proj)
    calc = PlatonicCalculator(backend, anchors=anchors_set, projection=proj)
    try:
        with _executor(backend, device, workers, scheduler, batch_size) as ex:
            res = embed_to_file(structures, calc, out, ex, data_hash=data_hash,
                                embeddings=not no_embeddings, strict=strict, top_k=top_k,
                                unread=unread)
    except KeyboardInterrupt:
        click.echo(f"interrupted: {_kept(parts_folder(out))}; rerun the same command to "
                   "resume", err=True)
        sys.exit(130)
    for line in unread + res["failed"]:
        click.echo(f"failed: {line}", err=True)
    click.echo(f"wrote {out}: {res['atoms']} atoms x K={len(anchors_set)} "
               f"({backend.spec}, anchors {anchors_set.hash[:12]}); "
               f"{len(unread) + len(res['failed'])} of {len(unread) + res['structures']} "
               "structures failed; "
               f"{res['resumed_chunks']} chunks resumed; cluster {res['cluster']['mode']}")


def _top_k_applies(projection: Any) -> None:
    """--top-k given for a projection whose coordinates embed stores dense (it was ignored)."""
    from platoscope.coords import layout_for
    from platoscope.projection import Projector

    p = Projector.coerce(projection)
    if layout_for(p) != "topk":
        raise click.BadParameter(
            f"the {p.name!r} projection's coordinates are stored whole; only softmax-kernel "
            "coordinates (element, shared) are cut to their top k entries", param_hint="'--top-k'")


@main.command()
@_with(data_model_options)
@click.option("--dft-forces-key", default="forces", show_default=True,
              help="Per-atom DFT forces array (eV/Å) in FILES (extxyz: forces; mlearn JSON: "
                   "dft_forces, also found under 'forces')")
@click.option("--reference", "reference_path", default=None, type=click.Path(exists=True),
              help="Reference bank (default: the model's default bank)")
@click.option("--holdout", default=0.2, show_default=True,
              type=_Finite(0, 1, min_open=True, max_open=True),
              help="Fraction of structures held out to check coverage before the final fit")
@click.option("--form", type=click.Choice(["additive", "mult"]), default="additive",
              show_default=True,
              help="additive: sqrt((beta|F|)^2 + floor^2), the shipped form (better on relative "
                   "errors); mult: |F|^b times a feature-distance term, the earlier form "
                   "(better on absolute errors on mlearn Li/Si test; docs/detection.md)")
@click.option("--out", "-o", required=True, type=click.Path())
@overwrite_file_option
def calibrate(data, model, layer, device, dft_forces_key, reference_path, holdout, form, out,
              overwrite):
    """Fit the uncertainty monitor's force-error model on DFT-labelled DATA (uses it with
    --uncertainty-model OUT)."""
    from platoscope import AnchorSet
    from platoscope.backends import load_backend
    from platoscope.errors import InputError
    from platoscope.readers import frame_name
    from platoscope.reference import ReferenceBank, default_bank
    from platoscope.uncertainty import calibrate as fit_calibration
    from platoscope.uncertainty import dft_forces_of

    _file_out(_npz(out), "model.npz", overwrite)
    structures, _ = _read(data)
    names = [frame_name(a, i) for i, a in enumerate(structures)]
    try:  # every frame's DFT forces, named, before the model loads
        for a, name in zip(structures, names, strict=True):
            dft_forces_of(a, dft_forces_key, name)
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    backend = load_backend(model, layer=layer, device=device)
    if reference_path:
        bank = ReferenceBank.load(reference_path)
        bank.check_backend(backend)
    else:
        bank = default_bank(backend, AnchorSet.default())
    try:
        shape = ({} if form == "additive" else
                 {"form": "mult", "terms": ("force", "distance"), "unseen": "max"})
        est, rep = fit_calibration(backend, bank, structures, dft_forces_key=dft_forces_key,
                                   holdout=holdout, names=names, **shape)
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    out = est.save(out)  # the path written (.npz appended when missing)
    click.echo(f"held-out check: {rep['held_out_structures']} structures, "
               f"{rep['held_out_atoms']} atoms: |dF| <= sigma for "
               f"{100 * rep['held_out_coverage_1sigma']:.1f} % (target "
               f"{100 * rep['target_quantile']:.0f} %), <= 2 sigma for "
               f"{100 * rep['held_out_coverage_2sigma']:.1f} %")
    cover = rep["held_out_coverage_1sigma"]
    if not CALIBRATION_BAND[0] <= cover <= CALIBRATION_BAND[1]:
        click.echo(f"warning: the held-out coverage {100 * cover:.1f} % is outside "
                   f"{100 * CALIBRATION_BAND[0]:.0f}-{100 * CALIBRATION_BAND[1]:.0f} %: sigma "
                   f"is not calibrated for data like the held-out part. Fit on more "
                   f"structures (docs/detection.md: about 50 hold a calibration within +-5 "
                   f"points) or check that the held-out structures are like the rest.",
                   err=True)
    click.echo(f"wrote {out}: fitted on {len(structures)} structures; use --monitor "
               f"uncertainty --uncertainty-model {out}")


# --------------------------------------------------------------------------- monitored runs
monitor_option = click.option(
    "--monitor", "monitor_spec", default="atypical", show_default=True,
    help="Comma-separated monitors: atypical, symmetry, bias:<model spec> (e.g. "
         "bias:sevenn:7net-0), switch:<model spec>, uncertainty; 'none' for no monitor")
action_option = click.option("--action", type=click.Choice(["record", "warn", "stop", "dump"]),
                             default="record", show_default=True,
                             help="What a monitor does when a threshold is crossed")


def _monitor_flags() -> list:
    """One ``--<monitor>-<option>`` flag per option a registered monitor declares."""
    from platoscope.monitors.registry import monitor_options

    def checked(opt):
        def callback(ctx, param, value):
            why = None if opt.check is None or value is None else opt.check(value)
            if why:
                raise click.BadParameter(why)
            return value
        return callback

    def kind(opt):
        if opt.choices:
            return click.Choice(opt.choices)
        return _Finite() if opt.type is float else opt.type

    return [click.option(opt.flag(name), *opt.aliases, opt.key(name), type=kind(opt),
                         default=opt.default, show_default=True,
                         help=opt.help, callback=checked(opt)) for name, opt in monitor_options()]


def _config(kw: dict[str, Any]):
    """A RunConfig from a run command's parameters (consumed from ``kw``); what is left
    belongs to the command itself."""
    from platoscope.assembly import RunConfig
    from platoscope.monitors.registry import monitor_options

    keys = {opt.key(name) for name, opt in monitor_options()}
    ctx = click.get_current_context()
    given = {k: kw.pop(k) for k in list(kw) if k in keys}
    # only the options given on the command line: the monitors' own defaults are the same, and
    # build_run refuses an option given for a monitor that is not run
    options = {k: v for k, v in given.items()
               if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    for item in kw.pop("monitor_option"):
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--monitor-option")
        options[key.strip().replace("-", "_").replace(".", "_")] = _literal(value.strip())
    return RunConfig(model=kw.pop("model"), layer=kw.pop("layer"), device=kw.pop("device"),
                     anchors=kw.pop("anchors_path"), reference=kw.pop("reference_path"),
                     projection=kw.pop("projection"),
                     monitors=kw.pop("monitor_spec"), monitor_options=options,
                     action=kw.pop("action"), out=kw.pop("out"), strict=kw.pop("strict"),
                     embeddings=not kw.pop("no_embeddings"), overwrite=kw.pop("overwrite"),
                     store_coords=kw.pop("store_coords"))


_POSITIVE = _Finite(min=0.0, min_open=True)
_POSITIVE_OR_ZERO = _Finite(min=0.0)
_FINITE = _Finite()
_COUNT = click.IntRange(min=0)
_AT_LEAST_ONE = click.IntRange(min=1)


def _repeat(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int, int]:
    """--repeat: three positive integers (a supercell), e.g. 2,2,2."""
    parts = [p.strip() for p in str(value).split(",")]
    try:
        reps = tuple(int(p) for p in parts)
    except ValueError:
        reps = ()
    if len(reps) != 3 or min(reps) < 1:
        raise click.BadParameter(f"{value!r} is not three positive integers such as 2,2,2",
                                 ctx=ctx, param=param)
    return reps  # type: ignore[return-value]


def _optimizer(name: str) -> str:
    """--optimizer: an ASE optimizer's name, checked before anything loads."""
    from platoscope.errors import InputError
    from platoscope.runner import optimizer_class

    try:
        return optimizer_class(name).__name__
    except InputError as err:
        raise click.BadParameter(str(err)) from None


def _build(config: Any, atoms: Any):
    """:func:`platoscope.assembly.build_run`; Ctrl-C while a model loads or a reference bank
    is built says what happened (nothing cached) instead of click's bare "Aborted!"."""
    from platoscope.assembly import build_run

    try:
        return build_run(config, atoms)
    except KeyboardInterrupt:
        click.echo("interrupted while setting up the run (loading a model or building its "
                   "reference bank): nothing was cached and no step was run; the same command "
                   "builds the bank again from the start", err=True)
        sys.exit(130)


def _literal(text: str) -> Any:
    """A --monitor-option value: int, float, true/false, else the string."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _read_structure(path: str):
    """The structure md and relax start from: the last frame of ``path``, as ase.io.read
    gives it, read by platoscope's readers (CDVAE CSV, mlearn JSON too; an unreadable file is
    named with why: plain ase.io.read said 'cannot read a structure from notes.txt: txt');
    a note says which frame when the file holds several."""
    from platoscope.readers import read_structures

    (atoms,) = read_structures(path, index=-1)
    frame = atoms.info.pop("source_index", 0)
    atoms.info.pop("source", None)  # the run's frames are not frames of this file
    if frame:
        click.echo(f"note: {path} holds {frame + 1} structures; starting from the last "
                   f"(frame {frame})", err=True)
    return atoms


common_run_options = [
    model_option, layer_option, device_option,
    click.option("--anchors", "anchors_path", default="default", show_default=True,
                 help=ANCHORS_HELP),
    click.option("--reference", "reference_path", default=None, type=click.Path(exists=True),
                 help="Reference bank (default: shipped or built once and cached)"),
    click.option("--projection", type=click.Choice(list(PRESETS)), default=None,
                 help=f"Projection preset of the coordinates and the default reference bank "
                      f"(default: {DEFAULT_PROJECTION}, or the --reference bank's own); shared "
                      "with --anchors mp20 is the cross-element view"),
    monitor_option, action_option, *_monitor_flags(),
    click.option("--monitor-option", "monitor_option", multiple=True, metavar="NAME=VALUE",
                 help="A monitor option by name, e.g. atypical_space=projected (also for "
                      "monitors registered outside platoscope); repeatable"),
    click.option("--strict", is_flag=True, help="A failing monitor stops the run"),
    click.option("--out", "-o", required=True, type=click.Path(), help="Output folder"),
    click.option("--overwrite", is_flag=True,
                 help="Clear a non-empty --out (a previous run's folder) first; without it "
                      "(or --restart) a non-empty --out is refused"),
    click.option("--no-embeddings", is_flag=True, help="Keep raw embeddings out of frames.h5"),
    click.option("--store-coords", type=click.Choice(["auto", "always", "never"]),
                 default="auto", show_default=True,
                 help="Write Platonic coordinates with every frame (auto: while K <= 256); "
                      "otherwise frames.h5 derives them from the embeddings, losslessly"),
    click.option("--report/--no-report", default=True, show_default=True,
                 help="Write plots and report.txt when the run ends"),
]


def _end(result: dict, out: str, report: bool) -> None:
    from platoscope.records import status_line

    if report:
        from platoscope.report import make_report

        paths = make_report(out)
        click.echo(f"report: {', '.join(str(p) for p in paths)}")
    errors = result["monitoring"].get("monitor_errors") or []
    failed = ""
    if errors:  # a monitor that failed did not check those frames: 0 events is not a pass
        names = sorted({e["monitor"] for e in errors})
        failed = (f"; {len(errors)} monitor error(s) ({', '.join(names)}: frames not checked; "
                  f"first: {errors[0]['error']})")
    click.echo(f"status: {status_line(result)}; {result['monitoring']['n_events']} events"
               f"{failed}; outputs in {out}")


@main.command()
@click.argument("structure", type=click.Path(exists=True))
@_with(common_run_options)
@click.option("--ensemble", type=click.Choice(["nvt", "npt", "nve"]), default="nvt",
              show_default=True)
@click.option("--temperature", default=300.0, show_default=True, type=_POSITIVE_OR_ZERO,
              help="K")
@click.option("--temperature-end", default=None, type=_POSITIVE_OR_ZERO,
              help="K: ramp the thermostat linearly from --temperature at step 0 to this at "
                   "the last step (nvt, npt), e.g. heating through a melt")
@click.option("--pressure", default=0.0, show_default=True, type=_FINITE, help="GPa (npt)")
@click.option("--steps", default=1000, show_default=True, type=_COUNT,
              help="MD steps (on --restart: the total, counting those already done)")
@click.option("--timestep", default=1.0, show_default=True, type=_POSITIVE, help="fs")
@click.option("--friction", default=0.01, show_default=True, type=_POSITIVE_OR_ZERO,
              help="Langevin friction, 1/fs")
@click.option("--interval", default=1, show_default=True, type=_AT_LEAST_ONE,
              help="Record every N steps")
@click.option("--repeat", default="1,1,1", show_default=True, callback=_repeat,
              help="Supercell, e.g. 2,2,2")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--restart", is_flag=True,
              help="Continue the run in --out from its last frame: repeat the command's "
                   "options (each is checked against the record; only --steps, the total, may "
                   "grow)")
def md(structure, ensemble, temperature, temperature_end, pressure, steps, timestep, friction,
       interval, repeat, seed, restart, report, **kw):
    """Monitored molecular dynamics of STRUCTURE (any file ASE reads, CDVAE CSV, mlearn JSON;
    of a file holding several structures, the last)."""
    ctx = click.get_current_context()
    for name, used_by in (("friction", ("nvt",)), ("pressure", ("npt",))):
        if ensemble not in used_by and \
                ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            raise click.BadParameter(  # it would be dropped without a word
                f"the {ensemble} ensemble has no {name}: only --ensemble "
                f"{' or '.join(used_by)} uses it", param_hint=f"'--{name}'")
    if 0 < steps < interval:  # only step 0 would be recorded, the run's end never
        raise click.BadParameter(f"--interval {interval} is more than --steps {steps}: only "
                                 "step 0 would be recorded", param_hint="'--interval'")
    config = _config(kw)
    atoms = _read_structure(structure).repeat(repeat)
    config.restart = restart
    run = _build(config, atoms)
    try:
        result = run.md(atoms, steps=steps, ensemble=ensemble, timestep_fs=timestep,
                        temperature_K=temperature, friction=friction, pressure_GPa=pressure,
                        temperature_end_K=temperature_end,
                        interval=interval, seed=seed, restart=restart)
    except KeyboardInterrupt:
        click.echo(f"interrupted: every completed frame is in {config.out}; continue with "
                   "--restart", err=True)
        sys.exit(130)
    _end(result, config.out, report)


@main.command()
@click.argument("structure", type=click.Path(exists=True))
@_with(common_run_options)
@click.option("--fmax", default=0.05, show_default=True, type=_POSITIVE, help="eV/Å")
@click.option("--steps", default=500, show_default=True, type=_AT_LEAST_ONE,
              help="Most optimizer steps")
@click.option("--cell/--no-cell", default=False, help="Relax the cell too (FrechetCellFilter)")
@click.option("--optimizer", default="BFGS", show_default=True,
              callback=lambda ctx, param, value: _optimizer(value),
              help="An ASE optimizer: BFGS, FIRE, LBFGS, MDMin ... (any case)")
def relax(structure, fmax, steps, cell, optimizer, report, **kw):
    """Monitored relaxation of STRUCTURE (as for md: of several structures, the last)."""
    config = _config(kw)
    atoms = _read_structure(structure)
    run = _build(config, atoms)
    try:
        result = run.relax(atoms, fmax=fmax, steps=steps, cell=cell, optimizer=optimizer)
    except KeyboardInterrupt:
        click.echo(f"interrupted: every completed frame is in {config.out}", err=True)
        sys.exit(130)
    _end(result, config.out, report)


@main.command()
@click.argument("trajectories", nargs=-1, required=True, type=click.Path(exists=True))
@_with(common_run_options)
@click.option("--batch-size", default=16, show_default=True, type=_AT_LEAST_ONE,
              help="Frames per task and per model batch")
@click.option("--index", default=":", show_default=True, callback=_index,
              help="Frames to read (ASE syntax); steps stay the source's frame indices")
@click.option("--forces", "forces", type=click.Choice(["auto", "model", "file"]),
              default="auto", show_default=True,
              help="Energy and forces of each frame: model = computed by the running model in "
                   "the pass that gives the features (one pass per frame); file = as stored in "
                   "the trajectory (none where it holds none; features from the faster "
                   "batched pass); auto = model when a monitor uses forces (uncertainty), "
                   "else file")
@_with(cluster_options)
def monitor(trajectories, batch_size, index, forces, report, workers, scheduler, **kw):
    """Run monitors over existing TRAJECTORIES (any format ASE reads); step = frame index.

    One trajectory writes its run folder to OUT; several write one folder each under OUT,
    named after their paths (run1/md.traj -> OUT/run1_md). --strict also stops at the first
    frame that cannot be embedded (default: reported in summary.json, skipped). --forces
    model (the default with the uncertainty monitor) writes the model's energy and forces
    into frames.extxyz and frames.h5; summary.json says where the forces came from.
    """
    import dataclasses
    import os

    from platoscope.readers import read_frames
    from platoscope.runner import forces_from

    # the whole command line (inputs as absolute paths): "rerun the same command" is this
    settings = json.dumps({**click.get_current_context().params, "trajectories": [
        os.path.abspath(t) for t in trajectories]}, sort_keys=True, default=str)
    config = _config(kw)
    outs = _run_folders(trajectories, str(config.out))
    # several inputs: an interrupted command leaves OUT/RESUME_MARKER naming the inputs it
    # completed, and the same command run again skips those (their folders are not empty)
    marker = Path(config.out) / RESUME_MARKER if len(trajectories) > 1 else None
    done: list[str] = []
    if marker is not None and marker.is_file() and not config.overwrite:
        state = json.loads(marker.read_text())
        if state.get("settings") == settings:
            done = list(state.get("completed", []))
    completed: list[str] = []
    ex = None
    with contextlib.ExitStack() as stack:
        for trajectory, run_out in zip(trajectories, outs, strict=True):
            if run_out in done:
                click.echo(f"skipped {trajectory}: completed in {run_out} before the "
                           "interruption", err=True)
                completed.append(run_out)
                continue
            frames, skipped = read_frames(trajectory, index=index,
                                          on_error="raise" if config.strict else "skip")
            for line in skipped:
                click.echo(f"skipped: {line}", err=True)
            if not frames and not skipped and index not in (None, ":"):
                raise click.ClickException(f"--index {index} selects no frame of {trajectory}")
            if not frames:
                raise click.ClickException(f"no readable frame in {trajectory}")
            _stored_forces(forces, config.monitors, frames, trajectory)
            run = _build(dataclasses.replace(config, out=run_out), frames[0])
            if forces_from(forces, run.monitors) == "file" and \
                    any(m.uses_forces for m in run.monitors):
                click.echo(f"note: --forces file: sigma uses the forces stored in {trajectory} "
                           "as the running model's |F| (not recomputed): meaningful for frames "
                           f"written with {run.backend.spec}'s forces, not DFT or another "
                           "model's", err=True)
            if ex is None:  # one cluster for every input
                ex = stack.enter_context(_executor(run.backend, config.device, workers,
                                                   scheduler, batch_size))
            try:
                result = run.monitor(frames, batch_size=batch_size, source=str(trajectory),
                                     executor=ex, index=index, skipped_frames=skipped,
                                     forces=forces)
            except KeyboardInterrupt:
                from platoscope.distributed import parts_folder

                if marker is not None:
                    marker.write_text(json.dumps({"settings": settings,
                                                  "completed": completed}, indent=1))
                kept = f"{trajectory}: {_kept(parts_folder(run_out))}"
                click.echo(f"interrupted: {kept}; rerun the same command to resume"
                           + (f" (it skips the {len(completed)} input(s) already completed)"
                              if completed else ""), err=True)
                sys.exit(130)
            for line in result.get("failed_frames", []):
                click.echo(f"failed: {line}", err=True)
            _end(result, run_out, report)
            completed.append(run_out)
    if marker is not None and marker.is_file():
        marker.unlink()


def _kept(parts: Any) -> str:
    """What an interrupted chunked command kept in its ``<out>.parts`` folder, in words."""
    n = len(list(Path(parts).glob("chunk_*.npz"))) if Path(parts).is_dir() else 0
    if not n:
        return "no chunk had completed (nothing kept)"
    return f"{n} completed chunk(s) kept in {parts}"


RESUME_MARKER = ".interrupted_monitor.json"  # in OUT of an interrupted several-input monitor


def _run_folders(paths: tuple[str, ...], out: str) -> list[str]:
    """OUT for one input; OUT/<path without suffix, separators as '_'> for several."""
    if len(paths) == 1:
        return [out]
    import os

    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    names = [os.path.splitext(os.path.relpath(p, root))[0].replace(os.sep, "_")
             for p in absolute]
    if len(set(names)) != len(names):
        raise click.ClickException(f"inputs {', '.join(paths)} would share an output folder")
    return [str(Path(out) / n) for n in names]


@main.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report_cmd(run_dir):
    """Plots and a text summary of a run folder (md, relax or monitor output)."""
    from platoscope.report import make_report

    for p in make_report(run_dir):
        click.echo(str(p))


@main.command("repair")
@click.argument("run", type=click.Path(exists=True))
def repair_cmd(run):
    """Make a killed run's files open with standard tools (h5py, h5dump).

    RUN is a run folder, one frames.h5, or the --out of a monitor of several inputs (each of
    its run folders is repaired). A run killed mid-write leaves frames.h5 flagged
    "open for write"; its committed frames are copied into a clean file that replaces it
    atomically (nothing committed is lost), and a half-written last line of events.jsonl is
    cut off. ``report`` and ``md --restart`` do this themselves.
    """
    from platoscope.writers.runfiles import SIDECAR, SUMMARY

    path = Path(run)
    inner = sorted(p.parent for p in path.glob(f"*/{SIDECAR}")) if path.is_dir() and not (
        (path / SIDECAR).is_file() or (path / SUMMARY).is_file()) else []
    if inner:  # the --out of a monitor of several inputs: said 'no frames.h5' and left them
        click.echo(f"{path} holds {len(inner)} run folders (monitor of several inputs): "
                   "repairing each")
    for p in inner or [path]:
        _repair_one(p)


def _repair_one(path: Path) -> None:
    from platoscope.writers import repair_run, repair_sidecar
    from platoscope.writers.runfiles import EVENTS, SIDECAR

    if path.is_dir():
        res = repair_run(path)
        side = res[SIDECAR]
    else:
        res, side = {}, repair_sidecar(path)
    if side is None:
        click.echo(f"{path}: no frames.h5")
    elif side["repaired"]:
        click.echo(f"{side['path']}: repaired, {side['frames']} committed frames kept; it now "
                   "opens with h5py.File(path, 'r') and h5dump")
    else:
        click.echo(f"{side['path']}: closed cleanly ({side['frames']} frames), nothing to do")
    if res.get("events_tail_dropped"):
        click.echo(f"{path / EVENTS}: dropped an incomplete last line")


@main.command("compare")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "-o", required=True, type=click.Path(), help="Output folder")
@click.option("--k", default=10, show_default=True, type=click.IntRange(min=1),
              help="k of mutual k-NN")
@click.option("--max-atoms", default=5000, show_default=True, type=click.IntRange(min=1),
              help="Above this many atoms, alignment and transport use a random subsample of "
                   "this size (said in compare.txt and compare.json)")
@click.option("--structures", "structure_files", multiple=True, type=click.Path(exists=True),
              help="The structures the files were made from (as given to embed): retrieval "
                   "then counts symmetry-equivalent atoms as hits, one query per environment")
@click.option("--limit", type=int, default=None, help="The --limit given to embed")
@click.option("--symprec", default=1e-3, show_default=True,
              type=_Finite(min=0.0, min_open=True), help="spglib tolerance (Å)")
@click.option("--csls", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also rank retrieval by CSLS hubness correction with this many neighbours "
                   "(0: off; 10 is usual)")
def compare_cmd(files, out, k, max_atoms, structure_files, limit, symprec, csls):
    """Compare coordinate files of the same atoms from different models (``embed`` output)."""
    import numpy as np

    from platoscope.compare import compare
    from platoscope.coords import AtomCoordinates
    from platoscope.symmetry import symmetry_groups

    if len(files) < 2:
        raise click.ClickException("compare needs at least two coordinate files")
    ctx = click.get_current_context()
    for name in ("limit", "symprec"):  # they describe --structures; without it they were ignored
        if not structure_files and \
                ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            raise click.BadParameter("applies to --structures, which is not given",
                                     param_hint=f"'--{name}'")
    coords = [AtomCoordinates.load(f) for f in files]
    groups = None
    if structure_files:
        structures, data_hash = _read(structure_files, limit, skip=True)  # as embed reads
        if data_hash != coords[0].data_hash:
            raise click.ClickException(
                f"{', '.join(structure_files)} are not the structures {files[0]} was made from "
                f"(data hash {data_hash[:12]} != {coords[0].data_hash[:12]}): pass the same "
                "files, in the same order and with the same --limit, as to embed")
        # the rows the files hold: embed leaves out structures the model could not embed
        starts = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
        groups = symmetry_groups(structures, symprec)[
            starts[coords[0].structure_index] + coords[0].atom_index]
    res = compare(coords, out, k=k, max_atoms=max_atoms, groups=groups, csls=csls)
    click.echo((Path(out) / "compare.txt").read_text())
    click.echo(f"wrote {out}/compare.json, alignment.png, bias_per_element.png, "
               f"{len(res['periodicity'])} periodicity heat maps")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
