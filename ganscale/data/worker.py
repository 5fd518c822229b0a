"""The worker side of the streaming loader: one pass over one rank's shards -> uint8 chunks.

Runs in DataLoader worker processes (or inline with 0 workers); everything it needs comes in
one picklable :class:`PassSpec`. Each chunk carries the raw (post-shuffle, pre-decode)
position of its records, so the main side can record exactly what was consumed.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from ganscale.data.decode import augment, decode_record, to_array
from ganscale.data.sources import iter_records

log = logging.getLogger("ganscale.data")


@dataclass(frozen=True)
class PassSpec:
    """Everything a worker needs to produce one pass of one rank's epoch (picklable)."""

    urls: tuple[str, ...]
    rank_shards: tuple[int, ...]
    attributes: dict[str, list[str]]
    image_size: int
    seed: int
    epoch: int
    pass_: int
    rank: int
    resampled: bool
    shuffle_buffer: int
    hflip: bool
    rotate_degrees: float
    chunk: int
    skips: tuple[int, ...]  # raw records to skip, per worker


class PassDataset(IterableDataset):
    """One pass of one rank's epoch, as uint8 chunks with raw positions (see the loader's docstring)."""

    def __init__(self, spec: PassSpec) -> None:
        self.spec = spec
        self.read_errors = 0

    def _on_read_error(self, exn: Exception) -> bool:
        self.read_errors += 1
        log.warning("skipping unreadable shard data: %s", " ".join(str(a) for a in exn.args[:2])[:300])
        return True  # like wds.warn_and_continue, but counted

    def _urls(self, worker: int, workers: int) -> Iterator[str]:
        s = self.spec
        rng = random.Random(f"shards:{s.seed}:{s.epoch}:{s.pass_}:{s.rank}:{worker}")
        if s.resampled:
            while True:
                yield s.urls[rng.randrange(len(s.urls))]
        mine = list(s.rank_shards[worker::workers])
        rng.shuffle(mine)
        for i in mine:
            yield s.urls[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        s = self.spec
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        skip = s.skips[worker] if worker < len(s.skips) else 0
        records = iter_records(self._urls(worker, workers), on_error=self._on_read_error)
        if s.shuffle_buffer > 0:
            rng = random.Random(f"buffer:{s.seed}:{s.epoch}:{s.pass_}:{s.rank}:{worker}")
            initial = min(s.shuffle_buffer, 100)  # start yielding early; the buffer keeps filling
            records = wds.shuffle(s.shuffle_buffer, initial=initial, rng=rng)(records)
        imgs: list[np.ndarray] = []
        labels: list[list[int]] = []
        keys: list[str] = []
        raws: list[int] = []
        corrupt, reported_errors = 0, 0

        def chunk() -> dict[str, Any]:
            nonlocal corrupt, reported_errors
            out = {
                # numpy, not tensors: pickled by value through the worker queue, which costs less
                # than torch's per-tensor shared-memory file-descriptor hand-over.
                "images": np.stack(imgs) if imgs else np.empty((0, 3, s.image_size, s.image_size), np.uint8),
                "labels": np.array(labels, dtype=np.int64).reshape(len(labels), len(s.attributes)),
                "keys": list(keys),
                "raw": list(raws),
                "worker": worker,
                "corrupt": corrupt,
                "read_errors": self.read_errors - reported_errors,
            }
            imgs.clear(), labels.clear(), keys.clear(), raws.clear()
            corrupt, reported_errors = 0, self.read_errors
            return out

        for raw, record in enumerate(records):
            if raw < skip:
                continue  # fast-forward: before decoding
            key = f"{record.get('__url__', '')}#{record.get('__key__', '')}"
            try:
                img, lab = decode_record(record, s.image_size, s.attributes)
            except Exception as e:  # any decode failure is a corrupt record: skip, count
                corrupt += 1
                log.warning("skipping corrupt record %s: %s", key, f"{type(e).__name__}: {e}"[:200])
                continue
            # Seeded by the shard's file name, not its full URL: the same corpus copied or
            # mounted elsewhere gets the same augmentations (a run reproduces anywhere).
            shard_name = record.get("__url__", "").rsplit("/", 1)[-1]
            rng = random.Random(f"aug:{s.seed}:{s.epoch}:{s.pass_}:{shard_name}#{record.get('__key__', '')}")
            imgs.append(to_array(augment(img, rng, s.hflip, s.rotate_degrees)))
            labels.append(lab)
            keys.append(key)
            raws.append(raw)
            if len(imgs) >= s.chunk:
                yield chunk()
        yield chunk()  # the tail (possibly empty: it still reports the counters)


def ignore_stop_signals(worker_id: int) -> None:
    """Workers ignore SIGTERM/SIGUSR1: a signal to the whole process group (Slurm's scancel,
    Ctrl-C style kills) is the trainer's to handle (checkpoint, then exit, which shuts the
    workers down); a worker dying on it would crash the trainer before it could save."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
