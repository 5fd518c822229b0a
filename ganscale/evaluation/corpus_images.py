"""Finite, deterministic reads of a packed corpus, for the classifier and the real statistics.

Training streams the corpus forever, shuffled and augmented; evaluation needs the opposite:
every image once, in a fixed order, unaugmented, and a split that never changes. Samples are
read straight from the shard tars listed in ``dataset.json`` and decoded with the data
layer's own functions (so labels and resizing match training). The held-out split is a hash
of the sample key, so it does not depend on shard order or on how many images are read.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganscale.errors import GanscaleError

HELD_OUT_MODULUS = 5
"""One key in 5 (by CRC32) is held out: 20% of the corpus, the same 20% at any read size."""


@dataclass
class CorpusImages:
    """Images (uint8 [N, 3, S, S]) and labels (long [N, A], -1 unknown) read from a corpus."""

    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    attributes: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.keys)

    def as_float(self, idx: slice | torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] as float32 (the generator's range)."""
        x = self.images if idx is None else self.images[idx]
        return x.float().div(127.5).sub(1.0)


def is_held_out(key: str) -> bool:
    return zlib.crc32(key.encode()) % HELD_OUT_MODULUS == 0


def manifest(folder: Path) -> dict[str, Any]:
    from ganscale.corpus.pack import read_manifest

    return read_manifest(folder)


def _shard_paths(folder: Path, info: dict[str, Any]) -> list[Path]:
    out = []
    for s in info["shards"]:
        url = s["url"] if isinstance(s, dict) else str(s)
        path = Path(url) if Path(url).is_absolute() else folder / url
        if not path.is_file():
            raise GanscaleError(f"{folder}/dataset.json lists {url}, which is missing; re-pack the corpus")
        out.append(path)
    return out


def iter_samples(folder: Path) -> Iterator[dict[str, Any]]:
    """WebDataset samples (``{"__key__", ext: bytes, ...}``) in shard order."""
    info = manifest(folder)
    for path in _shard_paths(folder, info):
        current: dict[str, Any] = {}
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = Path(member.name).name
                key, _, ext = name.partition(".")
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                f = tar.extractfile(member)
                current["__key__"] = key
                current[ext] = f.read() if f is not None else b""
        if current:
            yield current


def list_keys(folder: str | Path) -> list[str]:
    """Every sample key of the corpus, in shard order (reads tar headers only, no decoding)."""
    folder = Path(folder)
    keys: list[str] = []
    for path in _shard_paths(folder, manifest(folder)):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    key = Path(member.name).name.partition(".")[0]
                    if not keys or keys[-1] != key:
                        keys.append(key)
    return keys


def spread_keys(keys: list[str], count: int, salt: str = "eval") -> list[str]:
    """``count`` keys chosen by a salted hash order: a fixed pseudo-random subset that does not
    depend on shard order (a class-sorted corpus is not read from its first classes only)."""
    ranked = sorted(keys, key=lambda k: (zlib.crc32(f"{salt}:{k}".encode()), k))
    return ranked[:count]


def read_corpus(
    folder: str | Path, size: int, split: str = "all", limit: int | None = None, keys: list[str] | None = None
) -> CorpusImages:
    """Read up to ``limit`` images of ``split`` ("train", "held_out" or "all") at ``size`` px;
    with ``keys``, exactly those samples, in that order.

    Decoding matches the training loader (Lanczos to ``size`` when the shard's size differs),
    without augmentation.
    """
    from ganscale.data.decode import decode_image, image_bytes, labels_of, sample_meta

    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be train, held_out or all, got {split!r}")
    folder = Path(folder)
    info = manifest(folder)
    attributes = {k: list(v) for k, v in (info.get("attributes") or {}).items()}
    wanted = {k: i for i, k in enumerate(keys)} if keys is not None else None
    images, labels, found = [], [], []
    for sample in iter_samples(folder):
        if limit is not None and len(found) >= limit:
            break
        key = sample["__key__"]
        if wanted is not None and key not in wanted:
            continue
        if split != "all" and is_held_out(key) != (split == "held_out"):
            continue
        img = decode_image(image_bytes(sample), size)
        images.append(np.asarray(img, dtype=np.uint8))  # HWC
        labels.append(labels_of(sample, sample_meta(sample), attributes) if attributes else [])
        found.append(key)
    if not found:
        raise GanscaleError(f"{folder}: no images in the {split} split of the corpus")
    order = sorted(range(len(found)), key=lambda i: wanted[found[i]]) if wanted is not None else None
    if order is not None:
        images, labels, found = (
            [images[i] for i in order],
            [labels[i] for i in order],
            [found[i] for i in order],
        )
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(labels, dtype=torch.long).reshape(len(found), len(attributes))
    return CorpusImages(x, y, found, attributes)


def corpus_folder(data_cfg: Any, image_size: int) -> Path:
    """The packed corpus folder (with dataset.json) that a run's ``data`` config trains on.

    synthetic: the cached built-in corpus (built if missing); shards: ``data.path`` when it
    is a folder, else the folder of its first local shard.
    """
    if data_cfg.source == "synthetic":
        from ganscale.corpus.synthetic import ensure_synthetic_corpus

        return ensure_synthetic_corpus(
            data_cfg.cache_dir, data_cfg.synthetic_n, image_size, data_cfg.synthetic_seed
        )
    path = Path(str(data_cfg.path).split(",")[0].strip())
    if path.is_dir():
        return path
    if path.parent.is_dir() and (path.parent / "dataset.json").is_file():
        return path.parent
    raise GanscaleError(
        f"data.path {data_cfg.path!r}: evaluation needs a local corpus folder with "
        f"dataset.json (pack one with `ganscale data pack`)"
    )
