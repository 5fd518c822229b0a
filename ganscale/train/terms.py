"""The loss terms of one training step and what only a metrics row reads: each a small
function with one job, called by :meth:`ganscale.train.trainer.Trainer.step`.

Plain functions of the step's tensors and the ``loss`` config. The order of the additions is
the trainer's since the first release: changing it changes the bits of a resumed run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ganscale.config import LossConfig
from ganscale.train import losses

if TYPE_CHECKING:
    from ganscale.augment.ada import NoAugment
    from ganscale.runtime import Runtime


def d_loss(
    lc: LossConfig,
    real_logits: torch.Tensor,
    real_cls: list[torch.Tensor],
    real_labels: torch.Tensor | None,
    fake_logits: torch.Tensor,
    fake_cls: list[torch.Tensor],
    fake_labels: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """D's adversarial + weighted class loss (ACGAN: reals, and fakes with loss.d_fake_class);
    (the loss, its class part)."""
    adv = losses.d_adversarial_loss(lc.adversarial, real_logits, fake_logits)
    dev = real_logits.device  # an unconditional model's zero class loss lives beside the logits
    cls = losses.class_loss(real_cls, real_labels, device=dev)
    if lc.d_fake_class:
        cls = cls + losses.class_loss(fake_cls, fake_labels, all_known=True, device=dev)
    cls = lc.class_weight * cls
    return adv + cls, cls


def g_loss(
    lc: LossConfig, logits: torch.Tensor, cls_logits: list[torch.Tensor], labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """G's adversarial + weighted class loss; (the loss, its class part)."""
    adv = losses.g_adversarial_loss(lc.adversarial, logits)
    cls = lc.class_weight * losses.class_loss(cls_logits, labels, all_known=True, device=logits.device)
    return adv + cls, cls


def penalty_due(lc: LossConfig, n_critic: int, step: int, critic: int) -> bool:
    """Lazy penalty: on D updates 0, N, 2N... (counted over steps and critic updates)."""
    return lc.penalty != "none" and (step * n_critic + critic) % lc.penalty_every == 0


def penalty_term(
    lc: LossConfig,
    rt: Runtime,
    aug: NoAugment,
    generator: torch.Generator,
    real: torch.Tensor,
    fake: torch.Tensor,
    real_labels: torch.Tensor | None,
    out: dict[str, torch.Tensor],
) -> torch.Tensor:
    """The gradient penalty's term of D's loss (weight x penalty_every; ``out["loss/penalty"]``),
    of D after the augmentation (the plain D under it, as losses.py runs); ``generator``: the
    step's :attr:`~ganscale.seeding.NoisePhase.PENALTY` draw."""
    pen = losses.gradient_penalty(
        lc.penalty,
        aug.discriminator(rt.D, plain=rt.module("d")),
        real,
        fake,
        real_labels,
        generator=generator,
    )
    out["loss/penalty"] = pen.detach()
    return lc.penalty_weight * lc.penalty_every * pen


def mode_seeking_term(
    lc: LossConfig, z: torch.Tensor, fake: torch.Tensor, out: dict[str, torch.Tensor]
) -> torch.Tensor:
    """MSGAN's term of G's loss (Mao et al. 2019): image i and i + B/2 share their labels
    (:class:`~ganscale.train.noise.NoiseSource` pairs them), so ``mean|G(z1) - G(z2)| /
    mean|z1 - z2|`` is how far G moves per unit of z within a condition; its inverse (+1e-5) is
    penalised. ``out["loss/mode_seeking"]``: that ratio (higher: more varied)."""
    half = z.shape[0] // 2
    dz = (z[:half] - z[half : 2 * half]).float().abs().mean()
    dx = (fake[:half] - fake[half : 2 * half]).float().abs().mean()
    ratio = dx / dz
    out["loss/mode_seeking"] = ratio.detach()
    return lc.mode_seeking_weight / (ratio + 1e-5)


def lecam_term(
    lc: LossConfig,
    lecam: losses.LeCamEMA,
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    out: dict[str, torch.Tensor],
) -> torch.Tensor:
    """LeCam's term of D's loss (its EMAs of D's outputs updated first); ``out["loss/lecam"]``."""
    value = lecam.penalty(real_logits, fake_logits)
    out["loss/lecam"] = value.detach()
    return lc.lecam_weight * value


def d_prob(adversarial: str, logits: torch.Tensor) -> torch.Tensor:
    """D's mean output: a probability for bce, the raw logit otherwise."""
    logits = logits.detach().float()
    return torch.sigmoid(logits).mean() if adversarial == "bce" else logits.mean()


def logged_metrics(
    adversarial: str,
    attributes: dict[str, list[str]],
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    real_cls: list[torch.Tensor],
    real_labels: torch.Tensor | None,
    g_cls: list[torch.Tensor],
    g_labels: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """What only a metrics row reads: D's mean output on reals and fakes (D phase), the class
    accuracy on reals (D phase) and on G's fakes (G phase)."""
    out = {"d/real": d_prob(adversarial, real_logits), "d/fake": d_prob(adversarial, fake_logits)}
    for name, acc in zip(attributes, losses.class_accuracy(real_cls, real_labels), strict=False):
        out[f"acc/real/{name}"] = acc
    for name, acc in zip(attributes, losses.class_accuracy(g_cls, g_labels), strict=False):
        out[f"acc/fake/{name}"] = acc
    return out
