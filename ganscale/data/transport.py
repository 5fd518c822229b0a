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
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import mmap
import multiprocessing as mp
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
            self._free.append(conn.recv_bytes()[0])
        if not self._free and conn.poll(WAIT_S):
            self._free.append(conn.recv_bytes()[0])
        if not self._free:
            return None
        slot = self._free.pop()
        return slot, self.view(worker, slot)

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
        loader = DataLoader(
            ds,
            batch_size=None,
            collate_fn=_as_is,
            num_workers=num_workers,
            prefetch_factor=PREFETCH,
            persistent_workers=False,
            worker_init_fn=ignore_stop_signals,
        )
        # iter() forks the workers, which start on their first chunks. Frozen objects stay out
        # of the children's garbage collections: otherwise a worker's first collection writes
        # to every object it inherited, and each page it touches is copied (measured: ~0.1 s
        # of CPU per worker per pass, a third of a raw 20,000-image pass; 18,000 page faults).
        gc.freeze()
        try:
            self._it = iter(loader)
        finally:
            gc.unfreeze()  # the parent collects as before
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
