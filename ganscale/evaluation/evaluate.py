"""`ganscale eval RUN`: attribute accuracy, FID/KID and precision/recall of the EMA generator.

Attribute accuracy is reported twice: over conditions drawn as in the corpus (``accuracy``,
the draws FID/KID use too) and over every hair x eyes combination equally often
(``acc_uniform``, with ``acc_per_value``: the accuracy of each value of each attribute), so a
colour that is rare in the corpus, and weak in G, shows. ``--truncation PSI`` scales z by psi
(``truncation_psi`` in eval.json; 1 = none).

Beside them, ``diversity``: how varied the images of one condition are, as a fraction of how
varied the real images of that condition are (1.0 = as varied as the data, ~0 = one image per
condition; :mod:`ganscale.evaluation.diversity` says how it is measured and why), with
``diversity_classifier`` (the same in the classifier's feature space), ``diversity_conditions``
(how many conditions it averages) and ``fid_div`` (classifier FID divided by diversity clamped
to [0.001, 1]: the ``eval.metric`` that collapsing cannot win).

Every number comes with its reference points: the classifier's accuracy on real images at
the run's resolution (the ceiling for attribute accuracy) and the same feature metrics
between two disjoint halves of the corpus (the floor for FID/KID, the top for
precision/recall). Real features are cached per corpus, keyed by the classifier's hash, the
resolution and n, under ``<corpus>/eval-cache/``.

This module is the run-level driver (find the run's generator and corpus, write eval.json
and the confusion PNGs, print a summary); the scoring itself is
:mod:`ganscale.evaluation.scoring`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ganscale.errors import GanscaleError
from ganscale.evaluation.classifier import accuracy, ensure_classifier
from ganscale.evaluation.features import load_inception
from ganscale.evaluation.scoring import (
    confusion,
    draw_conditions,
    generated_features,
    per_value_accuracy,
    real_reference,
    score,
    uniform_conditions,
)

EVAL_FORMAT = "ganscale-eval"


def plot_confusion(counts: Tensor, names: list[str], attribute: str, path: Path) -> Path:
    """Row-normalised confusion matrix (requested x recognised) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = counts.double()
    rates = (c / c.sum(1, keepdim=True).clamp(min=1)).numpy()
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * k, 0.8 + 0.45 * k))
    ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(k), names, rotation=60, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel(f"{attribute} recognised by the classifier")
    ax.set_ylabel(f"{attribute} requested")
    diag = float(c.diagonal().sum() / c.sum().clamp(min=1))
    ax.set_title(f"{attribute}: accuracy {diag:.1%}")
    for i in range(k):
        for j in range(k):
            if rates[i, j] >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{rates[i, j] * 100:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- the command


def metric_keys(space: str) -> list[str]:
    """The feature-space metric names of one space ("classifier" or "inception")."""
    return [f"fid_{space}", f"kid_{space}", f"kid_{space}_std", f"precision_{space}", f"recall_{space}"]


def run_corpus(run: Path) -> tuple[Path, dict[str, Any]]:
    """(corpus folder, run config dict) of a run folder (from its config.yaml)."""
    from ganscale.config import load_config
    from ganscale.data.resolve import corpus_folder

    run_dir = run if run.is_dir() else run.parent
    for folder in (run_dir, run_dir.parent):
        if (folder / "config.yaml").is_file():
            cfg = load_config(folder / "config.yaml")
            return corpus_folder(cfg.data, cfg.model.image_size), cfg
    raise GanscaleError(f"{run}: no config.yaml beside it to find the corpus; pass --corpus FOLDER")


def pick_device(device: str | None) -> torch.device:
    from ganscale.outputs.engines import pick_device as pick

    return pick(device)


def evaluate_run(
    run: str | Path,
    n: int = 10000,
    out: str | Path | None = None,
    device: str | None = None,
    corpus: str | Path | None = None,
    inception: str | Path | None = None,
    seed: int = 0,
    log: Any = print,
    inception_env: str | None = None,
    truncation: float | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate the run's (best, else final) EMA generator; write ``out`` (default RUN/eval.json)
    and one ``confusion-<attr>.png`` per attribute beside it. Returns what was written.

    ``inception_env``: the Inception weights variable's value, read by the CLI
    (:func:`ganscale.runtime.env.inception_weights`); ``cache_dir``: where ``download`` keeps the
    standard Inception file (:func:`ganscale.runtime.env.cache_dir`). ``truncation``: psi in
    (0, 1], z' = psi * z (None = 1 = none)."""
    from ganscale.outputs.export import find_export, load_generator
    from ganscale.outputs.latents import check_psi

    psi = check_psi(truncation)
    t0 = time.perf_counter()
    run = Path(run)
    if n < 16:
        raise GanscaleError(f"--n {n}: use at least 16 images")
    dev = pick_device(device)
    weights, _ = find_export(run)
    G, meta = load_generator(run, dev)
    cfg = None
    if corpus is None:
        corpus_dir, cfg = run_corpus(run)
    else:
        corpus_dir = Path(corpus)
    if inception is None and cfg is not None:
        inception = cfg.eval.inception or None
    out_path = Path(out) if out is not None else (run if run.is_dir() else run.parent) / "eval.json"
    attributes = meta["attributes"]
    size = int(meta["image_size"])

    clf = ensure_classifier(corpus_dir, dev, log=log)
    if attributes and clf.attributes != attributes:
        raise GanscaleError(
            f"{clf.path}: classifier attributes {list(clf.attributes)} differ from the "
            f"generator's {list(attributes)}; is --corpus the corpus this run trained on?"
        )
    incep, message = load_inception(inception, dev, env_value=inception_env, cache_dir=cache_dir)
    if incep is None:
        log(message)
    ref = real_reference(corpus_dir, clf, size, n, incep, log=log)

    num_classes = [len(v) for v in attributes.values()]
    requested = draw_conditions(ref.labels, n, num_classes, seed) if attributes else None
    log(f"generating {n} images from {weights}")
    feats, pred, gen_incep, structure = generated_features(
        G, meta, requested, n, seed + 1, dev, clf, incep, psi=psi
    )
    metrics = score(feats, pred, requested, ref, attributes, gen_incep, structure)
    uniform: dict[str, Any] = {"acc_uniform": None, "acc_per_value": None, "acc_per_value_n": None}
    if attributes:
        # the same z as above, every combination of values equally often: only the classifier reads them
        even = uniform_conditions(n, num_classes, seed + 2)
        log(f"generating {n} images over all {math.prod(num_classes)} combinations, each equally often")
        _, even_pred, _, _ = generated_features(G, meta, even, n, seed + 1, dev, clf, None, psi=psi)
        even_acc = accuracy(even_pred, even, attributes)
        per_value, per_value_n = per_value_accuracy(even_pred, even, attributes)
        uniform = {"acc_uniform": even_acc, "acc_per_value": per_value, "acc_per_value_n": per_value_n}

    confusion_files: dict[str, str] = {}
    confusion_counts: dict[str, list[list[int]]] = {}
    if requested is not None:
        for a, (name, values) in enumerate(attributes.items()):
            counts = confusion(requested[:, a], pred[:, a], len(values))
            confusion_counts[name] = counts.tolist()
            png = plot_confusion(counts, values, name, out_path.parent / f"confusion-{name}.png")
            confusion_files[name] = png.name

    def pick(space: str, source: dict[str, float] = metrics) -> dict[str, float | None]:
        return {k: source.get(k) for k in metric_keys(space)}

    result: dict[str, Any] = {
        "format": EVAL_FORMAT,
        "run": str(run),
        "generator": str(weights),
        "n": n,
        "image_size": size,
        "seed": seed,
        "corpus": str(corpus_dir),
        "classifier": {
            "path": str(clf.path),
            "sha256": clf.meta["sha256"],
            "image_size": clf.meta["image_size"],
            "held_out_accuracy": clf.meta["held_out_accuracy"],
        },
        "accuracy": (
            {a: metrics[f"acc/{a}"] for a in attributes} | {"joint": metrics["acc_joint"]}
            if requested is not None
            else None
        ),
        **uniform,
        "truncation_psi": psi,
        "real_accuracy": ref.real_accuracy,
        "confusion_matrices": confusion_files,
        "confusion_counts": confusion_counts,
        **pick("classifier"),
        **pick("inception"),
        "diversity": metrics.get("diversity"),
        "diversity_classifier": metrics.get("diversity_classifier"),
        "diversity_conditions": int(metrics["diversity_conditions"])
        if "diversity_conditions" in metrics
        else 0,
        "fid_div": metrics.get("fid_div"),
        "inception": {
            "available": incep is not None,
            "path": str(incep.path) if incep else None,
            "sha256": incep.digest if incep else None,
            "message": message,
        },
        "real_vs_real": {
            "n": ref.images_per_set,
            **pick("classifier", ref.floor),
            **pick("inception", ref.floor),
            **dict.fromkeys(("diversity", "diversity_classifier")),
            **ref.diversity_reference(conditional=requested is not None),
        },
        "real_cache": ref.cache_files,
        "seconds": 0.0,
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, out_path)
    return result


def summary(result: dict[str, Any]) -> str:
    """A few readable lines for the terminal."""
    lines = []
    acc, real = result.get("accuracy"), result.get("real_accuracy") or {}
    if acc:
        lines.append(
            "attribute accuracy: "
            + ", ".join(f"{k} {v:.1%} (real {real.get(k, float('nan')):.1%})" for k, v in acc.items())
        )
    even = result.get("acc_uniform")
    if even:
        lines.append(
            "attribute accuracy, every combination equally often: "
            + ", ".join(f"{k} {v:.1%}" for k, v in even.items())
        )
        for attr, values in (result.get("acc_per_value") or {}).items():
            known = {v: a for v, a in values.items() if a is not None}
            weakest = min(known, key=known.__getitem__) if known else None
            lines.append(
                f"  {attr} by value: "
                + ", ".join(f"{v} {a:.0%}" for v, a in known.items())
                + (f"; weakest {weakest} {known[weakest]:.1%}" if weakest is not None else "")
            )
    if result.get("truncation_psi", 1.0) != 1.0:
        lines.append(f"truncation psi {result['truncation_psi']:g} (z scaled toward the mean)")
    floor = result["real_vs_real"]
    if result.get("diversity") is not None:
        real = floor.get("diversity")
        per = "within a condition" if result.get("accuracy") else "over the whole set"
        lines.append(
            f"diversity {per} (edge structure, samples / real images): {result['diversity']:.3f}"
            + (f" (real-vs-real {real:.3f})" if real is not None else "")
            + f" over {result['diversity_conditions']} condition(s); classifier space "
            + (
                f"{result['diversity_classifier']:.3f}"
                if result.get("diversity_classifier") is not None
                else "n/a"
            )
            + f"; fid_div {result['fid_div']:.3f}"
        )
    else:
        lines.append("diversity: n/a (no condition drew 2 generated and 2 real images; raise --n)")
    for space in ("classifier", "inception"):
        if result.get(f"fid_{space}") is None:
            continue
        lines.append(
            f"{space} space: FID {result[f'fid_{space}']:.3f} (real-vs-real {floor[f'fid_{space}']:.3f}), "
            f"KID {result[f'kid_{space}']:.5f} (real {floor[f'kid_{space}']:.5f}), "
            f"precision {result[f'precision_{space}']:.3f} (real {floor[f'precision_{space}']:.3f}), "
            f"recall {result[f'recall_{space}']:.3f} (real {floor[f'recall_{space}']:.3f})"
        )
    return "\n".join(lines)
