"""The streaming loader: WebDataset shards -> full batches on every rank, forever, resumable.

A *record* is one stored corpus image with its labels (generated images are "samples").

Design (why each piece is there):

- Shards are split by rank (``shards[rank::world]``, as ``wds.split_by_node`` does) and then
  by DataLoader worker (``[worker::workers]``). Each rank's share is fixed, so its record
  count is known from ``dataset.json`` and ``batches_per_epoch`` can be made identical on
  every rank: ``ceil(max rank records / batch)``. A rank with fewer records tops its last
  batches up from a second, differently shuffled pass over its own shards (like
  ``DistributedSampler`` padding), so no rank waits at a collective for a batch that never
  comes. With shards >= ranks x workers every record is read exactly once per epoch (plus
  that padding); with fewer, the loader says so and switches to resampled mode.
- Shard order and the shuffle buffer are seeded from (seed, epoch, pass, rank, worker);
  augmentation from (seed, epoch, pass, shard name, record key): never the global torch RNG.
- Workers (:mod:`ganscale.data.worker`) read and decode into uint8 chunks. The augmentation
  (flip, slight rotation) is, by default (``data.augment_on: device``), only *drawn* there:
  each batch carries its per-sample parameters and the trainer warps the batch on its device
  (:mod:`ganscale.augment`); ``data.augment_on: loader`` flips and rotates with PIL in the
  workers instead. Each chunk carries the raw (post-shuffle, pre-decode) position of its
  records, so ``state_dict()`` records exactly what was consumed per worker and a resume
  skips that many raw records *before decoding*.
- What a batch is: the trainer asks for ``output="uint8"`` and gets :class:`LoaderBatch`
  (uint8 images, labels, augmentation parameters); everything else iterating the stream gets
  ``(images, labels)`` with float32 images in [-1, 1], already augmented (on the CPU, with
  the very function the trainer uses on its device).
- ``data.in_memory: true`` decodes the rank's shards once (:mod:`ganscale.data.memory`) and
  replays every epoch from memory with the same order, parameters and positions.
- A record that fails to decode, or a shard that fails to read (truncated tar), is skipped
  and counted (``stats()``), never fatal.
- The stream is not a DataLoader: keep it out of ``accelerator.prepare`` (which would
  return it unchanged anyway) and move batches to the device yourself.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import torch

from ganscale.config import DataConfig
from ganscale.data.batch import LoaderBatch, take, to_float
from ganscale.data.info import CorpusInfo
from ganscale.data.memory import MemoryCorpus, check_fits, load_memory_corpus, memory_chunks
from ganscale.data.resolve import resolve_corpus
from ganscale.data.transport import PassRun, WorkerPool, can_keep_workers
from ganscale.data.worker import PassSpec
from ganscale.errors import GanscaleError

log = logging.getLogger("ganscale.data")
PRESTART_S = 0.5
"""With workers, the next epoch's are started when this one has about this many seconds left."""


class ShardStream:
    """An infinite, resumable stream of batches for one rank.

    ``output="float"`` (the default): ``(images, labels)`` with ``images`` float32
    [B, 3, S, S] in [-1, 1], augmented; ``output="uint8"``: :class:`LoaderBatch` (what the
    trainer reads). ``labels``: int64 [B, len(info.attributes)] (-1 = unknown). Every rank
    yields ``batches_per_epoch`` batches per epoch.
    """

    def __init__(
        self,
        info: CorpusInfo,
        *,
        batch_size: int,
        image_size: int,
        seed: int,
        rank: int,
        world_size: int,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        hflip: bool = True,
        rotate_degrees: float = 0.0,
        resampled: bool = False,
        pin_memory: bool = False,
        augment_on: str = "device",
        output: str = "float",
        in_memory: bool = False,
        in_memory_max_gb: float = 8.0,
        persistent_workers: bool = True,
    ) -> None:
        if augment_on not in ("device", "loader"):
            raise GanscaleError(f"augment_on {augment_on!r}: use device or loader")
        if output not in ("float", "uint8"):
            raise GanscaleError(f"output {output!r}: use float or uint8")
        if batch_size < 1:
            raise GanscaleError(f"batch size {batch_size}: must be >= 1")
        if not 0 <= rank < world_size:
            raise GanscaleError(f"rank {rank} is not in [0, world size {world_size})")
        if info.num_shards < 1:
            raise GanscaleError("the corpus has no shards")
        self.info = info
        self.batch_size, self.image_size, self.seed = batch_size, image_size, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.shuffle_buffer, self.hflip, self.rotate_degrees = shuffle_buffer, hflip, rotate_degrees
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.augment_on, self.output = augment_on, output
        self.notice = ""
        readers = world_size * max(1, num_workers)
        if not resampled and info.num_shards < readers:
            self.notice = (
                f"{info.num_shards} shards < {world_size} ranks x {max(1, num_workers)} workers: "
                "streaming in resampled mode (shards drawn with replacement; an epoch is "
                "nominal). Pack with a smaller --per-shard for exact epochs."
            )
            if rank == 0:
                log.warning(self.notice)
            resampled = True
        self.resampled = resampled
        self.rank_shards = tuple(range(rank, info.num_shards, world_size))
        sizes = [max(0, s) for s in info.shard_sizes] or [0] * info.num_shards
        if resampled:
            per_rank = math.ceil(info.num_records / world_size)
        else:
            per_rank = max(sum(sizes[r::world_size]) for r in range(world_size))
        self.rank_records = sum(sizes[rank::world_size]) if not resampled else per_rank
        self.batches_per_epoch = max(1, math.ceil(per_rank / batch_size))
        self._workers_eff = max(1, num_workers)
        self._stats = {"corrupt_skipped": 0, "read_errors": 0, "records": 0, "padding_passes": 0}
        self._pos: dict[str, Any] = self._fresh(0)
        self._ahead: dict[tuple[int, int, tuple[int, ...]], PassRun] = {}
        self.persistent_workers = persistent_workers and num_workers > 0 and can_keep_workers()
        self.memory: MemoryCorpus | None = None
        if in_memory:
            check_fits(info, image_size, world_size, rank, resampled, in_memory_max_gb)
            shards = list(range(info.num_shards)) if resampled else list(self.rank_shards)
            self.memory = load_memory_corpus(info, shards, image_size, num_workers)
            self._stats["read_errors"] += self.memory.read_errors  # read once (corrupt: per epoch)

    # ------------------------------------------------------------------ state
    def _fresh(self, epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "batch": 0, "pass": 0, "raw": [0] * self._workers_eff}

    def state_dict(self) -> dict[str, Any]:
        """Position of the next batch (JSON-serialisable); save one per rank for exactness."""
        return {
            **json.loads(json.dumps(self._pos)),
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` on the next ``iter()``.

        Exact (bit-identical with num_workers=0) when rank, world size, workers and batch size
        match; otherwise the position is rebuilt from ``epoch`` and ``batch`` (best effort).
        """
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError):
            raise GanscaleError(
                f"data state {state!r} has no integer epoch/batch; the checkpoint's data position is damaged"
            ) from None
        if epoch < 0 or batch < 0:
            raise GanscaleError(
                f"data state epoch {epoch} batch {batch} is out of range "
                f"(batches per epoch {self.batches_per_epoch})"
            )
        same = all(
            state.get(k) == v
            for k, v in (
                ("rank", self.rank),
                ("world_size", self.world_size),
                ("num_workers", self.num_workers),
                ("batch_size", self.batch_size),
            )
        )
        raw = state.get("raw")
        if (
            same
            and isinstance(raw, list)
            and len(raw) == self._workers_eff
            and batch <= self.batches_per_epoch
        ):
            pos = {
                "epoch": epoch,
                "batch": batch,
                "pass": int(state.get("pass", 0)),
                "raw": [int(r) for r in raw],
            }
        else:  # approximate (other layout, e.g. an elastic resume): clamp, spread over workers
            batch = min(batch, self.batches_per_epoch)
            done = batch * self.batch_size
            p = 0
            if not self.resampled and self.rank_records > 0:
                p, done = divmod(done, self.rank_records)
            pos = {
                "epoch": epoch,
                "batch": batch,
                "pass": p,
                "raw": [done // self._workers_eff] * self._workers_eff,
            }
        if batch == self.batches_per_epoch:
            pos = self._fresh(epoch + 1)
        self._pos = pos
        self._close_ahead()

    def stats(self) -> dict[str, int]:
        """Counters of this process (workers report theirs with each chunk)."""
        return dict(self._stats)

    # ------------------------------------------------------------------ iteration
    def _spec(self, epoch: int, pass_: int, skips: list[int]) -> PassSpec:
        return PassSpec(
            tuple(self.info.shard_urls),
            self.rank_shards,
            self.info.attributes,
            self.image_size,
            self.seed,
            epoch,
            pass_,
            self.rank,
            self.resampled,
            self.shuffle_buffer,
            self.hflip,
            self.rotate_degrees,
            min(self.batch_size, 64),
            tuple(skips),
            self.augment_on,
        )

    def _chunks(self, epoch: int, pass_: int, skips: list[int], pool: list[WorkerPool]) -> Any:
        """An iterator of the pass's chunks, with ``close()``; ``pool``: the iterator's
        persistent workers (started here on first use)."""
        spec = self._spec(epoch, pass_, skips)
        if self.memory is not None:  # the same chunks, from memory (virtual workers, same merge)
            return memory_chunks(self.memory, spec, self._workers_eff)
        if self.persistent_workers:
            if not pool:
                pool.append(WorkerPool(spec, self.num_workers))
            return pool[0].run(spec)
        ahead = self._ahead.pop((epoch, pass_, tuple(skips)), None)
        for key in [k for k in self._ahead if k[:2] < (epoch, pass_)]:  # started, not needed
            self._ahead.pop(key).close()
        return ahead if ahead is not None else PassRun(spec, self.num_workers)

    def _start_pass(self, epoch: int, pass_: int) -> None:
        """Fork the workers of the next pass now, while this one's last batches are consumed:
        starting workers costs ~0.1 s per pass (fork, first chunks), which a small corpus read
        fast would pay every epoch (and again for a padding pass). They prefetch, then wait."""
        key = (epoch, pass_, (0,) * self._workers_eff)
        if key not in self._ahead:
            self._ahead[key] = PassRun(self._spec(epoch, pass_, list(key[2])), self.num_workers)

    def _prestart(self, epoch: int, pass_: int, batch: int, avail: int, read: int) -> None:
        """Start what follows this pass: the next epoch, and a padding pass first if this pass
        (``read`` of its ``rank_records`` so far) will not fill the epoch."""
        need = (self.batches_per_epoch - batch) * self.batch_size - avail
        if not self.resampled and self.rank_records - read < need:
            self._start_pass(epoch, pass_ + 1)
        self._start_pass(epoch + 1, 0)

    def _close_ahead(self) -> None:
        while self._ahead:
            self._ahead.popitem()[1].close()

    def __iter__(self) -> Iterator[Any]:
        if self.output == "uint8":
            yield from self.iter_uint8()
            return
        for images, labels, _keys in self.iter_with_keys():
            yield images, labels

    def iter_with_keys(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        """Float batches (as ``output="float"``) with each record's ``<shard url>#<key>``."""
        for b in self.iter_uint8():
            yield to_float(b), b.labels, b.keys

    def iter_uint8(self) -> Iterator[LoaderBatch]:
        """The batches as read and decoded: :class:`LoaderBatch` (augmentation still to apply)."""
        pos = dict(self._pos)  # a new iterator continues where the last one (or load_state_dict) left off
        epoch = pos["epoch"]
        pool: list[WorkerPool] = []  # this iterator's persistent workers (data.persistent_workers)
        try:
            while True:
                yield from self._epoch(epoch, pos, pool)
                epoch += 1
                pos = self._fresh(epoch)
        finally:
            self._close_ahead()  # workers started for an epoch that will not be read
            for workers in pool:
                workers.close()

    def _epoch(self, epoch: int, start: dict[str, Any], pool: list[WorkerPool]) -> Iterator[LoaderBatch]:
        B = self.batch_size
        batch, pass_ = start["batch"], start["pass"]
        # Pending records: [pass, chunk, offset]; consumed raw positions per (pass, worker).
        pending: list[list[Any]] = []
        avail = 0  # records in pending
        consumed: dict[int, list[int]] = {pass_: list(start["raw"])}
        self._pos = {"epoch": epoch, "batch": batch, "pass": pass_, "raw": list(start["raw"])}
        skips = list(start["raw"])
        prestart = self.num_workers > 0 and self.memory is None and not self.persistent_workers
        t0, b0 = time.perf_counter(), batch
        while batch < self.batches_per_epoch:
            got = 0
            consumed.setdefault(pass_, [0] * self._workers_eff)
            if pass_ > 0 and skips == [0] * self._workers_eff:
                self._stats["padding_passes"] += 1
            chunks = self._chunks(epoch, pass_, skips, pool)
            try:
                for ch in chunks:
                    self._stats["corrupt_skipped"] += ch["corrupt"]
                    self._stats["read_errors"] += ch["read_errors"]
                    n = len(ch["keys"])
                    if n == 0:
                        continue
                    got += n
                    pending.append([pass_, ch, 0])
                    avail += n
                    while avail >= B:
                        out = take(pending, consumed, B, self._workers_eff, self.pin_memory)
                        avail -= B
                        batch += 1
                        self._stats["records"] += B
                        if batch == self.batches_per_epoch:
                            self._pos = self._fresh(epoch + 1)
                        else:
                            first = pending[0][0] if pending else pass_
                            self._pos = {
                                "epoch": epoch,
                                "batch": batch,
                                "pass": first,
                                "raw": list(consumed.get(first, [0] * self._workers_eff)),
                            }
                        yield out
                        if batch == self.batches_per_epoch:
                            return
                        left_s = (self.batches_per_epoch - batch) * (time.perf_counter() - t0) / (batch - b0)
                        if prestart and left_s <= PRESTART_S:
                            self._prestart(epoch, pass_, batch, avail, got + sum(skips))
            finally:
                chunks.close()
            if got == 0 and avail == 0:
                raise GanscaleError(
                    f"no readable records on rank {self.rank} in {len(self.rank_shards)} shards "
                    f"(first {self.info.shard_urls[self.rank_shards[0]]}); "
                    f"stats {self.stats()}"
                )
            pass_ += 1
            skips = [0] * self._workers_eff


def build_loader(
    cfg: DataConfig,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    output: str = "float",
    info: CorpusInfo | None = None,
) -> ShardStream:
    """The stream for this rank. Checks the source now (missing shard, pipe:, backend), unless
    ``info`` gives the corpus already resolved (:func:`ganscale.data.resolve.resolve_corpus`,
    in this process); with ``data.in_memory`` checks the size and decodes the rank's shards now."""
    if info is None:
        info = resolve_corpus(cfg, image_size, progress=rank == 0).info
    return ShardStream(
        info,
        batch_size=batch_size,
        image_size=image_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=cfg.num_workers,
        shuffle_buffer=cfg.shuffle_buffer,
        hflip=cfg.hflip,
        rotate_degrees=cfg.rotate_degrees,
        resampled=cfg.resampled,
        pin_memory=cfg.pin_memory,
        augment_on=cfg.augment_on,
        output=output,
        in_memory=cfg.in_memory,
        in_memory_max_gb=cfg.in_memory_max_gb,
        persistent_workers=cfg.persistent_workers,
    )
