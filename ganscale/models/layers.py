"""Small pieces shared by the generators and discriminators."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAK = 0.2
"""Negative slope of every leaky ReLU in D (Radford et al.)."""


def log2_int(n: int, what: str) -> int:
    """log2 of a power of two, or a ValueError naming ``what``."""
    k = int(math.log2(n))
    if 2**k != n:
        raise ValueError(f"{what} must be a power of two, got {n}")
    return k


def norm2d(channels: int, norm: str) -> nn.Module:
    """BatchNorm2d for ``norm="batch"``, identity for ``"none"`` (WGAN-GP needs per-sample D)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")


def concat_one_hot(z: Tensor, labels: Tensor | None, num_classes: list[int]) -> Tensor:
    """ACGAN conditioning: [z, one_hot(y_1), ..., one_hot(y_A)].

    A label of -1 (unknown) becomes an all-zero one-hot, done with tensor ops so the
    forward has no data-dependent Python control flow. A float ``labels`` of shape
    [B, sum(num_classes)] is taken as the code itself (soft labels, for interpolation).
    """
    if not num_classes:
        return z
    if labels is None:
        raise ValueError(f"this generator is conditional on {num_classes} classes; pass labels [B, A]")
    if labels.is_floating_point():
        return torch.cat([z, labels.to(z.dtype)], dim=1)
    parts = [z]
    for i, n in enumerate(num_classes):
        y = labels[:, i]
        onehot = F.one_hot(y.clamp(min=0), n) * (y >= 0).unsqueeze(1)
        parts.append(onehot.to(z.dtype))
    return torch.cat(parts, dim=1)
