"""The ``platoscope`` command line.

    platoscope info
    platoscope anchors select DATA... --model chgnet -k 100 --method direct --out anchors.npz
    platoscope anchors show anchors.npz
    platoscope reference build DATA... --model chgnet --anchors anchors.npz --out bank.npz
    platoscope embed DATA... --model chgnet --anchors anchors.npz --out coords.h5
    platoscope compare A.h5 B.h5 [...] --out compare/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from platoscope.errors import PlatoscopeError


class _Group(click.Group):
    """Turns platoscope's own errors into one clear line and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (PlatoscopeError, FileNotFoundError) as err:
            raise click.ClickException(f"{type(err).__name__}: {err}") from err


def _read(paths: tuple[str, ...], limit: int | None = None) -> tuple[list, str]:
    from platoscope.readers import read_structures, structures_hash

    structures: list = []
    for p in paths:
        structures.extend(read_structures(p, limit=limit))
    if not structures:
        raise click.ClickException(f"no structures read from {', '.join(paths)}")
    return structures, structures_hash(structures)


def _anchors(value: str | None):
    from platoscope.anchors import AnchorSet

    if value in (None, "default"):
        return AnchorSet.default()
    return AnchorSet.load(value)


model_option = click.option("--model", "-m", default="chgnet", show_default=True,
                            help="Backend spec, e.g. chgnet, sevenn:7net-0, mace:/path.model")
layer_option = click.option("--layer", default=None, help="Feature layer (default: the paper's)")
device_option = click.option("--device", default="cpu", show_default=True)


@click.group(cls=_Group)
@click.version_option(package_name="platoscope")
def main() -> None:
    """Anchor-projected ("Platonic") per-atom coordinates for MLIPs, and monitors built on them."""


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
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@model_option
@layer_option
@device_option
@click.option("-k", "--k", "k", default=100, show_default=True, help="Number of anchors K")
@click.option("--method", type=click.Choice(["direct", "fps", "random"]), default="direct",
              show_default=True)
@click.option("--per-element/--no-per-element", default=False,
              help="At least one anchor per element present")
@click.option("--seed", default=0, show_default=True)
@click.option("--limit", type=int, default=None, help="Read at most this many structures per file")
@click.option("--out", "-o", required=True, type=click.Path(), help="Anchor-set file (.npz)")
def anchors_select(data, model, layer, device, k, method, per_element, seed, limit, out):
    """Select K anchor atoms from DATA (CDVAE CSV, extxyz, traj, db, mlearn JSON)."""
    from platoscope.anchors import select_anchor_set
    from platoscope.backends import load_backend

    structures, data_hash = _read(data, limit)
    backend = load_backend(model, layer=layer, device=device)
    s = select_anchor_set(backend, structures, k=k, method=method, per_element=per_element,
                          random_state=seed, data_hash=data_hash, progress=True)
    path = s.save(out)
    click.echo(f"wrote {path}: K={len(s)} anchors over {len(set(s.symbols))} elements, "
               f"hash {s.hash[:12]}")


@anchors.command("show")
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output")
def anchors_show(path, as_json):
    """Summarise an anchor-set file: K, elements, how it was chosen."""
    from collections import Counter

    from platoscope.anchors import AnchorSet

    s = AnchorSet.load(path)
    counts = Counter(s.symbols)
    summary = {"path": str(path), "K": len(s), "hash": s.hash,
               "structures": len(s.structures), "elements": dict(sorted(counts.items())),
               "meta": s.meta}
    if as_json:
        click.echo(json.dumps(summary, indent=1, default=str))
        return
    click.echo(f"{path}: K={len(s)} anchors in {len(s.structures)} structures, hash {s.hash[:16]}")
    click.echo("elements: " + " ".join(f"{el}:{n}" for el, n in sorted(counts.items())))
    for key, val in s.meta.items():
        click.echo(f"  {key}: {val}")


@main.group()
def reference() -> None:
    """Reference banks: a model's coordinates of reference atoms, for monitors."""


@reference.command("build")
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@model_option
@layer_option
@device_option
@click.option("--anchors", "anchors_path", default="default", show_default=True)
@click.option("--projection", default="paper", show_default=True,
              help="paper | centered | standardized | whitened")
@click.option("--limit", type=int, default=None)
@click.option("--out", "-o", required=True, type=click.Path())
def reference_build(data, model, layer, device, anchors_path, projection, limit, out):
    """Embed DATA with MODEL and store the bank (embeddings, projector, provenance)."""
    from platoscope.backends import load_backend
    from platoscope.reference import ReferenceBank

    structures, data_hash = _read(data, limit)
    backend = load_backend(model, layer=layer, device=device)
    bank = ReferenceBank.build(backend, structures, _anchors(anchors_path), normalize=projection,
                               data_hash=data_hash, progress=True)
    bank.save(out)
    click.echo(f"wrote {out}: {len(bank)} atoms, {bank!r}")


@main.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(exists=True))
@model_option
@layer_option
@device_option
@click.option("--anchors", "anchors_path", default="default", show_default=True)
@click.option("--reference", "reference_path", default=None, type=click.Path(exists=True),
              help="Use this bank's projector (needed for standardized/whitened projections)")
@click.option("--projection", default="paper", show_default=True)
@click.option("--limit", type=int, default=None)
@click.option("--no-embeddings", is_flag=True, help="Do not store raw embeddings")
@click.option("--out", "-o", required=True, type=click.Path())
def embed(data, model, layer, device, anchors_path, reference_path, projection, limit,
          no_embeddings, out):
    """Per-atom coordinates of DATA (structures or a trajectory) -> a portable .h5 file."""
    from platoscope.backends import load_backend
    from platoscope.calculator import PlatonicCalculator
    from platoscope.coords import embed_structures

    structures, data_hash = _read(data, limit)
    backend = load_backend(model, layer=layer, device=device)
    anchors_set = _anchors(anchors_path)
    proj: Any = projection
    if reference_path:
        from platoscope.reference import ReferenceBank

        bank = ReferenceBank.load(reference_path)
        bank.check_backend(backend)
        proj = bank.projector
    calc = PlatonicCalculator(backend, anchors=anchors_set, projection=proj)
    coords = embed_structures(calc, structures, data_hash=data_hash, progress=True)
    coords.save(out, embeddings=not no_embeddings)
    click.echo(f"wrote {out}: {len(coords)} atoms x K={coords.platonic.shape[1]} "
               f"({backend.spec}, anchors {anchors_set.hash[:12]})")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
