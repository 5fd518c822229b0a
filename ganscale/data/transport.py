"""How a pass's chunks get from the worker processes to the main one.

:class:`PassRun` starts one pass: inline with 0 workers, else a ``DataLoader`` over the pass's
:class:`~ganscale.data.worker.PassDataset`, whose processes fork at construction (so the loader
can start the next epoch before this one is consumed).

Pixels travel through :class:`SlotRing`, shared memory inherited through ``fork``: a worker
decodes straight into one of its slots and sends only the slot number (the chunk's other,
small fields are pickled as usual); the main process copies the pixels out on receipt and
hands the slot back through a pipe. Pickling 0.8 MB of pixels per chunk through the worker
queue cost the main process ~14 us per image here (pipe reads, buffer joins, unpickling) and
the worker as much again, as much as reading a raw shard. When a worker finds no free slot
within a second (the main process stopped reading), it sends its pixels pickled instead, so
nothing ever waits on the ring. Only with the ``fork`` start method (Linux's default); else
every chunk is pickled.

:class:`WorkerPool` keeps one set of workers for every pass of a stream (``fork`` only): a
``DataLoader`` with persistent workers, re-iterated per pass, each worker told the pass's
:class:`~ganscale.data.worker.PassSpec` through its slot pipe. Forking per pass cost each
worker ~12 ms before its first record and, for the padding pass that fills an epoch's last
batch, a whole prefetch of chunks for a few images.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import mmap
import multiprocessing as mp
import pickle
import weakref
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from ganscale.data.worker import PassDataset, PassSpec, ignore_stop_signals

PREFETCH = 4
"""Chunks each worker prepares ahead (DataLoader's prefetch_factor)."""
SLOTS = PREFETCH + 2
"""Shared slots per worker: the prefetched chunks, the one being filled, one in hand-back."""
WAIT_S = 1.0
"""How long a worker waits for a free slot before sending a chunk pickled."""


class SlotRing:
    """``SLOTS`` chunk-sized slots of anonymous shared memory per worker, and the pipes that
    hand them back. Made in the main process before the workers fork."""

    def __init__(self, workers: int, spec: PassSpec) -> None:
        self.shape = (spec.chunk, spec.image_size, spec.image_size, 3)
        self.slot_bytes = int(np.prod(self.shape))
        self.mm = mmap.mmap(-1, max(1, workers * SLOTS * self.slot_bytes))  # MAP_SHARED | MAP_ANONYMOUS
        self.pipes = [mp.Pipe(duplex=False) for _ in range(workers)]  # (worker's end, main's end)
        self._free: list[int] | None = None  # in a worker: its slots not in use
        self._spec: bytes | None = None  # in a worker: a pass spec read while taking slots back

    def view(self, worker: int, slot: int) -> np.ndarray:
        offset = (worker * SLOTS + slot) * self.slot_bytes
        return np.frombuffer(self.mm, np.uint8, self.slot_bytes, offset).reshape(self.shape)

    # ---- worker side
    def acquire(self, worker: int) -> tuple[int, np.ndarray] | None:
        """A free slot of ``worker`` and its array, or None after ``WAIT_S`` without one."""
        if self._free is None:
            self._free = list(range(SLOTS))
        conn = self.pipes[worker][0]
        while conn.poll():  # take back every slot handed back so far
            self._take(conn.recv_bytes())
        if not self._free and conn.poll(WAIT_S):
            self._take(conn.recv_bytes())
        if not self._free:
            return None
        slot = self._free.pop()
        return slot, self.view(worker, slot)

    def _take(self, message: bytes) -> None:
        if len(message) == 1:  # a slot handed back
            self._free.append(message[0])
        else:  # the next pass's spec (a pickle is never one byte), for next_spec
            self._spec = message

    def next_spec(self, worker: int) -> PassSpec:
        """Wait for the next pass's spec (:class:`WorkerPool`). Every slot is free again: the
        last pass's chunks were received (pixels copied out) or dropped unread, and the slots
        handed back before the spec are the last pass's."""
        conn = self.pipes[worker][0]
        message, self._spec = self._spec, None
        while message is None:
            got = conn.recv_bytes()
            if len(got) > 1:
                message = got
        self._free = list(range(SLOTS))
        return pickle.loads(message)

    # ---- main side
    def receive(self, chunk: dict[str, Any]) -> dict[str, Any]:
        """Copy a chunk's pixels out of its slot and hand the slot back."""
        slot = chunk.get("slot")
        if slot is not None:
            w, n = chunk["worker"], len(chunk["keys"])
            chunk["images"] = self.view(w, slot)[:n].copy()
            with contextlib.suppress(OSError):  # a worker that is gone needs no slot
                self.pipes[w][1].send_bytes(bytes([slot]))
        return chunk

    def send_spec(self, spec: PassSpec) -> None:
        """Tell every worker the next pass (read by :meth:`next_spec`)."""
        message = pickle.dumps(spec)
        for _, main_end in self.pipes:
            main_end.send_bytes(message)


_LIVE: weakref.WeakSet = weakref.WeakSet()
"""DataLoader iterators whose workers are running."""


@atexit.register
def _stop_workers() -> None:
    """At exit, stop the workers of streams nobody closed (a script's global iterator, say).

    Workers ignore SIGTERM (see :func:`~ganscale.data.worker.ignore_stop_signals`), so
    multiprocessing's own exit handler, which terminates daemon children with SIGTERM and then
    joins them, would wait for them forever. Registered after it, this runs first.
    """
    for it in list(_LIVE):
        it._shutdown_workers()  # what the iterator's __del__ does


def _as_is(chunk: dict[str, Any]) -> dict[str, Any]:
    """DataLoader collate for worker chunks: keep numpy arrays as they are."""
    return chunk


def _worker_loader(ds: PassDataset, num_workers: int, persistent: bool) -> DataLoader:
    """The DataLoader that runs ``ds`` in ``num_workers`` processes, chunks as they come."""
    return DataLoader(
        ds,
        batch_size=None,
        collate_fn=_as_is,
        num_workers=num_workers,
        prefetch_factor=PREFETCH,
        persistent_workers=persistent,
        worker_init_fn=ignore_stop_signals,
    )


def _freeze_around_fork(start: Any) -> Any:
    """``start()`` (which forks workers) with the parent's objects frozen: they stay out of the
    children's garbage collections. Otherwise a worker's first full collection writes to every
    object it inherited, and each page it touches is copied (measured, when that collection
    falls in a pass: ~0.1 s of CPU per worker, a fifth of a raw 20,000-image pass, and ~9,000
    more page faults). The parent collects as before."""
    gc.freeze()
    try:
        return start()
    finally:
        gc.unfreeze()


class PassRun:
    """The chunks of one pass, started at construction (see the module docstring). Iterate
    it; :meth:`close` shuts the workers down."""

    def __init__(self, spec: PassSpec, num_workers: int) -> None:
        ds = PassDataset(spec)
        self.ring: SlotRing | None = None
        if num_workers == 0:
            self._it: Any = iter(ds)
            return
        if mp.get_start_method(allow_none=False) == "fork":
            self.ring = ds.ring = SlotRing(num_workers, spec)
        loader = _worker_loader(ds, num_workers, persistent=False)
        self._it = _freeze_around_fork(lambda: iter(loader))  # forks the workers, which start
        _LIVE.add(self._it)

    def __iter__(self) -> PassRun:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            raise StopIteration
        chunk = next(self._it)
        return chunk if self.ring is None else self.ring.receive(chunk)

    def close(self) -> None:
        it, self._it = self._it, None
        if it is None:
            return
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()  # what the DataLoader iterator's __del__ does
            _LIVE.discard(it)
        else:
            it.close()
        self.ring = None  # the shared memory goes with the last reference (workers are gone)


class WorkerPool:
    """Workers kept for every pass of one stream (``fork`` only; see the module docstring).

    :meth:`run` starts a pass: the DataLoader is iterated again (the first time it forks; later
    its persistent workers are reset, dropping what they had prepared for the previous pass),
    then each worker is sent the pass's spec. One pass at a time; :meth:`close` stops them.
    """

    def __init__(self, spec: PassSpec, num_workers: int) -> None:
        ds = PassDataset(spec, persistent=True)
        self.ring = ds.ring = SlotRing(num_workers, spec)
        self.loader = _worker_loader(ds, num_workers, persistent=True)
        self._it: Any = None

    def run(self, spec: PassSpec) -> PoolPass:
        self._it = _freeze_around_fork(lambda: iter(self.loader))
        _LIVE.add(self._it)
        self.ring.send_spec(spec)  # after iter(): a spec larger than a pipe's buffer cannot block a fork
        return PoolPass(self, self._it)

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None:
            it._shutdown_workers()
            _LIVE.discard(it)


class PoolPass:
    """One pass of a :class:`WorkerPool`, iterated like a :class:`PassRun`; ``close`` leaves
    the workers running (the next pass resets them)."""

    def __init__(self, pool: WorkerPool, it: Any) -> None:
        self.pool, self._it = pool, it

    def __iter__(self) -> PoolPass:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            raise StopIteration
        return self.pool.ring.receive(next(self._it))

    def close(self) -> None:
        self._it = None


def can_keep_workers() -> bool:
    """Can workers live across passes here? (They learn each pass through inherited pipes.)"""
    return mp.get_start_method(allow_none=False) == "fork"
