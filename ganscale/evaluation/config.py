"""Training-time evaluation helpers; the ``eval:`` section itself is ``ganscale.config.EvalConfig``."""

from __future__ import annotations

from ganscale.config import METRIC_DIRECTIONS, Config, EvalConfig

__all__ = ["METRIC_DIRECTIONS", "EvalConfig", "eval_interval"]


def eval_interval(cfg: Config) -> int:
    """Steps between training-time evaluations (0 = off), resolving -1 to checkpoint.every."""
    every = cfg.eval.every
    return cfg.checkpoint.every if every == -1 else every
