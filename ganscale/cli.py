"""The `ganscale` command line: one Typer app composed of command groups.

User errors (:class:`ganscale.errors.GanscaleError`) become one line on stderr and exit
code 2; ``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ganscale.errors import GanscaleError

app = typer.Typer(
    name="ganscale",
    help="Train image GANs (DCGAN, ACGAN) from one CPU or GPU to many GPUs on many nodes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_groups() -> None:
    # Each group lives beside the code it drives; imported here so `ganscale --help` lists all.
    from ganscale.corpus.cli import data_app

    app.add_typer(data_app, name="data", help="Build, pack, stream and inspect image corpora.")
    try:
        from ganscale.evaluation.cli import register as register_eval
    except ImportError:  # pragma: no cover - evaluation not built yet
        pass
    else:
        register_eval(app)
    try:
        from ganscale.bench.step_bench import register as register_bench
    except ImportError:  # pragma: no cover - bench not built yet
        pass
    else:
        register_bench(app)


ConfigArg = Annotated[Path, typer.Argument(help="YAML config, e.g. configs/acgan.yaml")]
SetOpt = Annotated[
    Optional[list[str]],  # noqa: UP045 - typer needs Optional here
    typer.Option("--set", help="Override a config key, e.g. --set train.batch_size=128 (repeatable)."),
]


@app.command()
def train(
    config: ConfigArg,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder (default runs/<config name>).")
    ] = None,  # noqa: UP045
    set_: SetOpt = None,
    resume: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--resume", help="'latest' (also the bare flag) or a checkpoint folder."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")] = False,
) -> None:
    """Train a GAN from a YAML config (under `accelerate launch` for several processes)."""
    import yaml

    from ganscale.config import load_config

    cfg = load_config(config, set_ or [])
    if dry_run:
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
        return
    from ganscale.train.trainer import train as run_training

    run_dir = out if out is not None else Path("runs") / cfg.name
    run_training(cfg, run_dir, resume=resume)


@app.command()
def sample(
    run: Annotated[Path, typer.Argument(help="A run folder or an exported generator (.safetensors).")],
    tags: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--tags", help='Condition in the corpus\'s words, e.g. "aqua hair orange eyes".'),
    ] = None,
    n: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--n", help="Images (default 64), or per condition with --all-conditions (default 8)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Noise seed.")] = 0,
    out: Annotated[
        Optional[str],  # noqa: UP045 - str, not Path: a trailing / means "a folder of PNGs"
        typer.Option("--out", help="Grid PNG, or a folder (ending in /) for one PNG per image."),
    ] = None,
    all_conditions: Annotated[
        bool, typer.Option("--all-conditions", help="Draw the conditions x samples matrix.")
    ] = False,
    interpolate: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--interpolate", help='GIF walking z and from --tags to these tags, e.g. "red hair blue eyes".'
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda (default: cuda if present).")
    ] = None,  # noqa: UP045
) -> None:
    """Draw images from a trained (EMA) generator."""
    from ganscale.outputs.sampling import sample_command

    written = sample_command(
        run,
        tags=tags,
        n=n,
        seed=seed,
        out=out,
        all_conditions=all_conditions,
        interpolate=interpolate,
        device=device,
    )
    typer.echo(f"wrote {written}")


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """The deepspeed launcher appends --local_rank=N; keep it out of Typer's way."""
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a.startswith("--local_rank=") or a.startswith("--local-rank="):
            os.environ.setdefault("LOCAL_RANK", a.split("=", 1)[1])
            continue
        if a in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ.setdefault("LOCAL_RANK", argv[i + 1])
            skip = True
            continue
        out.append(a)
    return out


def _bare_resume(argv: list[str]) -> list[str]:
    """`--resume` with no value means `--resume latest`."""
    out = []
    for i, a in enumerate(argv):
        out.append(a)
        if a == "--resume":
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or nxt.startswith("-") or nxt.endswith((".yaml", ".yml")):
                out.append("latest")
    return out


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    args = _bare_resume(_strip_launcher_args(list(sys.argv[1:] if argv is None else argv)))
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    _register_groups()
    try:
        app(args, prog_name="ganscale", standalone_mode=True)
    except GanscaleError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
