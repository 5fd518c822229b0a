"""The discriminator: a feature trunk plus the heads that turn features into logits.

Head kinds (only when D is conditional; an unconditional D has one linear adversarial head):

- ``shared``: one linear layer for real/fake and one per attribute, all on the trunk's features.
- ``separate``: the study's separate ``head_layers``-layer MLPs (real/fake, and one per
  attribute) on the trunk's features, so the two tasks stop fighting over one linear readout.
- ``classifier``: the trunk gives only the adversarial logit; a separate small CNN (its own
  trunk from the image) gives the class logits.
- ``projection``: projection discriminator (Miyato & Koyama 2018):
  adv = linear(phi(x)) + sum_a <embed_a(y_a), phi(x)>, skipping attributes whose label is -1.
  Class logits still come from shared linear heads so class accuracy can be logged (and the
  ACGAN class loss used, if its weight is > 0).
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import Tensor, nn

from ganscale.models.layers import LEAK, minibatch_std

HEAD_HIDDEN = 256
"""Hidden width of the separate MLP heads (capped at the trunk's feature size)."""

HEAD_KINDS = ("shared", "separate", "classifier", "projection")


def mlp_head(in_dim: int, out_dim: int, layers: int) -> nn.Module:
    """``layers`` linear layers with LeakyReLU between them; 1 layer is a plain linear head."""
    hidden = min(HEAD_HIDDEN, in_dim)
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(dims)):
        if i > 0:
            mods.append(nn.LeakyReLU(LEAK, inplace=True))
        mods.append(nn.Linear(a, b))
    return nn.Sequential(*mods)


class Discriminator(nn.Module):
    """``forward(x, labels=None) -> (adv [B], [class logits [B, n_a] per attribute])``."""

    def __init__(
        self,
        trunk: nn.Module,
        num_classes: list[int],
        head: str = "shared",
        head_layers: int = 1,
        classifier: nn.Module | None = None,
        minibatch_std_group: int = 0,
    ) -> None:
        super().__init__()
        if head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {', '.join(HEAD_KINDS)}, got {head!r}")
        if head == "classifier" and num_classes and classifier is None:
            raise ValueError("head='classifier' needs a classifier trunk")
        self.num_classes = list(num_classes)
        self.head = head if num_classes else "none"
        self.trunk = trunk
        # model.d_minibatch_std: one more feature, the group's standard deviation (0: none)
        self.mbstd_group = minibatch_std_group
        feat = trunk.feature_dim + (1 if minibatch_std_group else 0)
        layers = head_layers if self.head == "separate" else 1
        self.adv_head = mlp_head(feat, 1, layers)
        # Where the class heads read from: D's own features, or the separate classifier CNN.
        self.classifier = classifier if self.head == "classifier" else None
        cls_feat = self.classifier.feature_dim if self.classifier is not None else feat
        self.class_heads = nn.ModuleList([mlp_head(cls_feat, n, layers) for n in self.num_classes])
        self.embeds = nn.ModuleList(
            [nn.Embedding(n, feat) for n in self.num_classes] if self.head == "projection" else []
        )

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        phi = self.trunk(x)
        if self.mbstd_group:
            phi = torch.cat([phi, minibatch_std(phi, self.mbstd_group)], 1)
        adv = self.adv_head(phi).squeeze(1)
        if labels is not None:
            for i, embed in enumerate(self.embeds):  # empty unless head == "projection"
                y = labels[:, i]
                proj = (embed(y.clamp(min=0)) * phi).sum(1)
                adv = adv + proj * (y >= 0).to(proj.dtype)  # label -1: no projection term
        feats = self.classifier(x) if self.classifier is not None else phi
        return adv, [h(feats) for h in self.class_heads]
