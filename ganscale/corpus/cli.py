"""`ganscale data ...` commands: synth, pack, inspect, bench."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ganscale.cli_options import (
    DeviceOpt,
    ProgressOpt,
    SetOpt,
    n_option,
    out_option,
    seed_option,
    size_option,
)
from ganscale.errors import GanscaleError

data_app = typer.Typer(no_args_is_help=True)


@data_app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder: OUT/images/<id>.png + OUT/tags.csv.")],
    n: Annotated[int, n_option("Number of images.")] = 1000,
    size: Annotated[int, size_option("Image size in pixels.")] = 64,
    seed: Annotated[int, seed_option("Same seed, same bytes.")] = 0,
    progress: ProgressOpt = True,
) -> None:
    """Procedural anime faces with exact hair/eye colour tags (MLDS extra_data layout)."""
    from ganscale.corpus.synth import write_synthetic

    if n < 1:
        raise GanscaleError(f"--n {n}: must be >= 1")
    if size < 8:
        raise GanscaleError(f"--size {size}: must be >= 8")
    t0 = time.perf_counter()
    write_synthetic(out, n, size, seed, progress=progress)
    dt = time.perf_counter() - t0
    typer.echo(f"wrote {n} images ({size} px) and tags.csv to {out} in {dt:.1f} s ({n / dt:.0f} images/s)")


@data_app.command()
def pack(
    src: Annotated[
        Path,
        typer.Argument(
            help="Source: a folder (imagefolder, class folders, MLDS, images), a .zip of one, "
            "a datasets folder / parquet file, or (--layout hf) a Hub dataset name."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Output folder for shards, dataset.json, rejects.jsonl.")],
    size: Annotated[int, size_option("Output image size (centre crop + Lanczos).")] = 64,
    fmt: Annotated[
        str,
        typer.Option("--format", help="png, jpg or raw (uint8 pixels + shape in the json: no decoding)."),
    ] = "png",
    per_shard: Annotated[int, typer.Option("--per-shard", help="Samples per shard.")] = 1000,
    layout: Annotated[
        str | None,
        typer.Option(
            "--layout",
            help="imagefolder, labels, hf, stylegan, mlds_extra, mlds_faces, classes or plain "
            "(default: detect).",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="imagefolder / hf: the split folder or split to pack (default train)."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="A labels file (.csv or .jsonl) for the images under SRC."),
    ] = None,
    key_column: Annotated[
        str | None,
        typer.Option(
            "--key-column",
            help="The labels column naming each image (path, file name or stem; default file_name).",
        ),
    ] = None,
    attributes: Annotated[
        str | None,
        typer.Option(
            "--attributes",
            help="Comma-separated label columns to condition on (default: every categorical one).",
        ),
    ] = None,
    min_count: Annotated[
        int, typer.Option("--min-count", help="Reject rows whose value is seen fewer times than this.")
    ] = 1,
    image_column: Annotated[
        str | None,
        typer.Option("--image-column", help="hf: the image column (default: the one Image feature)."),
    ] = None,
    seed: Annotated[
        int,
        seed_option("Shuffle seed: records are mixed before being cut into shards (same seed, same order)."),
    ] = 0,
    name: Annotated[str, typer.Option("--name", help="Shard name prefix: OUT/<name>-000000.tar.")] = "data",
    unconditional: Annotated[
        bool, typer.Option("--unconditional", help="Ignore labels; keep every readable image.")
    ] = False,
    progress: ProgressOpt = True,
) -> None:
    """Pack images into WebDataset shards (+ dataset.json manifest, rejects.jsonl).

    Prints the layout read and the attributes chosen, then each attribute's value counts and
    the kept / rejected counts.
    """
    from ganscale.corpus.layouts import SourceOptions
    from ganscale.corpus.pack import pack as run_pack

    chosen = [a.strip() for a in attributes.split(",") if a.strip()] if attributes is not None else None
    if chosen is not None and not chosen:
        raise GanscaleError("--attributes is empty; name label columns, e.g. --attributes vendor,category")
    options = SourceOptions(
        layout=layout,
        unconditional=unconditional,
        split=split,
        labels=labels,
        key_column=key_column,
        attributes=chosen,
        min_count=min_count,
        image_column=image_column,
    )
    result = run_pack(
        src,
        out,
        size=size,
        fmt=fmt,
        per_shard=per_shard,
        name=name,
        progress=progress,
        seed=seed,
        options=options,
        echo=typer.echo,
    )
    for line in result.value_counts():
        typer.echo(line)
    typer.echo(result.summary())


@data_app.command()
def inspect(
    target: Annotated[
        str, typer.Argument(help="A packed folder, a brace pattern, shard URLs or a source folder.")
    ],
    out: Annotated[Path, out_option("Contact sheet PNG.")] = Path("contact_sheet.png"),
    n: Annotated[int, n_option("Samples on the contact sheet.")] = 64,
) -> None:
    """Counts, per-class histogram and a contact sheet with tags under each image."""
    from rich.console import Console
    from rich.table import Table

    from ganscale.corpus.inspect_corpus import inspect_corpus

    ins = inspect_corpus(target, n=n)
    con = Console(soft_wrap=True)
    con.print(
        f"{ins.source}: {ins.num_records} samples, {ins.num_shards} shards, layout {ins.layout}"
        + (f", {ins.image_size} px" if ins.image_size else "")
        + (f", {ins.unlabelled} unlabelled" if ins.unlabelled else "")
    )
    if ins.rejects:
        con.print("rejected when packed: " + ", ".join(f"{k} {v}" for k, v in sorted(ins.rejects.items())))
    for attr, counts in ins.class_counts.items():
        table = Table(title=attr, show_edge=False)
        table.add_column(attr)
        table.add_column("count", justify="right")
        table.add_column("")
        top = max(counts.values(), default=0) or 1
        for value, c in counts.items():
            table.add_row(value, str(c), "#" * round(30 * c / top))
        con.print(table)
    if ins.sheet is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        ins.sheet.save(out)
        con.print(f"contact sheet: {out}")


@data_app.command()
def bench(
    target: Annotated[str, typer.Argument(help="A packed folder, a brace pattern or shard URLs.")],
    workers: Annotated[int, typer.Option("--workers", help="Loader worker processes.")] = 0,
    batch: Annotated[int, typer.Option("--batch", help="Batch size.")] = 64,
    steps: Annotated[int, typer.Option("--steps", help="Timed batches (after the first).")] = 50,
    size: Annotated[int, size_option("Image size (default: the corpus's).")] = 0,
    in_memory: Annotated[
        bool, typer.Option("--in-memory", help="Decode once into memory first (data.in_memory).")
    ] = False,
    device: DeviceOpt = None,
    gpu: Annotated[
        str | None,
        typer.Option("--gpu", help="A GPU kind (H100, A100, ...): the img/s one would consume."),
    ] = None,
    mfu: Annotated[
        float, typer.Option("--mfu", help="With --gpu: the model FLOPs utilisation assumed.")
    ] = 0.3,
    config: Annotated[
        Path | None, typer.Option("--config", help="With --gpu: the model config, e.g. configs/dcgan.yaml.")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Images/s the loader delivers (beside raw decode and the device augmentation); last line JSON."""
    import json

    from ganscale.bench.data_bench import format_row, run_data_bench
    from ganscale.config import load_config

    model_cfg = None
    if config is not None:
        model_cfg = load_config(config, [*(set_ or []), "eval.every=0", "log.tracker=none"])
    row = run_data_bench(
        target,
        workers=workers,
        batch=batch,
        steps=steps,
        size=size,
        in_memory=in_memory,
        device=device,
        gpu=gpu,
        mfu=mfu,
        model_cfg=model_cfg,
    )
    typer.echo(format_row(row))
    typer.echo(json.dumps(row))


def register(app: typer.Typer) -> None:
    """Add the `data` group to the ganscale app."""
    app.add_typer(data_app, name="data", help="Build, pack, stream and inspect image corpora.")
