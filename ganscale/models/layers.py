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


def label_code(labels: Tensor | None, num_classes: list[int], dtype: torch.dtype) -> Tensor:
    """The labels as G's code [B, sum(num_classes)]: [one_hot(y_1), ..., one_hot(y_A)].

    A label of -1 (unknown) becomes an all-zero one-hot, done with tensor ops so the
    forward has no data-dependent Python control flow. A float ``labels`` of shape
    [B, sum(num_classes)] is taken as the code itself (soft labels, for interpolation).
    """
    if labels is None:
        raise ValueError(f"this generator is conditional on {num_classes} classes; pass labels [B, A]")
    if labels.is_floating_point():
        return labels.to(dtype)
    parts = []
    for i, n in enumerate(num_classes):
        y = labels[:, i]
        onehot = F.one_hot(y.clamp(min=0), n) * (y >= 0).unsqueeze(1)
        parts.append(onehot.to(dtype))
    return torch.cat(parts, dim=1)


def concat_one_hot(z: Tensor, labels: Tensor | None, num_classes: list[int]) -> Tensor:
    """ACGAN conditioning: [z, one_hot(y_1), ..., one_hot(y_A)] (see :func:`label_code`)."""
    if not num_classes:
        return z
    return torch.cat([z, label_code(labels, num_classes, z.dtype)], dim=1)


class TakesCode(nn.Module):
    """Marker: ``forward(x, code)`` also takes G's label code [B, K] (None unless cbn)."""


class ConditionalBatchNorm2d(TakesCode):
    """BatchNorm whose per-channel gain and bias depend on the labels (de Vries et al. 2017).

    out = bn(x) * (1 + code @ gain_embed) + code @ bias_embed, with ``bn`` an ordinary affine
    BatchNorm2d. ``gain_embed``/``bias_embed`` hold one row per class of every attribute (the
    attributes' class embeddings stacked), so ``code @ gain_embed`` is the sum over attributes
    of each one's class embedding; an unknown label (-1, an all-zero one-hot) adds nothing (plain
    BN, as in a concat G) and soft codes interpolate. Any per-class gain and bias is reachable;
    at init bn's affine is (1, 0) and the embeddings are zero, so the gain is 1 and the bias 0.
    The embeddings are raw parameters, not nn.Linear/nn.Embedding: neither the DCGAN init nor
    spectral norm (whose sigma of a zero matrix is 0) touches them. bn keeps its affine because
    ONNX export needs its weight to know the channel count after the resnet G's reshape.
    """

    def __init__(self, channels: int, code_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.gain_embed = nn.Parameter(torch.zeros(code_dim, channels))
        self.bias_embed = nn.Parameter(torch.zeros(code_dim, channels))

    def reset_parameters(self) -> None:
        """Gain 1, bias 0 for every class."""
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        nn.init.zeros_(self.gain_embed)
        nn.init.zeros_(self.bias_embed)

    def forward(self, x: Tensor, code: Tensor | None) -> Tensor:
        if code is None:
            raise ValueError("conditional BatchNorm needs G's label code")
        gain = 1 + code @ self.gain_embed
        bias = code @ self.bias_embed
        return self.bn(x) * gain[:, :, None, None] + bias[:, :, None, None]


class CondSequential(nn.Sequential, TakesCode):
    """nn.Sequential that hands G's label code to the children that take it (same state keys)."""

    def forward(self, x: Tensor, code: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for m in self:
            x = m(x, code) if isinstance(m, TakesCode) else m(x)
        return x


def generator_code_dim(num_classes: list[int], condition: str) -> int:
    """Width of the code G's conditional BatchNorms read: sum(num_classes) for cbn, else 0."""
    if condition not in ("concat", "cbn"):
        raise ValueError(f"g_condition must be 'concat' or 'cbn', got {condition!r}")
    if condition == "cbn" and not num_classes:
        raise ValueError("g_condition='cbn' needs a conditional generator (class labels)")
    return sum(num_classes) if condition == "cbn" else 0


def g_norm(channels: int, code_dim: int) -> nn.Module:
    """G's normalisation: BatchNorm2d, or conditional BatchNorm when ``code_dim`` > 0 (cbn)."""
    return ConditionalBatchNorm2d(channels, code_dim) if code_dim else nn.BatchNorm2d(channels)


def minibatch_std(x: Tensor, group: int) -> Tensor:
    """[B, F] features -> [B, 1]: the standard deviation of each feature over the sample's group
    of ``group`` samples, averaged over the features (StyleGAN's minibatch standard deviation,
    Karras et al. 2018; sample n is in group n mod B/group, as there). A batch that does not
    divide into groups is one group. Fakes of a G that draws one image per condition give ~0
    where reals do not, so D can tell them apart and G is pushed to vary."""
    b = x.shape[0]
    g = min(group, b)
    if b % g:
        g = b
    y = x.float().reshape(g, b // g, -1)
    std = (y.var(0, unbiased=False) + 1e-8).sqrt().mean(1)
    return std.repeat(g)[:, None].to(x.dtype)
