"""The worker side of the streaming loader: one pass over one rank's shards -> uint8 chunks.

Runs in DataLoader worker processes (or inline with 0 workers); everything it needs comes in
one picklable :class:`PassSpec`. Each chunk carries the raw (post-shuffle, pre-decode)
position of its records, so the main side can record exactly what was consumed.

A chunk is a dict: ``images`` uint8 [n, H, W, 3] (HWC, as decoded: the batch is never
transposed image by image; in a worker it stays in a shared slot, ``slot``, see
:mod:`ganscale.data.transport`), ``labels`` int64 [n, A], ``aug`` float32 [n, 2] (flip, angle
in degrees) when augmentation is left to the training device, else None; ``keys``, ``raw``,
``worker`` and the ``corrupt`` / ``read_errors`` counters.

Per record the worker reads (:mod:`ganscale.data.tarscan`), parses the json once, decodes (PNG,
JPEG) or just copies (raw shards) the pixels into a preallocated chunk buffer, reads the labels
with vocabularies prepared once per pass, and draws the augmentation parameters.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ganscale.data.decode import (
    IMAGE_KEYS,
    LabelReader,
    ParamDraw,
    apply_augment,
    decode_image,
    pixels,
    record_meta,
)
from ganscale.data.tarscan import read_records

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
    augment_on: str = "loader"
    """loader: flip/rotate here with PIL; device: only draw the parameters (``aug``)."""

    @property
    def augments(self) -> bool:
        return self.hflip or self.rotate_degrees > 0


def shard_order(spec: PassSpec, worker: int, workers: int) -> Iterator[int]:
    """Indices into ``spec.urls`` that ``worker`` reads in this pass (endless when resampled)."""
    s = spec
    rng = random.Random(f"shards:{s.seed}:{s.epoch}:{s.pass_}:{s.rank}:{worker}")
    if s.resampled:
        while True:
            yield rng.randrange(len(s.urls))
    mine = list(s.rank_shards[worker::workers])
    rng.shuffle(mine)
    yield from mine


def shuffled(spec: PassSpec, worker: int, items: Iterable[Any]) -> Iterator[Any]:
    """``items`` through the pass's seeded shuffle buffer (as they come when it is off)."""
    s = spec
    it = iter(items)
    if s.shuffle_buffer <= 0:
        return it
    rng = random.Random(f"buffer:{s.seed}:{s.epoch}:{s.pass_}:{s.rank}:{worker}")
    initial = min(s.shuffle_buffer, 100)  # start yielding early; the buffer keeps filling
    return buffer_shuffle(it, s.shuffle_buffer, initial, rng)


def buffer_shuffle(data: Iterator[Any], bufsize: int, initial: int, rng: random.Random) -> Iterator[Any]:
    """``webdataset.shuffle(bufsize, initial, rng)``, item for item and draw for draw.

    The same algorithm (two items in per item out until the buffer is full, then pick at random
    and move the last item into the hole), with ``rng._randbelow(n)``, which is what its
    ``rng.randint(0, n - 1)`` computes, without the two Python frames around it.
    """
    initial = min(initial, bufsize)
    buf: list[Any] = []
    below = rng._randbelow
    for sample in data:
        buf.append(sample)
        if len(buf) < bufsize:
            try:  # noqa: SIM105 - per record: a plain try costs nothing, suppress() a frame
                buf.append(next(data))
            except StopIteration:
                pass
        if len(buf) >= initial:
            k = below(len(buf))
            out = buf[k]
            buf[k] = buf[-1]
            buf.pop()
            yield out
    while buf:
        k = below(len(buf))
        out = buf[k]
        buf[k] = buf[-1]
        buf.pop()
        yield out


class ChunkBuffer:
    """One chunk being filled: pixels straight into a preallocated uint8 array, the small
    per-record values into lists (one numpy conversion per chunk, not a setitem per record)."""

    def __init__(self, spec: PassSpec, worker: int, ring: Any = None) -> None:
        self.spec, self.worker, self.ring = spec, worker, ring
        self.corrupt, self.read_errors = 0, 0
        self._new()

    def _new(self) -> None:
        self.images: np.ndarray | None = None  # allocated with the chunk's first record
        self.slot: int | None = None
        self.labels: list[list[int]] = []
        device = self.spec.augment_on == "device" and self.spec.augments
        self.aug: list[tuple[bool, float]] | None = [] if device else None
        self.keys: list[str] = []
        self.raw: list[int] = []

    def ensure(self) -> np.ndarray:
        """The pixel buffer: a shared slot in a worker when one is free, else process memory."""
        if self.images is None:
            got = self.ring.acquire(self.worker) if self.ring is not None else None
            if got is None:
                s = self.spec
                self.images = np.empty((s.chunk, s.image_size, s.image_size, 3), np.uint8)
            else:
                self.slot, self.images = got
        return self.images

    def take(self) -> dict[str, Any]:
        n = len(self.keys)
        images = self.ensure()
        out = {
            "images": images[:n] if self.slot is None else None,  # else in shared slot `slot`
            "slot": self.slot,
            "labels": np.array(self.labels, np.int64).reshape(n, len(self.spec.attributes)),
            "aug": None if self.aug is None else np.array(self.aug, np.float32).reshape(n, 2),
            "keys": self.keys,
            "raw": self.raw,
            "worker": self.worker,
            "corrupt": self.corrupt,
            "read_errors": self.read_errors,
        }
        self.corrupt, self.read_errors = 0, 0
        self._new()
        return out


class PassDataset(IterableDataset):
    """One pass of one rank's epoch, as uint8 chunks with raw positions (see the loader's docstring)."""

    def __init__(self, spec: PassSpec, persistent: bool = False) -> None:
        self.spec = spec
        self.persistent = persistent
        """Run by a :class:`ganscale.data.transport.WorkerPool`: each iteration is a new pass,
        whose spec comes through the ring's pipe (``spec`` only fixes the chunk shape)."""
        self.read_errors = 0
        self.ring: Any = None
        """A :class:`ganscale.data.transport.SlotRing` when run by forked workers."""

    def _on_read_error(self, exn: Exception) -> bool:
        self.read_errors += 1
        log.warning("skipping unreadable shard data: %s", " ".join(str(a) for a in exn.args[:2])[:300])
        return True  # like wds.warn_and_continue, but counted

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        s = self.ring.next_spec(worker) if self.persistent and info is not None else self.spec
        self.read_errors = 0  # counted per pass (reported per chunk, as a difference)
        skip = s.skips[worker] if worker < len(s.skips) else 0
        urls = (s.urls[i] for i in shard_order(s, worker, workers))
        records = shuffled(s, worker, read_records(urls, on_error=self._on_read_error))
        labels_of = LabelReader(s.attributes)
        draw = ParamDraw(s.seed, s.epoch, s.pass_, s.hflip, s.rotate_degrees) if s.augments else None
        pil = s.augment_on == "loader"
        buf = ChunkBuffer(s, worker, self.ring if info is not None else None)
        reported, size, chunk = 0, s.image_size, s.chunk
        for raw, record in enumerate(records):
            if raw < skip:
                continue  # fast-forward: before decoding
            url, rkey = record.get("__url__", ""), record.get("__key__", "")
            n = len(buf.keys)
            images = buf.images if n else buf.ensure()
            try:
                meta = record_meta(record)
                if pil and draw is not None:
                    images[n] = _pil_augmented(record, meta, size, draw(url, rkey))
                else:
                    images[n] = pixels(record, meta, size)
                lab = labels_of(record, meta)
            except Exception as e:  # any decode failure is a corrupt record: skip, count
                buf.corrupt += 1
                log.warning("skipping corrupt record %s#%s: %s", url, rkey, f"{type(e).__name__}: {e}"[:200])
                continue
            if buf.aug is not None and draw is not None:
                buf.aug.append(draw(url, rkey))
            buf.labels.append(lab)
            buf.keys.append(f"{url}#{rkey}")
            buf.raw.append(raw)
            if n + 1 >= chunk:
                buf.read_errors, reported = self.read_errors - reported, self.read_errors
                yield buf.take()
        buf.read_errors = self.read_errors - reported
        yield buf.take()  # the tail (possibly empty: it still reports the counters)


def _pil_augmented(
    record: dict[str, Any], meta: dict[str, Any], size: int, params: tuple[bool, float]
) -> np.ndarray:
    """``data.augment_on: loader``: decode and flip/rotate with PIL, as the loader always did."""
    flip, angle = params
    for k in IMAGE_KEYS:
        if k in record:
            img = decode_image(record[k], size)
            break
    else:
        img = Image.fromarray(np.array(pixels(record, meta, size)))
    return np.asarray(apply_augment(img, flip, angle))


def ignore_stop_signals(worker_id: int) -> None:
    """Workers ignore SIGTERM/SIGUSR1: a signal to the whole process group (Slurm's scancel,
    Ctrl-C style kills) is the trainer's to handle (checkpoint, then exit, which shuts the
    workers down); a worker dying on it would crash the trainer before it could save."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
