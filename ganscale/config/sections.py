"""The config sections: one dataclass per top-level YAML section, one docstring per field.

Each section validates its own fields in ``__post_init__``; checks that span sections live on
the root :class:`ganscale.config.schema.Config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ganscale.errors import ConfigError

# The study's latent noise: z ~ N(0, sigma) with sigma = exp(-1/pi).
STUDY_Z_SIGMA = math.exp(-1.0 / math.pi)


def check(cond: bool, key: str, msg: str) -> None:
    """Raise the one-line :class:`ConfigError` for ``key`` unless ``cond`` holds."""
    if not cond:
        raise ConfigError(f"config key {key}: {msg}")


@dataclass
class ModelConfig:
    """Generator and discriminator architecture."""

    arch: Literal["dcgan", "resnet"] = "dcgan"
    """dcgan: the study's DCGAN G/D; resnet: SRResNet-style G and residual D (MakeGirlsMoe)."""
    conditional: bool = False
    """True makes an ACGAN conditioned on every attribute of the corpus (hair, eyes)."""
    image_size: int = 64
    """Output resolution: 32, 64, 128 or 256. Networks add/drop up/down-sampling blocks."""
    z_dim: int = 100
    """Size of the latent vector z."""
    z_sigma: float = STUDY_Z_SIGMA
    """Standard deviation of z ~ N(0, sigma); the study used exp(-1/pi)."""
    g_channels: int = 64
    """Width of G (ngf): channels of its last feature map."""
    d_channels: int = 64
    """Width of D (ndf): channels of its first feature map."""
    g_blocks: int = 16
    """Residual blocks in the resnet G (SRResNet uses 16)."""
    d_norm: Literal["auto", "batch", "none"] = "auto"
    """Normalisation in D; auto = batch, except none for WGAN-GP (per-sample penalty) and none
    when spectral_norm covers D (SN-GAN)."""
    head: Literal["shared", "separate", "classifier", "projection"] = "separate"
    """How D judges class: shared single-layer heads; the study's separate 3-layer heads;
    a separate classifier network; or a projection discriminator (Miyato & Koyama)."""
    head_layers: int = 3
    """Layers in each separate head (the study used 3)."""
    spectral_norm: Literal["none", "d", "both"] = "none"
    """Spectral normalisation (Miyato et al. 2018) of every conv, linear and embedding weight:
    none; d: of D (SN-GAN); both: of D and G (SAGAN, BigGAN). SN-GAN's D has no BatchNorm (a BN
    after a normalised layer rescales it and undoes the Lipschitz bound), so with spectral norm
    on D, d_norm auto resolves to none here; set d_norm: batch to keep BN in D anyway. G keeps its
    BatchNorm. Exports hold the raw weights plus power-iteration vectors (models/spectral.py)."""
    g_condition: Literal["concat", "cbn"] = "concat"
    """How G takes the labels: concat: one-hot labels concatenated to z (the study's ACGAN);
    cbn: conditional BatchNorm, z alone enters G and per-attribute class embeddings give every
    BN in G a per-channel gain (starting at 1) and bias (starting at 0). Needs conditional: true."""

    def __post_init__(self) -> None:
        check(
            self.image_size in (16, 32, 64, 128, 256),
            "model.image_size",
            f"{self.image_size} is not supported; use 16, 32, 64, 128 or 256",
        )
        for k in ("z_dim", "g_channels", "d_channels", "head_layers"):
            check(getattr(self, k) > 0, f"model.{k}", f"must be > 0, got {getattr(self, k)}")
        check(self.g_blocks >= 0, "model.g_blocks", f"must be >= 0, got {self.g_blocks}")
        check(self.z_sigma > 0, "model.z_sigma", f"must be > 0, got {self.z_sigma}")
        check(
            self.g_condition == "concat" or self.conditional,
            "model.g_condition",
            "cbn needs model.conditional: true (an unconditional G has no labels); use concat",
        )
        if self.d_norm == "auto" and self.spectral_norm != "none":
            self.d_norm = "none"  # resolved here so Config.d_norm and the saved config agree


@dataclass
class LossConfig:
    """Adversarial loss, penalties and the ACGAN class-loss weight."""

    adversarial: Literal["bce", "hinge", "wgan"] = "bce"
    """bce: non-saturating BCE; hinge; wgan (use with penalty: gp for WGAN-GP)."""
    penalty: Literal["none", "gp", "r1", "dragan"] = "none"
    """Gradient penalty on D: WGAN-GP, R1 (real data) or DRAGAN (perturbed real)."""
    penalty_weight: float = 10.0
    """Weight of the gradient penalty."""
    class_weight: float = 1.0
    """The study's lambda: weight of the ACGAN class loss (D: real+fake, G: fake)."""
    d_fake_class: bool = True
    """D's class loss also on fakes (the original ACGAN, the study's setup). false trains D's
    classifier on real images only, so G must draw the real attribute rather than a code that
    D learns alongside it."""

    def __post_init__(self) -> None:
        check(self.penalty_weight >= 0, "loss.penalty_weight", "must be >= 0")
        check(self.class_weight >= 0, "loss.class_weight", "must be >= 0")


@dataclass
class OptimConfig:
    """Adam for both networks."""

    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    impl: Literal["auto", "foreach", "fused", "plain"] = "auto"
    """Adam implementation: auto picks fused on CUDA, foreach elsewhere."""

    def __post_init__(self) -> None:
        check(self.g_lr > 0, "optim.g_lr", f"must be > 0, got {self.g_lr}")
        check(self.d_lr > 0, "optim.d_lr", f"must be > 0, got {self.d_lr}")
        check(0 <= self.beta1 < 1, "optim.beta1", "must be in [0, 1)")
        check(0 <= self.beta2 < 1, "optim.beta2", "must be in [0, 1)")


@dataclass
class TrainConfig:
    """The loop: budget, batch, precision, EMA."""

    batch_size: int = 64
    """Images per process per micro-step (global batch = batch_size x processes x grad_accum)."""
    max_steps: int = 10000
    """Stop after this many optimizer steps of G (0 = no step limit; then max_images)."""
    max_images: int = 0
    """Stop after this many real images seen across all processes (0 = off)."""
    n_critic: int = 1
    """D steps per G step."""
    grad_accum: int = 1
    """Micro-batches accumulated into each D and each G step."""
    global_batch: int = 0
    """If > 0, the images per optimizer step across all processes; grad_accum is then derived
    as global_batch / (batch_size x processes), so a resume on another process count keeps it."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast dtype. fp16 uses one loss scaler for G and another for D."""
    ema_decay: float = 0.999
    """EMA of G's weights, used for samples and export (0 disables)."""
    sync_batchnorm: bool = False
    """Convert BatchNorm to SyncBatchNorm (CUDA multi-process only)."""
    channels_last: bool = True
    """channels_last (NHWC) memory format for G, D and the real batches. On by default: measured
    1.10x (DCGAN) and 1.05x (ResNet ACGAN) faster in fp32 on CPU (docs/performance.md), and the
    layout cuDNN's bf16/fp16 tensor-core convolutions want on GPU."""
    compile: bool = False
    """torch.compile G and D. Off by default: on the 2-core CPU it gained ~5% after ~1-2 minutes
    of compilation (docs/performance.md); turn it on for long GPU runs."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    """torch.compile mode when train.compile is on; reduce-overhead uses CUDA graphs (GPU only)."""

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "train.batch_size", f"must be > 0, got {self.batch_size}")
        check(self.max_steps >= 0, "train.max_steps", f"must be >= 0, got {self.max_steps}")
        check(self.max_images >= 0, "train.max_images", f"must be >= 0, got {self.max_images}")
        check(
            self.max_steps > 0 or self.max_images > 0,
            "train.max_steps",
            "set train.max_steps or train.max_images to a positive number",
        )
        check(self.n_critic >= 1, "train.n_critic", f"must be >= 1, got {self.n_critic}")
        check(self.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {self.grad_accum}")
        check(self.global_batch >= 0, "train.global_batch", f"must be >= 0, got {self.global_batch}")
        check(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1)")


@dataclass
class DataConfig:
    """Where images come from and how they are streamed and augmented."""

    source: Literal["synthetic", "shards"] = "synthetic"
    """synthetic: the built-in corpus, built once into cache_dir; shards: data.path."""
    path: str = ""
    """Corpus folder with dataset.json, a brace pattern, or a list of shard URLs (comma separated)."""
    cache_dir: str = ".cache/ganscale"
    """Where the built-in synthetic corpus is built and reused."""
    synthetic_n: int = 20000
    """Images in the built-in synthetic corpus."""
    synthetic_seed: int = 0
    """Seed of the built-in synthetic corpus."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
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
    """ZeRO stage 0, 1, 2 or 3."""
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
    """Read the NaN/inf flag on the host every N steps. 1: every phase of every step (the
    fault is caught at the step it happens, at the cost of one host-device sync per phase).
    N > 1: the flag accumulates on the device and is read every N steps, so the other steps
    never wait for the GPU; needs nan_policy stop or rollback (an update already applied
    cannot be skipped) and checkpoint.every a multiple of N (never checkpoint unchecked steps)."""

    def __post_init__(self) -> None:
        check(0 < self.rollback_lr_factor <= 1, "faults.rollback_lr_factor", "must be in (0, 1]")
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
