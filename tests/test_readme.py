"""The README's commands and snippets run as written (issue: README drift).

Every ``platoscope ...`` line of the README's bash blocks names real commands and options, and
runs, in order, in a folder holding the repository's data and examples; every Python block runs
as a script. What the README promises a new user is what this test executes.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

from platoscope.cli import main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _command_lines() -> list[list[str]]:
    """Each ``platoscope`` command of the bash blocks, continuation lines joined, comments cut."""
    out = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("platoscope "):
                out.append(shlex.split(line))
    return out


def _resolve(args: list[str]) -> tuple[click.Command, list[str], str]:
    cmd: click.Command = main
    rest = list(args[1:])
    path = "platoscope"
    while isinstance(cmd, click.Group):
        name = rest.pop(0)
        sub = cmd.get_command(click.Context(cmd), name)
        assert sub is not None, f"README: `{path} {name}` is not a command"
        cmd, path = sub, f"{path} {name}"
    return cmd, rest, path


def test_readme_has_commands_and_snippets():
    assert len(_command_lines()) >= 10 and len(_blocks("python")) >= 2


@pytest.mark.parametrize("args", _command_lines(), ids=lambda a: " ".join(a[:3]))
def test_readme_command_options_exist(args):
    cmd, rest, path = _resolve(args)
    opts = {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    it = iter(rest)
    for tok in it:
        if not tok.startswith("-") or re.fullmatch(r"-?\d+(\.\d+)?", tok):
            continue
        name = tok.split("=")[0]
        assert name in opts, f"README: `{path}` has no option {name}"
        param = opts[name]
        if isinstance(param.type, click.Choice) and not param.is_flag and "=" not in tok:
            value = next(it)
            assert value in param.type.choices, f"README: `{path} {name} {value}` is not valid"


def _workdir(tmp_path: Path) -> Path:
    """A folder where the README's relative paths (data/, examples/) resolve."""
    for name in ("data", "examples"):
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


@pytest.mark.backend("chgnet")
def test_readme_python_snippets_run(tmp_path):
    work = _workdir(tmp_path)
    for i, block in enumerate(_blocks("python")):
        script = work / f"snippet_{i}.py"
        script.write_text(block)
        done = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True,
                              text=True, timeout=900, env={**os.environ, "MPLBACKEND": "Agg"})
        assert done.returncode == 0, f"README Python block {i} failed:\n{block}\n" \
                                     f"{done.stderr[-3000:]}"


@pytest.mark.backend("chgnet")
@pytest.mark.backend("sevenn")
def test_readme_commands_run_as_written(tmp_path):
    """Every README command, in README order, in one folder (later commands read what earlier
    ones wrote: run/, anchors.npz, the .h5 files ...)."""
    work = _workdir(tmp_path)
    for args in _command_lines():
        done = subprocess.run([sys.executable, "-m", "platoscope.cli", *args[1:]], cwd=work,
                              capture_output=True, text=True, timeout=1500,
                              env={**os.environ, "MPLBACKEND": "Agg"})
        assert done.returncode == 0, f"README command failed: {shlex.join(args)}\n" \
                                     f"{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
