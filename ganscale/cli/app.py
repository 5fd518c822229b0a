"""The ``ganscale`` Typer app: ``train`` and ``sample`` here, the other groups beside their code.

User errors (:class:`ganscale.errors.GanscaleError`) become one line on stderr and exit
code 2; ``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ganscale.cli.argv import bare_resume, strip_launcher_args
from ganscale.cli_options import (
    ConfigArg,
    DeviceOpt,
    SetOpt,
    n_option,
    out_option,
    seed_option,
    truncation_option,
)
from ganscale.errors import GanscaleError

app = typer.Typer(
    name="ganscale",
    help="Train image GANs (DCGAN, ACGAN) from one CPU or GPU to many GPUs on many nodes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_registered = False


def _register_groups() -> None:
    """Add data, classifier, eval and bench (each lives beside the code it drives); once."""
    global _registered
    if _registered:
        return
    # No ImportError guard: a group whose import breaks must fail loudly, not vanish from --help.
    from ganscale.bench.step_bench import register as register_bench
    from ganscale.corpus.cli import register as register_data
    from ganscale.evaluation.cli import register as register_eval
    from ganscale.serve.cli import register as register_serve
    from ganscale.sweep.cli import register as register_sweep

    register_data(app)
    register_eval(app)
    register_bench(app)
    register_sweep(app)
    register_serve(app)
    _registered = True


@app.command()
def train(
    config: ConfigArg,
    out: Annotated[Path | None, out_option("Run folder (default runs/<config name>).")] = None,
    set_: SetOpt = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="'latest' (also the bare flag) or a checkpoint folder.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Remove the run already in --out (checkpoints, metrics, samples, exports, tracker "
            "files) and start over. Without it (or --resume) a folder holding a run is refused.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the config (YAML + --set, validated) and exit.")
    ] = False,
    init_from: Annotated[
        str | None,
        typer.Option(
            "--init-from",
            metavar="RUN_OR_EXPORT",
            help="Start from a trained run's weights (its latest checkpoint's G and D, or an exported "
            "G: D then starts fresh): every tensor whose shape matches; conditioning layers of "
            "attributes or values the corpus does not share are re-initialised. Step 0, new optimizers.",
        ),
    ] = None,
) -> None:
    """Train a GAN from a YAML config (under `accelerate launch` for several processes)."""
    import yaml

    from ganscale.config import load_config

    cfg = load_config(config, set_ or [])
    if dry_run:
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False), nl=False)
        return
    from ganscale.train.trainer import train as run_training

    run_training(
        cfg,
        out if out is not None else Path("runs") / cfg.name,
        resume=resume,
        overwrite=overwrite,
        init_from=init_from,
    )


@app.command()
def sample(
    run: Annotated[Path, typer.Argument(help="A run folder or an exported generator (.safetensors).")],
    tags: Annotated[
        str | None,
        typer.Option(
            "--tags",
            help='Condition in the corpus\'s words: "aqua hair orange eyes", or values alone when each '
            'names one attribute ("google flags"); several separated by ";" (one grid row each).',
        ),
    ] = None,
    cond: Annotated[
        list[str] | None,
        typer.Option(
            "--cond",
            metavar="ATTR=VALUE",
            help="One attribute's value, repeated for each attribute the run was trained on "
            "(e.g. --cond vendor=google --cond category=flags); with --all-conditions, the attributes "
            "held fixed.",
        ),
    ] = None,
    n: Annotated[
        int | None, n_option("Images (default 64), or per condition with --all-conditions (default 8).")
    ] = None,
    seed: Annotated[int, seed_option("Noise seed (seed N: the faces of seed N in `ganscale serve`).")] = 0,
    # str, not Path: a trailing / means "a folder of PNGs"
    out: Annotated[
        str | None, out_option("Grid PNG, or a folder (ending in /) for one PNG per image.")
    ] = None,
    all_conditions: Annotated[
        bool,
        typer.Option(
            "--all-conditions",
            help="Draw the conditions x samples matrix: one row per combination of values "
            "(at most 256 rows; fix attributes with --cond).",
        ),
    ] = False,
    interpolate: Annotated[
        str | None,
        typer.Option(
            "--interpolate",
            help="GIF walking z (seed to seed + 1) and from --tags or --cond to these tags, e.g. "
            '"red hair blue eyes".',
        ),
    ] = None,
    device: DeviceOpt = None,
    truncation: Annotated[
        float | None,
        truncation_option(
            "Truncation psi in (0, 1]: z is scaled by psi, pulling faces toward the average one "
            "(less variety, fewer odd faces); 1 (default) = none."
        ),
    ] = None,
    labels: Annotated[
        bool | None,
        typer.Option(
            "--labels/--no-labels",
            help="Write each row's tags at its left (or a caption above a one-condition grid). "
            "Default: on for grids of several conditions.",
        ),
    ] = None,
    min_cell: Annotated[
        int,
        typer.Option(
            "--min-cell",
            metavar="PX",
            help="Enlarge faces (nearest, whole factor) to at least PX px, in grids and PNG folders; "
            "0 = native size.",
        ),
    ] = 0,
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
        truncation=truncation,
        labels=labels,
        min_cell=min_cell,
        cond=cond,
    )
    typer.echo(f"wrote {written}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``ganscale``, ``python -m ganscale``, ``python ganscale``)."""
    args = bare_resume(strip_launcher_args(list(sys.argv[1:] if argv is None else argv)))
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
