"""What the trainer does when something goes wrong: a non-finite loss (stop, skip or roll
back, per ``faults.nan_policy``), a stop signal (checkpoint, then exit), the end of the data.

Every decision that changes what the loop does next is taken by all ranks together: each rank
contributes its local flags to one small all-reduce at the decision point (none on one
process), and every rank acts on the same sum. A NaN on one rank therefore makes every rank
skip, roll back or stop at the same step, instead of one rank skipping an optimizer step (and
its collectives) while the others wait in theirs.
"""

from __future__ import annotations

import contextlib
import signal
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ganscale.config import FaultConfig
from ganscale.errors import GanscaleError
from ganscale.outputs.tracking import MetricsFile, Tracker
from ganscale.runtime import Runtime, finite

if TYPE_CHECKING:
    from ganscale.train.state import Checkpointer, TrainState

SIGNAL_CHECK_EVERY = 5  # steps between all-rank checks for a stop signal (faults.check_every when > 1)
T = TypeVar("T")


class NonFiniteLoss(GanscaleError):
    """A loss or G's output became NaN/inf and faults.nan_policy is stop."""


class DataEnded(GanscaleError):
    """A rank's data stream ended or failed; every rank stops at the same step."""


class Rollback(Exception):
    """Raised by :meth:`NanGuard.check` under faults.nan_policy=rollback; the loop reloads."""


def agree(rt: Runtime, decide: Callable[[], T]) -> T:
    """Run ``decide`` on the main process and give every rank its result, or raise its error
    on every rank (a :class:`GanscaleError` as it is; one collective, none on one process)."""
    result, error = None, None
    if rt.is_main:
        try:
            result = decide()
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then raised here
            error = e
    if rt.world_size == 1:
        if error is not None:
            raise error
        return result  # type: ignore[return-value]
    told = None
    if isinstance(error, GanscaleError):
        told = (type(error), str(error))
    elif error is not None:  # a bug on rank 0: the others stop too, instead of waiting
        told = (GanscaleError, f"the main process failed ({type(error).__name__}: {error})")
    shared = rt.all_gather_object((result, told))[0]
    if error is not None:
        raise error
    if shared[1] is not None:
        kind, message = shared[1]
        try:
            error = kind(message)
        except TypeError:  # an error class with another constructor
            error = GanscaleError(message)
        raise error
    return shared[0]


def sum_over_ranks(rt: Runtime, flags: torch.Tensor) -> list[int]:
    """Integer flags summed over all ranks (one all-reduce; a host read on one process)."""
    if rt.world_size > 1:
        flags = rt.all_reduce_mean(flags) * rt.world_size
    return [round(v) for v in flags.tolist()]


def which_ranks(rt: Runtime, count: int, rank_sum: int) -> str:
    """The ranks' part of a message: ' on rank 1', ' on 2 of 4 ranks' ('' on one process)."""
    if rt.world_size == 1:
        return ""
    return f" on rank {rank_sum - 1}" if count == 1 else f" on {count} of {rt.world_size} ranks"


class StopSignal:
    """SIGTERM/SIGUSR1 set a flag; the loop checkpoints and exits at the next check."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            # ValueError off the main thread (e.g. train() called from a test's thread)
            with contextlib.suppress(ValueError):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def agreed(self, rt: Runtime, step: int, check_every: int) -> bool:
        """Has any rank received a stop signal? One process: every step (a host flag, no
        sync). Several: every SIGNAL_CHECK_EVERY steps, or every faults.check_every steps when
        that is > 1 (so no host sync falls between its checks), in one all-reduce."""
        if rt.world_size == 1:
            return self.received is not None
        if step % (check_every if check_every > 1 else SIGNAL_CHECK_EVERY):
            return False
        t = torch.tensor([1.0 if self.received is not None else 0.0], device=rt.device)
        return sum_over_ranks(rt, t)[0] > 0


class DataWatch:
    """The trainer's batch iterator over ``source``, watched. When this rank's data ends or
    fails, the watch repeats the last batch and records why (``ended``); the next agreed check
    (:meth:`NanGuard.check`, before any optimizer step) then stops every rank together. The
    source is iterated from the first ``next`` (after a resume has set its position)."""

    def __init__(self, source: Iterable[Any]) -> None:
        self.source = source
        self._it: Iterator[Any] | None = None
        self.last: Any = None
        self.ended: str | None = None
        """"ended: why" or "failed: the error" once this rank's data stopped (None while it flows)."""
        self._first: list[Any] = []

    def __iter__(self) -> DataWatch:
        return self

    def restart(self) -> None:
        """Read the source again from its current position (after a rollback's reload)."""
        self.close()
        self._it, self.last, self.ended, self._first = None, None, None, []

    def __next__(self) -> Any:
        if self._first:
            return self._first.pop()
        if self.ended is None:
            try:
                if self._it is None:
                    self._it = iter(self.source)
                self.last = next(self._it)
                return self.last
            except StopIteration:
                self.ended = "ended: the data stream ended"
            except (GanscaleError, OSError) as e:  # e.g. a shard server gone (data.retry_s spent)
                self.ended = "failed: " + (str(e).strip().splitlines() or [type(e).__name__])[0]
        if self.last is None:
            raise DataEnded(f"no data: {self.ended.split(': ', 1)[1]}")
        return self.last

    def start(self, rt: Runtime) -> None:
        """Read the first batch now and agree that every rank has one (else all stop)."""
        if self.last is None and self.ended is None:
            with contextlib.suppress(DataEnded):
                self._first.append(next(self))
        missing = self.ended.split(": ", 1)[1] if self.last is None and self.ended else None
        found = rt.all_gather_object(missing)
        bad = [(r, m) for r, m in enumerate(found) if m is not None]
        if bad:
            where = f" on rank {bad[0][0]}" if rt.world_size > 1 else ""
            raise DataEnded(f"no data{where} before the first step: {bad[0][1]}")

    def close(self) -> None:
        # closing the batch generator shuts the DataLoader's worker processes down (otherwise
        # a worker can outlive the trainer after a signal)
        getattr(self._it, "close", lambda: None)()


class NanGuard:
    """The NaN/inf policy: stop (error), skip (drop this update) or rollback (reload + lower lr).

    With faults.check_every = k > 1 the flag stays on the device and is read (and agreed) only
    every k steps (no host sync in between); a fault is then reported at the next check step.
    ``data`` is the trainer's :class:`DataWatch`: its end is agreed in the same all-reduce.
    """

    def __init__(
        self,
        cfg: FaultConfig,
        rt: Runtime,
        state: TrainState,
        tracker: Tracker,
        metrics: MetricsFile,
        data: DataWatch | None = None,
    ) -> None:
        self.cfg, self.rt, self.state, self.tracker, self.metrics = cfg, rt, state, tracker, metrics
        self.data = data
        dev = rt.device
        # device constants: building the flags never copies from the host (no sync)
        self.zero, self.one = torch.zeros((), device=dev), torch.ones((), device=dev)
        self.nan = torch.full((), float("nan"), device=dev)
        self._rank1 = torch.tensor(float(rt.rank + 1), device=dev)
        self._pending: torch.Tensor | None = None  # "non-finite since the last check", not yet read
        self._pending_d: torch.Tensor | None = None  # D's share of it, while D's check waits for G's
        self.skipped = False
        """Did the current step drop an update? (the trainer reads and resets it per step)"""

    def reset(self) -> None:
        """Forget unchecked flags (after a rollback: those steps are undone)."""
        self._pending, self._pending_d, self.skipped = None, None, False

    def check(self, loss: torch.Tensor, net: str, step: int) -> bool:
        """True: apply the update. False: it was dropped (skip). Raises under stop/rollback and
        when the data ended; the same on every rank."""
        every = self.cfg.check_every
        bad = ~finite(loss)
        self._pending = bad if self._pending is None else self._pending | bad
        if net == "d" and every == 1 and self.cfg.nan_policy != "skip":
            # stop and rollback discard D's update anyway: its flag is read with G's (one host
            # read per step, not one per phase); skip must see it before D's update
            self._pending_d = bad if self._pending_d is None else self._pending_d | bad
            return True
        if every > 1 and (step + 1) % every:
            return True
        pending_d, self._pending_d = self._pending_d, None
        n_bad, rank_sum = self._agree(step)
        if not n_bad:
            return True
        who = net  # D's fault when its deferred flag is set on a rank (read, and agreed, only now:
        if pending_d is not None:  # D's bad update may have spread to every rank's G loss since)
            d = pending_d.float()
            n_d, sum_d = sum_over_ranks(self.rt, torch.stack([d, d * self._rank1]))
            if n_d:
                who, n_bad, rank_sum = "d", n_d, sum_d
        policy = self.cfg.nan_policy
        when = f"step {step + 1}" if every == 1 else f"steps {step + 2 - every}-{step + 1}"
        msg = f"non-finite {who.upper()} loss at {when}{which_ranks(self.rt, n_bad, rank_sum)}"
        self.tracker.alert("non_finite", msg)
        self.metrics.write({"step": step + 1, "event": "non_finite", "net": who, "policy": policy})
        if policy == "stop":
            raise NonFiniteLoss(
                f"{msg}; stopped (faults.nan_policy=stop). Resume from the last checkpoint "
                f"with a lower lr, or set faults.nan_policy=rollback"
            )
        self.rt.skip_step(net)  # zero grads; fp16: the loss scale falls as on an overflow
        if policy == "rollback":
            raise Rollback(msg)
        self.state.skipped_steps += 1
        self._repair_after_skip(msg)
        self.skipped = True
        warnings.warn(f"{msg}; update skipped (faults.nan_policy=skip)", stacklevel=3)
        return False

    def _agree(self, step: int) -> tuple[int, int]:
        """Read the pending flags of every rank (one all-reduce): (ranks with a non-finite loss,
        their rank sum + count). Raises :class:`DataEnded` when a rank's data ended."""
        pending, self._pending = self._pending, None
        ended = self.data is not None and self.data.ended is not None
        if self.rt.world_size == 1:  # nothing to agree with: one host read, no stacking
            n_bad = int(bool(pending)) if pending is not None else 0
            rank_sum, n_ended = n_bad, int(ended)
        else:
            bad = pending.float() if pending is not None else self.zero
            data = self.one if ended else self.zero
            n_bad, rank_sum, n_ended = sum_over_ranks(self.rt, torch.stack([bad, bad * self._rank1, data]))
        if n_ended:
            reasons = self.rt.all_gather_object(self.data.ended if self.data is not None else None)
            rank, why = next((r, m) for r, m in enumerate(reasons) if m is not None)
            kind, why = why.split(": ", 1)
            several = self.rt.world_size > 1
            where, end = (f" on rank {rank}", "; every rank stopped there") if several else ("", "")
            raise DataEnded(f"the data {kind}{where} at step {step + 1}: {why}{end}")
        return n_bad, rank_sum

    def ensure_clean(self, step: int) -> None:
        """Before a checkpoint: flags not yet read (faults.check_every > 1) must be clean on
        every rank (agreed)."""
        if self._pending is None:
            return
        n_bad, rank_sum = self._agree(step - 1)
        if n_bad:
            raise NonFiniteLoss(
                f"non-finite loss in the steps before step {step}{which_ranks(self.rt, n_bad, rank_sum)}; "
                f"checkpoint not written"
            )

    def _repair_after_skip(self, msg: str) -> None:
        """A skipped update must leave no NaN behind. The non-finite forward already updated
        BatchNorm running statistics (found NaN in D's by the NaN drill): reset those. A
        non-finite weight cannot be skipped past (every later step would be skipped too);
        whether any rank holds one is agreed."""
        bad = None
        for net in ("g", "d"):
            module = self.rt.module(net)
            name = next((n for n, p in module.named_parameters() if not bool(finite(p))), None)
            if name is not None and bad is None:
                bad = f"{net.upper()} weights are non-finite ({name})"
            for m in module.modules():
                stats = [getattr(m, "running_mean", None), getattr(m, "running_var", None)]
                stats = [t for t in stats if isinstance(t, torch.Tensor)]
                if stats and not bool(finite(*stats)):
                    m.reset_running_stats()
        found = self.rt.all_gather_object(bad) if self.rt.world_size > 1 else [bad]
        bad = next((b for b in found if b is not None), None)
        if bad is not None:
            raise NonFiniteLoss(
                f"{msg}; {bad}, skipping cannot recover; "
                f"resume from the last checkpoint or set faults.nan_policy=rollback"
            )


def roll_back(
    reason: str, cfg: FaultConfig, state: TrainState, checkpointer: Checkpointer, metrics: MetricsFile
) -> None:
    """Reload the latest checkpoint and lower the lr by faults.rollback_lr_factor (again)."""
    ref = checkpointer.latest()  # rank 0's view, on every rank
    if ref is None:
        raise NonFiniteLoss(f"{reason}; no checkpoint to roll back to (faults.nan_policy=rollback)")
    if state.rollbacks >= cfg.max_rollbacks:
        raise NonFiniteLoss(
            f"{reason}; already rolled back {state.rollbacks} times (faults.max_rollbacks="
            f"{cfg.max_rollbacks}); stopped. Resume from {ref.path} with a lower lr, or raise "
            f"faults.max_rollbacks"
        )
    # counters and the lr factor carry across the reload (the checkpoint holds older ones):
    # a fault that recurs lowers the lr again instead of replaying the same steps forever
    rollbacks = state.rollbacks + 1
    lr_factor = state.lr_factor * cfg.rollback_lr_factor
    checkpointer.restore(ref.path, state)
    for net in ("g", "d"):  # the reloaded optimizers hold the checkpoint's lr
        checkpointer.rt.set_lr(net, lr_factor / state.lr_factor)
    state.rollbacks, state.lr_factor = rollbacks, lr_factor
    warnings.warn(f"{reason}; rolled back to step {ref.step}, lr x{state.lr_factor:g}", stacklevel=3)
    drop = getattr(metrics, "drop_after", None)
    if drop is not None:  # the replayed steps are logged once: the abandoned rows go, events stay
        drop(ref.step, keep_events=True)
    metrics.write({"step": ref.step, "event": "rollback", "reason": reason})
