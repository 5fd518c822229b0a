"""What the trainer does when something goes wrong: a non-finite loss (stop, skip or roll
back, per ``faults.nan_policy``), a stop signal (checkpoint, then exit), the end of the data.

One decision per check: after every ``faults.check_every`` steps (and after the last),
:meth:`Faults.decide` sums three flags of every rank in one small all-reduce (one host read on
one process): a non-finite loss since the last check, this rank's data short of the next
check window's batches, a stop signal. Every rank gets the same :class:`Decision` (continue,
skip, roll back or stop) and :meth:`ganscale.train.trainer.Trainer.run` acts on it. A NaN on
one rank therefore makes every rank roll back or stop at the same step, and the data's end
stops every rank before a step some rank has no batch for.

:class:`DataWatch` reads one check window of batches ahead (at the decision), so no rank ever
trains on a repeated batch when its data ends: the window is there, or every rank stops.

``faults.nan_policy: skip`` must see a NaN before the update it drops, so under skip each
update asks first (:meth:`Faults.update_ok`, agreed across ranks; check_every is 1 there).
"""

from __future__ import annotations

import contextlib
import signal
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ganscale.config import FaultConfig
from ganscale.errors import GanscaleError
from ganscale.runtime import Runtime, finite

if TYPE_CHECKING:
    from ganscale.run_layout import CheckpointRef
    from ganscale.train.reporting import RunLog
    from ganscale.train.state import TrainState

T = TypeVar("T")


class NonFiniteLoss(GanscaleError):
    """A loss or G's output became NaN/inf and faults.nan_policy is stop."""


class DataEnded(GanscaleError):
    """A rank's data stream ended or failed; every rank stops at the same step."""


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
    """SIGTERM/SIGUSR1 set a flag; the next decision checkpoints and stops every rank."""

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


class DataWatch:
    """The trainer's batches from ``source``, read ahead by :meth:`fill` (one check window at
    each decision), with the position to checkpoint: that of the last batch taken, not of the
    last one read (``stream``'s ``state_dict`` is noted after each read when ``source`` is
    ``stream``; batches fed from elsewhere leave ``stream``'s own position). When this rank's
    data ends or fails, ``ended`` says why and no batch is repeated."""

    def __init__(self, source: Iterable[Any], stream: Any) -> None:
        self.source, self.stream = source, stream
        self._track = source is stream
        self._it: Iterator[Any] | None = None
        self._ahead: deque[tuple[Any, Any]] = deque()
        self._pos: dict[str, Any] | None = None
        self.read = 0
        """Batches read from the source since the (re)start."""
        self.ended: str | None = None
        """"ended: why" or "failed: the error" once this rank's data stopped (None while it flows)."""

    def __iter__(self) -> DataWatch:
        return self

    def fill(self, batches: int) -> bool:
        """Read until ``batches`` are in hand; False when the data ended or failed first."""
        while len(self._ahead) < batches and self.ended is None:
            try:
                if self._it is None:
                    if self._track and self._pos is None:
                        self._pos = self.stream.state_dict()
                    self._it = iter(self.source)
                batch = next(self._it)
            except StopIteration:
                self.ended = "ended: the data stream ended"
            except (GanscaleError, OSError) as e:  # e.g. a shard server gone (data.retry_s spent)
                self.ended = "failed: " + (str(e).strip().splitlines() or [type(e).__name__])[0]
            else:
                self.read += 1
                self._ahead.append((batch, self.stream.state_dict() if self._track else None))
        return len(self._ahead) >= batches

    def __next__(self) -> Any:
        if not self._ahead and not self.fill(1):  # a step run outside Trainer.run (bench, tests)
            raise DataEnded(f"no data: {self.ended.split(': ', 1)[1]}")
        batch, pos = self._ahead.popleft()
        if pos is not None:
            self._pos = pos
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The data position after the last batch taken (what a checkpoint saves)."""
        return dict(self._pos) if self._pos is not None else self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restart()
        self.stream.load_state_dict(state)

    def restart(self) -> None:
        """Forget what was read ahead; read the source again from its position (after a reload)."""
        self.close()
        self._it, self._pos, self.ended, self.read = None, None, None, 0
        self._ahead.clear()

    def close(self) -> None:
        # closing the batch generator shuts the DataLoader's worker processes down (otherwise
        # a worker can outlive the trainer after a signal)
        getattr(self._it, "close", lambda: None)()


class Action(Enum):
    CONTINUE = "continue"
    SKIP = "skip"
    """An update was dropped (nan_policy=skip, before it was applied); training goes on."""
    ROLLBACK = "rollback"
    STOP = "stop"


@dataclass(frozen=True)
class Decision:
    """What every rank does next (the same on every rank)."""

    action: Action
    reason: str = ""
    error: GanscaleError | None = None
    """With STOP: the error to raise (a non-finite loss under nan_policy=stop, the data's end);
    None for a stop signal (checkpoint, then exit cleanly)."""


CONTINUE = Decision(Action.CONTINUE)


class Faults:
    """The non-finite flags of the steps since the last decision (device tensors: no host sync
    until :meth:`decide`) and the decision itself (see the module docstring). Events go to
    ``report`` (the run's one metrics writer) and its tracker."""

    def __init__(
        self, cfg: FaultConfig, rt: Runtime, state: TrainState, report: RunLog, data: DataWatch
    ) -> None:
        self.cfg, self.rt, self.state, self.report, self.data = cfg, rt, state, report, data
        dev = rt.device
        # device constants: building the flags never copies from the host (no sync)
        self.zero, self.one = torch.zeros((), device=dev), torch.ones((), device=dev)
        self.nan = torch.full((), float("nan"), device=dev)
        self._rank1 = torch.tensor(float(rt.rank + 1), device=dev)
        self._bad: dict[str, torch.Tensor | None] = {"d": None, "g": None}  # since the last decision
        self._checked = state.step  # steps done at the last decision
        self.skipped = False
        """Did the current step drop an update? (the trainer resets it per step)"""
        self._skips = 0
        self._started = False  # the first decision checks that every rank has its first batches

    def reset(self) -> None:
        """Forget unchecked flags (after a rollback: those steps are undone)."""
        self._bad, self.skipped, self._skips = {"d": None, "g": None}, False, 0
        self._checked = self.state.step

    def update_ok(self, net: str, loss: torch.Tensor, step: int) -> bool:
        """Before ``net``'s optimizer step: note whether ``loss`` is finite (a device flag). Under
        nan_policy=skip the ranks agree on it now and False drops the update."""
        bad = ~finite(loss)
        if self.cfg.nan_policy != "skip":
            seen = self._bad[net]
            self._bad[net] = bad if seen is None else seen | bad
            return True
        b = bad.float()
        n_bad, rank_sum = sum_over_ranks(self.rt, torch.stack([b, b * self._rank1]))
        if not n_bad:
            return True
        msg = f"non-finite {net.upper()} loss at step {step + 1}{which_ranks(self.rt, n_bad, rank_sum)}"
        self.report.event(step + 1, "non_finite", alert=msg, net=net, policy="skip")
        self.rt.skip_step(net)  # zero grads; fp16: the loss scale falls as on an overflow
        self.state.skipped_steps += 1
        self._repair_after_skip(msg)
        self.skipped, self._skips = True, self._skips + 1
        warnings.warn(f"{msg}; update skipped (faults.nan_policy=skip)", stacklevel=3)
        return False

    def due(self, step: int) -> bool:
        """Is a decision due after ``step`` steps? (every faults.check_every steps)"""
        return step % self.cfg.check_every == 0

    def decide(self, step: int, have: bool, stop: StopSignal) -> Decision:
        """The agreed decision after ``step`` steps; ``have``: this rank holds the batches of the
        next window (:meth:`DataWatch.fill`). One all-reduce of (non-finite, data short, stop)."""
        bad_d, bad_g = self._bad["d"], self._bad["g"]
        self._bad = {"d": None, "g": None}
        first, self._checked = self._checked + 1, step
        short, signal_ = not have, stop.received is not None
        if self.rt.world_size == 1:  # nothing to agree with: at most one host read
            present = [t for t in (bad_d, bad_g) if t is not None]
            found = iter(torch.stack(present).tolist() if present else [])
            n_d = r_d = int(bad_d is not None and bool(next(found)))
            n_g = r_g = int(bad_g is not None and bool(next(found)))
            n_short, n_stop = int(short), int(signal_)
        else:
            d = bad_d.float() if bad_d is not None else self.zero
            g = bad_g.float() if bad_g is not None else self.zero
            s = self.one if short else self.zero
            flags = torch.stack(
                [d, d * self._rank1, g, g * self._rank1, s, self.one if signal_ else self.zero]
            )
            n_d, r_d, n_g, r_g, n_short, n_stop = sum_over_ranks(self.rt, flags)
        started, self._started = self._started, True
        if n_d or n_g:
            net, n, ranks = ("d", n_d, r_d) if n_d else ("g", n_g, r_g)
            when = f"step {step}" if first >= step else f"steps {first}-{step}"
            msg = f"non-finite {net.upper()} loss at {when}{which_ranks(self.rt, n, ranks)}"
            policy = self.cfg.nan_policy
            self.report.event(step, "non_finite", alert=msg, net=net, policy=policy)
            if policy == "rollback":
                return Decision(Action.ROLLBACK, msg)
            return Decision(
                Action.STOP,
                msg,
                NonFiniteLoss(
                    f"{msg}; stopped (faults.nan_policy=stop). Resume from the last checkpoint "
                    f"with a lower lr, or set faults.nan_policy=rollback"
                ),
            )
        if n_short:
            return Decision(Action.STOP, "the data ended", self._data_ended(step, started))
        if n_stop:
            return Decision(Action.STOP, "a stop signal")
        if self._skips:
            self._skips = 0
            return Decision(Action.SKIP, "an update was skipped (faults.nan_policy=skip)")
        return CONTINUE

    def _data_ended(self, step: int, started: bool) -> DataEnded:
        """The one-line error of a rank whose data could not fill the next window."""
        reasons = self.rt.all_gather_object(self.data.ended) if self.rt.world_size > 1 else [self.data.ended]
        rank, why = next((r, m) for r, m in enumerate(reasons) if m is not None)
        kind, why = why.split(": ", 1)
        where = f" on rank {rank}" if self.rt.world_size > 1 else ""
        if not started:
            return DataEnded(f"no data{where} before the first step: {why}")
        end = "; every rank stopped there" if self.rt.world_size > 1 else ""
        return DataEnded(f"the data {kind}{where} at step {step + 1}: {why}{end}")

    def ensure_clean(self, step: int) -> None:
        """Before a checkpoint written outside a decision (a direct :meth:`Trainer.save`): flags
        not yet read must be clean on every rank (agreed)."""
        bad = [t.float() for t in self._bad.values() if t is not None]
        if not bad:
            return
        self._bad = {"d": None, "g": None}
        b = torch.stack(bad).amax()
        n_bad, rank_sum = sum_over_ranks(self.rt, torch.stack([b, b * self._rank1]))
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
    reason: str,
    cfg: FaultConfig,
    state: TrainState,
    latest: CheckpointRef | None,
    restore: Callable[[Path, TrainState], None],
    set_lr: Callable[[str, float], None],
) -> CheckpointRef:
    """Reload ``latest`` into ``state`` (``restore``) and lower the lr (``set_lr(net, factor)``)
    by faults.rollback_lr_factor (again); the checkpoint rolled back to."""
    if latest is None:
        raise NonFiniteLoss(f"{reason}; no checkpoint to roll back to (faults.nan_policy=rollback)")
    if state.rollbacks >= cfg.max_rollbacks:
        raise NonFiniteLoss(
            f"{reason}; already rolled back {state.rollbacks} times (faults.max_rollbacks="
            f"{cfg.max_rollbacks}); stopped. Resume from {latest.path} with a lower lr, or raise "
            f"faults.max_rollbacks"
        )
    # counters and the lr factor carry across the reload (the checkpoint holds older ones):
    # a fault that recurs lowers the lr again instead of replaying the same steps forever
    rollbacks = state.rollbacks + 1
    lr_factor = state.lr_factor * cfg.rollback_lr_factor
    restore(latest.path, state)
    for net in ("g", "d"):  # the reloaded optimizers hold the checkpoint's lr
        set_lr(net, lr_factor / state.lr_factor)
    state.rollbacks, state.lr_factor = rollbacks, lr_factor
    warnings.warn(f"{reason}; rolled back to step {latest.step}, lr x{state.lr_factor:g}", stacklevel=3)
    return latest
