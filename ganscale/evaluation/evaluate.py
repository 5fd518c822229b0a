"""`ganscale eval RUN`: attribute accuracy, FID/KID and precision/recall of the EMA generator.

Every number comes with its reference points: the classifier's accuracy on real images at
the run's resolution (the ceiling for attribute accuracy) and the same feature metrics
between two disjoint halves of the corpus (the floor for FID/KID, the top for
precision/recall). Real features are cached per corpus, keyed by the classifier's hash, the
resolution and n, under ``<corpus>/eval-cache/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ganscale.errors import GanscaleError
from ganscale.evaluation.classifier import Classifier, accuracy, ensure_classifier
from ganscale.evaluation.corpus_images import list_keys, read_corpus, spread_keys
from ganscale.evaluation.features import InceptionFeatures, load_inception
from ganscale.evaluation.fid import KID_SUBSET_SIZE, feature_metrics

EVAL_FORMAT = "ganscale-eval"
CACHE_DIR = "eval-cache"
GEN_BATCH = 250


# --------------------------------------------------------------------------- real reference


@dataclass
class RealReference:
    """Real images' features at one resolution: set A (compared with generated images),
    set B (disjoint, for the real-vs-real floor), labels of A, and the reference values."""

    features: Tensor
    labels: Tensor
    floor: dict[str, float]
    real_accuracy: dict[str, float]
    n: int
    inception_features: Tensor | None = None
    cache_files: list[str] = field(default_factory=list)


def _save_cache(path: Path, tensors: dict[str, Tensor], info: dict[str, Any]) -> bool:
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"info": json.dumps(info)}
        )
        os.replace(tmp, path)
        return True
    except OSError:  # a read-only corpus: compute again next time
        return False


def _load_cache(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
            return {k: f.get_tensor(k) for k in f.keys()}, info  # noqa: SIM118 - safe_open has no __iter__
    except (OSError, ValueError, json.JSONDecodeError):
        return None


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def real_reference(
    folder: Path,
    clf: Classifier,
    size: int,
    n: int,
    inception: InceptionFeatures | None = None,
    log: Any = print,
) -> RealReference:
    """Features of 2 x n real images (n each for sets A and B; fewer if the corpus is small),
    from the cache when present."""
    folder = Path(folder)
    base = f"s{size}-n{n}"
    path = folder / CACHE_DIR / f"real-classifier-{clf.digest}-{base}.safetensors"
    cached = _load_cache(path)
    images = None
    if cached is None:
        keys = list_keys(folder)
        half = min(n, len(keys) // 2)
        if half < 8:
            raise GanscaleError(f"{folder}: {len(keys)} images; evaluation needs at least 16")
        chosen = spread_keys(keys, 2 * half)
        log(f"real statistics: {2 * half} images of {folder} at {size} px (cached for next time)")
        real = read_corpus(folder, size, keys=chosen)
        images = real.images  # uint8: converted batch by batch
        feats, pred = clf.run(images)
        a, b = slice(0, half), slice(half, 2 * half)
        floor = feature_metrics(feats[a], feats[b], "classifier", kid_subset_size=min(KID_SUBSET_SIZE, half))
        real_acc = accuracy(pred[a], real.labels[a], clf.attributes)
        info = {"floor": floor, "real_accuracy": real_acc, "n": half, "size": size}
        tensors = {"features_a": feats[a], "features_b": feats[b], "labels_a": real.labels[a]}
        _save_cache(path, tensors, info)
    else:
        tensors, info = cached
    ref = RealReference(
        tensors["features_a"],
        tensors["labels_a"],
        dict(info["floor"]),
        dict(info["real_accuracy"]),
        int(info["n"]),
        cache_files=[str(path)],
    )
    if inception is not None:
        ipath = folder / CACHE_DIR / f"real-inception-{_file_digest(inception.path)}-{base}.safetensors"
        icached = _load_cache(ipath)
        if icached is None:
            if images is None:
                chosen = spread_keys(list_keys(folder), 2 * ref.n)
                images = read_corpus(folder, size, keys=chosen).images
            log(f"real statistics: Inception features of {len(images)} images")
            feats = inception(images)
            a, b = feats[: ref.n], feats[ref.n : 2 * ref.n]
            ifloor = feature_metrics(a, b, "inception", kid_subset_size=min(KID_SUBSET_SIZE, ref.n))
            _save_cache(ipath, {"features_a": a}, {"floor": ifloor})
        else:
            a, ifloor = icached[0]["features_a"], icached[1]["floor"]
        ref.inception_features = a
        ref.floor |= ifloor
        ref.cache_files.append(str(ipath))
    return ref


# --------------------------------------------------------------------------- generated images


def draw_conditions(reference_labels: Tensor, n: int, num_classes: list[int], seed: int) -> Tensor:
    """n label rows drawn (with replacement) from the corpus's own rows, so conditions follow
    the corpus's joint distribution; unknown (-1) entries drawn from that attribute's marginal."""
    gen = torch.Generator().manual_seed(seed)
    rows = reference_labels[torch.randint(len(reference_labels), (n,), generator=gen)].clone()
    for a, k in enumerate(num_classes):
        known = reference_labels[:, a][reference_labels[:, a] >= 0]
        missing = rows[:, a] < 0
        if missing.any():
            pool = known if len(known) else torch.arange(k)
            rows[missing, a] = pool[torch.randint(len(pool), (int(missing.sum()),), generator=gen)]
    return rows


@torch.no_grad()
def generated_features(
    G: nn.Module,
    meta: dict[str, Any],
    labels: Tensor | None,
    n: int,
    seed: int,
    device: torch.device,
    clf: Classifier,
    inception: InceptionFeatures | None = None,
    batch_size: int = GEN_BATCH,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(classifier features, predicted labels, Inception features or None) of n images from G,
    z ~ N(0, z_sigma) drawn from ``seed``; images are made and consumed batch by batch."""
    was_training = G.training
    G.eval()
    gen = torch.Generator().manual_seed(seed)
    feats, preds, incep = [], [], []
    try:
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            z = (torch.randn(b, meta["z_dim"], generator=gen) * meta["z_sigma"]).to(device)
            y = labels[i : i + b].to(device) if labels is not None else None
            x = G(z, y).float().clamp(-1, 1)
            f, p = clf.run(x)
            feats.append(f)
            preds.append(p)
            if inception is not None:
                incep.append(inception(x))
    finally:
        G.train(was_training)
    return torch.cat(feats), torch.cat(preds), (torch.cat(incep) if incep else None)


def confusion(requested: Tensor, predicted: Tensor, k: int) -> Tensor:
    """Counts [k, k]: row = requested class, column = class the classifier saw."""
    idx = requested * k + predicted
    return torch.bincount(idx, minlength=k * k).reshape(k, k)


def score(
    gen_features: Tensor,
    gen_pred: Tensor,
    requested: Tensor | None,
    ref: RealReference,
    attributes: dict[str, list[str]],
    gen_inception: Tensor | None = None,
) -> dict[str, float]:
    """Flat metrics: ``acc/<attr>``, ``acc_joint`` (conditional G only), and
    ``{fid,kid,kid_std,precision,recall}_{classifier,inception}``."""
    out: dict[str, float] = {}
    if requested is not None and attributes:
        acc = accuracy(gen_pred, requested, attributes)
        out |= {f"acc/{a}": acc[a] for a in attributes}
        out["acc_joint"] = acc["joint"]
    kid_m = min(KID_SUBSET_SIZE, len(gen_features), len(ref.features))
    out |= feature_metrics(ref.features, gen_features, "classifier", kid_subset_size=kid_m)
    if gen_inception is not None and ref.inception_features is not None:
        out |= feature_metrics(ref.inception_features, gen_inception, "inception", kid_subset_size=kid_m)
    return out


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
    from ganscale.evaluation.corpus_images import corpus_folder

    run_dir = run if run.is_dir() else run.parent
    for folder in (run_dir, run_dir.parent):
        if (folder / "config.yaml").is_file():
            cfg = load_config(folder / "config.yaml")
            return corpus_folder(cfg.data, cfg.model.image_size), cfg
    raise GanscaleError(f"{run}: no config.yaml beside it to find the corpus; pass --corpus FOLDER")


def pick_device(device: str | None) -> torch.device:
    from ganscale.outputs.sampling import pick_device as pick

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
) -> dict[str, Any]:
    """Evaluate the run's (best, else final) EMA generator; write ``out`` (default RUN/eval.json)
    and one ``confusion-<attr>.png`` per attribute beside it. Returns what was written."""
    from ganscale.evaluation.config import eval_config_of
    from ganscale.outputs.export import find_export, load_generator

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
        inception = eval_config_of(cfg).inception or None
    out_path = Path(out) if out is not None else (run if run.is_dir() else run.parent) / "eval.json"
    attributes = meta["attributes"]
    size = int(meta["image_size"])

    clf = ensure_classifier(corpus_dir, dev, log=log)
    if attributes and clf.attributes != attributes:
        raise GanscaleError(
            f"{clf.path}: classifier attributes {list(clf.attributes)} differ from the "
            f"generator's {list(attributes)}; is --corpus the corpus this run trained on?"
        )
    incep, message = load_inception(inception, dev)
    if incep is None:
        log(message)
    ref = real_reference(corpus_dir, clf, size, n, incep, log=log)

    num_classes = [len(v) for v in attributes.values()]
    requested = draw_conditions(ref.labels, n, num_classes, seed) if attributes else None
    log(f"generating {n} images from {weights}")
    feats, pred, gen_incep = generated_features(G, meta, requested, n, seed + 1, dev, clf, incep)
    metrics = score(feats, pred, requested, ref, attributes, gen_incep)

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
        "real_accuracy": ref.real_accuracy,
        "confusion_matrices": confusion_files,
        "confusion_counts": confusion_counts,
        **pick("classifier"),
        **pick("inception"),
        "inception": {
            "available": incep is not None,
            "path": str(incep.path) if incep else None,
            "message": message,
        },
        "real_vs_real": {"n": ref.n, **pick("classifier", ref.floor), **pick("inception", ref.floor)},
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
    floor = result["real_vs_real"]
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
