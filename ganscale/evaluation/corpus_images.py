"""Finite, deterministic reads of a packed corpus, for the classifier and the real statistics.

Training streams the corpus forever, shuffled and augmented; evaluation needs the opposite:
every image once, in a fixed order, unaugmented, and a split that never changes. Records are
read with the data package's own reader and decoder (:mod:`ganscale.data.sources`,
:mod:`ganscale.data.decode`), so keys, labels and resizing match training. The held-out
split is a hash of the record key, so it does not depend on shard order or on how many
images are read.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ganscale.corpus.pack import MANIFEST, read_manifest
from ganscale.data.decode import decode_record
from ganscale.data.info import CorpusInfo, corpus_info
from ganscale.data.sources import iter_records, shard_keys, shard_source
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
    """Whether the record ``key`` belongs to the held-out 20% (never trained on by the classifier)."""
    return zlib.crc32(key.encode()) % HELD_OUT_MODULUS == 0


def packed_corpus(folder: str | Path) -> CorpusInfo:
    """The facts and shard list of a packed corpus folder; it must have ``dataset.json``."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        read_manifest(folder)  # raises the one-line "not found; pack the corpus" error
    return corpus_info(shard_source(folder, allow_pipe=False))


def list_keys(folder: str | Path) -> list[str]:
    """Every record key of the corpus, in shard order (reads tar headers only, no decoding)."""
    keys: list[str] = []
    for url in packed_corpus(folder).shard_urls:
        keys += shard_keys(url)
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
    with ``keys``, exactly those records, in that order.

    Decoding matches the training loader (Lanczos to ``size`` when the shard's size differs),
    without augmentation.
    """
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"split must be train, held_out or all, got {split!r}")
    info = packed_corpus(folder)
    attributes = info.attributes
    wanted = {k: i for i, k in enumerate(keys)} if keys is not None else None
    images, labels, found = [], [], []
    for record in iter_records(info.shard_urls):
        if limit is not None and len(found) >= limit:
            break
        key = record["__key__"]
        if wanted is not None and key not in wanted:
            continue
        if split != "all" and is_held_out(key) != (split == "held_out"):
            continue
        img, lab = decode_record(record, size, attributes)
        images.append(np.asarray(img, dtype=np.uint8))  # HWC
        labels.append(lab)
        found.append(key)
    if not found:
        raise GanscaleError(f"{folder}: no images in the {split} split of the corpus")
    if wanted is not None:
        order = sorted(range(len(found)), key=lambda i: wanted[found[i]])
        images, labels, found = (
            [images[i] for i in order],
            [labels[i] for i in order],
            [found[i] for i in order],
        )
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor(labels, dtype=torch.long).reshape(len(found), len(attributes))
    return CorpusImages(x, y, found, attributes)
