"""The ``eval:`` section of a run config (proposed; to move into ganscale/config.py).

Kept here until the lead wires it: ``Config.eval: EvalConfig = field(default_factory=EvalConfig)``.
Until then :func:`eval_config_of` reads it from a config (or gives the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ganscale.errors import ConfigError

METRIC_DIRECTIONS: dict[str, str] = {
    "fid_classifier": "min",
    "kid_classifier": "min",
    "acc_joint": "max",
    "precision_classifier": "max",
    "recall_classifier": "max",
    "fid_inception": "min",
    "kid_inception": "min",
}
"""Metrics that can choose the ``best`` checkpoint, and whether lower or higher is better."""


@dataclass
class EvalConfig:
    """Quality metrics during training (attribute accuracy, FID/KID, precision/recall)."""

    every: int = -1
    """Evaluate the EMA generator every N steps, across all ranks: -1 = with every checkpoint
    (checkpoint.every, and at the end), 0 = off. On by default so ``best`` exists: ACGAN runs
    often peak and then collapse."""
    n: int = 1000
    """Generated images per evaluation (split over ranks); real statistics use as many."""
    metric: Literal[
        "fid_classifier",
        "kid_classifier",
        "acc_joint",
        "precision_classifier",
        "recall_classifier",
        "fid_inception",
        "kid_inception",
    ] = "fid_classifier"
    """The metric that picks the best checkpoint (FID/KID: lower wins; the others: higher)."""
    keep_best: bool = True
    """Export the best generator so far to RUN/best/ (`ganscale sample RUN` then uses it)."""
    inception: str = ""
    """Local InceptionV3 TorchScript file for Inception FID/KID (else $GANSCALE_INCEPTION);
    never downloaded."""

    def __post_init__(self) -> None:
        if self.every < -1:
            raise ConfigError(
                f"config key eval.every: must be -1 (with checkpoints), 0 (off) or > 0, got {self.every}"
            )
        if self.n < 8:
            raise ConfigError(f"config key eval.n: must be >= 8, got {self.n}")
        if self.metric not in METRIC_DIRECTIONS:
            raise ConfigError(
                f"config key eval.metric: {self.metric!r} is not one of {', '.join(METRIC_DIRECTIONS)}"
            )


def eval_interval(cfg: Any) -> int:
    """Steps between training-time evaluations (0 = off), resolving -1 to checkpoint.every."""
    every = eval_config_of(cfg).every
    return cfg.checkpoint.every if every == -1 else every


def eval_config_of(cfg: Any) -> EvalConfig:
    """``cfg.eval`` when the run config has an eval section, else the defaults (duck-typed, so
    it keeps working once EvalConfig moves into ganscale/config.py)."""
    section = getattr(cfg, "eval", None)
    return section if section is not None and hasattr(section, "metric") else EvalConfig()
