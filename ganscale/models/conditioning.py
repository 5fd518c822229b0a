"""Which parameters of G and D carry the conditions, and D's blocks: named in one place.

``--init-from`` (:mod:`ganscale.train.init_from`) loads every other tensor of a trained run and
re-initialises these where the new corpus's attributes or values differ; ``train.freeze_d``
freezes the first blocks of :func:`discriminator_blocks`.

- G's **label inputs**: tensors whose rows (along one dim) are indexed by G's label code
  ``[one_hot(y_1), ..., one_hot(y_A)]`` (:func:`~ganscale.models.layers.label_code`), after
  ``offset`` rows of something else. A concat G's first layer (``net.0`` of the DCGAN G, the
  ``dense`` layer of the resnet G) reads [z, code]: its z rows are not conditioning, its code
  rows are. A cbn G's conditional BatchNorm embeddings (``gain_embed``, ``bias_embed``) are
  all code rows.
- D's **per-attribute modules**: ``class_heads.<i>`` (the ACGAN classifier of attribute i) and
  ``embeds.<i>`` (its projection embedding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ganscale.config import ModelConfig
from ganscale.models.dcgan import DCGANGenerator
from ganscale.models.heads import Discriminator
from ganscale.models.layers import ConditionalBatchNorm2d
from ganscale.models.resnet import DResBlock, ResNetGenerator

D_ATTRIBUTE_MODULES = ("class_heads", "embeds")
"""D's module lists with one entry per attribute (state-dict prefix ``<name>.<i>.``)."""


@dataclass(frozen=True)
class LabelInput:
    """A state-dict tensor of G whose entries along ``dim`` from ``offset`` on are indexed by G's
    label code (one block of rows per attribute, one row per value)."""

    layer: str
    """The layer's name, as the ``--init-from`` line says it (e.g. ``net.0``)."""
    dim: int
    offset: int


def _weight_key(name: str, layer: nn.Module) -> str:
    """The state-dict key of ``layer.weight`` (spectral norm keeps the raw weight elsewhere)."""
    if parametrize.is_parametrized(layer, "weight"):
        return f"{name}.parametrizations.weight.original"
    return f"{name}.weight"


def generator_label_inputs(G: nn.Module) -> dict[str, LabelInput]:
    """G's label-code-indexed tensors by state-dict key (see the module docstring)."""
    out: dict[str, LabelInput] = {}
    if isinstance(G, DCGANGenerator) and not G.code_dim:  # ConvTranspose2d weight: [in, out, k, k]
        out[_weight_key("net.0", G.net[0])] = LabelInput("net.0", 0, G.z_dim)
    elif isinstance(G, ResNetGenerator) and not G.code_dim:  # Linear weight: [out, in]
        out[_weight_key("dense", G.dense)] = LabelInput("dense", 1, G.z_dim)
    for name, m in G.named_modules():
        if isinstance(m, ConditionalBatchNorm2d):
            out[f"{name}.gain_embed"] = LabelInput(name, 0, 0)
            out[f"{name}.bias_embed"] = LabelInput(name, 0, 0)
    return out


def label_input_layers(G: nn.Module) -> set[str]:
    """Names of the layers holding G's label inputs (their other tensors, e.g. spectral norm's
    power-iteration vectors, follow the weight: loaded only where its shape is unchanged)."""
    return {li.layer for li in generator_label_inputs(G).values()}


def attribute_module(key: str) -> tuple[str, int, str] | None:
    """(module list, attribute index, rest of the key) of one of D's per-attribute tensors
    (``class_heads.1.0.weight`` -> ("class_heads", 1, "0.weight")), None for any other key."""
    parts = key.split(".", 2)
    if len(parts) == 3 and parts[0] in D_ATTRIBUTE_MODULES and parts[1].isdigit():
        return parts[0], int(parts[1]), parts[2]
    return None


def discriminator_blocks(D: nn.Module) -> list[list[nn.Module]]:
    """D's trunk as blocks, from the image side: a new block starts at each convolution and each
    residual block of ``D.trunk.net``; the activations and norms after it belong to it. The heads
    (and a ``classifier`` head's own CNN) are not blocks."""
    if not isinstance(D, Discriminator):
        raise TypeError(f"expected a ganscale Discriminator, got {type(D).__name__}")
    blocks: list[list[nn.Module]] = []
    for m in D.trunk.net:
        if isinstance(m, (nn.Conv2d, DResBlock)) or not blocks:
            blocks.append([])
        blocks[-1].append(m)
    return blocks


def discriminator_block_count(cfg: ModelConfig) -> int:
    """How many blocks :func:`discriminator_blocks` finds in the D that ``cfg`` builds."""
    from ganscale.models.build import build_discriminator

    with torch.device("meta"):  # shapes only
        D = build_discriminator(cfg, [], norm="none" if cfg.d_norm == "none" else "batch")
    return len(discriminator_blocks(D))


def freeze_discriminator_blocks(D: nn.Module, k: int) -> int:
    """``train.freeze_d``: the parameters of D's first ``k`` blocks stop requiring gradients (so
    no optimizer step changes them; call before the optimizer and DDP are built). Their
    BatchNorm running statistics are buffers and still follow the data. Returns the number of
    parameter tensors frozen."""
    blocks = discriminator_blocks(D)
    if k > len(blocks):
        raise ValueError(f"freeze_d {k} > D's {len(blocks)} blocks")
    frozen = [p for block in blocks[:k] for m in block for p in m.parameters()]
    for p in frozen:
        p.requires_grad_(False)
    return len(frozen)
