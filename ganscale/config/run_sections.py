"""The config sections of where a run reads and writes, and how it survives: data,
checkpoint, log, deepspeed, faults, eval (one dataclass per top-level YAML section, one
docstring per field; validated in ``__post_init__``). What is trained is in
:mod:`ganscale.config.sections`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ganscale.config.sections import check
from ganscale.errors import ConfigError


@dataclass
class DataConfig:
    """Where images come from and how they are streamed and augmented."""

    source: Literal["synthetic", "shards"] = "synthetic"
    """synthetic: the built-in corpus, built once into cache_dir; shards: data.path."""
    path: str = ""
    """Corpus folder with dataset.json, a brace pattern, or a list of shard URLs (comma separated);
    also a dataset.json path or http(s) URL (its shards are resolved relative to it)."""
    cache_dir: str = ".cache/ganscale"
    """Where the built-in synthetic corpus is built and reused."""
    synthetic_n: int = 20000
    """Images in the built-in synthetic corpus."""
    synthetic_seed: int = 0
    """Seed of the built-in synthetic corpus."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    persistent_workers: bool = True
    """Keep the workers for every pass (forked once per stream, told each pass's plan through a
    pipe) instead of forking new ones per epoch. Needs the fork start method (Linux); elsewhere
    workers are started per pass, as with false."""
    shuffle_buffer: int = 1000
    """Samples in the in-memory shuffle buffer (0 disables sample shuffling)."""
    hflip: bool = True
    """Random horizontal flips (the study's augmentation)."""
    rotate_degrees: float = 5.0
    """Random rotation in [-d, d] degrees (0 disables)."""
    resampled: bool = False
    """Sample shards with replacement forever; needed when shards < ranks x workers."""
    allow_pipe: bool = False
    """Allow pipe: URLs (they run a shell command)."""
    pin_memory: bool = True
    """Pin host memory for non-blocking copies to the GPU."""
    augment_on: Literal["device", "loader"] = "device"
    """Where the flip and rotation are applied. device: the loader only reads and decodes, and
    the batch is warped on the training device (one grid_sample per batch); loader: PIL in
    the loader workers (the former path). Same per-record parameters either way."""
    in_memory: bool = False
    """Decode the rank's shards once into memory and serve every epoch from there (small
    corpora): same order, augmentation and resumable position as streaming."""
    in_memory_max_gb: float = 8.0
    """With in_memory: the most GB of decoded images one rank may hold; larger is refused."""
    retry_s: float = 60.0
    """http(s) shards: seconds a read keeps retrying (with backoff) once the server stops
    answering, before the run stops with one line naming the URL (the last checkpoint stays
    intact; with the server back, --resume latest finishes the epoch, each record once).
    0 = stop at the first failure. The default is about what WebDataset's curl reader (replaced
    for http/https) waited. Checks at start never retry; local files are never retried."""
    retry_backoff_s: float = 1.0
    """http(s) shards: first wait between retries; it doubles after each failure (at most 10 s)."""
    timeout_s: float = 30.0
    """http(s) shards: seconds a connect or read may stall before the attempt counts as failed."""

    def __post_init__(self) -> None:
        if self.source == "synthetic":
            check(
                not self.path,
                "data.path",
                f"is set ({self.path!r}) but data.source is synthetic; add --set data.source=shards",
            )
        else:
            check(bool(self.path), "data.path", "is empty but data.source is shards; set data.path")
        check(self.synthetic_n > 0, "data.synthetic_n", "must be > 0")
        check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        check(self.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
        check(0 <= self.rotate_degrees <= 180, "data.rotate_degrees", "must be in [0, 180]")
        gb = self.in_memory_max_gb
        check(math.isfinite(gb) and gb > 0, "data.in_memory_max_gb", f"must be > 0 GB (e.g. 8), got {gb!r}")
        r, b, t = self.retry_s, self.retry_backoff_s, self.timeout_s
        check(math.isfinite(r) and r >= 0, "data.retry_s", f"must be >= 0 seconds (0: no retries), got {r!r}")
        check(math.isfinite(b) and b > 0, "data.retry_backoff_s", f"must be > 0 seconds (e.g. 1), got {b!r}")
        check(math.isfinite(t) and t > 0, "data.timeout_s", f"must be > 0 seconds (e.g. 30), got {t!r}")


@dataclass
class CheckpointConfig:
    """Resumable checkpoints under RUN/checkpoints/."""

    every: int = 1000
    """Save every N steps (and always at the end). 0 = only at the end."""
    keep: int = 3
    """Keep the last K checkpoints."""
    on_disk_full: Literal["stop", "continue"] = "stop"
    """When a save fails for lack of space: stop cleanly, or warn and keep training."""

    def __post_init__(self) -> None:
        check(self.every >= 0, "checkpoint.every", f"must be >= 0, got {self.every}")
        check(self.keep >= 1, "checkpoint.keep", f"must be >= 1, got {self.keep}")


@dataclass
class LogConfig:
    """Metrics, sample grids and the experiment tracker."""

    tracker: Literal["wandb", "tensorboard", "none"] = "wandb"
    """wandb runs offline unless an API key is configured."""
    project: str = "ganscale"
    """Tracker project name."""
    every: int = 50
    """Log scalars every N steps to the tracker and RUN/metrics.jsonl."""
    sample_every: int = 500
    """Write a fixed-z sample grid every N steps (0 = only at the end)."""
    samples_per_condition: int = 8
    """Columns of the sample grid (one row per condition)."""
    progress: bool = True
    """Show a progress bar on the main process."""

    def __post_init__(self) -> None:
        check(self.every >= 1, "log.every", f"must be >= 1, got {self.every}")
        check(self.sample_every >= 0, "log.sample_every", "must be >= 0")
        check(self.samples_per_condition >= 1, "log.samples_per_condition", "must be >= 1")


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO settings (used when backend: deepspeed)."""

    zero_stage: int = 2
    """ZeRO stage 0, 1, 2 or 3 (3 refused). fp16 needs stage 0: under ZeRO-1/2 each rank's
    GradScaler would check only its own gradient partition (refused; bf16 works on every stage)."""
    config: str = ""
    """A DeepSpeed JSON merged over the config ganscale builds (e.g. overlap_comm, bucket
    sizes). Keys ganscale owns (batch sizes, accumulation, stage, precision) may only repeat
    the ganscale value or say "auto"; anything else is an error."""

    def __post_init__(self) -> None:
        check(self.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage", "must be 0, 1, 2 or 3")
        check(
            not self.config or Path(self.config).is_file(),
            "deepspeed.config",
            f"no such file {self.config!r}; give a DeepSpeed JSON (e.g. launch/deepspeed/zero2.json)",
        )
        # ZeRO-3 partitions G's weights away from the EMA copy; until the EMA is updated from
        # gathered weights, stage 3 is refused rather than training a wrong EMA.
        check(
            self.zero_stage != 3,
            "deepspeed.zero_stage",
            "3 is not supported yet (the EMA of G needs gathered weights); use --set deepspeed.zero_stage=2",
        )


@dataclass
class FaultConfig:
    """What to do when training goes wrong."""

    nan_policy: Literal["skip", "rollback", "stop"] = "stop"
    """On a NaN/inf loss or output: skip the step, reload the last checkpoint with a lower
    learning rate, or stop with an error."""
    rollback_lr_factor: float = 0.5
    """Learning-rate factor applied on each rollback."""
    max_rollbacks: int = 3
    """Rollbacks allowed in a run; one more non-finite step then stops with an error."""
    check_every: int = 1
    """Steps between the trainer's decisions (one agreement of every rank on: a NaN/inf loss,
    the data's end, a stop signal; the next N steps' batches are read then). 1: after every step
    (the fault is caught at the step it happens, at the cost of one host-device sync per step;
    under nan_policy skip each update also asks before it is applied). N > 1: the flags
    accumulate on the device and are read every N steps, so the other steps never wait for the
    GPU; needs nan_policy stop or rollback (an update already applied cannot be skipped) and
    checkpoint.every a multiple of N (never checkpoint unchecked steps)."""
    collective_timeout_s: float = 600.0
    """Seconds a process waits in one collective (gradient all-reduce, barrier, the process
    group's rendezvous) before it fails: a rank that died or froze then ends the others with
    an error instead of hanging them. The process group's timeout on both backends (gloo and
    NCCL honour it); 600 is torch's NCCL default (its gloo default is 1800). Keep it above the
    longest wait of one rank for another (rank 0 writing a checkpoint or a sample grid)."""

    def __post_init__(self) -> None:
        check(0 < self.rollback_lr_factor <= 1, "faults.rollback_lr_factor", "must be in (0, 1]")
        check(
            1 <= self.collective_timeout_s < float("inf"),
            "faults.collective_timeout_s",
            f"must be a finite number of seconds >= 1, got {self.collective_timeout_s}",
        )
        check(self.max_rollbacks >= 0, "faults.max_rollbacks", f"must be >= 0, got {self.max_rollbacks}")
        check(self.check_every >= 1, "faults.check_every", f"must be >= 1, got {self.check_every}")
        check(
            self.check_every == 1 or self.nan_policy != "skip",
            "faults.check_every",
            "> 1 needs faults.nan_policy stop or rollback (skip must see the NaN before the update)",
        )


METRIC_DIRECTIONS: dict[str, str] = {
    "fid_classifier": "min",
    "kid_classifier": "min",
    "acc_joint": "max",
    "acc_joint_uniform": "max",
    "precision_classifier": "max",
    "recall_classifier": "max",
    "fid_inception": "min",
    "kid_inception": "min",
    "fid_div": "min",
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
        "acc_joint_uniform",
        "precision_classifier",
        "recall_classifier",
        "fid_inception",
        "kid_inception",
        "fid_div",
    ] = "fid_classifier"
    """The metric that picks the best checkpoint (FID/KID: lower wins; the others: higher).
    acc_joint_uniform: joint attribute accuracy with every combination of values asked for
    equally often (a second pass over the same z, only when chosen); acc_joint: conditions
    drawn as in the corpus. fid_div: classifier FID divided by the within-condition diversity
    clamped to [0.001, 1] (``ganscale.evaluation.diversity``), so a generator that draws one
    image per condition cannot win however well its colours match (lower wins; needs eval.n
    large enough that conditions are drawn at least twice)."""
    keep_best: bool = True
    """Export the best generator so far to RUN/best/ (`ganscale sample RUN` then uses it)."""
    inception: str = ""
    """Inception FID/KID: a local InceptionV3 TorchScript file, or ``download`` for the standard
    inception-2015-12-05.pt fetched once into $GANSCALE_CACHE_DIR (default ~/.cache/ganscale)
    and checked against its pinned sha256 (else $GANSCALE_INCEPTION; "" and unset: none)."""

    def __post_init__(self) -> None:
        if self.every < -1:
            raise ConfigError(
                f"config key eval.every: must be -1 (with checkpoints), 0 (off) or > 0, got {self.every}"
            )
        if self.n < 8:
            raise ConfigError(f"config key eval.n: must be >= 8, got {self.n}")
