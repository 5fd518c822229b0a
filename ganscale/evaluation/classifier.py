"""The attribute classifier: a small CNN that predicts every attribute of a corpus.

It is the judge of conditional generators ("does aqua hair come out aqua?") and its
penultimate layer is the feature space of the always-available FID/KID/precision/recall.
Trained on the corpus's train split (80%, by key hash), scored on the held-out 20%: that
held-out accuracy is the ceiling generated images can be read against.

Stored with the corpus as ``classifier.safetensors`` + ``classifier.json`` (written
atomically; loaded without unpickling). Inputs are images in [-1, 1] of any size: they are
resized to the classifier's own size, and training randomly passes images through lower
resolutions first, so a 16 px generator is judged by the same classifier as a 64 px one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganscale.errors import GanscaleError
from ganscale.evaluation.corpus_images import (
    CorpusImages,
    is_held_out,
    list_keys,
    packed_corpus,
    read_corpus,
    spread_keys,
)

FORMAT = "ganscale-attribute-classifier"
VERSION = 1
WEIGHTS = "classifier.safetensors"
META = "classifier.json"
FEATURE_DIM = 256
DEFAULT_SIZE = 32
DEFAULT_WIDTH = 32
DEFAULT_EPOCHS = 6
MIN_STEPS = 120
DEFAULT_MAX_IMAGES = 12000
LOW_RES_PROB = 0.5  # chance that a training batch first passes through a lower resolution


def as_unit_range(x: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]; float images pass through."""
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x


def resize(x: Tensor, size: int) -> Tensor:
    """Resize [B, 3, s, s] to ``size`` (antialiased when shrinking)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size
    )


class AttributeClassifier(nn.Module):
    """[B, 3, s, s] in [-1, 1] -> one logit vector per attribute; ``features`` is the 256-d
    penultimate layer. Conv-BN-ReLU + max-pool stages down to 4x4, then one hidden layer."""

    def __init__(
        self, num_classes: list[int], image_size: int = DEFAULT_SIZE, width: int = DEFAULT_WIDTH
    ) -> None:
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"classifier image_size must be a power of two >= 8, got {image_size}")
        self.num_classes, self.image_size, self.width = list(num_classes), image_size, width
        layers: list[nn.Module] = []
        ch_in, ch, s = 3, width, image_size
        while s > 4:
            layers += [
                nn.Conv2d(ch_in, ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(ch),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            ch_in, ch, s = ch, min(ch * 2, 8 * width), s // 2
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(ch_in * 16, FEATURE_DIM), nn.ReLU(inplace=True))
        self.heads = nn.ModuleList(nn.Linear(FEATURE_DIM, n) for n in self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.embed(self.trunk(resize(x.float(), self.image_size)))

    def logits(self, feats: Tensor) -> list[Tensor]:
        return [head(feats) for head in self.heads]

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.logits(self.features(x))


@dataclass
class Classifier:
    """A loaded classifier: the network (eval mode), its JSON description and its hash."""

    model: AttributeClassifier
    meta: dict[str, Any]
    path: Path

    @property
    def attributes(self) -> dict[str, list[str]]:
        return self.meta["attributes"]

    @property
    def digest(self) -> str:
        """Identifies the feature space: the weights and the feature scale."""
        return hashlib.sha256(f"{self.meta['sha256']}:{self.feature_scale!r}".encode()).hexdigest()[:16]

    @property
    def feature_scale(self) -> float:
        return float(self.meta.get("feature_scale", 1.0))

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor], str]:
        """(description, CPU weights, path): what :func:`classifier_from_state` rebuilds it from."""
        weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return self.meta, weights, str(self.path)

    @torch.no_grad()
    def run(self, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """(features [N, 256] float32 cpu, predicted labels [N, A] long cpu) of images in [-1, 1]
        (or uint8 in [0, 255], converted batch by batch to keep memory low)."""
        device = next(self.model.parameters()).device
        feats, preds = [], []
        for i in range(0, len(images), batch_size):
            f = self.model.features(as_unit_range(images[i : i + batch_size].to(device)))
            preds.append(torch.stack([lg.argmax(1) for lg in self.model.logits(f)], 1).cpu())
            feats.append(f.float().cpu() * self.feature_scale)
        if not feats:
            return torch.zeros(0, FEATURE_DIM), torch.zeros(0, len(self.attributes), dtype=torch.long)
        return torch.cat(feats), torch.cat(preds)


def paths(folder: Path) -> tuple[Path, Path]:
    return Path(folder) / WEIGHTS, Path(folder) / META


def accuracy(pred: Tensor, labels: Tensor, attributes: dict[str, list[str]]) -> dict[str, float]:
    """Per-attribute accuracy over known labels (-1 skipped) and joint accuracy (all right)."""
    out: dict[str, float] = {}
    for i, name in enumerate(attributes):
        known = labels[:, i] >= 0
        out[name] = (
            float((pred[known, i] == labels[known, i]).float().mean()) if known.any() else float("nan")
        )
    all_known = (labels >= 0).all(1)
    out["joint"] = (
        float((pred[all_known] == labels[all_known]).all(1).float().mean())
        if all_known.any()
        else float("nan")
    )
    return out


def _low_res(x: Tensor, native: int, gen: torch.Generator) -> Tensor:
    sizes = [s for s in (8, 16, 32, 64) if s < native]
    if not sizes or float(torch.rand((), generator=gen)) >= LOW_RES_PROB:
        return x
    s = sizes[int(torch.randint(len(sizes), (), generator=gen))]
    return resize(resize(x, s), native)


def _fit(
    model: AttributeClassifier,
    data: CorpusImages,
    epochs: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    log: Any,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = epochs * max(1, len(data) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    native = data.images.shape[-1]
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        total = 0.0
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            x = data.as_float(idx)
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
            x = _low_res(x, native, gen).to(device)
            y = data.labels[idx].to(device)
            logits = model(x)
            loss = sum(F.cross_entropy(lg, y[:, a], ignore_index=-1) for a, lg in enumerate(logits))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        if (epoch + 1) % max(1, epochs // 6) == 0 or epoch + 1 == epochs:
            log(f"classifier epoch {epoch + 1}/{epochs}: loss {total / max(1, len(order) // batch_size):.3f}")
    model.eval()


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_classifier(
    folder: str | Path,
    size: int | None = None,
    epochs: int | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    width: int = DEFAULT_WIDTH,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    out: Path | None = None,
    log: Any = print,
) -> Classifier:
    """Train on the corpus's train split, score on its held-out split, save beside the corpus.

    ``out`` defaults to the corpus folder. Images are read at the corpus's own size (at most
    64 px) and resized to ``size`` by the network.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    info = packed_corpus(folder)
    attributes = info.attributes
    if not attributes:
        raise GanscaleError(
            f"{folder}: the corpus has no attributes (labels); an attribute classifier "
            f"needs a labelled corpus"
        )
    t0 = time.perf_counter()
    native = min(info.image_size or 64, 64)
    keys = list_keys(folder)
    train = read_corpus(folder, native, keys=spread_keys([k for k in keys if not is_held_out(k)], max_images))
    held = read_corpus(
        folder, native, keys=spread_keys([k for k in keys if is_held_out(k)], max(256, max_images // 4))
    )
    size = size or min(DEFAULT_SIZE, native)
    batch_size = min(batch_size, len(train))
    if epochs is None:  # small corpora get more passes: at least MIN_STEPS optimizer steps
        epochs = max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / max(1, len(train) // batch_size)))
    log(
        f"classifier: {len(train)} train / {len(held)} held-out images of {folder} at {native} px, "
        f"{size} px network, {epochs} epochs"
    )
    device = torch.device(device)
    torch.manual_seed(seed)
    model = AttributeClassifier([len(v) for v in attributes.values()], size, width).to(device)
    _fit(model, train, epochs, batch_size, seed, device, log)
    clf = Classifier(model, {"attributes": attributes}, folder)
    held_feats, pred = clf.run(held.as_float())
    # Features are rescaled so real images have unit RMS per coordinate: FID/KID values then
    # read on a scale independent of how large this training happened to make the activations.
    feature_scale = float(1.0 / held_feats.pow(2).mean().sqrt().clamp(min=1e-12))
    held_acc = accuracy(pred, held.labels, attributes)
    by_size = {}
    for s in (16, 32, 64):
        if s < native:
            _, pred_s = clf.run(resize(held.as_float(), s))
            by_size[str(s)] = accuracy(pred_s, held.labels, attributes)
    seconds = time.perf_counter() - t0
    out_dir = Path(out) if out is not None else folder
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, meta_path = paths(out_dir)
    tmp_w = weights.with_name(f".{weights.name}.{os.getpid()}.tmp")
    tmp_m = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp_w), metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "attributes": attributes,
        "image_size": size,
        "width": width,
        "feature_dim": FEATURE_DIM,
        "corpus_image_size": native,
        "held_out_accuracy": held_acc,
        "held_out_accuracy_by_size": by_size,
        "train_images": len(train),
        "held_out_images": len(held),
        "epochs": epochs,
        "seed": seed,
        "seconds": round(seconds, 1),
        "feature_scale": feature_scale,
        "sha256": file_sha256(tmp_w),
    }
    tmp_m.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp_w, weights)
    os.replace(tmp_m, meta_path)
    log(f"classifier: held-out accuracy {_fmt(held_acc)} ({seconds:.0f} s); wrote {weights}")
    return Classifier(model.requires_grad_(False), meta, weights)


def _fmt(acc: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1%}" for k, v in acc.items())


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load ``classifier.safetensors`` + ``classifier.json`` from ``folder`` (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, meta_path = paths(Path(folder))
    if not weights.is_file() or not meta_path.is_file():
        raise GanscaleError(
            f"{folder}: no attribute classifier; train one with `ganscale classifier train {folder}`"
        )
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError("not a ganscale classifier description")
        return classifier_from_state(meta, load_file(str(weights)), weights, device)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise GanscaleError(
            f"{meta_path}: unreadable classifier ({e}); retrain with `ganscale classifier train {folder}`"
        ) from None


def classifier_from_state(
    meta: dict[str, Any], weights: dict[str, Tensor], path: str | Path, device: str | torch.device = "cpu"
) -> Classifier:
    """A :class:`Classifier` from its description and weights (what :func:`load_classifier`
    reads, or what another rank sent: :meth:`Classifier.state`)."""
    model = AttributeClassifier(
        [len(v) for v in meta["attributes"].values()], meta["image_size"], meta["width"]
    )
    model.load_state_dict(weights)
    return Classifier(model.to(device).eval().requires_grad_(False), meta, Path(path))


def ensure_classifier(
    folder: str | Path, device: str | torch.device = "cpu", log: Any = print, **train_kwargs: Any
) -> Classifier:
    """Load the corpus's classifier, training it first (small, fast) when there is none."""
    from filelock import FileLock

    folder = Path(folder)
    weights, meta_path = paths(folder)
    if weights.is_file() and meta_path.is_file():
        return load_classifier(folder, device)
    with FileLock(str(folder / ".classifier.lock")):  # every rank may ask at once
        if weights.is_file() and meta_path.is_file():
            return load_classifier(folder, device)
        log(f"no attribute classifier for {folder}: training one now (once per corpus)")
        train_classifier(folder, device=device, log=log, **train_kwargs)
    return load_classifier(folder, device)
