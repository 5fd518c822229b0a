"""Training-health signals: D overpowering G, and mode collapse (sample diversity falling).

:class:`HealthMonitor` is fed every logged metrics row (``d/real``, ``d/fake``) and every
fixed-z sample batch, and returns :class:`HealthWarning`\\ s. Each signal warns once per
episode: when the condition clears, it is armed again. The trainer turns a warning into a
Python warning (the log), a tracker alert and a ``{"event": "warning"}`` row in
``metrics.jsonl``. The monitor only reads numbers the loop already has; it never syncs the
device or touches the data stream.

- **D overpowering**: D's mean probability on real images pinned at ~1 and on fakes at ~0
  (BCE), or its hinge margins fully met (hinge), for ``patience_steps`` steps and at least
  ``min_rows`` logged rows in a row. G then gets almost no gradient. WGAN critics have no
  bounded output, so no such signal is computed for them.
- **Mode collapse**: the diversity of the fixed-z samples (root-mean-square difference per
  pixel between samples drawn with different z, within each row of the grid) falls below
  ``diversity_drop`` x its peak so far. Relative, not absolute: a freshly initialised small G
  already draws near-identical samples (0.0008 in the tiny config), which is not a collapse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class HealthWarning:
    signal: str
    """``d_overpowering`` or ``mode_collapse``."""
    step: int
    message: str

    def row(self) -> dict[str, Any]:
        """The ``metrics.jsonl`` record of this warning."""
        return {"step": self.step, "event": "warning", "signal": self.signal, "message": self.message}


def sample_diversity(images: torch.Tensor, group: int | None = None) -> float | None:
    """Mean RMS per-pixel distance between pairs of samples (within consecutive groups of
    ``group`` samples, e.g. one grid row of one condition); ``None`` with fewer than 2."""
    x = images.detach().float().flatten(1)
    n = x.shape[0]
    group = group if group and 2 <= group <= n else n
    if group < 2:
        return None
    rows = x[: n - n % group].reshape(-1, group, x.shape[1])
    dist = torch.cdist(rows, rows) / math.sqrt(x.shape[1])  # [R, group, group]
    pairs = group * (group - 1)  # off-diagonal entries per row
    return float(dist.sum() / (pairs * rows.shape[0]))


class HealthMonitor:
    """Watches logged rows and sample batches; returns warnings (see module docstring)."""

    def __init__(
        self,
        adversarial: str = "bce",
        patience_steps: int = 200,
        min_rows: int = 3,
        saturation: float = 0.99,
        diversity_drop: float = 0.25,
    ) -> None:
        self.adversarial = adversarial
        self.patience_steps, self.min_rows, self.saturation = patience_steps, min_rows, saturation
        self.diversity_drop = diversity_drop
        self._pinned_since: int | None = None
        self._pinned_rows = 0
        self._warned: set[str] = set()
        self.peak_diversity: tuple[float, int] | None = None  # (value, step)
        self.last_diversity: float | None = None

    def d_saturated(self, row: dict[str, Any]) -> bool | None:
        """Is D's output on real and fake pinned at its extremes in this row? None: unknown."""
        real, fake = row.get("d/real"), row.get("d/fake")
        if not isinstance(real, (int, float)) or not isinstance(fake, (int, float)):
            return None
        if self.adversarial == "bce":
            return real >= self.saturation and fake <= 1 - self.saturation
        if self.adversarial == "hinge":
            return real >= 1 and fake <= -1
        return None

    def observe_metrics(self, row: dict[str, Any]) -> list[HealthWarning]:
        step = int(row.get("step", 0))
        if not self.d_saturated(row):
            self._pinned_since, self._pinned_rows = None, 0
            self._warned.discard("d_overpowering")
            return []
        if self._pinned_since is None:
            self._pinned_since = step
        self._pinned_rows += 1
        steps = step - self._pinned_since
        if (
            steps < self.patience_steps
            or self._pinned_rows < self.min_rows
            or "d_overpowering" in self._warned
        ):
            return []
        self._warned.add("d_overpowering")
        what = f"D(real) {row['d/real']:.3f}, D(fake) {row['d/fake']:.3f}"
        return [
            HealthWarning(
                "d_overpowering",
                step,
                f"D is overpowering G: {what}, pinned since step {self._pinned_since} "
                f"({steps} steps); G gets almost no gradient. Consider a lower optim.d_lr, "
                f"a higher optim.g_lr, or a gradient penalty (loss.penalty=r1)",
            )
        ]

    def observe_samples(
        self, images: torch.Tensor, step: int, group: int | None = None
    ) -> list[HealthWarning]:
        value = sample_diversity(images, group)
        if value is None or not math.isfinite(value):
            return []
        self.last_diversity = value
        if self.peak_diversity is None or value > self.peak_diversity[0]:
            self.peak_diversity = (value, step)
        peak, peak_step = self.peak_diversity
        collapsed = value < self.diversity_drop * peak
        if not collapsed:
            self._warned.discard("mode_collapse")
            return []
        if "mode_collapse" in self._warned:
            return []
        self._warned.add("mode_collapse")
        return [
            HealthWarning(
                "mode_collapse",
                step,
                f"sample diversity fell to {value:.4f} (peak {peak:.4f} at step {peak_step}): "
                f"G may be collapsing to a few modes. Check the sample grids; consider a lower "
                f"optim.g_lr or resuming from an earlier checkpoint",
            )
        ]
