"""The DCGAN of Radford et al. (2016): transposed-conv G, strided-conv D trunk.

G: z (+ one-hot labels) -> ConvT 4x4 -> [ConvT stride 2 + BN + ReLU]* -> ConvT to RGB -> tanh
(with model.g_condition: cbn, z alone, and each BN conditional on the labels).
D trunk: [Conv 4x4 stride 2 + BN (not on the first layer) + LeakyReLU 0.2]* down to 4x4,
flattened; the heads (``heads.py``) turn these features into logits. A linear adversarial
head on the flattened 4x4 map is exactly DCGAN's final 4x4 valid conv.

Each resolution step doubles/halves the width, capped at ``MAX_MULT`` x the base width (the
64px net peaks at 8x; 128/256px ports usually cap at 16x).
"""

from __future__ import annotations

from itertools import pairwise

from torch import Tensor, nn

from ganscale.models.layers import (
    LEAK,
    CondSequential,
    concat_one_hot,
    g_norm,
    generator_code_dim,
    label_code,
    log2_int,
    norm2d,
)

MAX_MULT = 16


class DCGANGenerator(nn.Module):
    """``condition``: ``concat`` feeds [z, one-hot labels] to the first conv; ``cbn`` feeds z
    alone and conditions every BatchNorm on the labels (``layers.ConditionalBatchNorm2d``)."""

    def __init__(
        self, z_dim: int, num_classes: list[int], image_size: int, channels: int, condition: str = "concat"
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = list(num_classes)
        self.code_dim = generator_code_dim(self.num_classes, condition)
        n_up = log2_int(image_size, "image_size") - 2  # 4x4 -> image_size
        mults = [min(2 ** (n_up - 1 - i), MAX_MULT) for i in range(n_up)]  # e.g. 8, 4, 2, 1
        in_ch = z_dim + (0 if self.code_dim else sum(self.num_classes))
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_ch, channels * mults[0], 4, 1, 0, bias=False),
            g_norm(channels * mults[0], self.code_dim),
            nn.ReLU(inplace=True),
        ]
        for a, b in pairwise(mults):
            layers += [
                nn.ConvTranspose2d(channels * a, channels * b, 4, 2, 1, bias=False),
                g_norm(channels * b, self.code_dim),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.ConvTranspose2d(channels * mults[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = CondSequential(*layers)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.code_dim:
            return self.net(z[:, :, None, None], label_code(labels, self.num_classes, z.dtype))
        h = concat_one_hot(z, labels, self.num_classes)
        return self.net(h[:, :, None, None])


class DCGANTrunk(nn.Module):
    """Image -> flattened 4x4 feature map ([B, feature_dim])."""

    def __init__(self, image_size: int, channels: int, norm: str) -> None:
        super().__init__()
        n_down = log2_int(image_size, "image_size") - 2  # image_size -> 4x4
        mults = [min(2**i, MAX_MULT) for i in range(n_down)]  # e.g. 1, 2, 4, 8
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(LEAK, inplace=True)]
        for a, b in pairwise(mults):
            layers += [
                nn.Conv2d(channels * a, channels * b, 4, 2, 1, bias=norm == "none"),
                norm2d(channels * b, norm),
                nn.LeakyReLU(LEAK, inplace=True),
            ]
        self.net = nn.Sequential(*layers)
        self.feature_dim = channels * mults[-1] * 4 * 4

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)
