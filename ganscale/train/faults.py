"""What the trainer does when something goes wrong: a non-finite loss (stop, skip or roll
back, per ``faults.nan_policy``) and a stop signal (checkpoint, then exit)."""

from __future__ import annotations

import contextlib
import signal
import warnings
from typing import TYPE_CHECKING, Any

import torch

from ganscale.config import FaultConfig
from ganscale.errors import GanscaleError
from ganscale.outputs.tracking import MetricsFile, Tracker
from ganscale.runtime import Runtime, finite
from ganscale.train import checkpoint as ckpt

if TYPE_CHECKING:
    from ganscale.train.state import Checkpointer, TrainState

SIGNAL_CHECK_EVERY = 5  # steps between all-rank checks for a stop signal


class NonFiniteLoss(GanscaleError):
    """A loss or G's output became NaN/inf and faults.nan_policy is stop."""


class Rollback(Exception):
    """Raised by :meth:`NanGuard.check` under faults.nan_policy=rollback; the loop reloads."""


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


class NanGuard:
    """The NaN/inf policy: stop (error), skip (drop this update) or rollback (reload + lower lr).

    With faults.check_every = k > 1 the flag stays on the device and is read only every k
    steps (no host sync in between); a fault is then reported at the next check step.
    """

    def __init__(
        self, cfg: FaultConfig, rt: Runtime, state: TrainState, tracker: Tracker, metrics: MetricsFile
    ) -> None:
        self.cfg, self.rt, self.state, self.tracker, self.metrics = cfg, rt, state, tracker, metrics
        self._unchecked: torch.Tensor | None = None  # finite flag not yet read

    def check(self, loss: torch.Tensor, net: str, step: int) -> bool:
        """True: apply the update. False: it was dropped (skip). Raises under stop/rollback."""
        every = self.cfg.check_every
        ok = finite(loss) if self._unchecked is None else self._unchecked & finite(loss)
        self._unchecked = ok if every > 1 and (step + 1) % every else None
        if self._unchecked is not None or bool(ok):
            return True
        policy = self.cfg.nan_policy
        when = f"step {step + 1}" if every == 1 else f"steps {step + 2 - every}-{step + 1}"
        msg = f"non-finite {net.upper()} loss at {when}"
        self.tracker.alert("non_finite", msg)
        self.metrics.write({"step": step + 1, "event": "non_finite", "net": net, "policy": policy})
        if policy == "stop":
            raise NonFiniteLoss(
                f"{msg}; stopped (faults.nan_policy=stop). Resume from the last checkpoint "
                f"with a lower lr, or set faults.nan_policy=rollback"
            )
        self.rt.opt[net].zero_grad(set_to_none=True)
        if policy == "rollback":
            raise Rollback(msg)
        self.state.skipped_steps += 1
        self._repair_after_skip(msg)
        warnings.warn(f"{msg}; update skipped (faults.nan_policy=skip)", stacklevel=3)
        return False

    def ensure_clean(self, step: int) -> None:
        """Before a checkpoint: a flag not yet read (faults.check_every > 1) must be finite."""
        if self._unchecked is not None and not bool(self._unchecked):
            raise NonFiniteLoss(f"non-finite loss in the steps before step {step}; checkpoint not written")

    def _repair_after_skip(self, msg: str) -> None:
        """A skipped update must leave no NaN behind. The non-finite forward already updated
        BatchNorm running statistics (found NaN in D's by the NaN drill): reset those. A
        non-finite weight cannot be skipped past (every later step would be skipped too)."""
        for net in ("g", "d"):
            module = self.rt.module(net)
            bad = next((n for n, p in module.named_parameters() if not bool(finite(p))), None)
            if bad is not None:
                raise NonFiniteLoss(
                    f"{msg}; {net.upper()} weights are non-finite ({bad}), skipping cannot recover; "
                    f"resume from the last checkpoint or set faults.nan_policy=rollback"
                )
            for m in module.modules():
                stats = [getattr(m, "running_mean", None), getattr(m, "running_var", None)]
                stats = [t for t in stats if isinstance(t, torch.Tensor)]
                if stats and not bool(finite(*stats)):
                    m.reset_running_stats()


def roll_back(
    reason: str, cfg: FaultConfig, state: TrainState, checkpointer: Checkpointer, metrics: MetricsFile
) -> None:
    """Reload the latest checkpoint and lower the lr by faults.rollback_lr_factor (again)."""
    ref = ckpt.latest_checkpoint(checkpointer.run_dir)
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
    metrics.write({"step": ref.step, "event": "rollback", "reason": reason})
