"""Build G and D from a :class:`ModelConfig`: DCGAN weight init, then spectral norm if asked."""

from __future__ import annotations

from torch import nn

from ganscale.config import ModelConfig
from ganscale.models.dcgan import DCGANGenerator, DCGANTrunk
from ganscale.models.heads import Discriminator
from ganscale.models.layers import ConditionalBatchNorm2d
from ganscale.models.resnet import ResNetGenerator, ResNetTrunk
from ganscale.models.spectral import add_spectral_norm

CLASSIFIER_WIDTH_DIVISOR = 2
"""The ``classifier`` head's CNN is a DCGAN trunk at d_channels / this (at least 8)."""


def init_dcgan_weights(module: nn.Module) -> None:
    """Radford et al.: conv/linear/embedding weights ~ N(0, 0.02), BN weights ~ N(1, 0.02), biases 0.

    Conditional BatchNorm keeps its own init (gain 1, bias 0: plain BatchNorm at the start).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    for m in module.modules():  # after the loop above, which also visits their inner BatchNorm
        if isinstance(m, ConditionalBatchNorm2d):
            m.reset_parameters()


def _classes(cfg: ModelConfig, num_classes: list[int]) -> list[int]:
    return list(num_classes) if cfg.conditional else []


def build_generator(cfg: ModelConfig, num_classes: list[int]) -> nn.Module:
    """G(z [B, z_dim], labels [B, A] | None) -> images [B, 3, S, S] in [-1, 1]."""
    classes = _classes(cfg, num_classes)
    if cfg.arch == "dcgan":
        g: nn.Module = DCGANGenerator(cfg.z_dim, classes, cfg.image_size, cfg.g_channels, cfg.g_condition)
    elif cfg.arch == "resnet":
        g = ResNetGenerator(cfg.z_dim, classes, cfg.image_size, cfg.g_channels, cfg.g_blocks, cfg.g_condition)
    else:
        raise ValueError(f"model.arch must be 'dcgan' or 'resnet', got {cfg.arch!r}")
    init_dcgan_weights(g)
    if cfg.spectral_norm == "both":
        add_spectral_norm(g)
    return g


def _trunk(arch: str, image_size: int, channels: int, norm: str) -> nn.Module:
    if arch == "dcgan":
        return DCGANTrunk(image_size, channels, norm)
    if arch == "resnet":
        return ResNetTrunk(image_size, channels, norm)
    raise ValueError(f"model.arch must be 'dcgan' or 'resnet', got {arch!r}")


def build_discriminator(cfg: ModelConfig, num_classes: list[int], norm: str) -> nn.Module:
    """D(x [B, 3, S, S], labels [B, A] | None) -> (adv logits [B], [class logits [B, n_a]])."""
    if norm not in ("batch", "none"):
        raise ValueError(f"norm must be 'batch' or 'none' (resolve 'auto' first), got {norm!r}")
    classes = _classes(cfg, num_classes)
    classifier = None
    if classes and cfg.head == "classifier":
        width = max(cfg.d_channels // CLASSIFIER_WIDTH_DIVISOR, 8)
        classifier = DCGANTrunk(cfg.image_size, width, norm)
    d = Discriminator(
        _trunk(cfg.arch, cfg.image_size, cfg.d_channels, norm),
        classes,
        head=cfg.head,
        head_layers=cfg.head_layers,
        minibatch_std_group=cfg.d_minibatch_std,
        classifier=classifier,
    )
    init_dcgan_weights(d)
    if cfg.spectral_norm in ("d", "both"):
        add_spectral_norm(d)
    return d


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
