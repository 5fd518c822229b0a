"""Spectral normalisation (Miyato et al. 2018) of a network's weight layers.

Each conv, transposed conv, linear and embedding weight W is used as W / sigma(W), sigma
estimated by one power iteration per training-mode forward (torch's parametrization; 15 at
registration). In a state dict each such layer's ``weight`` becomes
``<layer>.parametrizations.weight.original`` (the raw weight, a parameter) plus
``<layer>.parametrizations.weight.0._u`` and ``._v`` (the power-iteration vectors, buffers).
Checkpoints and exports hold these, so a resume continues the same power iteration and an
exported G, rebuilt from the model config its generator.json records, loads them back as they
were. In eval mode no iteration runs: the stored u, v give sigma = u^T W v, so sampling is
deterministic.

An embedding (the projection discriminator's class embeddings) is normalised as well, like
Miyato & Koyama's ``SNEmbedID``. Conditional BatchNorm's gain/bias embeddings are raw
parameters, not layers, so they are left alone (they start at zero, where sigma is 0).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

SN_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)
"""Layers whose ``weight`` is spectrally normalised."""


def add_spectral_norm(module: nn.Module) -> nn.Module:
    """Register spectral norm on every :data:`SN_LAYERS` layer of ``module`` (after weight init:
    an init writing ``layer.weight`` would write a computed tensor, not the raw weight)."""
    for layer in [m for m in module.modules() if isinstance(m, SN_LAYERS)]:
        spectral_norm(layer)  # ConvTranspose2d: torch normalises along its output-channel dim 1
    return module


def spectral_weights(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every spectrally normalised layer of ``module``."""
    return [
        (name, m)
        for name, m in module.named_modules()
        if isinstance(m, SN_LAYERS) and hasattr(m, "parametrizations") and "weight" in m.parametrizations
    ]


def bake_spectral_norm(module: nn.Module) -> nn.Module:
    """Replace each spectral norm by the plain weight it computes now (eval mode: sigma from the
    stored u, v), in place. The result has the state-dict keys of the same net without spectral
    norm and the same eval-mode outputs; e.g. before ONNX export (its sigma, ``torch.vdot``, has
    no ONNX op)."""
    training = module.training
    module.eval()
    with torch.no_grad():
        for _, layer in spectral_weights(module):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return module.train(training)
