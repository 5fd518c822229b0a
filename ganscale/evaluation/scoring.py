"""Scoring a generator against a corpus: real reference features, generated features, metrics.

The real side (:func:`real_reference`) reads 2 x n corpus images, chosen by key hash, through
:mod:`ganscale.evaluation.corpus_images` and caches their features (classifier, edge-structure
embedding, Inception when given) under ``<corpus>/eval-cache/``, keyed by the feature
extractor's sha256, the resolution and n: the next evaluation reads them instead of the
images. The generated side (:func:`generated_features`) draws n samples from G batch by batch;
:func:`score` turns both into the flat metric dict that ``eval.json``, the training-time
evaluator and the tracker share, within-condition diversity included
(:mod:`ganscale.evaluation.diversity`). Conditions are drawn two ways: as in the corpus
(:func:`draw_conditions`, what FID/KID compare against) and uniformly over every combination
of attribute values (:func:`uniform_conditions`, so a colour the corpus rarely shows still
counts); :func:`per_value_accuracy` breaks accuracy down by requested value.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ganscale.errors import GanscaleError
from ganscale.evaluation.classifier import Classifier, accuracy
from ganscale.evaluation.corpus_images import list_keys, read_corpus, spread_keys
from ganscale.evaluation.diversity import fid_div, structure_embedding, within_condition_diversity
from ganscale.evaluation.features import InceptionFeatures
from ganscale.evaluation.fid import KID_SUBSET_SIZE, feature_metrics
from ganscale.outputs.latents import draw_z

CACHE_DIR = "eval-cache"
GEN_BATCH = 250
REAL_CACHE_KEYS = ("features_a", "features_b", "labels_a", "labels_b", "structure_a", "structure_b")
"""What a classifier-space cache file must hold; an older file without the structure embedding
is computed again (and overwritten)."""


# --------------------------------------------------------------------------- real reference


@dataclass
class RealReference:
    """Real images' features at one resolution: set A (compared with generated images),
    set B (disjoint, for the real-vs-real floor), labels of A, and the reference values."""

    features: Tensor
    labels: Tensor
    floor: dict[str, float]
    real_accuracy: dict[str, float]
    images_per_set: int
    """Real images in each of sets A and B (``n`` in the cache and in eval.json)."""
    inception_features: Tensor | None = None
    cache_files: list[str] = field(default_factory=list)
    structure: Tensor | None = None
    """Edge-structure embeddings of set A (:func:`ganscale.evaluation.diversity.structure_embedding`)."""
    features_b: Tensor | None = None
    labels_b: Tensor | None = None
    structure_b: Tensor | None = None

    def diversity_reference(self, conditional: bool) -> dict[str, float]:
        """Set B's within-condition diversity against set A (~1: the real-vs-real reference),
        per condition (``conditional``) or over the whole set, in both spaces."""
        out: dict[str, float] = {}
        spaces = (
            ("diversity", self.structure_b, self.structure),
            ("diversity_classifier", self.features_b, self.features),
        )
        for key, b, a in spaces:
            if a is None or b is None:
                continue
            labels = (self.labels_b, self.labels) if conditional and self.labels.shape[1] else (None, None)
            found = within_condition_diversity(b, labels[0], a, labels[1])
            if found is not None:
                out[key] = found[0]
        return out


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


def real_reference(
    folder: Path,
    clf: Classifier,
    size: int,
    n: int,
    inception: InceptionFeatures | None = None,
    log: Any = print,
) -> RealReference:
    """Features of 2 x n real images (n each for sets A and B; fewer if the corpus is small),
    from the cache when present. The images are chosen by key hash (``spread_keys``)."""
    folder = Path(folder)
    base = f"s{size}-n{n}"
    path = folder / CACHE_DIR / f"real-classifier-{clf.digest}-{base}.safetensors"
    cached = _load_cache(path)
    if cached is not None and not all(k in cached[0] for k in REAL_CACHE_KEYS):
        cached = None  # written before the structure embedding existed: compute again
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
        structure = structure_embedding(images)
        tensors = {
            "features_a": feats[a],
            "features_b": feats[b],
            "labels_a": real.labels[a],
            "labels_b": real.labels[b],
            "structure_a": structure[a],
            "structure_b": structure[b],
        }
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
        structure=tensors["structure_a"],
        features_b=tensors["features_b"],
        labels_b=tensors["labels_b"],
        structure_b=tensors["structure_b"],
    )
    if inception is not None:
        ipath = folder / CACHE_DIR / f"real-inception-{inception.digest[:16]}-{base}.safetensors"
        icached = _load_cache(ipath)
        if icached is None:
            half = ref.images_per_set
            if images is None:
                chosen = spread_keys(list_keys(folder), 2 * half)
                images = read_corpus(folder, size, keys=chosen).images
            log(f"real statistics: Inception features of {len(images)} images")
            feats = inception(images)
            a, b = feats[:half], feats[half : 2 * half]
            ifloor = feature_metrics(a, b, "inception", kid_subset_size=min(KID_SUBSET_SIZE, half))
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


def uniform_conditions(n: int, num_classes: list[int], seed: int) -> Tensor:
    """n label rows [n, A] over every combination of attribute values equally often: each of the
    K = prod(num_classes) combinations n // K times; the n % K left over are picked greedily so
    each value of each attribute is asked for about equally often (then all rows are shuffled)."""
    import itertools

    gen = torch.Generator().manual_seed(seed)
    combos = torch.tensor(list(itertools.product(*(range(k) for k in num_classes))), dtype=torch.long)
    full, rest = divmod(n, len(combos))
    rows = [combos.repeat(full, 1)]
    if rest:
        counts = [torch.zeros(k) for k in num_classes]
        left = combos[torch.randperm(len(combos), generator=gen)]  # random tie-break order
        for _ in range(rest):
            load = sum(counts[a][left[:, a]] for a in range(len(num_classes)))
            i = int(torch.argmin(load))  # the first least-asked-for combination
            for a in range(len(num_classes)):
                counts[a][left[i, a]] += 1
            rows.append(left[i : i + 1])
            left = torch.cat([left[:i], left[i + 1 :]])
    out = torch.cat(rows)
    return out[torch.randperm(len(out), generator=gen)]


def per_value_accuracy(
    pred: Tensor, requested: Tensor, attributes: dict[str, list[str]]
) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, int]]]:
    """({attr: {value: accuracy}}, {attr: {value: times asked for}}): for each value, the share
    of the images where it was asked for whose classifier reading is that value (None: never
    asked for)."""
    acc: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    for a, (name, values) in enumerate(attributes.items()):
        acc[name], counts[name] = {}, {}
        for v, value in enumerate(values):
            asked = requested[:, a] == v
            k = int(asked.sum())
            counts[name][value] = k
            acc[name][value] = float((pred[asked, a] == v).float().mean()) if k else None
    return acc, counts


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
    psi: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """(classifier features, predicted labels, Inception features or None, edge-structure
    embeddings) of n generated samples from G, z ~ N(0, z_sigma) drawn from ``seed`` and scaled
    by the truncation ``psi`` (1: as drawn) by :func:`ganscale.outputs.latents.draw_z`, the z of
    ``ganscale sample --seed``; made and consumed batch by batch."""
    was_training = G.training
    G.eval()
    z_all = torch.from_numpy(draw_z(n, meta, seed, psi=psi))
    feats, preds, incep, structure = [], [], [], []
    try:
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            z = z_all[i : i + b].to(device)
            y = labels[i : i + b].to(device) if labels is not None else None
            x = G(z, y).float().clamp(-1, 1)
            f, p = clf.run(x)
            feats.append(f)
            preds.append(p)
            structure.append(structure_embedding(x))
            if inception is not None:
                incep.append(inception(x))
    finally:
        G.train(was_training)
    return torch.cat(feats), torch.cat(preds), (torch.cat(incep) if incep else None), torch.cat(structure)


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
    gen_structure: Tensor | None = None,
) -> dict[str, float]:
    """Flat metrics: ``acc/<attr>``, ``acc_joint`` (conditional G only),
    ``{fid,kid,kid_std,precision,recall}_{classifier,inception}``, and with ``gen_structure``
    ``diversity``, ``diversity_conditions``, ``fid_div`` (left out when no condition has 2
    generated and 2 real images: n too small), plus ``diversity_classifier``."""
    out: dict[str, float] = {}
    conditional = requested is not None and bool(attributes)
    if conditional:
        acc = accuracy(gen_pred, requested, attributes)
        out |= {f"acc/{a}": acc[a] for a in attributes}
        out["acc_joint"] = acc["joint"]
    kid_m = min(KID_SUBSET_SIZE, len(gen_features), len(ref.features))
    out |= feature_metrics(ref.features, gen_features, "classifier", kid_subset_size=kid_m)
    if gen_inception is not None and ref.inception_features is not None:
        out |= feature_metrics(ref.inception_features, gen_inception, "inception", kid_subset_size=kid_m)
    gen_labels, real_labels = (requested, ref.labels) if conditional else (None, None)
    if gen_structure is not None and ref.structure is not None:
        found = within_condition_diversity(gen_structure, gen_labels, ref.structure, real_labels)
        if found is not None:
            out["diversity"], out["diversity_conditions"] = found[0], float(found[1])
            out["fid_div"] = fid_div(out["fid_classifier"], found[0])
    found = within_condition_diversity(gen_features, gen_labels, ref.features, real_labels)
    if found is not None:
        out["diversity_classifier"] = found[0]
    return out
