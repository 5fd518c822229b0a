"""``data.in_memory: true``: a small corpus decoded once per rank, epochs served from memory.

Each rank decodes exactly its own shards (``shards[rank::world]``; every shard in resampled
mode, where any rank may draw any shard) into one uint8 array [N, S, S, 3] plus labels, and
remembers, per shard, its records in tar order (a record that failed to decode keeps its
place, marked -1). Epochs are then replayed from that memory through the *same* per-worker
shard order, shuffle buffer and chunking as the streaming loader (:mod:`ganscale.data.worker`),
and the chunks of the (virtual) workers are merged round-robin as ``DataLoader`` merges real
ones. So a rank sees the same records in the same order with the same augmentation
parameters, and its ``state_dict`` means the same position, as when streaming: a checkpoint
resumes in either mode.

Before decoding anything the size is checked against ``data.in_memory_max_gb``, with the
largest rank's share, so every rank refuses together (no collective needed: the shard sizes
are known to all).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ganscale.data.decode import LabelReader, apply_augment, augment_params, pixels, record_meta
from ganscale.data.info import CorpusInfo
from ganscale.data.tarscan import read_records
from ganscale.data.worker import PassSpec, ignore_stop_signals, shard_order, shuffled
from ganscale.errors import GanscaleError

log = logging.getLogger("ganscale.data")
GB = 1024**3


def memory_bytes(records: int, image_size: int, attributes: int) -> int:
    """Bytes held for ``records`` images (pixels + int64 labels)."""
    return records * (3 * image_size * image_size + 8 * attributes)


def check_fits(
    info: CorpusInfo, image_size: int, world_size: int, rank: int, resampled: bool, max_gb: float
) -> None:
    """Refuse (one line naming the size) when the largest rank's share exceeds ``max_gb``."""
    sizes = [max(0, s) for s in info.shard_sizes] or [0] * info.num_shards
    if resampled:
        per_rank = [sum(sizes)] * world_size
    else:
        per_rank = [sum(sizes[r::world_size]) for r in range(world_size)]
    need = [memory_bytes(n, image_size, len(info.attributes)) for n in per_rank]
    if max(need) > max_gb * GB:
        worst = int(np.argmax(need))
        raise GanscaleError(
            f"data.in_memory: rank {worst} would hold {per_rank[worst]} images of {image_size} px = "
            f"{need[worst] / GB:.2f} GB (this rank {need[rank] / GB:.2f} GB) > data.in_memory_max_gb "
            f"{max_gb:g}; raise it (--set data.in_memory_max_gb=...) or stream (data.in_memory: false)"
        )


@dataclass
class MemoryCorpus:
    """One rank's decoded records and, per shard, their order in the tar."""

    images: np.ndarray
    """uint8 [N, S, S, 3]."""
    labels: np.ndarray
    """int64 [N, A]."""
    urls: list[str]
    keys: list[str]
    """Record keys (``__key__``), per slot."""
    shard_slots: dict[int, list[int]] = field(default_factory=dict)
    """Shard index -> slots of its records in tar order (-1: the record did not decode)."""
    read_errors: int = 0
    corrupt: int = 0

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes


class _ShardDecode(Dataset):
    """Map-style: item i = shard ``shards[i]`` decoded (DataLoader workers decode in parallel)."""

    def __init__(self, info: CorpusInfo, shards: list[int], image_size: int) -> None:
        self.info, self.shards, self.image_size = info, shards, image_size

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> dict[str, Any]:
        url = self.info.shard_urls[self.shards[i]]
        errors: list[str] = []

        def on_error(exn: Exception) -> bool:
            errors.append(" ".join(str(a) for a in exn.args[:2])[:300])
            return True

        labels_of = LabelReader(self.info.attributes)
        images, labels, keys, order, corrupt = [], [], [], [], 0
        for record in read_records([url], on_error=on_error):
            try:
                meta = record_meta(record)
                px = np.array(pixels(record, meta, self.image_size))
                lab = labels_of(record, meta)
            except Exception as e:  # as when streaming: a corrupt record is skipped and counted
                corrupt += 1
                order.append(-1)
                log.warning("skipping corrupt record %s#%s: %s", url, record.get("__key__"), e)
                continue
            order.append(len(images))
            images.append(px)
            labels.append(lab)
            keys.append(record.get("__key__", ""))
        for e in errors:
            log.warning("skipping unreadable shard data: %s", e)
        s, a = self.image_size, len(self.info.attributes)
        return {
            "shard": self.shards[i],
            "images": np.stack(images) if images else np.empty((0, s, s, 3), np.uint8),
            "labels": np.array(labels, np.int64).reshape(len(labels), a),
            "keys": keys,
            "order": order,
            "corrupt": corrupt,
            "read_errors": len(errors),
        }


def _as_is(part: dict[str, Any]) -> dict[str, Any]:
    return part


def load_memory_corpus(info: CorpusInfo, shards: list[int], image_size: int, workers: int) -> MemoryCorpus:
    """Decode ``shards`` of the corpus once (``workers`` processes) into one array."""
    ds = _ShardDecode(info, shards, image_size)
    parts = (
        (ds[i] for i in range(len(ds)))
        if workers == 0
        else DataLoader(
            ds,
            batch_size=None,
            num_workers=min(workers, len(ds)),
            collate_fn=_as_is,
            worker_init_fn=ignore_stop_signals,
        )
    )
    images, labels, keys, urls, slots = [], [], [], [], {}
    read_errors = corrupt = base = 0
    for part in parts:
        url = info.shard_urls[part["shard"]]
        n = len(part["keys"])
        images.append(part["images"])
        labels.append(part["labels"])
        keys += part["keys"]
        urls += [url] * n
        slots[part["shard"]] = [base + o if o >= 0 else -1 for o in part["order"]]
        base += n
        corrupt += part["corrupt"]
        read_errors += part["read_errors"]
    s = image_size
    return MemoryCorpus(
        np.concatenate(images) if images else np.empty((0, s, s, 3), np.uint8),
        np.concatenate(labels) if labels else np.empty((0, len(info.attributes)), np.int64),
        urls,
        keys,
        slots,
        read_errors,
        corrupt,
    )


def memory_chunks(mem: MemoryCorpus, spec: PassSpec, workers: int) -> Iterator[dict[str, Any]]:
    """The chunks streaming would deliver for ``spec``, from memory (workers merged round-robin)."""
    gens = [_worker_chunks(mem, spec, w, workers) for w in range(workers)]
    active = list(range(workers))
    while active:
        for w in list(active):
            try:
                yield next(gens[w])
            except StopIteration:
                active.remove(w)


def _worker_chunks(mem: MemoryCorpus, s: PassSpec, worker: int, workers: int) -> Iterator[dict[str, Any]]:
    skip = s.skips[worker] if worker < len(s.skips) else 0
    slots = (slot for ui in shard_order(s, worker, workers) for slot in mem.shard_slots.get(ui, ()))
    idx: list[int] = []
    raws: list[int] = []
    corrupt = 0
    for raw, slot in enumerate(shuffled(s, worker, slots)):
        if raw < skip:
            continue
        if slot < 0:
            corrupt += 1
            continue
        idx.append(slot)
        raws.append(raw)
        if len(idx) >= s.chunk:
            yield _chunk(mem, s, worker, idx, raws, corrupt)
            idx, raws, corrupt = [], [], 0
    yield _chunk(mem, s, worker, idx, raws, corrupt)


def _chunk(
    mem: MemoryCorpus, s: PassSpec, worker: int, idx: list[int], raws: list[int], corrupt: int
) -> dict[str, Any]:
    images = mem.images[idx]
    aug = None
    if s.augments:
        params = [
            augment_params(s.seed, s.epoch, s.pass_, mem.urls[i], mem.keys[i], s.hflip, s.rotate_degrees)
            for i in idx
        ]
        if s.augment_on == "device":
            aug = np.array(params, np.float32).reshape(len(idx), 2)
        else:
            for j, (flip, angle) in enumerate(params):
                images[j] = np.asarray(apply_augment(Image.fromarray(images[j]), flip, angle))
    return {
        "images": images,
        "labels": mem.labels[idx],
        "aug": aug,
        "keys": [f"{mem.urls[i]}#{mem.keys[i]}" for i in idx],
        "raw": raws,
        "worker": worker,
        "corrupt": corrupt,
        "read_errors": 0,
    }
