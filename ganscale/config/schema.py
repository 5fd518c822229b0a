"""The root :class:`Config`: the sections of a run and the checks across them.

A plain validated config: nothing here rewrites a value. What a run derives from it (the
batch plan, D's normalisation, the augmentation policy, the corpus) is worked out once by
:func:`ganscale.train.plan.resolve`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import ganscale.config.run_sections as run_sections
import ganscale.config.sections as sections
from ganscale.config.sections import check
from ganscale.errors import ConfigError

DOUBLE_BACKWARD = ("gp", "r1", "dragan")
"""Penalties that differentiate D's input gradient (a double backward through D)."""


@dataclass
class Config:
    """A whole run."""

    name: str = ""
    """Run name; defaults to the config file's stem."""
    seed: int = 0
    """Seed for weights, noise and data order."""
    backend: Literal["accelerate", "deepspeed"] = "accelerate"
    """Distribution backend."""
    model: sections.ModelConfig = field(default_factory=sections.ModelConfig)
    loss: sections.LossConfig = field(default_factory=sections.LossConfig)
    optim: sections.OptimConfig = field(default_factory=sections.OptimConfig)
    train: sections.TrainConfig = field(default_factory=sections.TrainConfig)
    data: run_sections.DataConfig = field(default_factory=run_sections.DataConfig)
    checkpoint: run_sections.CheckpointConfig = field(default_factory=run_sections.CheckpointConfig)
    log: run_sections.LogConfig = field(default_factory=run_sections.LogConfig)
    deepspeed: run_sections.DeepSpeedConfig = field(default_factory=run_sections.DeepSpeedConfig)
    faults: run_sections.FaultConfig = field(default_factory=run_sections.FaultConfig)
    eval: run_sections.EvalConfig = field(default_factory=run_sections.EvalConfig)
    augment: sections.AugmentConfig = field(default_factory=sections.AugmentConfig)

    def __post_init__(self) -> None:
        check(-(2**63) <= self.seed < 2**63, "seed", f"must fit in 64 bits, got {self.seed}")
        if self.loss.penalty == "gp" and self.model.d_norm == "batch":
            raise ConfigError(
                "config key model.d_norm: batch norm breaks the per-sample gradient "
                "penalty of WGAN-GP; use --set model.d_norm=auto (or none)"
            )
        if (
            self.train.sync_batchnorm
            and self.loss.penalty in DOUBLE_BACKWARD
            and self.model.d_norm == "batch"
        ):
            raise ConfigError(
                f"config key model.d_norm: batch with train.sync_batchnorm and "
                f"loss.penalty={self.loss.penalty}: SyncBatchNorm has no double backward, which the "
                f"penalty needs; use --set model.d_norm=auto (no norm in D then) or "
                f"train.sync_batchnorm=false (per-rank BatchNorm)"
            )
        if (
            self.backend == "deepspeed"
            and self.deepspeed.zero_stage in (1, 2)
            and self.train.mixed_precision == "fp16"
        ):
            raise ConfigError(
                f"config key train.mixed_precision: fp16 under DeepSpeed "
                f"ZeRO-{self.deepspeed.zero_stage} is not supported: each rank's GradScaler checks only "
                f"its own gradient partition for overflow, so ranks could disagree on skipping a step "
                f"and on the loss scale; use bf16 (no loss scale), "
                f"deepspeed.zero_stage=0 or backend=accelerate"
            )
        if self.backend == "deepspeed" and self.train.compile:
            raise ConfigError(
                "config key train.compile: not applied under backend: deepspeed (its engines wrap "
                "the modules with hooks torch.compile would trace through); use --set "
                "train.compile=false, or backend=accelerate to compile"
            )
        if self.model.head == "projection" and not self.model.conditional:
            raise ConfigError("config key model.head: projection needs model.conditional: true")
        every = self.faults.check_every
        if every > 1 and self.checkpoint.every % every:
            raise ConfigError(
                f"config key faults.check_every: checkpoint.every ({self.checkpoint.every}) must be a "
                f"multiple of it ({every}), so no checkpoint holds an unchecked step"
            )

    def grad_accum_for(self, world_size: int) -> int:
        """Micro-steps per optimizer step on ``world_size`` processes (train.global_batch wins)."""
        tc = self.train
        if not tc.global_batch:
            return tc.grad_accum
        per_step = tc.batch_size * world_size
        if tc.global_batch % per_step:
            raise ConfigError(
                f"config key train.global_batch: {tc.global_batch} is not divisible by train.batch_size x "
                f"processes = {tc.batch_size} x {world_size}; pick a multiple of {per_step}"
            )
        return tc.global_batch // per_step

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested dicts (what save_config writes and the tracker logs)."""
        return dataclasses.asdict(self)
