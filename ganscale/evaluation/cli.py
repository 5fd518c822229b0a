"""`ganscale classifier train CORPUS` and `ganscale eval RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ganscale.cli_options import DeviceOpt, n_option, out_option, seed_option, size_option, truncation_option
from ganscale.evaluation.classifier import DEFAULT_EPOCHS, DEFAULT_MAX_IMAGES, DEFAULT_SIZE

classifier_app = typer.Typer(no_args_is_help=True)


def resolve_corpus_arg(path: Path) -> Path:
    """A corpus folder as given; a YAML config or a run folder (config.yaml) -> its corpus."""
    from ganscale.config import load_config
    from ganscale.data.resolve import corpus_folder

    config = path if path.suffix in (".yaml", ".yml") else path / "config.yaml"
    if (path / "dataset.json").is_file() or not config.is_file():
        return path
    cfg = load_config(config)
    return corpus_folder(cfg.data, cfg.model.image_size)


@classifier_app.command("train")
def classifier_train(
    corpus: Annotated[
        Path,
        typer.Argument(
            help="Corpus folder (with dataset.json), or a config/run folder whose corpus to use "
            "(e.g. configs/quickstart.yaml for the built-in corpus it trains on)."
        ),
    ],
    size: Annotated[
        int | None, size_option(f"Network input size in px (default: the corpus's, at most {DEFAULT_SIZE}).")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help=f"Passes over the train split (default {DEFAULT_EPOCHS}, more for small corpora).",
        ),
    ] = None,
    max_images: Annotated[
        int,
        typer.Option("--max-images", help="Train on at most this many images (a fixed hash-chosen subset)."),
    ] = DEFAULT_MAX_IMAGES,
    seed: Annotated[int, seed_option("Weights and batch order.")] = 0,
    device: DeviceOpt = None,
) -> None:
    """Train the attribute classifier on 80% of CORPUS, report held-out accuracy, store it in CORPUS."""
    from ganscale.evaluation.classifier import train_classifier
    from ganscale.evaluation.evaluate import pick_device

    clf = train_classifier(
        resolve_corpus_arg(corpus),
        size=size,
        epochs=epochs,
        max_images=max_images,
        seed=seed,
        device=pick_device(device),
        log=typer.echo,
    )
    acc = clf.meta["held_out_accuracy"]
    typer.echo(
        "held-out accuracy (the ceiling for generated images): "
        + ", ".join(f"{k} {v:.1%}" for k, v in acc.items())
    )
    for s, a in clf.meta["held_out_accuracy_by_size"].items():
        typer.echo(f"  at {s} px: " + ", ".join(f"{k} {v:.1%}" for k, v in a.items()))


def eval_command(
    run: Annotated[
        Path, typer.Argument(help="Run folder (its best, else final, EMA generator) or a generator file.")
    ],
    n: Annotated[int, n_option("Generated images (and real images per half).")] = 10000,
    out: Annotated[
        Path | None,
        out_option("Where to write the JSON (default RUN/eval.json); confusion PNGs go beside it."),
    ] = None,
    corpus: Annotated[
        Path | None,
        typer.Option(
            "--corpus",
            help="Corpus folder, or a config whose corpus to use, e.g. configs/quickstart.yaml "
            "(default: the one in RUN/config.yaml).",
        ),
    ] = None,
    inception: Annotated[
        str | None,
        typer.Option(
            "--inception",
            help="Inception FID/KID: a local InceptionV3 TorchScript file, or 'download' for the "
            "standard inception-2015-12-05.pt, fetched once into $GANSCALE_CACHE_DIR (default "
            "~/.cache/ganscale) and checked against its pinned sha256 (else eval.inception or "
            "$GANSCALE_INCEPTION; nothing is downloaded unless asked).",
        ),
    ] = None,
    seed: Annotated[int, seed_option("Seed of z and of the drawn conditions.")] = 0,
    device: DeviceOpt = None,
    truncation: Annotated[
        float | None,
        truncation_option(
            "Judge truncated samples: z scaled by psi in (0, 1] (as `ganscale sample "
            "--truncation`); 1 (default) = none. Recorded in eval.json."
        ),
    ] = None,
) -> None:
    """Attribute accuracy (conditions as in the corpus, and every combination equally often, per
    attribute value), FID/KID, precision/recall and within-condition diversity of a run's EMA generator,
    with real-vs-real references."""
    from ganscale.evaluation.evaluate import evaluate_run, summary
    from ganscale.runtime.env import cache_dir, inception_weights

    target = out
    result = evaluate_run(
        run,
        n=n,
        out=target,
        device=device,
        corpus=resolve_corpus_arg(corpus) if corpus is not None else None,
        inception=inception,
        seed=seed,
        log=typer.echo,
        inception_env=inception_weights(),
        truncation=truncation,
        cache_dir=cache_dir(),
    )
    typer.echo(summary(result))
    written = target if target is not None else (run if run.is_dir() else run.parent) / "eval.json"
    typer.echo(f"wrote {written}")


def register(app: typer.Typer) -> None:
    """Add the `classifier` group and the `eval` command to the ganscale app."""
    app.add_typer(
        classifier_app, name="classifier", help="The attribute classifier that judges generated images."
    )
    app.command("eval")(eval_command)
