"""Arguments and options the ganscale commands share, each flag declared once.

Outside ``ganscale.cli``: the command groups that live beside their code (``corpus/cli.py``,
``evaluation/cli.py``, ``sweep/cli.py``, ``bench/step_bench.py``) import these without importing
the app in ``ganscale.cli``, which imports them (no import cycle).

An alias (``ConfigArg``, ``SetOpt``, ``DeviceOpt``, ``ProgressOpt``) is a whole parameter
type: the flag means the same everywhere. A factory (``seed_option``, ``out_option``...)
fixes the flag's name and leaves the help to the command, for a flag whose meaning depends
on it (``--out`` is a run folder for ``train``, a PNG for ``sample``)::

    def cmd(config: ConfigArg, seed: Annotated[int, seed_option("Noise seed.")] = 0): ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. configs/acgan.yaml")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set train.batch_size=128 (repeatable)."),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda if present).")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]


def seed_option(help: str) -> Any:
    """``--seed``: what the seed drives is the command's to say."""
    return typer.Option("--seed", help=help)


def truncation_option(help: str) -> Any:
    """``--truncation PSI``: psi in (0, 1], z scaled by psi (validated where it is used)."""
    return typer.Option("--truncation", metavar="PSI", help=help)


def out_option(help: str) -> Any:
    """``--out``: where the command writes."""
    return typer.Option("--out", help=help)


def n_option(help: str) -> Any:
    """``--n``: how many images (or samples) the command handles."""
    return typer.Option("--n", help=help)


def size_option(help: str) -> Any:
    """``--size``: an image size in pixels."""
    return typer.Option("--size", help=help)
