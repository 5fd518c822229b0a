"""The config sections of what is trained: model, loss, optimiser, training step, augmentation.

One dataclass per top-level YAML section, one docstring per field; validated in
``__post_init__``. Where a run reads and writes (data, checkpoint, log, deepspeed, faults,
eval) is in :mod:`ganscale.config.run_sections`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    """Normalisation in D; auto = batch, except none for WGAN-GP (per-sample penalty), none for
    r1/dragan with train.sync_batchnorm (SyncBatchNorm has no double backward; batch is refused
    there) and none when spectral_norm covers D (SN-GAN)."""
    head: Literal["shared", "separate", "classifier", "projection"] = "separate"
    """How D judges class: shared single-layer heads; the study's separate 3-layer heads;
    a separate classifier network; or a projection discriminator (Miyato & Koyama)."""
    head_layers: int = 3
    """Layers in each separate head (the study used 3)."""
    spectral_norm: Literal["none", "d", "both"] = "none"
    """Spectral normalisation (Miyato et al. 2018) of every conv, linear and embedding weight:
    none; d: of D (SN-GAN); both: of D and G (SAGAN, BigGAN). SN-GAN's D has no BatchNorm (a BN
    after a normalised layer rescales it and undoes the Lipschitz bound), so with spectral norm
    on D, d_norm auto resolves to none (train/plan.py); set d_norm: batch to keep BN in D anyway. G keeps its
    BatchNorm. Exports hold the raw weights plus power-iteration vectors (models/spectral.py)."""
    d_minibatch_std: int = 0
    """Minibatch standard deviation in D (Karras et al. 2018, StyleGAN's ``mbstd_group_size``):
    the group size; D's features gain one more, the standard deviation of each feature over the
    sample's group of this many images (real with real, fake with fake), averaged. A G that draws
    one face per condition makes it ~0 on fakes, which D then tells from reals. 0 = off; 4 is
    StyleGAN's. A batch that does not divide into groups is one group."""
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
        check(
            self.d_minibatch_std >= 0,
            "model.d_minibatch_std",
            f"must be >= 0 (0: off), got {self.d_minibatch_std}",
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
    mode_seeking_weight: float = 0.0
    """Mode-seeking regularisation of G (MSGAN, Mao et al. 2019): the two halves of each G
    batch are drawn with the same labels (image i and i + B/2 share a condition, different z)
    and G's loss gains weight / (mean|G(z1) - G(z2)| / mean|z1 - z2| + 1e-5), so two z of one
    condition must give different images. 0 = off; MSGAN uses 1. Needs a batch of 2 or more per
    process (refused below); in an odd batch the last image has no pair."""
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
        check(
            self.mode_seeking_weight >= 0,
            "loss.mode_seeking_weight",
            f"must be >= 0 (0: off), got {self.mode_seeking_weight}",
        )
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
    """Adam implementation: auto picks fused on CUDA, plain (PyTorch's single-tensor loop, its
    CPU default) elsewhere; foreach is slower inside a small CPU step (docs/performance.md)."""

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
    """Convert BatchNorm to SyncBatchNorm (CUDA multi-process only). With a gradient penalty
    (gp, r1, dragan) D has no BatchNorm (model.d_norm auto): SyncBatchNorm has no double backward."""
    channels_last: bool = True
    """channels_last (NHWC) memory format for G, D and the real batches. On by default: measured
    1.10x (DCGAN) and 1.05x (ResNet ACGAN) faster in fp32 on CPU (docs/performance.md), and the
    layout cuDNN's bf16/fp16 tensor-core convolutions want on GPU. Under backend: deepspeed the
    weights stay NCHW (DeepSpeed flattens them; a channels_last weight fails in its
    initialize): the batches, and so every activation, are channels_last."""
    compile: bool = False
    """torch.compile G and D. Off by default: on the 2-core CPU it gained ~5% after ~1-2 minutes
    of compilation (docs/performance.md); turn it on for long GPU runs. Refused under backend:
    deepspeed (the engines are not compiled)."""
    cudnn_benchmark: bool = True
    """CUDA only: ``torch.backends.cudnn.benchmark`` (cuDNN times its convolution algorithms on
    the first step of each shape and keeps the fastest; the shapes here never change). Turn it
    off for bit-exact runs (with ``torch.use_deterministic_algorithms``)."""
    deterministic: bool = False
    """CUDA only: deterministic kernels (``torch.use_deterministic_algorithms``, warning where an
    op has none; ``CUBLAS_WORKSPACE_CONFIG=:4096:8``; cuDNN autotuning off), so a resumed run
    equals an uninterrupted one bit for bit on the GPU as on the CPU. Slower; configs/tiny.yaml
    (what the tests train) turns it on."""
    matmul_precision: Literal["highest", "high", "medium"] = "high"
    """CUDA only: ``torch.set_float32_matmul_precision`` for fp32 matmuls; high = TF32 (also for
    cuDNN's fp32 convolutions, ``cudnn.allow_tf32``), highest = full fp32 everywhere."""
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
    freeze_d: int = 0
    """FreezeD (Mo et al. 2020, StudioGAN's ``freeze_layers``): the first K blocks of D's trunk,
    from the image side, are frozen (no gradient, so no optimizer step changes their weights),
    e.g. when fine-tuning with ``--init-from``. A block is a convolution (or a resnet D's residual
    block) with the norm and activation after it; BatchNorm running statistics still follow the
    data. 0 = off; at most D's block count (refused above it, naming the maximum)."""

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
        check(self.freeze_d >= 0, "train.freeze_d", f"must be >= 0 (0: off), got {self.freeze_d}")
        check(
            self.shared_fake is not True or (self.n_critic == 1 and self.grad_accum == 1),
            "train.shared_fake",
            "true needs n_critic 1 and grad_accum 1 (one fake per G step); use auto or false",
        )


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
    colour) it learns (docs/results.md, 3 seeds of DiffAugment on 1000 images: eye accuracy
    99.6% with color vs 99.9% without, lower in 2 of 3 seeds, for FID 4.0 vs 5.2). color
    with a conditional model warns (attributes need not be colours)."""
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
