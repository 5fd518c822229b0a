"""SRResNet-style G and residual D trunk, as in MakeGirlsMoe (Jin et al. 2017).

G: dense z (+ one-hot labels) -> C x 16 x 16 -> BN -> ReLU -> ``blocks`` residual blocks
(conv-BN-ReLU-conv-BN + skip) -> BN -> ReLU, plus a long skip over the blocks ->
one pixel-shuffle block (conv C->4C, PixelShuffle(2), BN, ReLU) per doubling from 16 to
image_size -> conv 9x9 to RGB -> tanh. C = g_channels (the paper: 64). With
model.g_condition: cbn, z alone enters the dense layer and every BN is conditional.

D trunk: conv 4x4 stride 2 -> LeakyReLU, then per resolution: two residual blocks
(conv-BN-LReLU-conv-BN + skip, LReLU) followed by a conv 4x4 stride 2 doubling the width,
down to 4x4; then the paper's last conv 3x3 stride 2 to 2x2 at twice the width, flattened.
For 128px with d_channels=32 this is the paper's 32..1024 ladder.
"""

from __future__ import annotations

from torch import Tensor, nn

from ganscale.models.layers import (
    LEAK,
    CondSequential,
    TakesCode,
    concat_one_hot,
    g_norm,
    generator_code_dim,
    label_code,
    log2_int,
    norm2d,
)

G_START = 16
"""G's first feature map is G_START x G_START; image_size adds/drops pixel-shuffle blocks."""
D_BLOCKS_PER_STAGE = 2


class GResBlock(TakesCode):
    def __init__(self, c: int, code_dim: int = 0) -> None:
        super().__init__()
        self.body = CondSequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            g_norm(c, code_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            g_norm(c, code_dim),
        )

    def forward(self, x: Tensor, code: Tensor | None = None) -> Tensor:
        return x + self.body(x, code)


def pixel_shuffle_block(c: int, code_dim: int = 0) -> CondSequential:
    return CondSequential(
        nn.Conv2d(c, 4 * c, 3, 1, 1, bias=False),
        nn.PixelShuffle(2),
        g_norm(c, code_dim),
        nn.ReLU(inplace=True),
    )


class ResNetGenerator(nn.Module):
    """``condition``: ``concat`` feeds [z, one-hot labels] to the dense layer; ``cbn`` feeds z
    alone and conditions every BatchNorm on the labels (``layers.ConditionalBatchNorm2d``)."""

    def __init__(
        self,
        z_dim: int,
        num_classes: list[int],
        image_size: int,
        channels: int,
        blocks: int,
        condition: str = "concat",
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.num_classes = list(num_classes)
        self.code_dim = cd = generator_code_dim(self.num_classes, condition)
        n_up = log2_int(image_size, "image_size") - log2_int(G_START, "G_START")
        if n_up < 0:
            raise ValueError(f"resnet G needs image_size >= {G_START}, got {image_size}")
        self.channels = channels
        in_dim = z_dim + (0 if cd else sum(self.num_classes))
        self.dense = nn.Linear(in_dim, channels * G_START * G_START)
        self.stem = CondSequential(g_norm(channels, cd), nn.ReLU(inplace=True))
        self.blocks = CondSequential(*[GResBlock(channels, cd) for _ in range(blocks)])
        self.after_blocks = CondSequential(g_norm(channels, cd), nn.ReLU(inplace=True))
        self.upsample = CondSequential(*[pixel_shuffle_block(channels, cd) for _ in range(n_up)])
        self.to_rgb = nn.Sequential(nn.Conv2d(channels, 3, 9, 1, 4), nn.Tanh())

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.code_dim:
            code: Tensor | None = label_code(labels, self.num_classes, z.dtype)
            h = self.dense(z)
        else:
            code, h = None, self.dense(concat_one_hot(z, labels, self.num_classes))
        h = self.stem(h.view(-1, self.channels, G_START, G_START), code)
        h = h + self.after_blocks(self.blocks(h, code), code)  # SRResNet's long skip
        return self.to_rgb(self.upsample(h, code))


class DResBlock(nn.Module):
    def __init__(self, c: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=norm == "none"),
            norm2d(c, norm),
            nn.LeakyReLU(LEAK, inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=norm == "none"),
            norm2d(c, norm),
        )
        self.act = nn.LeakyReLU(LEAK)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


class ResNetTrunk(nn.Module):
    """Image -> flattened 2x2 feature map ([B, feature_dim])."""

    def __init__(self, image_size: int, channels: int, norm: str) -> None:
        super().__init__()
        n_down = log2_int(image_size, "image_size") - 2  # strided 4x4 convs down to 4x4
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(LEAK, inplace=True)]
        c = channels
        for _ in range(n_down - 1):
            layers += [DResBlock(c, norm) for _ in range(D_BLOCKS_PER_STAGE)]
            layers += [
                nn.Conv2d(c, 2 * c, 4, 2, 1, bias=norm == "none"),
                norm2d(2 * c, norm),
                nn.LeakyReLU(LEAK, inplace=True),
            ]
            c *= 2
        layers += [DResBlock(c, norm) for _ in range(D_BLOCKS_PER_STAGE)]
        layers += [nn.Conv2d(c, 2 * c, 3, 2, 1), nn.LeakyReLU(LEAK, inplace=True)]  # 4x4 -> 2x2
        self.net = nn.Sequential(*layers)
        self.feature_dim = 2 * c * 2 * 2

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).flatten(1)
