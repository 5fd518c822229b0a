"""`ganscale sweep SPEC`, `ganscale report RUN...` (and the array tasks' `sweep-cell`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ganscale.cli_options import SetOpt, out_option


def sweep_command(
    spec: Annotated[Path, typer.Argument(help="Sweep spec, e.g. configs/sweeps/lambda.yaml")],
    out: Annotated[Path | None, out_option("Sweep folder (default: the spec's out).")] = None,
    set_: SetOpt = None,
    grid: Annotated[
        list[str] | None,
        typer.Option("--grid", help="Replace or add one axis, e.g. --grid model.arch=dcgan (repeatable)."),
    ] = None,
    slurm: Annotated[
        bool, typer.Option("--slurm", help="Submit the unfinished cells as a Slurm job array.")
    ] = False,
    sbatch_arg: Annotated[
        list[str] | None,
        typer.Option("--sbatch-arg", help="sbatch option, e.g. --sbatch-arg=--partition=gpu (repeatable)."),
    ] = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", help="With --slurm: at most this many tasks at once.")
    ] = None,
    script: Annotated[
        Path | None, typer.Option("--script", help="With --slurm: the array script (default launch/slurm/).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the cells and what each still needs, and exit.")
    ] = False,
) -> None:
    """Train (and evaluate) a grid of configs x seeds, one run folder per cell; a re-run skips
    finished cells and resumes unfinished ones."""
    from ganscale.sweep.local import cell_status, run_local
    from ganscale.sweep.spec import load_spec, write_manifest

    sweep = load_spec(spec, set_ or [], grid or [])
    if out is not None:
        sweep.out = out
    cells = sweep.cells()
    if dry_run:
        for i, c in enumerate(cells):
            typer.echo(f"{i:3d} {cell_status(sweep, c).state:6s} {sweep.out / c.folder}")
        return
    if slurm:
        from ganscale.sweep.slurm import submit

        submit(sweep, cells, sbatch_arg or [], script, max_parallel, log=typer.echo)
        return
    write_manifest(sweep, cells)
    run_local(sweep, cells, log=lambda s: typer.echo(s, err=False))


def sweep_cell_command(
    manifest: Annotated[Path, typer.Argument(help="OUT/sweep.json written by `ganscale sweep`.")],
    index: Annotated[int, typer.Argument(help="The cell (SLURM_ARRAY_TASK_ID).")],
    nproc: Annotated[int, typer.Option("--nproc", help="Training processes (accelerate launch).")] = 1,
) -> None:
    """Run one cell of a sweep (what each Slurm array task of `sweep --slurm` runs)."""
    from ganscale.sweep.slurm import run_array_task

    code = run_array_task(manifest, index, nproc, log=typer.echo)
    if code:
        raise typer.Exit(code)


def report_command(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, sweep folders, or folders above runs.")],
    out: Annotated[
        Path | None,
        out_option("Markdown file (default report.md in the one folder given, else here); PNG beside."),
    ] = None,
    every_column: Annotated[
        bool,
        typer.Option("--all", help="Every metric of eval.json as a column (default: the headline ones)."),
    ] = False,
) -> None:
    """Table of the runs' eval.json grouped by cell: mean (min..max) over seeds, + Markdown and a plot."""
    from ganscale.sweep.report import report

    md, png = report(runs, out, every_column=every_column)
    typer.echo(f"wrote {md}, {png}")


def register(app: typer.Typer) -> None:
    """Add `sweep`, `report` and the hidden `sweep-cell` to the ganscale app."""
    app.command("sweep")(sweep_command)
    app.command("report")(report_command)
    app.command("sweep-cell", hidden=True)(sweep_cell_command)
