"""Generators and discriminators: DCGAN and SRResNet-style (MakeGirlsMoe), with ACGAN heads.

- ``build_generator(cfg, num_classes)``: G(z, labels=None) -> [B, 3, S, S] in [-1, 1].
- ``build_discriminator(cfg, num_classes, norm)``: D(x, labels=None) -> (adv [B], [logits [B, n_a]]).

``num_classes`` is the classes per attribute (e.g. [12, 10] for hair and eyes), [] when
unconditional. G and D expose ``.num_classes``; G exposes ``.z_dim``. ``model.spectral_norm``
normalises D's (or both nets') weight layers (``spectral.py``); ``model.g_condition: cbn`` conditions
G's BatchNorms on the labels (``layers.ConditionalBatchNorm2d``).
"""

from ganscale.models.build import (
    build_discriminator,
    build_generator,
    count_parameters,
    init_dcgan_weights,
)
from ganscale.models.heads import Discriminator

__all__ = [
    "Discriminator",
    "build_discriminator",
    "build_generator",
    "count_parameters",
    "init_dcgan_weights",
]
