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
    penalty_every: int = 1
    """Lazy regularisation (StyleGAN2): the penalty runs on D updates 0, N, 2N... with its weight
    x N (same average strength, N-1 of N updates skip its double backward), added to that
    update's loss (no extra optimizer step, so Adam's betas/lr stay). 1 = every update."""
    lecam_weight: float = 0.0
    """LeCam regularisation of D (Tseng et al. 2021), for limited data: weight x (mean (D(x) -
    a_F)^2 + mean (D(G(z)) - a_R)^2) on the adversarial logits, a_R / a_F the EMAs of D's mean
    real / fake output (saved in checkpoints): the paper's two-sided form (the authors' code
    keeps the one-sided ReLU parts). 0 = off; start small (e.g. 0.1-0.3), it adds to D's loss."""
    lecam_decay: float = 0.99
    """Decay of LeCam's EMAs of D's outputs (the paper's 0.99); the first update sets them."""

    def __post_init__(self) -> None:
        check(self.penalty_weight >= 0, "loss.penalty_weight", "must be >= 0")
        check(self.class_weight >= 0, "loss.class_weight", "must be >= 0")
        check(self.penalty_every >= 1, "loss.penalty_every", f"must be >= 1, got {self.penalty_every}")
        check(self.lecam_weight >= 0, "loss.lecam_weight", f"must be >= 0 (0: off), got {self.lecam_weight}")
        check(0 <= self.lecam_decay < 1, "loss.lecam_decay", f"must be in [0, 1), got {self.lecam_decay}")


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
    shared_fake: bool | Literal["auto"] = False
    """One G forward per step (pytorch/examples' DCGAN loop): D steps on the fake detached, then
    G steps through that same forward (G is unchanged in between: equal to a second forward of
    the same z). auto: on where allowed (n_critic 1, no accumulation); true: on, refused
    elsewhere; false: a no-grad fake for D, a fresh one for G. On, G's BatchNorm running stats
    (what the eval-mode EMA generator uses) get one update per step instead of two."""

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
        check(
            self.shared_fake is not True or (self.n_critic == 1 and self.grad_accum == 1),
            "train.shared_fake",
            "true needs n_critic 1 and grad_accum 1 (one fake per G step); use auto or false",
        )


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
        check(
            self.augment_on in ("device", "loader"),
            "data.augment_on",
            f"{self.augment_on!r}: use device (warp on the training device) or loader (PIL)",
        )
        gb = self.in_memory_max_gb
        check(math.isfinite(gb) and gb > 0, "data.in_memory_max_gb", f"must be > 0 GB (e.g. 8), got {gb!r}")
        r, b, t = self.retry_s, self.retry_backoff_s, self.timeout_s
        check(math.isfinite(r) and r >= 0, "data.retry_s", f"must be >= 0 seconds (0: no retries), got {r!r}")
        check(math.isfinite(b) and b > 0, "data.retry_backoff_s", f"must be > 0 seconds (e.g. 1), got {b!r}")
        check(math.isfinite(t) and t > 0, "data.timeout_s", f"must be > 0 seconds (e.g. 30), got {t!r}")


AUGMENT_TRANSFORMS = ("translation", "cutout", "color")


@dataclass
class AugmentConfig:
    """Differentiable augmentation of every image D sees, on the device (small corpora)."""

    kind: Literal["none", "diffaugment", "ada"] = "none"
    """diffaugment (Zhao et al. 2020): the policy's transforms on every image D sees (D phase:
    reals and fakes; G phase: fakes, G's gradient flows through; the gradient penalty
    differentiates D after the augmentation w.r.t. the image before it, as stylegan2-ada does).
    ada (Karras et al. 2020): each transform per sample with probability p, adapted from r_t =
    E[sign(D(real))] toward ada_target (logged: augment/p, augment/rt). none: off."""
    policy: str = "auto"
    """Comma-separated transforms: translation (1/8 of the side, zero padding), cutout (half
    the side), color (brightness, saturation, contrast). auto: translation,cutout,color, but
    translation,cutout for a conditional model: color changes the very attribute (hair/eye
    colour) it learns (quickstart, 400 steps: D's accuracy on real hair/eyes 73%/34% with
    color, 97%/64% without). color with a conditional model warns (attributes need not be
    colours)."""
    ada_target: float = 0.6
    """ADA's target for r_t (the paper's 0.6): p rises while r_t is above it."""
    ada_interval: int = 4
    """ADA: steps between adjustments of p (the reference code's 4)."""
    ada_kimg: float = 500.0
    """ADA: thousands of real images over which p can move from 0 to 1 (the reference code's
    500); smaller adapts faster (a tiny corpus, a short run)."""

    def __post_init__(self) -> None:
        names = [n.strip() for n in self.policy.split(",") if n.strip()]
        bad = [n for n in names if n not in AUGMENT_TRANSFORMS]
        check(
            self.policy == "auto" or (names and not bad and len(set(names)) == len(names)),
            "augment.policy",
            f"{self.policy!r} is not auto or a comma-separated list of {', '.join(AUGMENT_TRANSFORMS)}",
        )
        check(0 < self.ada_target < 1, "augment.ada_target", f"must be in (0, 1), got {self.ada_target}")
        check(self.ada_interval >= 1, "augment.ada_interval", f"must be >= 1, got {self.ada_interval}")
        check(self.ada_kimg > 0, "augment.ada_kimg", f"must be > 0, e.g. 500, got {self.ada_kimg}")


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
    ] = "fid_classifier"
    """The metric that picks the best checkpoint (FID/KID: lower wins; the others: higher).
    acc_joint_uniform: joint attribute accuracy with every combination of values asked for
    equally often (a second pass over the same z, only when chosen); acc_joint: conditions
    drawn as in the corpus."""
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
