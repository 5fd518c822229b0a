"""Training-time evaluation helpers; the ``eval:`` section itself is ``ganscale.config.EvalConfig``."""

from __future__ import annotations

from typing import Any

from ganscale.config import METRIC_DIRECTIONS, EvalConfig

__all__ = ["METRIC_DIRECTIONS", "EvalConfig", "eval_config_of", "eval_interval"]


def eval_interval(cfg: Any) -> int:
    """Steps between training-time evaluations (0 = off), resolving -1 to checkpoint.every."""
    every = eval_config_of(cfg).every
    return cfg.checkpoint.every if every == -1 else every


def eval_config_of(cfg: Any) -> EvalConfig:
    """``cfg.eval`` when the run config has an eval section, else the defaults (duck-typed, so
    it keeps working once EvalConfig moves into ganscale/config.py)."""
    section = getattr(cfg, "eval", None)
    return section if section is not None and hasattr(section, "metric") else EvalConfig()
